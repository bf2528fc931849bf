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
