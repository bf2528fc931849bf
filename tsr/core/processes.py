"""Detached local servers (MinIO's siblings: Prometheus, the local predictor) found again by pid.

A record on disk holds the pid and the kernel's start time of the process, so a pid the kernel
has recycled for someone else's process is never mistaken for ours, signalled or waited on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a recycled pid is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int, start_time: str | None) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited: reap it
            return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or someone else's process holds the pid now
        return False
    if start_time is not None and proc_start_time(pid) != start_time:
        return False
    with contextlib.suppress(OSError, IndexError):  # a zombie nobody has reaped yet is gone too
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def send_signal_to_group(pid: int, sig: signal.Signals) -> None:
    """The whole group when the process leads one (start_new_session), else just the process."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def terminate(
    pid: int,
    start_time: str | None,
    timeout_s: float,
    signal_fn: Callable[[int, signal.Signals], None] = send_signal,
) -> bool:
    """SIGTERM (a graceful shutdown), SIGKILL if it lingers past `timeout_s`; whether it was running."""
    if not alive(pid, start_time):
        return False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        signal_fn(pid, sig)
        deadline = time.monotonic() + wait_s
        while alive(pid, start_time) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pid, start_time):
            break
    return True


def stop_child(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """Our own child process: SIGTERM (a graceful shutdown), SIGKILL if it lingers past `timeout_s`;
    reaped either way. Its exit status (negative: killed by that signal)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
