"""Decoding off the event loop within a pixel budget: the per-request and per-process bounds, and liveness
under a decompression-amplification attack on a real predictor process.

The attack (red-team issue 17): a 581-byte palette PNG declares 2000x2000 pixels; 76 of them fit in a
60 KB V1 body, 4 million pixels each to decode. Four such requests at once kept `/v2/health/live` from
answering for 10-44 s, because small bodies were decoded on the event loop and nothing bounded the
pixels of one request.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from serving.codec import CodecLimits, Rejected, plan_v1
from serving.config import DecodeConfig
from serving.decoding import DecodeOverloaded, Decoder, PixelBudget
from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tests.serving.test_server_http import _metric
from tsr.core.processes import free_port

NAME = "gtsrb-classifier"
SIDE = 2000  # pixels per side of the amplification image: 4,000,000 pixels, exactly the default max_pixels
LIVE_BOUND_S = 0.1  # /v2/health/live must answer within this, whatever else the server decodes


def amplification_png() -> bytes:
    """A 2000x2000 palette PNG of one colour: 581 bytes on the wire, 4 million pixels to decode."""
    buf = io.BytesIO()
    Image.new("P", (SIDE, SIDE), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def amplification_body(max_bytes: int = 60_000, images: int | None = None) -> bytes:
    """A V1 body of as many amplification PNGs as fit in `max_bytes` (76 in 60 KB), or `images` of them."""
    b64 = base64.b64encode(amplification_png()).decode()
    count = images if images is not None else (max_bytes - 20) // (len(b64) + 12)
    return json.dumps({"instances": [{"b64": b64}] * count}).encode()


# ---- in-process ----------------------------------------------------------------------------------


def test_the_amplification_png_is_what_the_red_team_sent() -> None:
    assert len(amplification_png()) == 581
    body = amplification_body()
    assert len(body) <= 60_000 and body.count(b'"b64"') == 76


def test_request_pixel_budget_is_checked_from_headers_before_decoding() -> None:
    """76 images of 4 Mpx each: refused from their headers alone (no pixel decoded), naming the limit."""
    body = json.loads(amplification_body())
    limits = CodecLimits()
    started = time.perf_counter()
    with pytest.raises(Rejected) as info:
        plan_v1(body, 32, limits)
    elapsed = time.perf_counter() - started
    assert info.value.category == "request_too_large"
    message = str(info.value)
    assert "instances: the encoded images hold more than max_request_pixels=16000000 pixels" in message
    assert "instances[4].b64" in message and "\n" not in message  # the fifth image is the one over
    assert elapsed < 0.5, f"refusing took {elapsed:.2f}s: the pixels were decoded"  # one decode takes ~40 ms
    # Four of them fit the budget exactly; the plan holds them undecoded until run().
    plan = plan_v1({"instances": body["instances"][:4]}, 32, limits)
    assert plan.pixels == 4 * SIDE * SIDE and plan.pending
    assert plan.run().shape == (4, 3, 32, 32)


def test_pixel_budget_grants_in_order_and_times_out() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100)
        assert await budget.acquire(60, 0.0)
        assert not await budget.acquire(50, 0.01)  # does not fit, times out
        assert budget.in_use == 60 and not budget._waiters
        big = asyncio.create_task(budget.acquire(100, 5.0))  # waits for everything
        await asyncio.sleep(0.01)
        small = asyncio.create_task(budget.acquire(10, 5.0))  # would fit, but queues behind `big` (FIFO)
        await asyncio.sleep(0.01)
        assert not small.done()
        budget.release(60)
        assert await big and budget.in_use == 100
        await asyncio.sleep(0.01)
        assert not small.done()
        budget.release(100)
        assert await small and budget.in_use == 10
        budget.release(10)
        # A waiter cancelled from outside (client gone) leaves nothing reserved behind.
        assert await budget.acquire(100, 0.0)
        waiting = asyncio.create_task(budget.acquire(30, 5.0))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        budget.release(100)
        assert budget.in_use == 0 and not budget._waiters

    asyncio.run(scenario())


def test_decoder_refuses_with_overloaded_when_the_budget_stays_taken() -> None:
    """Over the process's budget: wait `wait_s`, then DecodeOverloaded naming the request and the limit."""
    limits = CodecLimits()
    decoder = Decoder(DecodeConfig(threads=1, max_pixels_in_flight=limits.max_request_pixels, wait_s=0.05), limits)
    body = json.loads(amplification_body(images=2))

    async def scenario() -> None:
        assert await decoder.budget.acquire(limits.max_request_pixels, 0.0)  # someone else is decoding
        with pytest.raises(DecodeOverloaded) as info:
            await decoder.decode(plan_v1, body, 32)
        message = str(info.value)
        assert "instances holds 8000000 pixels to decode" in message and "max_decode_pixels=16000000" in message
        assert "retry later" in message
        decoder.budget.release(limits.max_request_pixels)
        batch = await decoder.decode(plan_v1, body, 32)  # room again
        assert batch.shape == (2, 3, 32, 32) and decoder.budget.in_use == 0

    try:
        asyncio.run(scenario())
    finally:
        decoder.close()


def test_decoding_runs_off_the_event_loop() -> None:
    """While a request decodes, the loop keeps running other tasks (a health probe's turn)."""
    limits = CodecLimits(max_request_pixels=64_000_000)
    decoder = Decoder(DecodeConfig(threads=1), limits)
    body = json.loads(amplification_body(images=8))  # ~0.3 s of decoding

    async def scenario() -> list[float]:
        gaps: list[float] = []
        decoding = asyncio.create_task(decoder.decode(plan_v1, body, 32))
        last = time.perf_counter()
        while not decoding.done():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        result: torch.Tensor = await decoding
        assert result.shape == (8, 3, 32, 32)
        return gaps

    try:
        gaps = asyncio.run(scenario())
    finally:
        decoder.close()
    assert len(gaps) >= 10, gaps
    assert statistics.median(gaps) < LIVE_BOUND_S, gaps


# ---- a real predictor process ----------------------------------------------------------------------


# The prober runs in a process of its own, so that the test's client threads (sending the attack) do not
# share its interpreter lock: what it measures is the server, not the test.
_PROBER = """
import asyncio, json, sys, time
import httpx

async def main(url, interval):
    latencies, failures, tasks = [], [], []
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await client.get(url)  # connect before measuring

        async def probe():
            started = time.perf_counter()
            try:
                resp = await client.get(url)
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                return
            latencies.append(time.perf_counter() - started)
            if resp.status_code != 200:
                failures.append(f"{resp.status_code} {resp.text[:200]}")

        stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # EOF: stop
        print("ready", flush=True)
        while not stop.done():
            tasks.append(asyncio.create_task(probe()))
            await asyncio.sleep(interval)
        await asyncio.gather(*tasks)
    print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


class LiveProbe:
    """Sends GET /v2/health/live every 25 ms from its own process, each probe without waiting for the
    previous one, and records each latency: a loop blocked for a second shows as 40 slow probes, not one."""

    INTERVAL_S = 0.025

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LiveProbe:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _PROBER, f"{self.url}/v2/health/live", str(self.INTERVAL_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate(timeout=300)  # closes stdin: the prober stops
        result = json.loads(out.strip().splitlines()[-1])
        self.latencies, self.failures = result["latencies"], result["failures"]

    def check(self, what: str) -> str:
        """Most probes within LIVE_BOUND_S (the median and 80% of them: robust on a loaded 2-core machine)."""
        lat = sorted(self.latencies)
        assert not self.failures, self.failures[:3]
        assert len(lat) >= 10, f"{what}: only {len(lat)} probes"
        p80 = lat[int(0.8 * (len(lat) - 1))]
        summary = f"{what}: {len(lat)} live probes, median {statistics.median(lat) * 1000:.1f} ms, "
        summary += f"p80 {p80 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
        print(summary)
        assert statistics.median(lat) < LIVE_BOUND_S and p80 < LIVE_BOUND_S, summary
        return summary


def _send_concurrently(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    def send(body: bytes) -> httpx.Response:
        headers = {"content-type": "application/json"}
        return httpx.post(f"{url}/v1/models/{NAME}:predict", content=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("decoding") / "model")


def _args(model_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--model-name", NAME, "--http-port", str(free_port()), "--threads", "1", *extra]


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    return {"TSR_STATE_DIR": str(tmp_path / "state")}


def test_live_answers_under_the_amplification_attack(
    model_dir: Path, tmp_path: Path, state_env: dict[str, str]
) -> None:
    """Four concurrent 60 KB bodies of 76 amplification PNGs: each refused (400, request_too_large) from
    the image headers, and /v2/health/live answers within 100 ms all along."""
    with running_predictor(_args(model_dir), tmp_path / "server.log", env=state_env) as url:
        before = httpx.get(f"{url}/metrics", timeout=10).text
        with LiveProbe(url) as probe:
            started = time.perf_counter()
            for _ in range(3):  # several rounds, so the probes see the whole attack
                responses = _send_concurrently(url, [amplification_body()] * 4)
                for resp in responses:
                    assert resp.status_code == 400, resp.text[:300]
                    assert "max_request_pixels=16000000" in resp.json()["error"]
            elapsed = time.perf_counter() - started
        probe.check(f"amplification, default limits ({elapsed:.1f}s of attack)")
        after = httpx.get(f"{url}/metrics", timeout=10).text
        reason = {"model": NAME, "reason": "request_too_large"}
        assert _metric(after, "tsr_requests_rejected_total", **reason) - _metric(
            before, "tsr_requests_rejected_total", **reason
        ) == pytest.approx(12)
        ok = _send_concurrently(url, [amplification_body(images=1)])[0]  # one such image is a valid request
        assert ok.status_code == 200, ok.text


def test_process_budget_answers_503_and_live_stays_fast_while_decoding(
    model_dir: Path, tmp_path: Path, state_env: dict[str, str]
) -> None:
    """With a per-request budget large enough to decode 25 amplification images (~1 s of work), and a
    process budget of one such request: of four at once, one is decoded (in a worker thread: live keeps
    answering), the others wait 0.2 s for room, then get a 503 naming the limit, counted as `overloaded`."""
    pixels = str(25 * SIDE * SIDE)
    extra = ("--max-request-pixels", pixels, "--max-decode-pixels", pixels, "--decode-wait", "0.2")
    with running_predictor(_args(model_dir, *extra), tmp_path / "server.log", env=state_env) as url:
        before = httpx.get(f"{url}/metrics", timeout=10).text
        with LiveProbe(url) as probe:
            responses = _send_concurrently(url, [amplification_body(images=25)] * 4)
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200 and 503 in statuses and set(statuses) <= {200, 503}, statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert "max_decode_pixels=100000000" in busy.json()["error"] and busy.headers["retry-after"] == "1"
        probe.check("25 amplification images decoding")
        after = httpx.get(f"{url}/metrics", timeout=10).text
        reason = {"model": NAME, "reason": "overloaded"}
        counted = _metric(after, "tsr_requests_rejected_total", **reason) - _metric(
            before, "tsr_requests_rejected_total", **reason
        )
        assert counted == statuses.count(503)
        retry = _send_concurrently(url, [amplification_body(images=25)])[0]
        assert retry.status_code == 200 and len(retry.json()["predictions"]) == 25


def test_flags_take_the_config_defaults_and_refuse_limits_that_cannot_work(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m serving`: the new limits default to ServeConfig's (written once, in serving/config.py);
    a per-request budget the process budget can never hold is a usage error naming the flag."""
    from serving.__main__ import config_from_args, parse_args
    from serving.config import ServeConfig

    cfg = config_from_args(parse_args(["--model", "m"]))
    for name in ("max_request_pixels", "max_header_bytes", "header_timeout_s", "body_timeout_s"):
        assert getattr(cfg, name) == getattr(ServeConfig, name), name
    assert cfg.decode() == DecodeConfig() and cfg.limits() == CodecLimits()
    for bad, needle in (
        (
            ["--max-request-pixels", "70000000"],
            "argument --max-request-pixels: 70000000 is more than max_decode_pixels",
        ),
        (["--max-header-bytes", "10"], "argument --max-header-bytes: must be a whole number >= 1024"),
        (["--header-timeout", "0"], "argument --header-timeout: must be > 0 seconds"),
        (["--decode-threads", "0"], "argument --decode-threads: must be a whole number >= 1"),
        (["--decode-wait", "-1"], "argument --decode-wait: must be >= 0 seconds"),
    ):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--model", "m", *bad])
        assert exit_.value.code == 2
        assert needle in capsys.readouterr().err, bad
