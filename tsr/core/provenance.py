"""Lineage facts recorded in model cards: code version, library versions, machine."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torchvision

import tsr

DISTRIBUTION = "tsr-platform"
ENV_REVISION = "TSR_REVISION"  # the images set it from their REVISION build arg (`make images`)
_LEGACY_ENV_REVISION = "TSR_GIT_COMMIT"


def _checkout_root() -> Path | None:
    """The git work tree the `tsr` package was imported from, or None when it is installed.

    Judged by the package's own location: an editable install or PYTHONPATH=<checkout> has `.git`
    beside the package; a wheel in site-packages has not (even when the current directory is a checkout).
    """
    root = Path(tsr.__file__).resolve().parent.parent
    return root if (root / ".git").exists() else None


def _git_head(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit() -> str:
    """The revision of the code that ran.

    $TSR_REVISION (baked into the images from their REVISION build arg; "unknown" counts as unset),
    else the HEAD commit of the checkout the package was imported from, else the installed
    distribution's version ("tsr-platform==0.1.0"), else "unknown".
    """
    for name in (ENV_REVISION, _LEGACY_ENV_REVISION):
        value = os.environ.get(name, "").strip()
        if value and value != "unknown":
            return value
    root = _checkout_root()
    if root is not None:
        head = _git_head(root)
        if head:
            return head
    try:
        return f"{DISTRIBUTION}=={metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
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
