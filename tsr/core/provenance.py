"""Lineage facts recorded in model cards: code version, library versions, machine."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from typing import Any

import torch
import torchvision

from tsr.core.config import REPO_ROOT


def git_commit() -> str:
    """The commit of the code that ran: baked into images as TSR_GIT_COMMIT, else asked of git."""
    if os.environ.get("TSR_GIT_COMMIT"):
        return os.environ["TSR_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def runtime_info() -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu_arch": platform.machine(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
