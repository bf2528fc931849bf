"""`make bench-train`: train the default configuration on all of GTSRB's training set, once per seed, and
report validation accuracy (by-track split), wall-clock training time on this machine, the worst class and
the calibration error after temperature scaling, each as mean and spread over the seeds.

One run is one draw: a change of seed alone moves validation accuracy by a few tenths of a point and the
worst class by several points, so a recipe is judged by the spread over seeds (default 0 1 2), not one
number. Writes benchmarks/results/<date>-<arch>-train.json (every seed's row and the summary). Accuracy on
the official test split needs its images: pass --test-data <GTSRB root with Final_Test>.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from components.evaluate.evaluate import evaluate_model
from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig, TrainResult, train
from tsr.core.dataset import Split, load_split, read_data_card
from tsr.core.sources import read_source
from tsr.local.demo import find_data

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SEEDS = (0, 1, 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def seed_row(result: TrainResult, val: Split, seed: int, test: Split | None = None) -> dict[str, Any]:
    """One seed's numbers: validation accuracy, worst class and ECE of the served (calibrated) probabilities,
    the calibration the train step recorded, and the wall time."""
    metrics = evaluate_model(result.model, result.config, val)
    calibration = result.calibration or {}
    row: dict[str, Any] = {
        "seed": seed,
        "val_accuracy": round(metrics.accuracy, 5),
        "macro_f1": round(metrics.macro_f1, 5),
        "worst_class": metrics.worst_class(result.config.class_names),
        "ece": round(metrics.ece, 5) if metrics.ece is not None else None,  # after calibration
        "ece_before_calibration": calibration.get("ece_before"),
        # T fitted on the other half of the validation tracks (tsr.core.calibration.cross_fitted_ece).
        "ece_cross_fitted": calibration.get("ece_cross_fitted"),
        "precision": result.config.train_params.get("precision_used"),
        "temperature": result.config.temperature,
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "history": [asdict(h) for h in result.history],
    }
    if test is not None:
        row["test_accuracy"] = round(evaluate_model(result.model, result.config, test).accuracy, 5)
    return row


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    if not values:
        raise ValueError("no values to summarise")
    return {
        "mean": round(statistics.fmean(values), 5),
        "std": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
        "min": round(min(values), 5),
        "max": round(max(values), 5),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over the seeds of validation accuracy, wall time, the worst class's accuracy and the
    ECE after calibration; `worst_class` is the lowest of the seeds' worst classes (the one to look at)."""
    worst = [r["worst_class"] for r in rows if r.get("worst_class")]
    out: dict[str, Any] = {
        "seeds": [r["seed"] for r in rows],
        "val_accuracy": spread([r["val_accuracy"] for r in rows]),
        "train_seconds": spread([r["train_seconds"] for r in rows]),
        "worst_class_accuracy": spread([w["accuracy"] for w in worst]) if worst else None,
        "worst_class": min(worst, key=lambda w: (w["accuracy"], w["class_id"])) if worst else None,
        "worst_classes": sorted({w["class_id"] for w in worst}),  # the same class every seed, or not
    }
    eces = [r["ece"] for r in rows if r.get("ece") is not None]
    out["ece"] = spread(eces) if eces else None
    crossed = [r["ece_cross_fitted"] for r in rows if r.get("ece_cross_fitted") is not None]
    out["ece_cross_fitted"] = spread(crossed) if crossed else None
    tests = [r["test_accuracy"] for r in rows if "test_accuracy" in r]
    if tests:
        out["test_accuracy"] = spread(tests)
    return out


def run_seeds(
    train_split: Split,
    val_split: Split,
    class_names: list[str],
    cfg: TrainConfig,
    seeds: Sequence[int],
    test: Split | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train `cfg` once per seed on the same data split; every seed's row and the summary."""
    if not seeds:
        raise ValueError("give at least one seed")
    rows = [
        seed_row(train(train_split, val_split, class_names, replace(cfg, seed=seed)), val_split, seed, test)
        for seed in seeds
    ]
    return rows, summarise(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--test-data", default="")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="one training run per seed (0 1 2)"
    )
    args = parser.parse_args()
    from rich.console import Console

    source = find_data(args.data_dir, Console(stderr=True))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ingest(IngestConfig(source=source), Path(tmp))
        ingest_s = time.perf_counter() - t0
        card = read_data_card(Path(tmp))
        tr, va = load_split(Path(tmp) / "train.safetensors"), load_split(Path(tmp) / "val.safetensors")
    cfg = TrainConfig(epochs=args.epochs)
    test = read_source(args.test_data, "test", int(tr.images.shape[-1]))[0] if args.test_data else None
    rows, summary = run_seeds(tr, va, card["class_names"], cfg, args.seeds, test)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "backend": torch.backends.cpu.get_cpu_capability(),
        "config": asdict(cfg),
        "train_images": len(tr),
        "val_images": len(va),
        "ingest_seconds": round(ingest_s, 1),
        "summary": summary,
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{report['date']}-{report['arch']}-train.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"cpu": report["cpu"], "cores": report["cores"], **summary}))


if __name__ == "__main__":
    main()
