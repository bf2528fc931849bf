"""Shared pieces of `make bench`: machine facts, server processes that are always stopped, the load
generator (wrk, or a Python client in its own process), and in-process timing.

Everything here runs on loopback only, and every process it starts is bounded in time and stopped in a
`finally`, so an aborted benchmark never leaves a server behind.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.serving_throughput import request_body, run_wrk
from benchmarks.train_default import cpu_model
from tsr.core.processes import stop_child
from tsr.local.checkout import REPO_ROOT


def machine_info() -> dict[str, Any]:
    """What every row records: the numbers mean nothing without the CPU, cores, torch and backend behind them."""
    import torch

    from tsr.core.backend import backend_report, summary

    report = backend_report()
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "cpu_capability": report["cpu_capability"],
        "blas": report["build"].get("BLAS_INFO", "?"),
        "mkldnn": report["mkldnn_available"],
        "acl": report["acl"],
        "parallel_backend": report["parallel"].get("backend", "?"),
        "backend": summary(report),
    }


@contextmanager
def server_process(cmd: list[str], ready_url: str, log: Path, timeout_s: float = 120.0) -> Iterator[int]:
    """Start `cmd`, wait until `ready_url` answers 200, yield its pid; stop it on the way out, whatever happened."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[2]} not ready after {timeout_s:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield proc.pid
    finally:
        stop_child(proc, timeout_s=20.0)  # a benchmark must never leave a server running


@dataclass(frozen=True)
class Load:
    """One load-generator run's result."""

    tool: str
    concurrency: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def drive(url: str, concurrency: int, seconds: int, workdir: Path, body: str | None = None) -> Load:
    """POST one 32x32 V1 image per request at a fixed concurrency for `seconds`: wrk when installed
    (C, leaves the server most of the CPU), else `benchmarks.pyload` in its own process."""
    body = body or request_body()
    wrk = shutil.which("wrk")
    if wrk is not None:
        r = run_wrk(wrk, url, body, concurrency, seconds, workdir)
        return Load("wrk", concurrency, seconds, r["rps"], r["p50"], r["p99"], int(r["non_2xx"]))
    body_file = workdir / "body.json"
    body_file.write_text(body)
    cmd = [sys.executable, "-m", "benchmarks.pyload", url, str(body_file), str(concurrency), str(seconds)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=seconds + 60)
    r2 = json.loads(out.stdout.strip().splitlines()[-1])
    return Load("python-httpx", concurrency, seconds, r2["rps"], r2["p50_ms"], r2["p99_ms"], int(r2["errors"]))


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def interleaved_p50_ms(fns: dict[str, Callable[[], Any]], repeats: int, rounds: int = 5) -> dict[str, float]:
    """Median ms per call of each function, measured in alternating rounds so that load from other
    processes on a shared machine hits every contender alike (the ratio is what we report)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += time_calls(fn, per_round, warmup=2)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}
