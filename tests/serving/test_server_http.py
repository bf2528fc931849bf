"""The real server in a subprocess: V1 and V2 over HTTP, 4xx for client mistakes, and it keeps serving."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.server import OneLineFormatter
from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tsr.core.preprocessing import load_image_file
from tsr.core.processes import free_port
from tsr.local.checkout import REPO_ROOT

NAME = "gtsrb-classifier"


@dataclass
class Server:
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    model_dir = make_model_dir(root / "model")
    log = root / "server.log"
    args = ["--model", str(model_dir), "--model-name", NAME, "--http-port", str(free_port()), "--threads", "1"]
    # A small body limit so the 413 test does not need to send 64 MiB; 1 MiB still fits every other test.
    args += ["--max-request-bytes", str(1024 * 1024), "--batch-wait-ms", "20"]
    with running_predictor(args, log, env={"TSR_STATE_DIR": str(root / "state")}) as url:
        yield Server(url, log)


@pytest.fixture(scope="module")
def image_paths(gtsrb_root: Path) -> list[Path]:
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    return [sorted((training / f"{c:05d}").glob("*.ppm"))[0] for c in (2, 17, 38)]


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _check_predictions(predictions: list[dict[str, Any]], count: int) -> None:
    assert len(predictions) == count
    for pred in predictions:
        assert isinstance(pred["class_id"], int) and 0 <= pred["class_id"] < 43
        assert isinstance(pred["class_name"], str) and pred["class_name"]
        assert 0.0 <= pred["probability"] <= 1.0
        assert len(pred["top_k"]) == 3


def _v1(server: Server, body: Any, name: str = NAME) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{name}:predict", json=body, timeout=60)


def _v2(server: Server, body: Any, name: str = NAME) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=60)


def test_v1_images_and_tensors(server: Server, image_paths: list[Path]) -> None:
    hwc = load_image_file(image_paths[0], 32).permute(1, 2, 0).tolist()
    body = {"instances": [{"b64": _b64(p)} for p in image_paths] + [hwc]}
    resp = _v1(server, body)
    assert resp.status_code == 200, resp.text
    predictions = resp.json()["predictions"]
    _check_predictions(predictions, 4)
    assert predictions[3]["class_id"] == predictions[0]["class_id"]  # same pixels, same answer


def test_v2_bytes_and_uint8(server: Server, image_paths: list[Path]) -> None:
    data = [_b64(p) for p in image_paths]
    resp = _v2(server, {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]})
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    assert outputs["class_id"]["datatype"] == "INT64" and outputs["class_id"]["shape"] == [3]
    assert outputs["probability"]["datatype"] == "FP32" and len(outputs["probability"]["data"]) == 3
    assert outputs["class_name"]["datatype"] == "BYTES" and all(outputs["class_name"]["data"])
    pixels = np.stack([load_image_file(p, 32).permute(1, 2, 0).numpy() for p in image_paths])
    tensor = {"name": "image", "shape": list(pixels.shape), "datatype": "UINT8", "data": pixels.reshape(-1).tolist()}
    resp = _v2(server, {"inputs": [tensor]})
    assert resp.status_code == 200, resp.text
    tensor_outputs = {o["name"]: o for o in resp.json()["outputs"]}
    assert tensor_outputs["class_id"]["data"] == outputs["class_id"]["data"]
    floats = (pixels.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    tensor = {"name": "image", "shape": list(floats.shape), "datatype": "FP32", "data": floats.reshape(-1).tolist()}
    resp = _v2(server, {"inputs": [tensor]})
    assert resp.status_code == 200, resp.text
    assert {o["name"]: o for o in resp.json()["outputs"]}["class_id"]["data"] == outputs["class_id"]["data"]


def test_v2_metadata_describes_outputs(server: Server) -> None:
    meta = httpx.get(f"{server.url}/v2/models/{NAME}", timeout=10).json()
    assert meta["name"] == NAME
    assert {o["name"] for o in meta["outputs"]} >= {"class_id", "probability", "class_name"}
    assert meta["inputs"] and meta["inputs"][0]["datatype"] == "BYTES"


def test_import_survives_foreign_argv() -> None:
    """kserve parses sys.argv on import and exits on `--p`; `tsr serve`'s own flags must never reach it."""
    code = "import serving.server, kserve.model_server as m; print(m.args.model_name)"
    argv = [sys.executable, "-c", code, "--p", "1", "--model", "champion"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "model"


@pytest.mark.parametrize(
    ("kind", "send", "status"),
    [
        ("v1", lambda s: httpx.post(f"{s.url}/v1/models/{NAME}:predict", content=b'{"instances": [', timeout=30), 400),
        (
            "v2",
            lambda s: httpx.post(
                f"{s.url}/v2/models/{NAME}/infer",
                content=b'{"inputs": [',
                headers={"content-type": "application/json"},
                timeout=30,
            ),
            400,
        ),
        ("v1", lambda s: _v1(s, {"instances": [[[1, 2]]]}), 400),
        (
            "v2",
            lambda s: _v2(s, {"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "UINT8", "data": [0] * 4}]}),
            400,
        ),
        ("v1", lambda s: _v1(s, {"instances": [{"b64": "%%% not base64"}]}), 400),
        ("v2", lambda s: _v2(s, {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}), 400),
        ("v1", lambda s: _v1(s, {"instances": []}), 400),
        ("v1", lambda s: _v1(s, {"instances": [{"b64": "AAAA"}]}, name="no-such-model"), 404),
        ("v2", lambda s: _v2(s, {"inputs": []}, name="no-such-model"), 404),
    ],
)
def test_client_mistakes_get_4xx_json_and_server_keeps_serving(
    server: Server, image_paths: list[Path], kind: str, send: Any, status: int
) -> None:
    resp = send(server)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body.get("error") or body.get("detail"), body
    ok = _v1(server, {"instances": [{"b64": _b64(image_paths[0])}]})
    assert ok.status_code == 200
    _check_predictions(ok.json()["predictions"], 1)


def test_metrics_expose_kserve_histograms(server: Server, image_paths: list[Path]) -> None:
    assert _v1(server, {"instances": [{"b64": _b64(image_paths[1])}]}).status_code == 200
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for metric in ("request_preprocess_seconds", "request_predict_seconds", "request_postprocess_seconds"):
        assert f'{metric}_count{{model_name="{NAME}"}}' in text, metric


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            sample_labels = set(line[line.find("{") + 1 : line.rfind("}")].split(",")) if "{" in line else set()
            if wanted <= sample_labels:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_oversized_body_is_refused_before_parsing(server: Server, image_paths: list[Path]) -> None:
    before = httpx.get(f"{server.url}/metrics", timeout=10).text
    big = b'{"instances": [' + b" " * (2 * 1024 * 1024) + b"]}"
    resp = httpx.post(
        f"{server.url}/v1/models/{NAME}:predict", content=big, headers={"content-type": "application/json"}, timeout=30
    )
    assert resp.status_code == 413
    assert "max_request_bytes=1048576" in resp.json()["error"]
    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    reason = {"model": NAME, "reason": "body_too_large"}
    assert (
        _metric(after, "tsr_requests_rejected_total", **reason)
        == _metric(before, "tsr_requests_rejected_total", **reason) + 1
    )
    assert _v1(server, {"instances": [{"b64": _b64(image_paths[0])}]}).status_code == 200


def test_rejections_are_counted_by_reason(server: Server) -> None:
    def count(reason: str) -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return _metric(text, "tsr_requests_rejected_total", model=NAME, reason=reason)

    cases = {
        "empty_batch": lambda: _v1(server, {"instances": []}),
        "undecodable_image": lambda: _v1(server, {"instances": [{"b64": base64.b64encode(b"no image").decode()}]}),
        "bad_shape": lambda: _v1(server, {"instances": [[[1, 2]]]}),
        "malformed_json": lambda: httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=b"{", timeout=30),
        "unknown_model": lambda: _v1(server, {"instances": []}, name="no-such-model"),
    }
    for reason, send in cases.items():
        before = count(reason)
        resp = send()
        assert 400 <= resp.status_code < 500, (reason, resp.status_code, resp.text)
        assert count(reason) == before + 1, reason
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert _metric(text, "tsr_request_duration_seconds_count", model=NAME, protocol="v1", code="400") >= 3


def test_concurrent_clients_are_batched_and_each_gets_its_answer(server: Server, image_paths: list[Path]) -> None:
    expected = {}
    for path in image_paths:
        resp = _v1(server, {"instances": [{"b64": _b64(path)}]})
        expected[path] = resp.json()["predictions"][0]["class_id"]
    before = httpx.get(f"{server.url}/metrics", timeout=10).text

    async def send_all() -> list[tuple[Path, httpx.Response]]:
        async with httpx.AsyncClient(timeout=60) as client:
            paths = [image_paths[i % len(image_paths)] for i in range(32)]
            url = f"{server.url}/v1/models/{NAME}:predict"
            responses = await asyncio.gather(*(client.post(url, json={"instances": [{"b64": _b64(p)}]}) for p in paths))
            return list(zip(paths, responses, strict=True))

    for path, resp in asyncio.run(send_all()):
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"][0]["class_id"] == expected[path]
    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    passes = _metric(after, "tsr_inference_batch_size_count", model=NAME) - _metric(
        before, "tsr_inference_batch_size_count", model=NAME
    )
    images = _metric(after, "tsr_inference_batch_size_sum", model=NAME) - _metric(
        before, "tsr_inference_batch_size_sum", model=NAME
    )
    assert images == 32
    assert passes < 32  # concurrent requests shared forward passes


def test_readiness_metadata_and_reload_endpoint(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/v2/models/{NAME}/ready", timeout=10).json()["ready"] is True
    loaded_before = _metric(httpx.get(f"{server.url}/metrics", timeout=10).text, "tsr_model_loaded_timestamp_seconds")
    # KServe's repository extension: for a directory model, `load` re-reads it (a registry alias re-resolves).
    resp = httpx.post(f"{server.url}/v2/repository/models/{NAME}/load", timeout=60)
    assert resp.status_code == 200, resp.text
    assert _metric(httpx.get(f"{server.url}/metrics", timeout=10).text, "tsr_model_loaded_timestamp_seconds") > (
        loaded_before
    )
    assert httpx.post(f"{server.url}/v2/repository/models/nope/load", timeout=30).status_code in (404, 503)


def test_v1_raw_image_body(server: Server, image_paths: list[Path]) -> None:
    """`curl --data-binary @sign.ppm -H 'content-type: image/x-portable-pixmap'`: the body is the image."""
    url = f"{server.url}/v1/models/{NAME}:predict"
    as_b64 = _v1(server, {"instances": [{"b64": _b64(image_paths[2])}]}).json()["predictions"]
    raw = httpx.post(
        url, content=image_paths[2].read_bytes(), headers={"content-type": "image/x-portable-pixmap"}, timeout=30
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"] == as_b64
    bad = httpx.post(url, content=b"not an image", headers={"content-type": "image/png"}, timeout=30)
    assert bad.status_code == 400 and "body" in bad.json()["error"]


def _binary_v2(server: Server, inp: dict[str, Any], tail: bytes, length: str | None = None) -> httpx.Response:
    """POST a V2 request in the binary-data extension: JSON header, then the tensor bytes."""
    header = json.dumps({"inputs": [inp]}).encode()
    headers = {
        "inference-header-content-length": length or str(len(header)),
        "content-type": "application/octet-stream",
    }
    return httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=header + tail, headers=headers, timeout=30)


def test_v2_binary_extension_mistakes_get_400_not_500(server: Server, image_paths: list[Path]) -> None:
    """Regression (fuzzing): kserve parses binary-extension bodies outside its error handling, so each of
    these was a 500; the guard answers 400 naming the mistake, and a valid binary request still works."""
    png = io.BytesIO()
    Image.open(image_paths[0]).save(png, "PNG")
    image = png.getvalue()  # starts with 0x89: never UTF-8
    pixels = load_image_file(image_paths[0], 32).permute(1, 2, 0).numpy()
    uint8 = {"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8"}
    ok = _binary_v2(server, {**uint8, "parameters": {"binary_data_size": pixels.size}}, pixels.tobytes())
    assert ok.status_code == 200, ok.text
    as_json = _v2(server, {"inputs": [{**uint8, "data": pixels.reshape(-1).tolist()}]})
    assert {o["name"]: o for o in ok.json()["outputs"]}["class_id"] == {
        o["name"]: o for o in as_json.json()["outputs"]
    }["class_id"]
    raw_element = struct.pack("<I", len(image)) + image
    cases = [
        (
            {"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw_element)}},
            raw_element,
            None,
            "not UTF-8",
        ),
        ({**uint8, "parameters": {"binary_data_size": pixels.size}}, pixels.tobytes(), "abc", "header-content-length"),
        ({**uint8, "parameters": {"binary_data_size": 5}}, b"12345", None, "needs 3072 bytes, got 5"),
        ({**uint8, "parameters": {"binary_data_size": "x"}}, pixels.tobytes(), None, "binary_data_size"),
        ({**uint8, "shape": "ab", "parameters": {"binary_data_size": 3}}, b"123", None, "shape must be a list"),
        ({**uint8, "shape": [-1, -1], "parameters": {"binary_data_size": 3}}, b"123", None, "integers >= 0"),
    ]
    for inp, tail, length, needle in cases:
        resp = _binary_v2(server, inp, tail, length)
        assert resp.status_code == 400, (needle, resp.status_code, resp.text)
        assert needle in resp.json()["error"], (needle, resp.text)
    assert _v1(server, {"instances": [{"b64": _b64(image_paths[0])}]}).status_code == 200


def test_model_versions_explain_and_unknown_model_reload_get_404(server: Server) -> None:
    """Regression (fuzzing): kserve answers these with 501 (versions, explain) or 503 (reload of a model it
    does not have), which read as server failures and feed TSRHighErrorRate; nothing here serves them."""
    v2_body = {"inputs": [{"name": "x", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 3]}]}
    requests_ = [
        ("POST", f"/v2/models/{NAME}/versions/1/infer"),
        ("POST", f"/v2/models/{NAME}/infer?model_version=1"),
        ("GET", f"/v2/models/{NAME}/versions/1"),
        ("GET", f"/v2/models/{NAME}/versions/1/ready"),
        ("GET", f"/v2/models/{NAME}?model_version=1"),
        ("POST", f"/v1/models/{NAME}:explain"),
        ("POST", "/v2/repository/models/no-such-model/load"),
        ("POST", "/v2/repository/models/no-such-model/unload"),
    ]
    for method, path in requests_:
        body = {"instances": [[[[1, 2, 3]]]]} if ":explain" in path else v2_body
        resp = httpx.request(method, f"{server.url}{path}", json=body, timeout=30)
        assert resp.status_code == 404, (path, resp.status_code, resp.text)
        assert resp.json()["error"], path
    # An empty version is no version: the endpoint answers as usual.
    assert httpx.get(f"{server.url}/v2/models/{NAME}/ready?model_version=", timeout=10).status_code == 200
    assert _v2(server, v2_body).status_code == 200


def test_v1_raw_image_as_octet_stream(server: Server, image_paths: list[Path]) -> None:
    """Regression (fuzzing): kserve 0.21 treats `application/octet-stream` as JSON, so every image sent
    that way (curl --data-binary without an image content type) was a 400; JSON sent that way still works."""
    url = f"{server.url}/v1/models/{NAME}:predict"
    as_b64 = _v1(server, {"instances": [{"b64": _b64(image_paths[1])}]}).json()["predictions"]
    raw = httpx.post(
        url, content=image_paths[1].read_bytes(), headers={"content-type": "application/octet-stream"}, timeout=30
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"] == as_b64
    body = json.dumps({"instances": [{"b64": _b64(image_paths[1])}]}).encode()
    as_json = httpx.post(url, content=body, headers={"content-type": "application/octet-stream"}, timeout=30)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["predictions"] == as_b64


FORGED = "2026-12-03 07:00:00.000 1 serving.predictor INFO FORGED"
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/v1/models/evil%0a{quote(FORGED)}:predict"),
        ("POST", f"/v2/models/evil%0d%0a{quote(FORGED)}/infer"),
        ("GET", f"/v2/models/evil%0a{quote(FORGED)}/ready"),
        ("GET", f"/v1/models/evil%0a{quote(FORGED)}"),
        ("POST", "/v1/models/evil%00FORGED:predict"),
        ("POST", f"/v2/repository/models/evil%0a{quote(FORGED)}/load"),
    ],
)
def test_model_names_cannot_forge_log_lines(server: Server, method: str, path: str) -> None:
    """Regression (red team, issue 17): `%0a` in the model name wrote a forged, well-formed line into the
    predictor's log (kserve logs 'Model with name X does not exist'), `%00` a NUL. A name that is not a
    DNS-1123 label is refused (404, one line) before it reaches a log, and every log record is one line."""
    resp = httpx.request(method, f"{server.url}{path}", json={"instances": []}, timeout=30)
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert "is not a valid model name" in error and f"this server serves '{NAME}'" in error
    assert "\n" not in error and "\x00" not in error
    text = server.log.read_text(errors="replace")
    assert "\x00" not in text
    for line in text.splitlines():
        assert not line.startswith(FORGED), line
        if "FORGED" in line:
            assert _LOG_LINE.match(line), line


def test_log_records_are_one_line_each() -> None:
    """Every handler the predictor configures escapes control characters, tracebacks' newlines included."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(logging.Formatter("%(levelname)s %(message)s")))
    logger = logging.getLogger("tests.one_line")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("name %s", "a\nINFO forged\r\x00\x1b[31m\u2028b")
        try:
            raise ValueError("bad\nline")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == "WARNING name a\\nINFO forged\\r\\x00\\x1b[31m\\u2028b"
    assert lines[1].startswith("ERROR failed\\nTraceback") and "ValueError: bad\\nline" in lines[1]


def test_get_on_the_predict_route_is_405(server: Server) -> None:
    """Regression (red team, issue 17): GET /v1/models/<name>:predict answered 404 'Model with name
    <name>:predict does not exist' (KServe's GET /v1/models/{name} took the verb for part of the name)."""
    before = httpx.get(f"{server.url}/metrics", timeout=10).text
    for method, path in (("GET", f"/v1/models/{NAME}:predict"), ("PUT", f"/v2/models/{NAME}/infer")):
        resp = httpx.request(method, f"{server.url}{path}", timeout=30)
        assert resp.status_code == 405, (path, resp.text)
        assert resp.headers["allow"] == "POST"
        assert resp.json() == {"error": f"{method} is not allowed on {path}; inference takes POST"}
    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    reason = {"model": NAME, "reason": "method_not_allowed"}
    assert (
        _metric(after, "tsr_requests_rejected_total", **reason)
        == _metric(before, "tsr_requests_rejected_total", **reason) + 2
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", f"/v2/models/{NAME}/infer", b'{"inputs": "\xe9"}', 400),  # not UTF-8
        ("POST", f"/v2/models/{NAME}/infer", b"[" * 100_000 + b"]" * 100_000, 400),  # nested past the parser
        ("GET", "/no/such/route", b"", 404),
        ("DELETE", f"/v2/models/{NAME}", b"", 405),
    ],
)
def test_every_error_is_an_error_object(server: Server, method: str, path: str, body: bytes, status: int) -> None:
    """Regression (red team, issue 17): FastAPI/Starlette's own errors (a V2 body it cannot parse, no such
    route, a method a route does not take) answered `{"detail": ...}`; the documented shape is `{"error": ...}`."""
    headers = {"content-type": "application/json"}
    resp = httpx.request(method, f"{server.url}{path}", content=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error"} and isinstance(resp.json()["error"], str), resp.text


def test_oversized_header_gets_431_at_the_default_limit(server: Server) -> None:
    """Regression (red team, issue 17): a 60 MiB header was read and answered 200; the default limit is 32 KiB."""
    resp = httpx.get(f"{server.url}/v2/health/live", headers={"x-big": "a" * (64 * 1024)}, timeout=30)
    assert resp.status_code == 431, resp.text
    assert "max_header_bytes=32768" in resp.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/live", headers={"x-ok": "a" * 16 * 1024}, timeout=30).status_code == 200
