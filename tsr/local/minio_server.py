"""The embedded default store: a real MinIO server on 127.0.0.1 under the project's state folder.

The binary comes from `make tools` (`go install github.com/minio/minio@<pinned>` into
.tools/bin) or from PATH. Credentials are generated once, kept in a 0600 file in the
state folder (git-ignored) and reused, so the data a demo leaves behind stays readable
by later `tsr` commands, which start the server on demand and stop it when they finish.

What it stores is the owner's alone: `<state>/minio` and its data directory are 0700 (tightened
on every start, also when an older version left them 0755) and the server runs under umask 077,
so the objects it writes (models, datasets, credentials) are not readable by other local users.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tsr.core.config import StoreConfig, explicit_store_config, state_dir
from tsr.core.processes import free_port
from tsr.local.checkout import REPO_ROOT

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
SERVER_UMASK = 0o077  # files MinIO creates: owner only, whatever the caller's umask

TOOLS_BIN = REPO_ROOT / ".tools" / "bin"


def find_minio_binary() -> Path | None:
    local = TOOLS_BIN / "minio"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("minio")
    return Path(found) if found else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make it owner-only, also when it already existed with
    wider permissions: a directory other local users can enter exposes whatever lies inside."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/live", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class LocalMinio:
    """One MinIO server process over `<state>/minio/data`."""

    root: Path
    binary: Path | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def server_file(self) -> Path:
        return self.root / "server.json"

    @property
    def log_file(self) -> Path:
        return self.root / "minio.log"

    def credentials(self) -> tuple[str, str]:
        """Generated on first use; the file is readable by its owner only."""
        if self.credentials_file.is_file():
            data = json.loads(self.credentials_file.read_text())
            return str(data["access_key"]), str(data["secret_key"])
        private_dir(self.root)
        access, secret = "tsr-" + secrets.token_hex(6), secrets.token_urlsafe(30)
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"access_key": access, "secret_key": secret}, fh)
        return access, secret

    def _config(self, port: int) -> StoreConfig:
        access, secret = self.credentials()
        return StoreConfig(
            kind="s3",
            endpoint=f"127.0.0.1:{port}",
            access_key=access,
            secret_key=secret,
            secure=False,
            origin=f"embedded MinIO ({self.data_dir})",
        )

    def running(self) -> StoreConfig | None:
        if not self.server_file.is_file():
            return None
        try:
            info = json.loads(self.server_file.read_text())
            pid, port = int(info["pid"]), int(info["port"])
        except (ValueError, KeyError, json.JSONDecodeError):
            return None
        if _pid_alive(pid) and _healthy(port):
            return self._config(port)
        return None

    def start(self, timeout_s: float = 60.0, port: int | None = None) -> StoreConfig:
        """Start the server; `port` pins the S3 port (a restart on the endpoint clients already use)."""
        if self.binary is None:
            raise RuntimeError("no MinIO binary: run `make tools` (needs Go) or put `minio` on PATH")
        private_dir(self.root)
        private_dir(self.data_dir)
        access, secret = self.credentials()
        port, console = port or free_port(), free_port()
        env = {
            **os.environ,
            "MINIO_ROOT_USER": access,
            "MINIO_ROOT_PASSWORD": secret,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        with open(self.log_file, "ab") as log_fh:
            proc = subprocess.Popen(
                [
                    str(self.binary),
                    "server",
                    str(self.data_dir),
                    "--address",
                    f"127.0.0.1:{port}",
                    "--console-address",
                    f"127.0.0.1:{console}",
                    "--quiet",
                ],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                umask=SERVER_UMASK,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"MinIO exited with code {proc.returncode}; log {self.log_file}:\n{tail}")
            if _healthy(port):
                self.server_file.write_text(json.dumps({"pid": proc.pid, "port": port}))
                log.info("started MinIO pid %s on 127.0.0.1:%s (data %s)", proc.pid, port, self.data_dir)
                return self._config(port)
            time.sleep(0.2)
        proc.kill()
        raise RuntimeError(f"MinIO did not become healthy within {timeout_s:.0f}s; see {self.log_file}")

    def stop(self) -> None:
        if not self.server_file.is_file():
            return
        try:
            pid = int(json.loads(self.server_file.read_text())["pid"])
        except (ValueError, KeyError, json.JSONDecodeError):
            self.server_file.unlink(missing_ok=True)
            return
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _pid_alive(pid):
                    break
                with contextlib.suppress(ChildProcessError):  # reap it when it is our child
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self.server_file.unlink(missing_ok=True)


def local_minio(environ: Mapping[str, str] | None = None) -> LocalMinio:
    return LocalMinio(root=state_dir(environ) / "minio", binary=find_minio_binary())


@contextmanager
def store_session(environ: Mapping[str, str] | None = None) -> Iterator[StoreConfig]:
    """Yield a reachable store: the configured one, else the embedded MinIO (started if needed,
    stopped again afterwards if this call started it), else a directory store with a warning."""
    explicit = explicit_store_config(environ)
    if explicit is not None:
        yield explicit
        return
    server = local_minio(environ)
    if server.binary is None:
        directory = state_dir(environ) / "store"
        print(
            f"WARNING: no MinIO binary and no S3 endpoint configured; using the directory store {directory}. "
            "Run `make tools` (needs Go) for the real MinIO.",
            file=sys.stderr,
        )
        yield StoreConfig(kind="dir", directory=directory, origin="fallback directory store")
        return
    already = server.running()
    if already is not None:
        yield already
        return
    config = server.start()
    try:
        yield config
    finally:
        server.stop()
