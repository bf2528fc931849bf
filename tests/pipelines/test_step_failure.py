"""A pipeline step fails in a kfp.local run, and a rerun finishes reusing what was cached.

MinIO is stopped (for real) the moment the evaluate step has written its result, so the
register step is the one that meets it down: the run fails naming that step and its error,
nothing is registered, and after MinIO is back the rerun completes with ingest and train
taken from kfp.local's cache (they are not executed again).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipelines.local_run import PipelineRunError, run_local
from tsr.core.registry import Registry, sha256_file
from tsr.local.minio_server import LocalMinio

pytestmark = pytest.mark.slow

NAME = "pipe-fault"


def _stop_when_evaluated(root: Path, server: LocalMinio, done: threading.Event) -> threading.Thread:
    """Stop MinIO as soon as the evaluate step's `evaluation` artifact exists (it is written last,
    after the step's last store access), i.e. before the register step's process can reach it."""

    def watch() -> None:
        while not done.is_set():
            if any(root.glob("*/evaluate-component/evaluation")):
                server.stop()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_register_fails_with_minio_down_and_the_rerun_reuses_the_cache(
    gtsrb_small: Path, minio_server: LocalMinio, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    store = minio_server.running()
    assert store is not None
    params = {
        "data_source": str(gtsrb_small),
        "max_groups_per_class": 2,
        "epochs": 1,
        "batch_size": 64,
        "lr": 0.1,
        "model_name": NAME,
        "deploy_mode": "manifest",
        "min_accuracy": 0.0,
        "min_class_accuracy": 0.0,
    }
    root = tmp_path / "root"
    done = threading.Event()
    watcher = _stop_when_evaluated(root, minio_server, done)
    started = time.monotonic()
    try:
        with pytest.raises(PipelineRunError) as failure:
            run_local(params, store, root, enable_caching=True)
    finally:
        done.set()
        watcher.join(timeout=30)
    failed_s = time.monotonic() - started
    message = str(failure.value)
    assert "FAILURE" in message and "register-component" in message, message  # which step
    assert failure.value.step_error is not None
    assert failure.value.step_error.startswith("StoreError: "), message  # and why, from the step's own output
    assert f"on MinIO/S3 at http://{store.endpoint} failed" in message and "Connection refused" in message
    assert "\x1b[" not in message
    assert "tsr.core.store.StoreError: " in capfd.readouterr().out  # the step's own log still reaches the console

    minio_server.start(port=int(store.endpoint.rsplit(":", 1)[1]))
    registry = Registry.from_config(store)
    assert registry.versions(NAME) == [] and registry.get_alias(NAME) is None, "a failed run registers nothing"

    started = time.monotonic()
    rerun = run_local(params, store, root, enable_caching=True)
    rerun_s = time.monotonic() - started
    assert rerun.gate == "pass"
    versions = registry.versions(NAME)
    assert len(versions) == 1 and registry.get_alias(NAME) == versions[0]
    # Cache hits run nothing: ingest and train have one execution directory each (the first run's),
    # evaluate (never cached: it compares against the current champion) has two.
    runs = {step: len(list(root.glob(f"*/{step}-component"))) for step in ("ingest", "train", "evaluate")}
    assert runs == {"ingest": 1, "train": 1, "evaluate": 2}, runs
    (trained,) = root.glob("*/train-component/model")
    local = registry.fetch(NAME, versions[0], tmp_path / "cache")
    assert sha256_file(local / "model.safetensors") == sha256_file(trained / "model.safetensors")
    print(f"failed run {failed_s:.0f}s, rerun from cache {rerun_s:.0f}s")  # timing is reported, not asserted
