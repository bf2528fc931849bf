"""`tsr demo` (what `make demo` runs) in a quick configuration, in a fresh state folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARCHIVE

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_leaves_the_store_usable(tmp_path: Path, minio_binary: Path) -> None:
    env = {
        **os.environ,
        "TSR_STATE_DIR": str(tmp_path / "state"),
        "TSR_GTSRB_ARCHIVE": str(ARCHIVE),
        "HOME": str(tmp_path),  # no user config file
    }
    for key in ("TSR_S3_ENDPOINT", "TSR_S3_ACCESS_KEY", "TSR_S3_SECRET_KEY", "TSR_STORE_DIR", "TSR_CONFIG"):
        env.pop(key, None)
    tsr = str(Path(sys.executable).parent / "tsr")
    args = ["demo", "--epochs", "2", "--max-groups-per-class", "3", "--min-accuracy", "0.0", "--requests", "5"]
    result = subprocess.run([tsr, *args], capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["gate"] == "pass"
    assert summary["model_uri"].startswith("s3://models/gtsrb-classifier/")
    assert summary["store"].startswith("MinIO/S3 at http://127.0.0.1:")
    assert 0 < summary["validation_accuracy"] <= 1
    assert len(summary["predictions"]) == 5
    for p in summary["predictions"]:
        assert {"class_id", "class_name", "probability", "true_class"} <= set(p)
    # The predictor and MinIO were stopped ...
    assert not (tmp_path / "state" / "predictor.json").exists()
    assert not (tmp_path / "state" / "minio" / "server.json").exists()
    # ... and a later command starts MinIO on demand over the demo's data.
    later = subprocess.run(
        [tsr, "models", "show", "champion"], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    assert json.loads(later.stdout)["uri"] == summary["model_uri"]
