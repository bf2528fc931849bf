"""The platform's dataset format: a `Split` of uint8 tensors, the three files an ingest writes
(`train.safetensors`, `val.safetensors`, `data-card.json`), and the track-wise train/validation split.

Every step reads datasets through this module, so the format has one definition; the GTSRB specifics
live in `tsr.core.gtsrb` and reading raw image folders in `tsr.core.sources`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TRAIN_FILE = "train.safetensors"


VAL_FILE = "val.safetensors"


CARD_FILE = "data-card.json"


OUTPUT_FILES = frozenset({TRAIN_FILE, VAL_FILE, CARD_FILE})


class DataError(ValueError):
    """The data is unusable; the message names the file or folder at fault."""


# (done, total) after each step of a long operation: images decoded, bytes downloaded. Plain callables,
# so the CLI can draw progress bars while the KFP step (no terminal) passes none.
ProgressCallback = Callable[[int, int], None]


PROGRESS_EVERY = 256  # images between two progress reports


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    group: int  # GTSRB: class * 100000 + track; ImageFolder: a unique id per image


@dataclass
class Listing:
    root: Path
    layout: str
    class_names: list[str]
    samples: list[Sample]


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)
    groups: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.groups[index])


# ---- splitting -----------------------------------------------------------------------------------
def split_by_group(
    labels: torch.Tensor, groups: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, a seeded share of whole groups (GTSRB tracks) goes to validation.

    No group is ever on both sides, so near-duplicate frames of one track cannot leak.
    Classes with a single group stay entirely in training.
    """
    gen = torch.Generator().manual_seed(seed)
    val_groups: set[int] = set()
    for label in torch.unique(labels).tolist():
        class_groups = torch.unique(groups[labels == label])
        if len(class_groups) < 2:
            continue
        n_val = min(max(1, round(len(class_groups) * val_fraction)), len(class_groups) - 1)
        order = torch.randperm(len(class_groups), generator=gen)
        val_groups.update(class_groups[order[:n_val]].tolist())
    is_val = torch.tensor([g in val_groups for g in groups.tolist()], dtype=torch.bool)
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


# ---- outputs -------------------------------------------------------------------------------------
def save_split(split: Split, path: Path) -> None:
    save_file({"images": split.images.contiguous(), "labels": split.labels, "groups": split.groups}, str(path))


def load_split(path: Path) -> Split:
    if not path.is_file():
        raise DataError(f"{path}: dataset file missing")
    tensors = load_file(str(path))
    images = tensors["images"]
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"{path}: images must be uint8 (N, 3, S, S), got {images.dtype} {tuple(images.shape)}")
    return Split(images, tensors["labels"], tensors["groups"])


def write_dataset(out_dir: Path, train: Split, val: Split, card: dict[str, Any]) -> None:
    """Write the three files into a hidden sibling directory, then rename it to `out_dir`.

    A failure (disk full, a kill) leaves `out_dir` as it was: absent, empty, or the previous dataset.
    """

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        save_split(train, tmp / TRAIN_FILE)
        save_split(val, tmp / VAL_FILE)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """rename(2) replaces an absent or empty `target` atomically; a previous dataset is swapped out."""
    try:
        os.rename(new, target)
        return
    except OSError as exc:
        if exc.errno not in {errno.ENOTEMPTY, errno.EEXIST}:
            raise
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(old / target.name, target)  # the previous dataset goes back where it was
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_data_card(dataset_dir: Path) -> dict[str, Any]:

    path = dataset_dir / CARD_FILE
    if not path.is_file():
        raise DataError(f"{path}: data card missing")
    card: dict[str, Any] = json.loads(path.read_text())
    return card
