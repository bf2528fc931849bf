"""`make bench-train`'s aggregation over seeds, on a tiny synthetic dataset (the real run trains for ~30 minutes)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.train_default import DEFAULT_SEEDS, run_seeds, spread, summarise
from components.train.config import TrainConfig
from tsr.core.dataset import Split


def _row(seed: int, acc: float, seconds: float, worst: tuple[int, float], ece: float) -> dict[str, object]:
    return {
        "seed": seed,
        "val_accuracy": acc,
        "train_seconds": seconds,
        "worst_class": {"class_id": worst[0], "class_name": f"c{worst[0]}", "accuracy": worst[1]},
        "ece": ece,
    }


def test_summary_gives_mean_and_spread_and_the_lowest_worst_class() -> None:
    rows = [
        _row(0, 0.97, 100.0, (3, 0.8), 0.02),
        _row(1, 0.98, 110.0, (5, 0.7), 0.01),
        _row(2, 0.99, 90.0, (3, 0.9), 0.03),
    ]
    summary = summarise(rows)
    assert summary["seeds"] == [0, 1, 2]
    assert summary["val_accuracy"] == {"mean": 0.98, "std": 0.01, "min": 0.97, "max": 0.99}
    assert summary["train_seconds"]["mean"] == 100.0 and summary["train_seconds"]["std"] == pytest.approx(10.0)
    assert summary["worst_class"] == {"class_id": 5, "class_name": "c5", "accuracy": 0.7}
    assert summary["worst_classes"] == [3, 5] and summary["worst_class_accuracy"]["min"] == 0.7
    assert summary["ece"]["mean"] == pytest.approx(0.02) and "test_accuracy" not in summary
    assert spread([0.5]) == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5}
    with pytest.raises(ValueError):
        spread([])


def test_every_seed_trains_once_and_is_summarised() -> None:
    assert DEFAULT_SEEDS == (0, 1, 2)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    images = torch.randint(0, 256, (60, 3, 16, 16), dtype=torch.uint8, generator=gen)
    images[:, labels.tolist()] = 250  # class c brightens channel c: learnable
    data = Split(images, labels, torch.arange(60))
    cfg = TrainConfig(epochs=2, width=4, batch_size=8, threads=1, augment=False, export_program=False)
    rows, summary = run_seeds(data, data, ["a", "b", "c"], cfg, [0, 1])
    assert [r["seed"] for r in rows] == [0, 1] and summary["seeds"] == [0, 1]
    assert rows[0]["history"] != rows[1]["history"]  # the seed reached training
    for row in rows:
        assert 0 <= row["val_accuracy"] <= 1 and row["train_seconds"] >= 0 and row["temperature"] > 0
        assert row["worst_class"]["class_name"] in {"a", "b", "c"} and 0 <= row["ece"] <= 1
        assert row["ece_before_calibration"] is not None and 0 <= row["ece_cross_fitted"] <= 1
    assert summary["val_accuracy"]["min"] <= summary["val_accuracy"]["mean"] <= summary["val_accuracy"]["max"]
    assert summary["ece"] is not None and summary["worst_class"] is not None
    assert summary["ece_cross_fitted"]["max"] == pytest.approx(max(r["ece_cross_fitted"] for r in rows), abs=1e-5)
    with pytest.raises(ValueError, match="seed"):
        run_seeds(data, data, ["a", "b", "c"], cfg, [])
