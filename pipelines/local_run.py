"""Run the training pipeline on this machine with kfp.local.SubprocessRunner.

The steps run as subprocesses of this Python (the project's venv, where the component
image's code is installed), with the store handed over as environment variables just as
the Kubernetes Secret hands it over in a cluster.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import local

from pipelines.training_pipeline import Placement, build_pipeline
from tsr.config import StoreConfig


@dataclass
class LocalRunResult:
    run_id: str
    pipeline_root: Path
    seconds: float
    gate: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.evaluation["validation"]["accuracy"])


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def run_local(
    params: dict[str, Any], store: StoreConfig, pipeline_root: Path, enable_caching: bool = False
) -> LocalRunResult:
    """Run the pipeline to completion; raises RuntimeError naming the failed step."""
    run_id = str(params.get("run_id") or f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
        enable_caching=enable_caching,
    )
    # No Kubernetes placement or retry backoffs locally; caching flags stay as on a cluster.
    pipeline = build_pipeline(use_k8s_secret=False, placement=Placement.local())
    start = time.perf_counter()
    with _environment({**store.env(), "PYTHONUNBUFFERED": "1"}), warnings.catch_warnings():
        # The component image's name need not contain "python"; kfp.local warns about that.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        task = pipeline(**{**params, "run_id": run_id})
    evaluation = json.loads(Path(task.outputs["evaluation"].path).read_text())
    return LocalRunResult(run_id, pipeline_root, time.perf_counter() - start, str(task.outputs["gate"]), evaluation)
