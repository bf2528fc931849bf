"""A tiny object-store interface with two backends: S3/MinIO (the `minio` SDK) and a directory.

The registry and the ingest step speak only this interface, so the directory fallback
behaves exactly like MinIO for them (keys, listing, atomic whole-object writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from minio import Minio
from minio.error import S3Error, ServerError
from urllib3 import PoolManager, Retry, Timeout
from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError

from tsr.core.config import StoreConfig


class StoreError(RuntimeError):
    """The object store refused or failed an operation; the message names bucket, key and endpoint.

    `transient` says whether trying again later can help (server unreachable, timed out, 5xx),
    as opposed to a refusal that will not change by itself (bad credentials, access denied).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# S3 error codes that mean "the server is busy or starting", not "the request is wrong".
_TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "XMinioServerNotInitialized"}
)


# What a conditional PUT answers when another writer came first (412), deleted the object (404 on If-Match)
# or is writing it right now (409): the caller reads again and decides anew.
_CONDITION_FAILED_CODES = frozenset({"PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"})


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_S3_CODES
    return isinstance(exc, ServerError | HTTPError | OSError | TimeoutError)


def _summarize(exc: BaseException) -> str:
    """urllib3's retry error buries the cause in object reprs; say what happened in one phrase."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        # "HTTPConnection(host='127.0.0.1', port=9000): Failed to establish ..." -> the part after the repr
        reason = re.sub(r"^<?[\w.]*HTTPS?Connection[^:]*:\s*", "", str(exc.reason))
        if isinstance(exc.reason, ConnectTimeoutError):  # refused, unresolvable or timed out while connecting
            return f"cannot reach the server ({reason}; retries exhausted)"
        return f"no usable answer after retries ({reason})"
    return str(exc)


class ObjectStore(Protocol):
    """Whole-object reads and writes. `put_bytes_if` is the one compare-and-swap: with `etag=None` it
    creates the object only if it does not exist, else it replaces it only while its ETag (as returned
    by `get_bytes_etag`) is still `etag`; False, not an error, when the condition does not hold."""

    bucket: str

    def uri(self, key: str) -> str: ...
    def ensure_bucket(self) -> None: ...
    def exists(self, key: str) -> bool: ...
    def stat(self, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def put_bytes_if(
        self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream"
    ) -> bool: ...
    def get_bytes_etag(self, key: str) -> tuple[bytes, str]: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def list(self, prefix: str, recursive: bool = True) -> list[str]: ...
    def remove(self, key: str) -> None: ...


POOL_CONNECTIONS = 16  # >= the parallel workers of tsr.core.sources (S3_COPY_WORKERS) and tsr.local.upload


class S3Store:
    """Objects in one bucket of an S3-compatible server."""

    def __init__(self, config: StoreConfig, bucket: str, retries: int = 3) -> None:
        self.bucket = bucket
        self.config = config
        http = PoolManager(
            # one kept connection per thread that may share this client (ingest's s3:// copy, `tsr data upload`):
            # with urllib3's default of 1, each parallel request opened a new connection and threw it away
            maxsize=POOL_CONNECTIONS,
            timeout=Timeout(connect=5, read=60),
            retries=Retry(total=retries, backoff_factor=0.3, status_forcelist=(500, 502, 503, 504)),
        )
        self.client = Minio(
            config.endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=config.secure,
            region=config.region,
            http_client=http,
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _fail(self, action: str, key: str, exc: Exception) -> StoreError:
        return StoreError(
            f"{action} {self.uri(key)} on {self.config.describe()} failed: {_summarize(exc)}", _is_transient(exc)
        )

    @contextlib.contextmanager
    def _downloading(self, key: str) -> Iterator[None]:
        """A missing object or bucket becomes FileNotFoundError; anything else a StoreError naming the key."""
        try:
            yield
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchBucket"}:
                raise FileNotFoundError(f"{self.uri(key)} does not exist") from exc
            raise self._fail("download", key, exc) from exc
        except Exception as exc:
            raise self._fail("download", key, exc) from exc

    def ensure_bucket(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._fail("create bucket", "", exc) from exc
        except Exception as exc:
            raise self._fail("reach bucket", "", exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}:
                return False
            raise self._fail("stat", key, exc) from exc
        except Exception as exc:
            raise self._fail("stat", key, exc) from exc

    def stat(self, key: str) -> str:
        """A change tag of the object (size and ETag): differs whenever the object was rewritten."""
        try:
            info = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}:
                raise FileNotFoundError(f"{self.uri(key)} does not exist") from exc
            raise self._fail("stat", key, exc) from exc
        except Exception as exc:
            raise self._fail("stat", key, exc) from exc
        return f"{info.size}:{info.etag}"

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except Exception as exc:
            raise self._fail("upload", key, exc) from exc

    def put_bytes_if(
        self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream"
    ) -> bool:
        """A conditional PUT: `If-None-Match: *` (create only) or `If-Match: <etag>` (replace only that).

        The public `put_object` of the pinned `minio` client turns every header it does not know into
        `x-amz-meta-*` user metadata, so the request goes through its `_put_object`, the same signed
        single PUT that `put_object` sends for small objects. A 412 (the condition failed), a 404 (an
        If-Match on an object deleted meanwhile) and a 409 (another conditional write in flight) mean
        "someone else wrote first": False.
        """
        condition = {"If-None-Match": "*"} if etag is None else {"If-Match": etag}
        try:
            self.client._put_object(self.bucket, key, data, {"Content-Type": content_type, **condition})
        except S3Error as exc:
            if exc.code in _CONDITION_FAILED_CODES:
                return False
            raise self._fail("conditional upload", key, exc) from exc
        except Exception as exc:
            raise self._fail("conditional upload", key, exc) from exc
        return True

    def get_bytes_etag(self, key: str) -> tuple[bytes, str]:
        """The object and its ETag (quoted, as `If-Match` wants it back), from one GET."""
        with self._downloading(key):
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read(), str(response.headers.get("ETag", ""))
            finally:
                response.close()
                response.release_conn()

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.client.fput_object(self.bucket, key, str(path))
        except Exception as exc:
            raise self._fail("upload", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        with self._downloading(key):
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._downloading(key):
            self.client.fget_object(self.bucket, key, str(path))

    def list(self, prefix: str, recursive: bool = True) -> list[str]:
        try:
            return sorted(
                o.object_name
                for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive)
                if o.object_name
            )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise self._fail("list", prefix, exc) from exc
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc

    def remove(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, key)
        except Exception as exc:
            raise self._fail("remove", key, exc) from exc


class DirStore:
    """The same interface over `<directory>/<bucket>/<key>`; writes are atomic renames."""

    def __init__(self, directory: Path, bucket: str) -> None:
        self.bucket = bucket
        self.root = directory / bucket

    def uri(self, key: str) -> str:
        return f"file://{self.root / key}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"key {key!r} escapes the store directory")
        return path

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> str:
        """A change tag of the file (size and modification time in ns)."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        info = path.stat()
        return f"{info.st_size}:{info.st_mtime_ns}"

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)

    def put_bytes_if(
        self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream"
    ) -> bool:
        """The same compare-and-swap as S3's conditional PUT, for processes on this machine: a create is
        a hard link of a finished temp file (fails if the name exists), a replace happens under an
        exclusive lock of the bucket, after comparing the current content's md5 with `etag`."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if etag is None:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
                return True
            with self._locked():
                try:
                    current = target.read_bytes()
                except FileNotFoundError:
                    return False
                if _md5_etag(current) != etag:
                    return False
                os.replace(tmp, target)
                return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get_bytes_etag(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, _md5_etag(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on `<bucket>/.tmp-lock` (a `.tmp-` name: never listed as a key)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".tmp-lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        return path.read_bytes()

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    def list(self, prefix: str, recursive: bool = True) -> list[str]:
        if not self.root.is_dir():
            return []
        keys: Iterator[Path] = (p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
        found = sorted(str(p.relative_to(self.root)) for p in keys)
        found = [k for k in found if k.startswith(prefix)]
        if recursive:
            return found
        shallow = {prefix + k[len(prefix) :].split("/", 1)[0] + ("/" if "/" in k[len(prefix) :] else "") for k in found}
        return sorted(shallow)

    def remove(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _md5_etag(data: bytes) -> str:
    """The ETag S3 gives a single-part object: its quoted md5 (a change detector, not a security check)."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def open_store(config: StoreConfig, bucket: str) -> ObjectStore:
    if config.kind == "dir":
        assert config.directory is not None
        return DirStore(config.directory, bucket)
    return S3Store(config, bucket)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix'); errors name what is wrong."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket name (expected s3://bucket/prefix)")
    return bucket, key.strip("/")
