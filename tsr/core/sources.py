"""Reading raw image data into a `Split`: GTSRB or ImageFolder layouts, from a directory or an s3:// prefix.

Ingest reads its source with it; `tsr evaluate --data` reads a held-out split the same way (`read_source`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tsr.core.config import StoreConfig
from tsr.core.dataset import PROGRESS_EVERY, DataError, Listing, ProgressCallback, Sample, Split
from tsr.core.gtsrb import gtsrb_base, list_gtsrb_test, list_gtsrb_train
from tsr.core.preprocessing import ImageDecodeError, decode_image, image_to_uint8
from tsr.core.store import open_store
from tsr.core.validation import InvalidParameter, check_data_source, check_s3_uri

IMAGE_SUFFIXES = {".ppm", ".png", ".jpg", ".jpeg", ".bmp"}


LAYOUTS = ("auto", "gtsrb", "imagefolder")


SPLITS = ("train", "test")


@dataclass
class LoadedImages:
    split: Split
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    fingerprint: str = ""
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason) left out by skip_corrupt


def detect_layout(root: Path) -> str:
    if gtsrb_base(root) is not None:
        return "gtsrb"
    if any(p.is_dir() for p in root.iterdir()):
        return "imagefolder"
    raise DataError(
        f"{root}: neither GTSRB layout (gtsrb/GTSRB/Training/000NN/*.ppm) nor ImageFolder (one folder per class)"
    )


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
        download_gtsrb(root, ("train", "test"), on_download)
    yield root


class DownloadError(DataError):
    """GTSRB could not be downloaded; `reason` is urllib's or torchvision's own, in one phrase."""

    def __init__(self, root: Path, reason: str) -> None:
        super().__init__(f"GTSRB could not be downloaded into {root}: {reason}")
        self.reason = reason


def download_gtsrb(root: Path, splits: tuple[str, ...], on_download: ProgressCallback | None = None) -> None:
    """torchvision's GTSRB download of `splits` into `root` (its layout: root/gtsrb/GTSRB/...).

    Without network access torchvision fails deep in urllib with a long traceback; any failure
    (unresolvable host, refused connection, HTTP error, checksum mismatch) becomes one `DataError`
    line (`DownloadError`) saying that GTSRB could not be downloaded and why, so that callers can add
    how to give the data instead.
    """
    import urllib.error

    import torchvision

    try:
        with _download_progress(on_download):
            for split in splits:
                torchvision.datasets.GTSRB(str(root), split=split, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad md5 is torchvision's RuntimeError
        reason: object = exc
        if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
            reason = exc.reason  # "[Errno -2] Name or service not known", not "<urlopen error ...>"
        raise DownloadError(root, str(reason)) from exc


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
