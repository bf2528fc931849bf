"""Predictor faults with real processes and a real MinIO that is really stopped or corrupted.

- A corrupted new champion is refused by a running predictor, which keeps serving the old model
  (and takes the version once it is repaired).
- The predictor SIGKILLed under traffic and restarted: readiness is not 200 until the model is
  loaded, and every 200 answer is a complete prediction of the expected version.
- MinIO unreachable at start: readiness 503 while the load is retried with backoff, one log line
  per attempt; ready once MinIO is up; a clear non-zero exit when the retry budget runs out.
- Slow (slowloris, stalled bodies) and decompression-amplifying clients at once: ordinary traffic is
  still answered, each attacking connection is closed within its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from serving.monitoring.metrics import PredictorMetrics
from serving.predictor import ModelSource, PredictorOptions, TSRPredictor
from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tests.serving.test_decoding import amplification_body
from tsr.core.config import StoreConfig
from tsr.core.processes import free_port, stop_child
from tsr.core.registry import Registry
from tsr.core.store import S3Store, StoreError
from tsr.local.checkout import REPO_ROOT
from tsr.local.minio_server import LocalMinio

NAME = "signs-faults"
PIXELS = [7] * (32 * 32 * 3)
V2_BODY = {"inputs": [{"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": PIXELS}]}
READINESS = ("/v2/health/ready", f"/v2/models/{NAME}/ready", f"/v1/models/{NAME}")
OUTPUT_SHAPES = {"class_id": [1], "probability": [1], "class_name": [1], "top_k_class_id": [1, 3]}
OUTPUT_SHAPES["top_k_probability"] = [1, 3]


def _publish(store: StoreConfig, model_dir: Path, champion: bool = True) -> str:
    registry = Registry.from_config(store)
    version = registry.publish(NAME, model_dir, card={})
    if champion:
        registry.set_alias(NAME, version)
    return version


def _env(store: StoreConfig, state: Path) -> dict[str, str]:
    return {**store.env(), "TSR_STATE_DIR": str(state)}


def _args(port: int, *extra: str) -> list[str]:
    return ["--model", "champion", "--model-name", NAME, "--http-port", str(port), "--threads", "1", *extra]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def _status(client: httpx.Client, url: str) -> int | None:
    """The HTTP status, or None when nothing answers (process down or not listening yet)."""
    try:
        return client.get(url).status_code
    except httpx.TransportError:
        return None


def _wait_for(
    condition: Any, what: str, timeout: float, log: Path, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"predictor exited with {proc.returncode} waiting for {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _check_v2(body: dict[str, Any], version: str, reference: dict[str, Any] | None) -> None:
    """A complete V2 answer of `version`: every output with its full shape (and, given, the reference values)."""
    assert body["model_version"] == version, body
    outputs = {o["name"]: o for o in body["outputs"]}
    assert {name: outputs[name]["shape"] for name in OUTPUT_SHAPES} == OUTPUT_SHAPES, body
    for name, shape in OUTPUT_SHAPES.items():
        assert len(outputs[name]["data"]) == (shape[0] * shape[1] if len(shape) == 2 else shape[0]), body
    if reference is not None:
        assert outputs["class_id"]["data"] == reference["class_id"]["data"]
        assert outputs["probability"]["data"] == pytest.approx(reference["probability"]["data"], abs=1e-6)


def _outputs(body: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o for o in body["outputs"]}


def _group(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return match.group(1)


def _metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass(frozen=True)
class Answer:
    sent: float  # time.time() before the request left: after a kill, only the new process can answer it
    received: float
    status: int | None  # None: nothing answered (process down, not listening yet)
    body: dict[str, Any] | None


@dataclass
class Traffic:
    """Clients that keep sending V2 requests and record every answer."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                sent = time.time()
                try:
                    resp = client.post(f"{self.url}/v2/models/{NAME}/infer", json=V2_BODY)
                except httpx.TransportError:
                    self.answers.append(Answer(sent, time.time(), None, None))
                    time.sleep(0.05)
                    continue
                body = resp.json() if resp.status_code == 200 else {"error": resp.text}
                self.answers.append(Answer(sent, time.time(), resp.status_code, body))

    @contextmanager
    def running(self, clients: int = 2) -> Iterator[Traffic]:
        threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=30)


def test_corrupted_champion_is_refused_and_the_old_model_keeps_serving(minio: StoreConfig, tmp_path: Path) -> None:
    first = _publish(minio, make_model_dir(tmp_path / "a", seed=1))
    state, log = tmp_path / "state", tmp_path / "server.log"
    args = _args(free_port(), "--reload-interval", "0.5")
    with running_predictor(args, log, env=_env(minio, state), name=NAME) as url:
        reference = _outputs(httpx.post(f"{url}/v2/models/{NAME}/infer", json=V2_BODY, timeout=30).json())
        with Traffic(url).running() as traffic:
            second_dir = make_model_dir(tmp_path / "b", seed=2)
            second = _publish(minio, second_dir, champion=False)
            weights = (second_dir / "model.safetensors").read_bytes()
            store = S3Store(minio, "models")
            store.put_bytes(f"{NAME}/{second}/model.safetensors", weights[: len(weights) // 3])  # truncated
            Registry.from_config(minio).set_alias(NAME, second)  # the alias now names a corrupted version

            failures = f'model="{NAME}",result="failure"'
            _wait_for(
                lambda: _metric(httpx.get(f"{url}/metrics").text, "tsr_model_reloads_total", failures) >= 2,
                "failed reloads counted",
                60,
                log,
            )
            # An explicit reload is refused the same way, naming the file; the old model stays ready.
            resp = httpx.post(f"{url}/v2/repository/models/{NAME}/load", timeout=60)
            assert resp.status_code == 503, resp.text
            assert f"checksum mismatch for s3://models/{NAME}/{second}/model.safetensors" in resp.text
            assert httpx.get(f"{url}/v2/models/{NAME}/ready").status_code == 200
            info = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith("tsr_model_info")]
            assert len(info) == 1 and f'version="{first}"' in info[0], info  # what /metrics says is served
            refused_at = len(traffic.answers)
            time.sleep(1.0)  # keep the traffic going a little longer on the refused champion

            store.put_bytes(f"{NAME}/{second}/model.safetensors", weights)  # repaired: now it is taken
            _wait_for(
                lambda: any(a.body and a.body.get("model_version") == second for a in traffic.answers[-4:]),
                "the repaired champion served",
                60,
                log,
            )
        metrics = httpx.get(f"{url}/metrics").text

    answers = traffic.answers
    assert answers and all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:3]
    switch = next(i for i, a in enumerate(answers) if a.body and a.body["model_version"] == second)
    assert switch > refused_at, "the corrupted version must never have been served"
    for a in answers[:switch]:
        assert a.body is not None
        _check_v2(a.body, first, reference)  # the old model, unchanged, until the repair
    assert _metric(metrics, "tsr_model_reloads_total", f'model="{NAME}",result="success"') == 1.0
    text = log.read_text()
    assert f"reload failed, still serving s3://models/{NAME}/{first}" in text
    assert f"checksum mismatch for s3://models/{NAME}/{second}/model.safetensors" in text
    assert "Traceback" not in text


def test_killed_under_traffic_and_restarted(minio: StoreConfig, tmp_path: Path) -> None:
    version = _publish(minio, make_model_dir(tmp_path / "m", seed=3))
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    proc = _start(_args(port), log, _env(minio, tmp_path / "state-1"))
    restarted: subprocess.Popen[bytes] | None = None
    probes: list[tuple[float, float, str, int | None]] = []  # sent, received, path, status
    try:
        with httpx.Client(timeout=10) as client:
            _wait_for(lambda: _status(client, url + READINESS[1]) == 200, "readiness", 180, log, proc)
            reference = _outputs(client.post(f"{url}/v2/models/{NAME}/infer", json=V2_BODY).json())
        with Traffic(url).running(clients=2) as traffic:
            stop_probing = threading.Event()

            def probe() -> None:
                with httpx.Client(timeout=10) as client:
                    while not stop_probing.is_set():
                        for path in READINESS:
                            sent = time.time()
                            status = _status(client, url + path)
                            probes.append((sent, time.time(), path, status))

            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)  # no shutdown handler runs: in-flight requests just die
            proc.wait(timeout=10)
            killed_at = time.time()
            time.sleep(0.5)
            # Same port; a fresh state dir, as a rescheduled pod would get: the model is downloaded again.
            restarted = _start(_args(port), log, _env(minio, tmp_path / "state-2"))
            _wait_for(lambda: any(p[3] == 200 and p[0] > killed_at for p in probes[-3:]), "ready again", 180, log)
            time.sleep(1.0)  # traffic on the restarted predictor
            stop_probing.set()
            prober.join(timeout=30)
    finally:
        stop_child(proc)
        if restarted is not None:
            stop_child(restarted)

    # The restarted process says when its model was swapped in; ready cannot be 200 before that.
    assert restarted is not None
    stamp = re.search(
        rf"^(\S+ \S+) {restarted.pid} serving\.predictor INFO .* model {NAME} serving", log.read_text(), re.M
    )
    assert stamp, log.read_text()[-3000:]
    loaded_at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    after = [(received, path, status) for sent, received, path, status in probes if sent > killed_at]
    assert all(status != 200 for t, _, status in after if t < loaded_at), "ready before the model was loaded"
    for path in READINESS:
        seen = [status for _, p, status in after if p == path]
        assert seen[0] != 200 and seen[-1] == 200, (path, seen[:5], seen[-5:])
        first_ready = seen.index(200)
        assert set(seen[first_ready:]) == {200}, f"{path} flapped after becoming ready: {seen[first_ready:]}"
        assert set(seen[:first_ready]) <= {None, 503}, f"{path} answered {set(seen[:first_ready])} while loading"

    answers = traffic.answers
    served = [a for a in answers if a.status == 200]
    assert any(a.received < killed_at for a in served) and any(a.sent > killed_at for a in served)
    assert {a.status for a in answers} <= {200, 503, None}, {a.status for a in answers}
    for a in served:
        assert a.body is not None
        _check_v2(a.body, version, reference)
        if a.sent > killed_at:
            assert a.received >= loaded_at, "an answer from the restarted predictor before its model was loaded"
    loading = [status for t, _, status in after if status is not None and t < loaded_at]
    print(f"restart: {len(loading)} readiness answers while loading (all 503), {len(served)} predictions")


def test_minio_unreachable_at_start_then_up(minio_server: LocalMinio, tmp_path: Path) -> None:
    store = minio_server.running()
    assert store is not None
    version = _publish(store, make_model_dir(tmp_path / "m", seed=4))
    minio_server.stop()
    minio_port = int(store.endpoint.rsplit(":", 1)[1])
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    proc = _start(_args(port, "--load-retries", "8", "--load-backoff", "0.5"), log, _env(store, tmp_path / "state"))
    try:
        with httpx.Client(timeout=10) as client:
            _wait_for(lambda: _status(client, f"{url}/v2/health/live") == 200, "liveness", 180, log, proc)
            # Up but not ready while MinIO is down: every readiness endpoint and inference say 503.
            _wait_for(lambda: "(attempt 2/9)" in log.read_text(), "a second load attempt", 60, log, proc)
            assert [_status(client, url + path) for path in READINESS] == [503, 503, 503]
            assert client.post(f"{url}/v2/models/{NAME}/infer", json=V2_BODY).status_code == 503
            assert _status(client, f"{url}/v2/models/{NAME}") == 503  # metadata needs the model too

            minio_server.start(port=minio_port)
            _wait_for(
                lambda: _status(client, url + READINESS[0]) == 200, "readiness after MinIO came up", 90, log, proc
            )
            assert [_status(client, url + path) for path in READINESS] == [200, 200, 200]
            resp = client.post(f"{url}/v2/models/{NAME}/infer", json=V2_BODY)
            assert resp.status_code == 200
            _check_v2(resp.json(), version, None)
    finally:
        stop_child(proc)
    lines = [line for line in log.read_text().splitlines() if "loading 'champion' failed" in line]
    attempts = [int(_group(r"attempt (\d+)/9", line)) for line in lines]
    assert attempts == list(range(1, len(lines) + 1)) and len(lines) >= 2, lines
    waits = [float(_group(r"next attempt in ([\d.]+)s", line)) for line in lines]
    assert waits == [min(0.5 * 2**i, 30.0) for i in range(len(lines))], waits
    assert all(f"http://{store.endpoint}" in line and "Connection refused" in line for line in lines), lines
    assert "Retrying (Retry(" not in log.read_text(), "one line per attempt, not urllib3's per-connection noise"
    assert "Traceback" not in log.read_text(), "a 503 while loading is not an error worth a traceback"


def test_gives_up_when_minio_stays_down(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens here
    store = StoreConfig(kind="s3", endpoint=endpoint, access_key="tsr-x", secret_key="not-a-secret", secure=False)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "serving", *_args(free_port(), "--load-retries", "2", "--load-backoff", "0.2")],
        cwd=REPO_ROOT,
        env={**os.environ, **_env(store, tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: gave up loading 'champion' after 3 attempts"), error
    assert f"http://{endpoint}" in error and "Connection refused" in error, error
    assert "Traceback" not in done.stderr
    assert len(re.findall(r"failed \(attempt \d/3\)", done.stderr)) == 2, done.stderr[-3000:]
    assert elapsed < 120, f"giving up took {elapsed:.0f}s"


def test_a_refusing_store_is_not_retried(minio: StoreConfig, tmp_path: Path) -> None:
    """Wrong credentials are a refusal, not an outage: the first load fails at once, no backoff."""
    _publish(minio, make_model_dir(tmp_path / "m"))
    wrong = dataclasses.replace(minio, secret_key=minio.secret_key[::-1])
    options = PredictorOptions(threads=1, load_retries=3, load_backoff_s=10.0)
    metrics = PredictorMetrics.create(CollectorRegistry())
    predictor = TSRPredictor(NAME, ModelSource("champion", wrong, tmp_path / "cache"), options, metrics)
    started = time.monotonic()
    with pytest.raises(StoreError) as refused:
        asyncio.run(predictor.load_with_retries())
    assert time.monotonic() - started < 10, "a refusal must not wait for a retry"
    assert not refused.value.transient and "SignatureDoesNotMatch" in str(refused.value)
    assert not predictor.ready and predictor.model_version is None


def test_slow_and_amplifying_clients_do_not_starve_the_others(tmp_path: Path) -> None:
    """Red team (issue 17) at once: 20 connections dripping their headers, 20 that announce a body and stall,
    and amplification bodies (76 palette PNGs of 2000x2000 in 60 KB) on repeat, while two clients send
    ordinary requests: every ordinary request is answered 200, every attacking connection is closed within
    its timeout, and the server is as responsive afterwards as before."""
    model_dir = make_model_dir(tmp_path / "m", seed=5)
    port = free_port()
    args = ["--model", str(model_dir), "--model-name", NAME, "--http-port", str(port), "--threads", "1"]
    args += ["--header-timeout", "2", "--body-timeout", "2"]
    head = f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\n"
    env = {"TSR_STATE_DIR": str(tmp_path / "state")}
    with running_predictor(args, tmp_path / "server.log", env=env, name=NAME) as url:
        with Traffic(url).running(clients=2) as traffic:
            slow: list[socket.socket] = []
            for i in range(40):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                # half drip their headers, half announce 1000 bytes of body and send 10
                sock.sendall(
                    head[:20].encode() if i % 2 else (head + "content-length: 1000\r\n\r\n").encode() + b"{" * 10
                )
                slow.append(sock)
            started = time.monotonic()
            amplified = []
            with httpx.Client(timeout=60) as client:
                while time.monotonic() - started < 3:
                    for sock in slow[1::2]:  # the drippers keep dripping
                        with contextlib.suppress(OSError):
                            sock.sendall(b"x")
                    resp = client.post(f"{url}/v1/models/{NAME}:predict", content=amplification_body())
                    amplified.append(resp.status_code)
            closed_by = []
            for sock in slow:
                sock.settimeout(10)
                try:
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
                closed_by.append(time.monotonic() - started)
                sock.close()
        assert set(amplified) == {400}, amplified
        assert max(closed_by) < 2 + 6, f"attacking connections held for {max(closed_by):.1f}s"
        answers = traffic.answers
        assert len(answers) >= 3 and all(a.status == 200 for a in answers), [a.status for a in answers][:20]
        metrics = httpx.get(f"{url}/metrics").text
        assert _metric(metrics, "tsr_requests_rejected_total", f'model="{NAME}",reason="request_timeout"') >= 40
