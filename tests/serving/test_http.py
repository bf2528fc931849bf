"""The predictor's HTTP connection limits (serving/http.py), with raw sockets against a real predictor process.

Red team (issue 17): a 60 MiB request header was read and answered 200; a connection that sent its
headers, or the body it announced, a byte every few seconds was held for ever. Here the limits are set
small (4 KiB of headers, 1 s to send them, 1 s of body silence) so each case takes about a second.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tests.serving.test_server_http import _metric
from tsr.core.processes import free_port

NAME = "gtsrb-classifier"
MAX_HEADER_BYTES = 4096
TIMEOUT_S = 1.0
V2_BODY = json.dumps(
    {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [9] * 12}]}
).encode()


@dataclass
class Server:
    url: str
    port: int
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("http")
    port = free_port()
    args = ["--model", str(make_model_dir(root / "model")), "--model-name", NAME, "--http-port", str(port)]
    args += ["--threads", "1", "--max-header-bytes", str(MAX_HEADER_BYTES)]
    args += ["--header-timeout", str(TIMEOUT_S), "--body-timeout", str(TIMEOUT_S)]
    log = root / "server.log"
    with running_predictor(args, log, env={"TSR_STATE_DIR": str(root / "state")}) as url:
        yield Server(url, port, log)


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.settimeout(30)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout bounds the wait)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _status_and_error(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def _rejections(server: Server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return _metric(text, "tsr_requests_rejected_total", model=NAME, reason=reason)


def _still_serves(server: Server) -> None:
    resp = httpx.post(
        f"{server.url}/v2/models/{NAME}/infer", content=V2_BODY, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200, resp.text


def _request_head(path: str = f"/v2/models/{NAME}/infer", extra: str = "", length: int = len(V2_BODY)) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n{extra}\r\n"
    ).encode()


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 64 * 1024, 8 * 1024 * 1024])
def test_oversized_headers_get_431(server: Server, size: int) -> None:
    """One huge header (just over the limit, 64 KiB, 8 MiB): 431 naming the limit, connection closed,
    counted; the server stops reading at the limit instead of buffering the rest."""
    before = _rejections(server, "header_too_large")
    sock = _connect(server)
    head = _request_head(extra=f"x-big: {'a' * size}\r\n")

    def send() -> None:
        # The server answers and closes before all 8 MiB are sent: what this test wants.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + V2_BODY)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()  # read while sending, so the answer is read before the server's close resets the socket
    raw = _read_until_closed(sock)
    sender.join(timeout=30)
    sock.close()
    status, error = _status_and_error(raw)
    assert status == 431, raw[:300]
    assert f"limit is max_header_bytes={MAX_HEADER_BYTES}" in error and "\n" not in error
    assert _rejections(server, "header_too_large") == before + 1
    _still_serves(server)


def test_headers_just_under_the_limit_are_served(server: Server) -> None:
    head = _request_head(extra=f"x-pad: {'a' * (MAX_HEADER_BYTES - 400)}\r\n")
    assert len(head) < MAX_HEADER_BYTES
    sock = _connect(server)
    sock.sendall(head + V2_BODY)
    raw = sock.recv(65536)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]


def test_headers_dripped_byte_by_byte_get_408(server: Server) -> None:
    """Slowloris: the request line and headers a byte every 0.2 s never finish within header_timeout_s."""
    before = _rejections(server, "request_timeout")
    sock = _connect(server)
    started = time.monotonic()
    sent = 0
    head = _request_head()
    with pytest.raises((BrokenPipeError, ConnectionResetError, OSError)):
        for byte in head:
            sock.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    raw = _read_until_closed(sock)
    sock.close()
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 3, elapsed
    assert sent < len(head)
    status, error = _status_and_error(raw)
    assert status == 408 and f"header_timeout_s={TIMEOUT_S:g}" in error, raw[:300]
    assert _rejections(server, "request_timeout") == before + 1
    _still_serves(server)


def test_announced_body_that_never_comes_gets_408(server: Server) -> None:
    """Content-Length announced, 10 bytes sent, then silence: 408 after body_timeout_s, connection closed."""
    before = _rejections(server, "request_timeout")
    sock = _connect(server)
    started = time.monotonic()
    sock.sendall(_request_head(length=1000) + V2_BODY[:10])
    raw = _read_until_closed(sock)
    elapsed = time.monotonic() - started
    sock.close()
    status, error = _status_and_error(raw)
    assert status == 408 and f"body_timeout_s={TIMEOUT_S:g}" in error, raw[:300]
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 3, elapsed
    assert _rejections(server, "request_timeout") == before + 1
    _still_serves(server)


def test_body_dripped_slower_than_the_body_timeout_gets_408(server: Server) -> None:
    sock = _connect(server)
    sock.sendall(_request_head())
    started = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError, OSError)):
        for byte in V2_BODY:
            time.sleep(TIMEOUT_S * 1.5)
            sock.sendall(bytes([byte]))
    raw = _read_until_closed(sock)
    sock.close()
    assert time.monotonic() - started < TIMEOUT_S * 5
    assert _status_and_error(raw)[0] == 408, raw[:300]


def test_idle_connection_is_closed_without_an_answer(server: Server) -> None:
    """A connection that never sends a byte is closed after header_timeout_s; nothing to answer, nothing counted."""
    before = _rejections(server, "request_timeout")
    sock = _connect(server)
    started = time.monotonic()
    assert _read_until_closed(sock) == b""
    assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S + 3
    sock.close()
    assert _rejections(server, "request_timeout") == before


def test_a_kept_alive_connection_waits_between_requests(server: Server) -> None:
    """The header timeout runs from a request's first byte: a pause between two requests is keep-alive's."""
    with httpx.Client(timeout=30) as client:
        for _ in range(2):
            resp = client.post(
                f"{server.url}/v2/models/{NAME}/infer", content=V2_BODY, headers={"content-type": "application/json"}
            )
            assert resp.status_code == 200, resp.text
            time.sleep(TIMEOUT_S * 1.5)


def test_bytes_that_are_not_http_get_a_json_400_counted(server: Server) -> None:
    """Regression (red team, issue 17): a model name with a raw space got uvicorn's bare text 400, uncounted."""
    before = _rejections(server, "invalid_http")
    sock = _connect(server)
    sock.sendall(f"POST /v1/models/{NAME} x:predict HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{{}}".encode())
    raw = _read_until_closed(sock)
    sock.close()
    status, error = _status_and_error(raw)
    assert status == 400 and error.startswith("invalid HTTP request (") and "percent-encode" in error, raw[:300]
    assert _rejections(server, "invalid_http") == before + 1
    _still_serves(server)
