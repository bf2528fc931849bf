"""`make bench-serving`: predictor throughput with and without in-process batching.

Starts the real predictor (`python -m serving`) twice on loopback, once with
`--batch-size 1` (every request its own forward pass) and once with batching on, and
drives each with the same load: `wrk` (C, from Debian's package; one core) at a fixed
concurrency, one 32x32 GTSRB-sized image per V1 request. The model is the default
architecture (or `--arch`) with untrained weights: throughput does not depend on the weights.

Writes benchmarks/results/<date>-<arch>-serving.json and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from benchmarks.train_default import cpu_model
from tsr.core.drift import build_reference
from tsr.core.gtsrb import CLASS_NAMES
from tsr.core.models import DEFAULT_ARCH, ModelConfig, build_model, save_model_dir
from tsr.core.preprocessing import PreprocessConfig
from tsr.core.processes import free_port, stop_child
from tsr.local.checkout import REPO_ROOT

RESULTS = Path(__file__).resolve().parent / "results"
MODEL_NAME = "gtsrb-classifier"


@dataclass
class Run:
    mode: str
    batch_size: int
    threads: int
    concurrency: int
    requests_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    mean_forward_batch: float
    non_2xx: int


def write_model(path: Path, arch: str) -> Path:
    torch.manual_seed(0)
    reference = build_reference(torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8))
    config = ModelConfig(arch, list(CLASS_NAMES), PreprocessConfig(), input_reference=reference.to_dict())
    save_model_dir(build_model(arch, len(CLASS_NAMES)), config, path, export_program=False)
    return path


def request_body() -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PPM")
    return json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]})


def start_server(model_dir: Path, port: int, batch_size: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "serving", "--model", str(model_dir), "--http-port", str(port)]
    cmd += ["--threads", str(threads), "--batch-size", str(batch_size)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server not ready after 120 s: {log.read_text()[-2000:]}")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(wrk: str, url: str, body: str, concurrency: int, seconds: int, workdir: Path) -> dict[str, float]:
    script = workdir / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n'
    )
    cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non_2xx": float(bad.group(1)) if bad else 0.0}


def mean_forward_batch(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("tsr_inference_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("tsr_inference_batch_size_count"):
            count = float(line.split()[-1])
    return total / count if count else 0.0


def measure(
    wrk: str, model_dir: Path, mode: str, batch_size: int, threads: int, concurrency: int, seconds: int, tmp: Path
) -> Run:
    port = free_port()
    proc = start_server(model_dir, port, batch_size, threads, tmp / f"server-{mode}.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"
        body = request_body()
        run_wrk(wrk, url, body, concurrency, 3, tmp)  # warm-up: allocator, caches, connections
        result = run_wrk(wrk, url, body, concurrency, seconds, tmp)
        return Run(
            mode,
            batch_size,
            threads,
            concurrency,
            result["rps"],
            result["p50"],
            result["p99"],
            round(mean_forward_batch(port), 2),
            int(result["non_2xx"]),
        )
    finally:
        stop_child(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server (wrk takes a core)")
    parser.add_argument("--batch-size", type=int, default=32, help="max images per forward pass when batching")
    parser.add_argument("--arch", default=DEFAULT_ARCH, help="tsrnet or a torchvision.models name")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk not found: install Debian's wrk package (make bench-serving does)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model_dir = write_model(tmp / "model", args.arch)
        runs = [
            measure(wrk, model_dir, "unbatched", 1, args.threads, args.concurrency, args.seconds, tmp),
            measure(wrk, model_dir, "batched", args.batch_size, args.threads, args.concurrency, args.seconds, tmp),
        ]
    speedup = runs[1].requests_per_second / runs[0].requests_per_second
    print(f"{'mode':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'images/pass':>12}")
    for r in runs:
        print(
            f"{r.mode:<10} {r.requests_per_second:>8.0f} {r.latency_p50_ms:>8.1f} "
            f"{r.latency_p99_ms:>8.1f} {r.mean_forward_batch:>12.1f}"
        )
    print(f"batching speed-up at concurrency {args.concurrency}: {speedup:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{date.today().isoformat()}-{args.arch}-serving.json"
    record = {
        "benchmark": "serving_throughput",
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "arch": args.arch,
        "load_generator": "wrk -t1, one 32x32 PPM per V1 request",
        "runs": [asdict(r) for r in runs],
        "speedup": round(speedup, 2),
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
