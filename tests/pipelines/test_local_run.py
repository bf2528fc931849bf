"""The whole pipeline through kfp.local.SubprocessRunner on a small track-split subset, real MinIO."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.local_run import run_local
from tsr.core.config import StoreConfig
from tsr.core.registry import Registry

pytestmark = pytest.mark.slow


def test_pipeline_registers_on_pass_and_not_on_fail(gtsrb_small: Path, minio: StoreConfig, tmp_path: Path) -> None:
    base = {
        "data_source": str(gtsrb_small),
        "max_groups_per_class": 3,
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.1,
        "model_name": "pipe-test",
        "deploy_mode": "manifest",
        "test_data": str(gtsrb_small),
    }
    passed = run_local({**base, "min_accuracy": 0.0, "min_class_accuracy": 0.0}, minio, tmp_path / "root")
    assert passed.gate == "pass"
    registry = Registry.from_config(minio)
    versions = registry.versions("pipe-test")
    assert len(versions) == 1
    champion = registry.get_alias("pipe-test")
    card = registry.read_card("pipe-test", champion or "")
    assert card["run_id"] == passed.run_id
    assert card["metrics"]["validation"]["accuracy"] == pytest.approx(passed.accuracy)
    assert card["metrics"]["test"]["n"] > 0
    assert card["data"]["fingerprint"]["algorithm"] == "sha256"
    assert card["gate"]["result"] == "pass" and card["gate"]["min_class_accuracy"] == 0.0
    assert card["gate"]["worst_class"]["class_name"]  # the gate names the worst class
    assert card["temperature"] > 0 and card["metrics"]["validation"]["ece"] >= 0
    # Artifacts a dashboard shows: the HTML report and the generated InferenceService manifest.
    reports = list((tmp_path / "root").rglob("report"))
    assert reports and "gate: pass" in reports[0].read_text()
    # The run report is a pipeline output too: every section, figures embedded, training curves from
    # the train step's history; its Markdown summary carries the key numbers.
    assert passed.report is not None and passed.summary is not None
    page = passed.report.read_text()
    for section in ("summary", "training", "confusion", "per-class", "calibration", "data", "champion", "latency"):
        assert f'<section id="{section}">' in page, section
    assert page.count('src="data:image/png;base64,') >= 5 and "training curves" in page
    assert "http://" not in page and "<script" not in page
    summary = passed.summary.read_text()
    assert "gate **pass**" in summary and f"{100 * passed.accuracy:.2f}%" in summary and "p50" in summary
    manifests = list((tmp_path / "root").rglob("manifest"))
    assert manifests and f"s3://models/pipe-test/{champion}" in manifests[0].read_text()

    failed = run_local({**base, "min_accuracy": 1.01, "min_class_accuracy": 0.0}, minio, tmp_path / "root2")
    assert failed.gate == "fail" and "min_accuracy" in failed.evaluation["gate"]["reason"]
    assert registry.versions("pipe-test") == versions, "a failed gate must not register anything"
    assert registry.get_alias("pipe-test") == champion
