"""Fallback load generator when wrk is missing: `python -m benchmarks.pyload URL BODY_FILE CONCURRENCY SECONDS`.

Runs in its own process (so it never shares an interpreter with the server or the suite), keeps
CONCURRENCY connections busy with the same POST for SECONDS and prints one JSON line. Slower than wrk
(it takes more of the CPU it shares with the server), which the suite records as the load tool.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx


async def _worker(client: httpx.AsyncClient, url: str, body: bytes, deadline: float, lat: list[float]) -> int:
    errors = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            r = await client.post(url, content=body, headers={"content-type": "application/json"})
            errors += r.status_code >= 300
        except httpx.HTTPError:
            errors += 1
        lat.append(time.perf_counter() - t0)
    return errors


async def run(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    lat: list[float] = []
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        t0 = time.perf_counter()
        errors = await asyncio.gather(*(_worker(client, url, body, t0 + seconds, lat) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")  # noqa: E731
    return {"rps": len(lat) / elapsed, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "errors": float(sum(errors))}


def main() -> None:
    url, body_file, concurrency, seconds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(asyncio.run(run(url, body_file.read_bytes(), concurrency, seconds))))


if __name__ == "__main__":
    main()
