"""The embedded MinIO: generated credentials, restart over the same data, on-demand sessions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tsr.core.store import S3Store
from tsr.local.minio_server import LocalMinio, store_session


def test_restart_keeps_data_and_credentials(tmp_path: Path, minio_binary: Path) -> None:
    server = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
    first = server.start()
    try:
        store = S3Store(first, "models")
        store.ensure_bucket()
        store.put_bytes("a/b", b"kept")
    finally:
        server.stop()
    assert server.running() is None
    mode = stat.S_IMODE(os.stat(server.credentials_file).st_mode)
    assert mode == 0o600
    second = server.start()
    try:
        assert (second.access_key, second.secret_key) == (first.access_key, first.secret_key)
        assert S3Store(second, "models").get_bytes("a/b") == b"kept"
    finally:
        server.stop()


def test_store_session_starts_and_stops_the_embedded_server(tmp_path: Path, minio_binary: Path) -> None:
    env = {"TSR_STATE_DIR": str(tmp_path), "TSR_CONFIG": "", "HOME": str(tmp_path)}
    with store_session(env) as config:
        assert config.kind == "s3" and config.endpoint.startswith("127.0.0.1:")
        S3Store(config, "models").ensure_bucket()
        server = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
        assert server.running() is not None
    assert server.running() is None


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_data_at_rest_is_owner_only(tmp_path: Path, minio_binary: Path) -> None:
    """Other local users can read nothing the embedded MinIO keeps: its folders are 0700 (also one an
    older version left 0755) and the objects it writes carry no group or other permission bits."""
    server = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
    server.data_dir.mkdir(parents=True, mode=0o755)
    os.chmod(server.root, 0o755)
    os.chmod(server.data_dir, 0o755)
    old_umask = os.umask(0o022)  # the usual default, under which MinIO wrote 0644 objects
    try:
        config = server.start()
    finally:
        os.umask(old_umask)
    try:
        store = S3Store(config, "models")
        store.ensure_bucket()
        store.put_bytes("m/v1/model.safetensors", b"weights")
    finally:
        server.stop()
    assert _mode(server.root) == 0o700
    assert _mode(server.data_dir) == 0o700
    assert _mode(server.credentials_file) == 0o600
    written = list(server.data_dir.rglob("*"))
    assert any(p.is_file() for p in written), "MinIO wrote no files under its data directory"
    exposed = {str(p.relative_to(server.data_dir)): oct(_mode(p)) for p in written if _mode(p) & 0o077}
    assert not exposed, f"readable by group/other: {exposed}"
