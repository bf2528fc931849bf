"""The real predictor (`python -m serving`) in a subprocess on loopback, for HTTP and gRPC tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import wait_until_ok
from tsr.core.processes import stop_child
from tsr.local.checkout import REPO_ROOT


@contextmanager
def predictor_process(
    args: list[str], log: Path, env: dict[str, str] | None = None, name: str = "gtsrb-classifier"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start `python -m serving <args>`, wait until the model is ready, yield its base URL and process, stop it.

    The process is the server itself (one uvicorn worker, no fork), so its pid is the one to watch
    for memory (tests/serving/test_fuzz.py, test_load.py).
    """
    port = args[args.index("--http-port") + 1]
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(proc, f"{url}/v2/models/{name}/ready", "server", 180, log, interval_s=0.5, request_timeout_s=2)
        yield url, proc
    finally:
        stop_child(proc)


@contextmanager
def running_predictor(
    args: list[str], log: Path, env: dict[str, str] | None = None, name: str = "gtsrb-classifier"
) -> Iterator[str]:
    """Start `python -m serving <args>`, wait until the model is ready, yield its base URL, stop it."""
    with predictor_process(args, log, env, name) as (url, _proc):
        yield url


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS from /proc/<pid>/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"no VmRSS for pid {pid}")
