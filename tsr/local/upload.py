"""Upload a dataset to an s3:// prefix, so a cluster run can read it (`data_source=s3://...`).

The cluster path needs the training data in the platform's object store; this does it with the
store client the platform already has (no `mc` to install), from a directory or straight from a
`.tar`/`.tar.gz` archive such as GTSRB's, which is extracted with tarfile's `data` filter first (no
absolute paths, no `..`, no links out of the tree). Objects are written in parallel, since a dataset
is tens of thousands of small files and each upload is one round trip.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tsr.core.config import StoreConfig
from tsr.core.store import open_store
from tsr.core.validation import InvalidParameter, check_s3_uri

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_WORKERS = 64


@dataclass(frozen=True)
class UploadResult:
    uri: str
    files: int
    bytes: int
    seconds: float


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def check_upload_args(source: Path, dest: str, workers: int) -> tuple[str, str]:
    """Refuse what can never work before anything is read or written; returns (bucket, prefix)."""
    if not source.exists():
        raise InvalidParameter("source", f"{source} does not exist")
    if not (source.is_dir() or is_archive(source)):
        raise InvalidParameter("source", f"{source} is neither a directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidParameter("workers", f"must be in [1, {MAX_WORKERS}], got {workers}")
    return check_s3_uri("dest", dest)


def list_files(root: Path) -> list[Path]:
    """Regular files under `root`, sorted; symlinks are neither followed nor uploaded."""
    found = []
    for directory, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return found


@contextmanager
def _tree(source: Path) -> Iterator[Path]:
    """`source` itself, or a temporary extraction of it."""
    if source.is_dir():
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="tsr-upload-") as tmp:
        try:
            with tarfile.open(source) as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.FilterError as exc:
            raise ValueError(f"{source}: refusing unsafe archive member: {exc}") from exc
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValueError(f"{source}: not a readable tar archive: {exc}") from exc
        yield Path(tmp)


def upload_tree(
    source: Path,
    dest: str,
    store: StoreConfig,
    *,
    workers: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> UploadResult:
    """Upload every file of `source` (a directory or an archive) under `dest` (s3://bucket/prefix),
    keeping relative paths; creates the bucket if needed. `on_progress(done, total)` counts files.

    The first failed object stops the upload (the store already retried it) and is raised as the
    store's error naming that object; objects written until then stay, and running it again
    overwrites them, so an interrupted upload is finished by repeating the command.
    """
    bucket, prefix = check_upload_args(source, dest, workers)
    started = time.monotonic()
    with _tree(source) as root:
        files = list_files(root)
        if not files:
            raise ValueError(f"{source}: no files to upload")
        target = open_store(store, bucket)
        target.ensure_bucket()
        keys = [f"{prefix}/{p.relative_to(root).as_posix()}".lstrip("/") for p in files]
        done = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
            pending = {pool.submit(target.put_file, key, path) for key, path in zip(keys, files, strict=True)}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                try:
                    for future in finished:
                        future.result()  # the first failure ends the upload
                        done += 1
                except BaseException:
                    for future in pending:
                        future.cancel()  # not started yet: dropped; running ones finish
                    raise
                if on_progress is not None:
                    on_progress(done, len(files))
        size = sum(p.stat().st_size for p in files)
    uri = f"s3://{bucket}/{prefix}".rstrip("/")
    return UploadResult(uri=uri, files=len(files), bytes=size, seconds=round(time.monotonic() - started, 3))
