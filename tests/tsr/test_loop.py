"""`tsr loop --once` on a small configuration: real MinIO, real predictor, real Prometheus evaluating the
drift alert's PromQL, the real webhook receiver, two kfp.local pipeline runs (bootstrap + retrain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.register.register import build_model_card
from tsr.core.config import StoreConfig
from tsr.core.registry import Registry
from tsr.local.loop import LoopConfig, champion_recipe, drift_rule, run_loop, shifted
from tsr.local.prometheus_server import find_prometheus_binary

pytestmark = pytest.mark.slow


def test_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="shift"):
        LoopConfig(data="x", shift=1.5)
    with pytest.raises(ValueError, match="drift_window"):
        LoopConfig(data="x", images=100, drift_window=50)
    with pytest.raises(ValueError, match=r"images \(100\) must be >= drift_window"):
        LoopConfig(data="x", images=100, drift_window=150)


def test_the_retrain_repeats_the_champions_recipe_and_split() -> None:
    """What register writes into the model card is enough to retrain the same way on the same split."""
    data_card = {"seed": 7, "val_fraction": 0.25, "max_groups_per_class": 0, "source": "/data"}
    train_params = {"arch": "tsrnet", "epochs": 18, "batch_size": 256, "lr": 0.2, "seed": 7, "threads": 0}
    card = build_model_card("m", {"train_params": train_params}, {}, data_card, {"result": "pass"})
    assert champion_recipe(card, "v1") == {
        "arch": "tsrnet",
        "epochs": 18,
        "batch_size": 256,
        "lr": 0.2,
        "seed": 7,
        "val_fraction": 0.25,
        "max_groups_per_class": 0,
    }
    del card["data"]["max_groups_per_class"]  # a card registered before the split was recorded
    with pytest.raises(ValueError, match=r"champion v1 does not record max_groups_per_class.*--quick"):
        champion_recipe(card, "v1")
    with pytest.raises(ValueError, match="recipe must be one of champion, quick"):
        LoopConfig(data="x", recipe="slow")


def test_shift_darkens_without_wrapping() -> None:
    image = np.array([[[0, 128, 255]]], dtype=np.uint8)
    assert shifted(image, 0.5).tolist() == [[[0, 64, 127]]]


def test_one_cycle_drift_alert_retrain_gate_promote_reload(
    gtsrb_small: Path, minio: StoreConfig, tmp_path: Path
) -> None:
    cfg = LoopConfig(
        data=str(gtsrb_small),
        model_name="loop-test",
        recipe="quick",  # more epochs than the 1-epoch bootstrap champion: a retrain that beats it
        epochs=3,
        bootstrap_epochs=1,
        max_groups_per_class=3,
        batch_size=64,
        images=128,
        drift_window=128,
    )
    steps: list[str] = []
    summary = run_loop(cfg, minio, tmp_path, say=steps.append)

    threshold = float(drift_rule().expr.rsplit(">", 1)[1])
    assert summary["bootstrapped"] is True
    assert summary["psi_normal"] < threshold < summary["psi_shifted"], summary
    assert summary["alert_condition"] is True
    if find_prometheus_binary() is not None:
        assert summary["evaluated_by"].startswith("Prometheus")
    assert summary["webhook"]["outcome"] == "started" and summary["webhook"]["alerts"] == ["TSRInputDrift"]
    assert summary["gate"] == "pass", summary
    registry = Registry.from_config(minio)
    assert len(registry.versions("loop-test")) == 2
    assert summary["champion_after"] != summary["champion_before"]
    assert registry.get_alias("loop-test") == summary["champion_after"]
    assert registry.read_card("loop-test", summary["champion_after"])["run_id"] == summary["run_id"]
    # the predictor that was serving the old champion now serves the new one, without a restart
    assert summary["served_version"] == summary["champion_after"]
    assert summary["predictions_after"] == 32
    assert summary["outcome"].startswith("retrained and promoted")
    assert any("webhook started retraining run" in s for s in steps)
