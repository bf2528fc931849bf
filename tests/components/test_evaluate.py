"""Metrics and the gate, checked against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.evaluate.evaluate import GateConfig, compute_metrics, gate, run_evaluation
from components.evaluate.report import render_report
from components.ingest.ingest import IngestConfig, ingest
from tests.conftest import make_model_dir
from tsr.core.config import StoreConfig
from tsr.core.registry import Registry


def test_metrics_match_hand_computation() -> None:
    y_true = torch.tensor([0, 0, 1, 1, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 2, 0])
    m = compute_metrics(y_true, y_pred, 4)
    assert m.accuracy == pytest.approx(4 / 6)
    # F1: class0 p=1/2 r=1/2 -> .5; class1 p=2/3 r=1 -> .8; class2 p=1 r=1/2 -> 2/3; class 3 absent
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m.per_class_accuracy == [0.5, 1.0, 0.5, None]
    assert m.confusion[0] == [1, 1, 0, 0] and m.n == 6


def test_metrics_with_probabilities_report_ece_and_reliability() -> None:
    y_true = torch.tensor([0, 1, 1, 0])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    m = compute_metrics(y_true, probs.argmax(1), 2, probs)
    # bins (of 15) hold 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (right): |0.9-1|+|0.8-1|+|0.7-0|+|0.6-1|
    assert m.ece == pytest.approx((0.1 + 0.2 + 0.7 + 0.4) / 4, abs=1e-6)
    assert m.reliability is not None and sum(b["count"] for b in m.reliability) == 4
    assert m.summary()["ece"] == pytest.approx(0.35)
    assert compute_metrics(y_true, probs.argmax(1), 2).ece is None  # class ids only: no calibration numbers


def test_worst_class_is_the_lowest_present_accuracy() -> None:
    m = compute_metrics(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1, 1, 2, 0]), 4)
    assert m.worst_class(["a", "b", "c", "d"]) == {"class_id": 0, "class_name": "a", "accuracy": 0.5}


def test_gate_fails_on_the_worst_class_and_names_it() -> None:
    cfg = GateConfig(min_accuracy=0.9, champion_tolerance=0.01, min_class_accuracy=0.8)
    worst = {"class_id": 7, "class_name": "Speed limit (100km/h)", "accuracy": 0.62}
    result = gate(0.97, cfg, None, worst)
    assert not result.passed and result.worst_class == worst
    assert "class 7 (Speed limit (100km/h)) at 0.6200 < min_class_accuracy 0.8000" in result.reason
    fine = gate(0.97, cfg, None, {**worst, "accuracy": 0.85})
    assert fine.passed and "worst class 7 (Speed limit (100km/h)) at 0.8500" in fine.reason
    # on by default, and below the default recipe's worst held-out class in the newest `make bench-train` results
    import json

    from tsr.local.checkout import REPO_ROOT

    newest = max((REPO_ROOT / "benchmarks" / "results").glob("*-train.json"))
    measured = json.loads(newest.read_text())["summary"]["worst_class_accuracy"]["min"]
    assert 0.0 < GateConfig().min_class_accuracy < measured


def test_metrics_refuse_labels_outside_the_model() -> None:
    with pytest.raises(ValueError, match="labels outside"):
        compute_metrics(torch.tensor([5]), torch.tensor([0]), 3)


def test_gate_rules() -> None:
    cfg = GateConfig(min_accuracy=0.9, champion_tolerance=0.01)
    assert not gate(0.89, cfg, None).passed
    assert gate(0.95, cfg, None).passed
    assert gate(0.95, cfg, 0.955).passed  # within tolerance
    result = gate(0.93, cfg, 0.95)
    assert not result.passed and "trails the champion" in result.reason


def test_run_evaluation_compares_with_the_champion_on_the_same_split(
    gtsrb_small: Path, tmp_path: Path, minio: StoreConfig
) -> None:
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=2), tmp_path / "ds")
    model_dir = make_model_dir(tmp_path / "model", seed=1)
    loose = GateConfig(min_accuracy=0.0, champion_tolerance=1.0, min_class_accuracy=0.0)
    first = run_evaluation(model_dir, tmp_path / "ds", loose, "m", test_data=str(gtsrb_small), store=minio)
    assert first["champion"]["uri"] is None and first["gate"]["result"] == "pass"
    assert first["test"]["n"] > 0
    registry = Registry.from_config(minio)
    registry.set_alias("m", registry.publish("m", model_dir, {}))
    second = run_evaluation(model_dir, tmp_path / "ds", loose, "m", store=minio)
    assert second["champion"]["accuracy"] == pytest.approx(second["validation"]["accuracy"])
    strict = run_evaluation(model_dir, tmp_path / "ds", GateConfig(min_accuracy=0.99), "m", store=minio)
    assert strict["gate"]["result"] == "fail" and "min_accuracy" in strict["gate"]["reason"]
    per_class = run_evaluation(model_dir, tmp_path / "ds", GateConfig(0.0, 1.0, min_class_accuracy=0.99), "m")
    worst = per_class["worst_class"]
    assert per_class["gate"]["result"] == "fail" and per_class["gate"]["worst_class"] == worst
    assert f"worst class {worst['class_id']} ({worst['class_name']})" in per_class["gate"]["reason"]
    assert "min_class_accuracy" in per_class["gate"]["reason"]
    html = render_report(strict)
    assert "gate: fail" in html and "Speed limit (20km/h)" in html
