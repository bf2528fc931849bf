"""Ingest: read GTSRB / ImageFolder data (local or s3://), split it, write uint8 tensors and a data card.

Plain Python, no KFP: the component in `component.py` and `tsr ingest` both call `ingest()`;
`tsr evaluate --data` calls `read_source()` to read a held-out split the same way.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tsr.config import StoreConfig
from tsr.drift import build_reference
from tsr.gtsrb import CLASS_NAMES, TRAIN_FILE_RE
from tsr.preprocessing import ImageDecodeError, channel_stats, decode_image, image_to_uint8
from tsr.store import open_store
from tsr.validation import (
    InvalidParameter,
    check_choice,
    check_data_source,
    check_output_dir,
    check_range,
    check_s3_uri,
)

IMAGE_SUFFIXES = {".ppm", ".png", ".jpg", ".jpeg", ".bmp"}
TRAIN_FILE = "train.safetensors"
VAL_FILE = "val.safetensors"
CARD_FILE = "data-card.json"
OUTPUT_FILES = frozenset({TRAIN_FILE, VAL_FILE, CARD_FILE})
LAYOUTS = ("auto", "gtsrb", "imagefolder")
SPLITS = ("train", "test")
MAX_SKIPPED_LISTED = 20  # skipped files named in the data card (the count is always exact)


class DataError(ValueError):
    """The data is unusable; the message names the file or folder at fault."""


# (done, total) after each step of a long operation: images decoded, bytes downloaded. Plain callables,
# so the CLI can draw progress bars while the KFP step (no terminal) passes none.
ProgressCallback = Callable[[int, int], None]
PROGRESS_EVERY = 256  # images between two progress reports


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


@dataclass
class LoadedImages:
    split: Split
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    fingerprint: str = ""
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason) left out by skip_corrupt


# ---- finding data --------------------------------------------------------------------------------
def gtsrb_base(root: Path) -> Path | None:
    """The `GTSRB` folder for a torchvision root, a `gtsrb` folder, or the `GTSRB` folder itself."""
    for candidate in (root / "gtsrb" / "GTSRB", root / "GTSRB", root):
        if (candidate / "Training").is_dir() or (candidate / "Final_Test").is_dir():
            return candidate
    return None


def detect_layout(root: Path) -> str:
    if gtsrb_base(root) is not None:
        return "gtsrb"
    if any(p.is_dir() for p in root.iterdir()):
        return "imagefolder"
    raise DataError(
        f"{root}: neither GTSRB layout (gtsrb/GTSRB/Training/000NN/*.ppm) nor ImageFolder (one folder per class)"
    )


def list_gtsrb_train(base: Path) -> Listing:
    training = base / "Training"
    if not training.is_dir():
        raise DataError(f"{base}: no Training folder (expected {training})")
    class_dirs = sorted(p for p in training.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{training}: no class folders 00000..00042")
    for class_dir in class_dirs:
        if not class_dir.name.isdigit():
            raise DataError(f"{class_dir}: class folder name must be a 5-digit class id")
        if int(class_dir.name) >= len(CLASS_NAMES):
            raise DataError(f"{class_dir}: class id {int(class_dir.name)} is outside 0..{len(CLASS_NAMES) - 1}")
    # The label space is GTSRB's 43 classes: a model trained without one would still predict it,
    # never having seen it. Fewer classes are an ImageFolder dataset (one folder per class).
    present = {int(d.name) for d in class_dirs}
    missing = [c for c in range(len(CLASS_NAMES)) if c not in present]
    if missing:
        named = ", ".join(f"{c:05d} ({CLASS_NAMES[c]})" for c in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise DataError(
            f"{training}: missing class folder(s) {named}; the GTSRB layout needs all {len(CLASS_NAMES)} "
            "classes (use the ImageFolder layout for a subset)"
        )
    samples: list[Sample] = []
    for class_dir in class_dirs:
        label = int(class_dir.name)
        found = 0
        for path in sorted(class_dir.iterdir()):
            match = TRAIN_FILE_RE.match(path.name)
            if match is None:
                continue
            samples.append(Sample(path, label, label * 100_000 + int(match.group(1))))
            found += 1
        if found == 0:
            raise DataError(f"{class_dir}: empty class folder (no TTTTT_FFFFF.ppm images)")
    return Listing(root=base, layout="gtsrb", class_names=list(CLASS_NAMES), samples=samples)


def _test_csv(base: Path) -> Path:
    for candidate in (
        base.parent / "GT-final_test.csv",
        base / "GT-final_test.csv",
        base / "Final_Test" / "GT-final_test.csv",
    ):
        if candidate.is_file():
            return candidate
    raise DataError(f"{base.parent / 'GT-final_test.csv'}: missing label file for the GTSRB test split")


def list_gtsrb_test(base: Path) -> Listing:
    images = base / "Final_Test" / "Images"
    if not images.is_dir():
        raise DataError(f"{base}: no Final_Test/Images folder for the test split (expected {images})")
    csv_path = _test_csv(base)
    samples: list[Sample] = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        if reader.fieldnames is None or not {"Filename", "ClassId"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: needs ';'-separated columns Filename and ClassId")
        for lineno, row in enumerate(reader, start=2):
            path = images / row["Filename"]
            try:
                label = int(row["ClassId"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{csv_path} line {lineno}: ClassId {row['ClassId']!r} is not an integer") from exc
            if not 0 <= label < len(CLASS_NAMES):
                raise DataError(f"{csv_path} line {lineno}: ClassId {label} outside 0..{len(CLASS_NAMES) - 1}")
            if not path.is_file():
                raise DataError(f"{csv_path} line {lineno}: image {path} does not exist")
            samples.append(Sample(path, label, len(samples)))
    if not samples:
        raise DataError(f"{csv_path}: no rows")
    return Listing(root=base, layout="gtsrb", class_names=list(CLASS_NAMES), samples=samples)


def list_imagefolder(root: Path) -> Listing:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"{root}: ImageFolder layout needs at least 2 class folders, found {len(class_dirs)}")
    samples: list[Sample] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{class_dir}: empty class folder (no {'/'.join(sorted(IMAGE_SUFFIXES))} images)")
        samples.extend(Sample(path, label, len(samples) + i) for i, path in enumerate(files))
    return Listing(root=root, layout="imagefolder", class_names=[p.name for p in class_dirs], samples=samples)


def list_source(root: Path, layout: str = "auto", split: str = "train") -> Listing:
    if not root.is_dir():
        raise DataError(f"{root}: " + ("is a file, not a data directory" if root.exists() else "does not exist"))
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "gtsrb":
        base = gtsrb_base(root)
        if base is None:
            raise DataError(f"{root}: not in GTSRB layout (expected gtsrb/GTSRB/Training or gtsrb/GTSRB/Final_Test)")
        return list_gtsrb_train(base) if split == "train" else list_gtsrb_test(base)
    if split == "test":
        raise DataError(f"{root}: the 'test' split exists only in GTSRB layout")
    return list_imagefolder(root)


def limit_groups(listing: Listing, max_groups_per_class: int) -> Listing:
    """Keep the first N groups (tracks) of every class: small but honest subsets for quick runs."""
    if max_groups_per_class <= 0:
        return listing
    kept: dict[int, set[int]] = {}
    samples = []
    for s in listing.samples:
        groups = kept.setdefault(s.label, set())
        if s.group in groups or len(groups) < max_groups_per_class:
            groups.add(s.group)
            samples.append(s)
    return Listing(listing.root, listing.layout, listing.class_names, samples)


S3_COPY_WORKERS = 8  # parallel object downloads when the source is an s3:// prefix


@contextmanager
def local_copy(
    source: str, store: StoreConfig | None, download: bool, on_download: ProgressCallback | None = None
) -> Iterator[Path]:
    """A local directory for `source`: the directory itself, a temp copy of an s3:// prefix,
    or torchvision's GTSRB download into `source` when `download` is set.

    `on_download(done, total)` follows the copy: objects for s3://, bytes for torchvision's download.
    """
    try:
        check_data_source("source", source, must_exist=False)
    except InvalidParameter as exc:
        raise DataError(exc.reason) from exc
    if source.startswith("s3://"):
        if store is None:
            raise DataError(f"{source}: an s3:// source needs a configured store")
        bucket, prefix = check_s3_uri("source", source)
        objects = open_store(store, bucket)
        keys = objects.list(prefix + "/" if prefix else "")
        if not keys:
            raise DataError(f"{source}: no objects under this prefix")
        tmp = Path(tempfile.mkdtemp(prefix="tsr-ingest-"))
        try:
            # A dataset is tens of thousands of small objects, one round trip each: fetch them in parallel.
            with ThreadPoolExecutor(max_workers=S3_COPY_WORKERS, thread_name_prefix="ingest-copy") as pool:
                fetches = pool.map(lambda key: objects.get_file(key, tmp / key[len(prefix) :].lstrip("/")), keys)
                for done, _ in enumerate(fetches, 1):
                    if on_download is not None:
                        on_download(done, len(keys))
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    root = Path(source)
    if download:
        import torchvision

        with _download_progress(on_download):
            for split in ("train", "test"):
                torchvision.datasets.GTSRB(str(root), split=split, download=True)
    yield root


@contextmanager
def _download_progress(on_download: ProgressCallback | None) -> Iterator[None]:
    """Route torchvision's file downloads through `on_download(bytes done, bytes total)`.

    torchvision draws its own tqdm bar and has no hook, so while a callback is given its private
    `_urlretrieve` (same signature; checksums and extraction stay torchvision's) is swapped for one
    that reports, summed over the files GTSRB fetches. Without a callback, or should a torchvision
    release drop the function, the download runs unchanged.
    """
    from torchvision.datasets import utils as tv_utils

    original = getattr(tv_utils, "_urlretrieve", None)
    if on_download is None or original is None:
        yield
        return
    finished = 0  # bytes of the files already downloaded

    def urlretrieve(url: str, filename: str | Path, chunk_size: int = 1 << 15) -> None:
        nonlocal finished
        import urllib.request

        request = urllib.request.Request(url, headers={"User-Agent": getattr(tv_utils, "USER_AGENT", "tsr")})
        with urllib.request.urlopen(request) as response, open(filename, "wb") as fh:
            total = int(getattr(response, "length", None) or response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(chunk_size):
                fh.write(chunk)
                done += len(chunk)
                on_download(finished + done, finished + max(total, done))
        finished += done

    tv_utils._urlretrieve = urlretrieve
    try:
        yield
    finally:
        tv_utils._urlretrieve = original


# ---- reading images --------------------------------------------------------------------------------
def load_samples(
    samples: list[Sample],
    image_size: int,
    threads: int = 4,
    on_progress: ProgressCallback | None = None,
    skip_corrupt: bool = False,
) -> LoadedImages:
    """Decode every sample to uint8, recording original sizes and a content fingerprint.

    An unreadable, empty, truncated or undecodable file raises `DataError` naming it, unless
    `skip_corrupt` is set: then it is left out and listed in `LoadedImages.skipped`.
    """
    if not samples:
        raise DataError("no images to load")

    def read(sample: Sample) -> tuple[torch.Tensor, int, int, str] | str:
        try:
            data = sample.path.read_bytes()
            if not data:
                raise DataError(f"{sample.path}: empty file (0 bytes)")
            img = decode_image(data, source=str(sample.path))
            return image_to_uint8(img, image_size), img.width, img.height, hashlib.sha256(data).hexdigest()
        except OSError as exc:
            problem = DataError(f"{sample.path}: cannot read ({exc.strerror or exc})")
        except (ImageDecodeError, DataError) as exc:
            problem = DataError(str(exc))
        if skip_corrupt:
            return str(problem)
        raise problem

    images = torch.empty((len(samples), 3, image_size, image_size), dtype=torch.uint8)
    kept: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    widths, heights, digests = [], [], []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, (sample, result) in enumerate(zip(samples, pool.map(read, samples, chunksize=64), strict=True)):
            if isinstance(result, str):
                skipped.append((sample.path, result))
            else:
                tensor, w, h, digest = result
                images[len(kept)] = tensor
                kept.append(sample)
                widths.append(w)
                heights.append(h)
                digests.append(digest)
            if on_progress is not None and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == len(samples)):
                on_progress(i + 1, len(samples))
    if not kept:
        raise DataError(f"none of the {len(samples)} images could be read; first: {skipped[0][1]}")
    fingerprint = hashlib.sha256()
    for s, digest in sorted(zip((f"{s.label}/{s.path.name}" for s in kept), digests, strict=True)):
        fingerprint.update(f"{s}\t{digest}\n".encode())
    split = Split(
        images=images[: len(kept)].clone() if skipped else images,
        labels=torch.tensor([s.label for s in kept], dtype=torch.int64),
        groups=torch.tensor([s.group for s in kept], dtype=torch.int64),
    )
    return LoadedImages(split, widths, heights, fingerprint.hexdigest(), skipped)


def read_source(
    source: str,
    split: str,
    image_size: int,
    store: StoreConfig | None = None,
    layout: str = "auto",
    threads: int = 4,
    on_progress: ProgressCallback | None = None,
) -> tuple[Split, list[str]]:
    """Read a whole split (e.g. GTSRB test) for evaluation, without splitting it further.

    `on_progress(done, total)` counts decoded images.
    """
    with local_copy(source, store, download=False) as root:
        listing = list_source(root, layout, split)
        return load_samples(listing.samples, image_size, threads, on_progress).split, listing.class_names


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


def write_dataset(out_dir: Path, train: Split, val: Split, card: dict[str, Any]) -> None:
    """Write the three files into a hidden sibling directory, then rename it to `out_dir`.

    A failure (disk full, a kill) leaves `out_dir` as it was: absent, empty, or the previous dataset.
    """
    import json

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
    import json

    path = dataset_dir / CARD_FILE
    if not path.is_file():
        raise DataError(f"{path}: data card missing")
    card: dict[str, Any] = json.loads(path.read_text())
    return card
