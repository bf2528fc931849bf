"""Ingest: read GTSRB / ImageFolder data (local or s3://), split it by track, write the dataset and its card.

Plain Python, no KFP: the component in `component.py` and `tsr ingest` both call `ingest()`. The dataset
format it writes is `tsr.core.dataset`; reading the raw images is `tsr.core.sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tsr.core.config import StoreConfig
from tsr.core.dataset import OUTPUT_FILES, DataError, Listing, ProgressCallback, Split, split_by_group, write_dataset
from tsr.core.drift import build_reference
from tsr.core.preprocessing import channel_stats
from tsr.core.sources import LAYOUTS, SPLITS, LoadedImages, limit_groups, list_source, load_samples, local_copy
from tsr.core.validation import check_choice, check_output_dir, check_range

MAX_SKIPPED_LISTED = 20  # skipped files named in the data card (the count is always exact)


@dataclass(frozen=True)
class IngestConfig:
    source: str
    layout: str = "auto"
    split: str = "train"  # GTSRB split to read: "train" (split into train/val) or "test"
    val_fraction: float = 0.2
    seed: int = 0
    image_size: int = 32
    download: bool = False
    max_groups_per_class: int = 0  # 0 = all; >0 keeps the first N tracks (or images) per class
    threads: int = 4
    # Off: an undecodable or unreadable image stops ingest, naming the file. On: such files are
    # left out, counted and named in the data card (a class left with no image still stops it).
    skip_corrupt: bool = False

    def __post_init__(self) -> None:
        """Refuse values that can never work before any file is read (`InvalidParameter` names the field).

        The source itself is checked where it is opened (`local_copy`), so a bad one is a `DataError`.
        """
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("split", self.split, SPLITS)
        check_range("val_fraction", self.val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        check_range("seed", self.seed, low=0)
        check_range("image_size", self.image_size, low=8, high=1024)
        check_range("max_groups_per_class", self.max_groups_per_class, low=0)
        check_range("threads", self.threads, low=1)


def _size_stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 2)}


def make_data_card(
    config: IngestConfig, listing: Listing, loaded: LoadedImages, train: Split, val: Split
) -> dict[str, Any]:
    """The dataset's identity and statistics; the channel stats are the predictor's drift reference."""
    n = len(listing.class_names)
    stats = channel_stats(train.images)
    return {
        "source": config.source,
        "layout": listing.layout,
        "split_strategy": "by-track" if listing.layout == "gtsrb" else "stratified-random",
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "max_groups_per_class": config.max_groups_per_class,
        "class_names": listing.class_names,
        "num_classes": n,
        "counts": {
            "train": torch.bincount(train.labels, minlength=n).tolist(),
            "val": torch.bincount(val.labels, minlength=n).tolist(),
        },
        "totals": {
            "images": len(loaded.split),
            "train": len(train),
            "val": len(val),
            "train_groups": int(torch.unique(train.groups).numel()),
            "val_groups": int(torch.unique(val.groups).numel()),
        },
        "original_size": {"width": _size_stats(loaded.widths), "height": _size_stats(loaded.heights)},
        "image_size": config.image_size,
        "channel_mean": [round(v, 6) for v in stats.mean()],
        "channel_std": [round(v, 6) for v in stats.std()],
        "input_reference": build_reference(train.images).to_dict(),
        "fingerprint": {"algorithm": "sha256", "value": loaded.fingerprint, "files": len(loaded.split)},
        "skip_corrupt": config.skip_corrupt,
        "skipped_images": {
            "count": len(loaded.skipped),
            # Relative to the dataset root (an s3:// source is read from a temp copy), first few only.
            "files": [
                {"file": _relative(path, listing.root), "reason": reason.removeprefix(f"{path}: ")}
                for path, reason in loaded.skipped[:MAX_SKIPPED_LISTED]
            ],
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def ingest(
    config: IngestConfig,
    out_dir: Path,
    store: StoreConfig | None = None,
    on_progress: ProgressCallback | None = None,
    on_download: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Read, split and write `train.safetensors`, `val.safetensors` and `data-card.json` into `out_dir`.

    All or nothing: `out_dir` must be absent, empty or a previous ingest output (checked first),
    and it only ever holds a complete dataset, which replaces the old one in a final rename.
    `on_progress(done, total)` counts decoded images; `on_download` follows the copy of an s3://
    source (objects) or torchvision's download (bytes).
    """
    check_output_dir("out_dir", out_dir, OUTPUT_FILES)
    with local_copy(config.source, store, config.download, on_download) as root:
        listing = limit_groups(list_source(root, config.layout, config.split), config.max_groups_per_class)
        loaded = load_samples(listing.samples, config.image_size, config.threads, on_progress, config.skip_corrupt)
    everything = loaded.split
    unreadable = sorted({s.label for s in listing.samples} - set(everything.labels.tolist()))
    if unreadable:
        names = ", ".join(repr(listing.class_names[c]) for c in unreadable[:5])
        raise DataError(f"{config.source}: every image of class(es) {names} was skipped as unreadable")
    train_idx, val_idx = split_by_group(everything.labels, everything.groups, config.val_fraction, config.seed)
    if len(val_idx) == 0:
        raise DataError(f"{config.source}: too little data for a validation split (every class has a single track)")
    train, val = everything.subset(train_idx), everything.subset(val_idx)
    missing = [
        listing.class_names[c]
        for c, k in enumerate(torch.bincount(train.labels, minlength=len(listing.class_names)).tolist())
        if k == 0
    ]
    if missing:
        raise DataError(f"{config.source}: classes without training images: {missing[:5]}")
    card = make_data_card(config, listing, loaded, train, val)
    write_dataset(out_dir, train, val, card)
    return card
