"""`make bench`: train the default configuration on all of GTSRB's training set and report
validation accuracy (by-track split) and wall-clock training time on this machine.

Writes benchmarks/results/<date>-<arch>-train.json. Accuracy on the official test split
needs its images: pass --test-data <GTSRB root with Final_Test>.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from components.evaluate.evaluate import evaluate_model
from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig, train
from tsr.core.dataset import load_split, read_data_card
from tsr.core.sources import read_source
from tsr.local.demo import find_data

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--test-data", default="")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
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
    result = train(tr, va, card["class_names"], cfg)
    row = {
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
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "val_accuracy": round(result.history[-1].val_accuracy, 5),
        "history": [asdict(h) for h in result.history],
    }
    if args.test_data:
        test, _ = read_source(args.test_data, "test", result.config.preprocess.image_size)
        row["test_accuracy"] = evaluate_model(result.model, result.config.preprocess, 43, test).accuracy
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{row['date']}-{row['arch']}-train.json"
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps({k: row[k] for k in ("val_accuracy", "train_seconds", "images_per_second", "cpu", "cores")}))


if __name__ == "__main__":
    main()
