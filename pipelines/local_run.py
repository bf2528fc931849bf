"""Run the training pipeline on this machine with kfp.local.SubprocessRunner.

The steps run as subprocesses of this Python (the project's venv, where the component
image's code is installed), with the store handed over as environment variables just as
the Kubernetes Secret hands it over in a cluster.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kfp import local

from pipelines.training_pipeline import Placement, build_pipeline
from tsr.core.config import StoreConfig


@dataclass
class LocalRunResult:
    run_id: str
    pipeline_root: Path
    seconds: float
    gate: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None  # the evaluate step's HTML run report
    summary: Path | None = None  # its Markdown key numbers

    @property
    def accuracy(self) -> float:
        return float(self.evaluation["validation"]["accuracy"])


class PipelineRunError(RuntimeError):
    """A step failed: kfp.local's message (which step) plus the step's own last error line (why)."""

    def __init__(self, message: str, step_error: str | None) -> None:
        super().__init__(f"{message} The step's error: {step_error}" if step_error else message)
        self.step_error = step_error


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a Python traceback: "tsr.core.store.StoreError: upload s3://... failed: ...".
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Exit)): (.+)$")


class _StepOutput(io.TextIOBase):
    """kfp.local prints each step's output to our stdout: pass it through, keep the tail to find
    the error a failed step died with (kfp's own exception names the step, not the reason)."""

    def __init__(self, target: TextIO, keep: int = 500) -> None:
        self.target = target
        self.lines: deque[str] = deque(maxlen=keep)
        self._partial = ""

    def write(self, text: str) -> int:
        self.target.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        self.lines.extend(_ANSI.sub("", line).strip() for line in complete)
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def last_error(self) -> str | None:
        for line in reversed(self.lines):
            match = _ERROR_LINE.match(line)
            if match:
                return f"{match.group(1)}: {match.group(2)}"
        return None


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


def check_local_params(params: Mapping[str, Any]) -> None:
    """Fail fast, before any step runs: the checks each step's config makes, plus the local paths.

    Raises `tsr.core.validation.InvalidParameter` naming the pipeline parameter. Gate thresholds are
    the evaluate step's business (a min_accuracy above 1 is a gate that never passes, on purpose).
    """
    from components.deploy.deploy import MODES
    from components.ingest.ingest import IngestConfig
    from components.train.train import TrainConfig
    from tsr.core.validation import check_choice, check_data_source, check_registry_name

    source = str(params.get("data_source") or "")
    check_data_source("data_source", source, must_exist=not params.get("download", False))
    if params.get("test_data"):
        check_data_source("test_data", str(params["test_data"]), must_exist=True)
    if "model_name" in params:
        check_registry_name("model_name", str(params["model_name"]))
    if "deploy_mode" in params:
        check_choice("deploy_mode", str(params["deploy_mode"]), MODES)
    ingest_keys = ("layout", "val_fraction", "seed", "max_groups_per_class", "download")
    IngestConfig(source=source, **{k: params[k] for k in ingest_keys if k in params})
    TrainConfig(**{k: params[k] for k in ("arch", "epochs", "batch_size", "lr", "seed", "threads") if k in params})


def run_local(
    params: dict[str, Any], store: StoreConfig, pipeline_root: Path, enable_caching: bool = False
) -> LocalRunResult:
    """Run the pipeline to completion; raises `PipelineRunError` naming the failed step and its error.

    With `enable_caching`, kfp.local keeps task outputs under `<pipeline_root>/.kfp_cache`: a rerun
    with the same root and parameters reuses the steps cached on a cluster too (ingest, train).

    Bad parameters raise `InvalidParameter` (a ValueError) before anything runs or is written.
    """
    check_local_params(params)
    run_id = str(params.get("run_id") or f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
        enable_caching=enable_caching,
    )
    # No Kubernetes placement or retry backoffs locally; caching flags stay as on a cluster.
    pipeline = build_pipeline(use_k8s_secret=False, placement=Placement.local(), packaging="lightweight")
    start = time.perf_counter()
    output = _StepOutput(sys.stdout)
    try:
        with (
            _environment({**store.env(), "PYTHONUNBUFFERED": "1"}),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(output),
        ):
            # The component image's name need not contain "python"; kfp.local warns about that. The steps'
            # display names are for the cluster's UI; kfp.local warns, once per step, that it ignores them.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=r".*settings \['display_name'\] have no effect.*")
            task = pipeline(**{**params, "run_id": run_id})
    except RuntimeError as exc:
        raise PipelineRunError(_ANSI.sub("", str(exc)), output.last_error()) from exc
    evaluation = json.loads(Path(task.outputs["evaluation"].path).read_text())
    return LocalRunResult(
        run_id,
        pipeline_root,
        time.perf_counter() - start,
        str(task.outputs["gate"]),
        evaluation,
        report=Path(task.outputs["report"].path),
        summary=Path(task.outputs["summary"].path),
    )
