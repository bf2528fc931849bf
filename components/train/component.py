"""KFP wrapper for training: Dataset in, Model and per-epoch Metrics out.

The defaults are `TrainConfig`'s (components/train/config.py), written as literals because kfp.local
packages this function by its source; tests/test_defaults.py holds them to it.
"""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def train_component(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    arch: str = "tsrnet",
    epochs: int = 18,
    batch_size: int = 256,
    lr: float = 0.2,
    seed: int = 0,
    threads: int = 0,
) -> None:
    """Train from scratch; weights (safetensors), config and an exported program form the Model."""
    import json
    from pathlib import Path

    from components.train.train import EpochLog, TrainConfig, train, write_model
    from tsr.core.dataset import TRAIN_FILE, VAL_FILE, load_split, read_data_card

    # Parameters first: a bad one fails the step before the dataset is read.
    cfg = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads)
    data_dir = Path(dataset.path)
    card = read_data_card(data_dir)

    def log_epoch(log: EpochLog) -> None:
        print(
            f"epoch {log.epoch}/{cfg.epochs}: loss {log.train_loss:.4f} train_acc {log.train_accuracy:.4f} "
            f"val_loss {log.val_loss:.4f} val_acc {log.val_accuracy:.4f} ({log.seconds:.1f}s)",
            flush=True,
        )
        metrics.log_metric(f"epoch{log.epoch:02d}_train_loss", round(log.train_loss, 5))
        metrics.log_metric(f"epoch{log.epoch:02d}_val_accuracy", round(log.val_accuracy, 5))

    result = train(
        load_split(data_dir / TRAIN_FILE),
        load_split(data_dir / VAL_FILE),
        card["class_names"],
        cfg,
        log_epoch,
        input_reference=card.get("input_reference"),
    )
    write_model(result, Path(model.path))
    metrics.log_metric("train_seconds", round(result.train_seconds, 1))
    metrics.log_metric("images_per_second", round(result.images_per_second, 1))
    metrics.log_metric("final_val_accuracy", round(result.history[-1].val_accuracy, 5))
    if result.calibration:  # temperature scaling on the validation split (train.calibrate)
        for key in ("temperature", "ece_before", "ece_after", "ece_cross_fitted"):
            if result.calibration.get(key) is not None:
                metrics.log_metric(f"calibration_{key}", result.calibration[key])
        print(
            f"calibration: temperature {result.calibration['temperature']:.4f}, "
            f"ECE {result.calibration['ece_before']:.4f} -> {result.calibration['ece_after']:.4f}",
            flush=True,
        )
    # As in ingest: a file for the Metrics artifact, so kfp.local's cache can reuse this step.
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=2, sort_keys=True))
    model.metadata.update({"arch": arch, "epochs": epochs, "framework": "pytorch"})
