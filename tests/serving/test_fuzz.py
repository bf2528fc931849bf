"""Property-based and schema-driven fuzzing of the real predictor over HTTP.

Every generated request must get a 2xx (valid input) or a 4xx with a JSON error body, never
a 5xx and never a hang; afterwards the server's memory must still be bounded and it must
answer a valid request exactly as before. Requests come from hypothesis strategies built on
real GTSRB images (cut, flipped, spliced, re-encoded) and from schemathesis, which reads the
server's own /openapi.json. Generation is derandomized: the same code and the same test
selection send the same requests every run (Hypothesis also draws constants from the project
modules imported so far, so `make test` and this file alone differ, each reproducibly); a
failure prints the request. TSR_FUZZ_SCALE=10 sends ten times as many (a longer, deeper run).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import requests
import schemathesis
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from serving.codec import CodecLimits, Rejected, decode_raw_image, decode_v1, decode_v2
from serving.monitoring.metrics import REJECTION_REASONS
from tests.conftest import make_model_dir
from tests.serving.predictor_process import predictor_process, rss_mib
from tsr.core.processes import free_port

NAME = "gtsrb-classifier"
MAX_BODY = 1024 * 1024  # --max-request-bytes: small, so "huge" bodies are cheap to send
MAX_BATCH = 8  # --max-batch: small, so too-large batches are easy to generate
MAX_PIXELS = 512 * 512  # --max-pixels: a 600x600 PNG (a few KB) is over it
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS  # --max-request-pixels: five 512x512 images in one request are over it
TIMEOUT_S = 10.0  # a single request to this tiny model takes milliseconds; 10 s without an answer is a hang
NUM_CLASSES = 43
# Resident memory may grow this much over the whole fuzz run. It is generous on purpose: the
# allocator keeps freed arenas mapped, torch caches CPU buffers, and the largest legal request
# here (1 MiB of JSON, a 512x512 image resized on floats) transiently takes tens of MiB, so a
# steady server still shows some growth. A per-request leak does not stay under it: the run sends
# thousands of requests, so keeping a body (up to 1 MiB) or a decoded batch alive per request, or a
# metric series per fuzzed model name, adds hundreds of MiB.
RSS_GROWTH_LIMIT_MIB = 150.0
# The run must have sent at least this many requests before the memory bound means anything.
MIN_FUZZ_REQUESTS = 3000
SCALE = float(os.environ.get("TSR_FUZZ_SCALE", "1"))


def _examples(n: int) -> int:
    """Examples per test: `n` in `make test`, scaled by TSR_FUZZ_SCALE."""
    return max(1, round(n * SCALE))


Expect = Literal["ok", "reject", "any", "too_large"]

FUZZ = settings(
    max_examples=_examples(600),
    deadline=None,  # one request is fast, but the first few pay for connection set-up
    derandomize=True,  # the same examples every run: CI is reproducible
    database=None,  # no example database: a run never depends on what an earlier run found
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@dataclass
class Seeds:
    """Real GTSRB images, as files and re-encoded, plus a few crafted ones."""

    encoded: list[bytes]  # PPM, PNG and JPEG of real signs: each decodes to a valid image
    too_large: list[bytes]  # well-formed images over MAX_PIXELS
    other_formats: list[bytes]  # the same signs as GIF, TIFF, WebP, BMP: refused by format
    amplifier: bytes  # a ~100-byte palette PNG of MAX_PIXELS pixels (decompression amplification)
    pixels: list[np.ndarray]  # the same signs as uint8 HWC arrays


@dataclass
class FuzzServer:
    url: str
    pid: int
    client: httpx.Client
    baseline_rss_mib: float
    reference: list[dict[str, Any]]  # predictions for the reference images before any fuzzing
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def seeds(gtsrb_root: Path) -> Seeds:
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    paths = [sorted((training / f"{c:05d}").glob("*.ppm"))[5] for c in (1, 14, 25, 38)]
    encoded: list[bytes] = []
    pixels = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        encoded += [path.read_bytes(), _encode(img, "PNG"), _encode(img, "JPEG")]
        pixels.append(np.asarray(img, dtype=np.uint8))
    big = Image.new("RGB", (600, 600), (200, 30, 30))
    sign = Image.open(paths[0]).convert("RGB")
    other_formats = [_encode(sign, fmt) for fmt in ("GIF", "TIFF", "WEBP", "BMP")]
    amplifier = io.BytesIO()
    Image.new("P", (512, 512), 0).save(amplifier, "PNG", optimize=True)
    return Seeds(encoded, [_encode(big, "PNG"), _encode(big, "JPEG")], other_formats, amplifier.getvalue(), pixels)


def _v1_b64(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, seeds: Seeds) -> Iterator[FuzzServer]:
    root = tmp_path_factory.mktemp("fuzz")
    model_dir = make_model_dir(root / "model")
    args = ["--model", str(model_dir), "--model-name", NAME, "--http-port", str(free_port()), "--threads", "1"]
    args += ["--max-request-bytes", str(MAX_BODY), "--max-batch", str(MAX_BATCH), "--max-pixels", str(MAX_PIXELS)]
    args += ["--max-image-bytes", str(256 * 1024), "--max-request-pixels", str(MAX_REQUEST_PIXELS)]
    with (
        predictor_process(args, root / "server.log", env={"TSR_STATE_DIR": str(root / "state")}) as (url, proc),
        httpx.Client(timeout=TIMEOUT_S) as client,
    ):
        # Warm up every path (lazy imports, first allocations) before the memory baseline.
        v2_body = json.dumps({"inputs": [_uint8_input(seeds.pixels)]}).encode()
        for _ in range(20):
            client.post(f"{url}/v1/models/{NAME}:predict", content=_v1_b64(seeds.encoded[:MAX_BATCH]))
            client.post(
                f"{url}/v1/models/{NAME}:predict", content=seeds.encoded[1], headers={"content-type": "image/png"}
            )
            client.post(f"{url}/v2/models/{NAME}/infer", content=v2_body, headers={"content-type": "application/json"})
        reference = client.post(f"{url}/v1/models/{NAME}:predict", content=_v1_b64(seeds.encoded[:MAX_BATCH]))
        assert reference.status_code == 200, reference.text
        yield FuzzServer(url, proc.pid, client, rss_mib(proc.pid), reference.json()["predictions"])
    # kserve logs each 400 with a traceback (invalid_input_handler); what must never appear is a 5xx handler.
    log = (root / "server.log").read_text(errors="replace")
    for marker in ("generic_exception_handler", "inference_error_handler", "Exception in ASGI application"):
        assert marker not in log, log[log.index(marker) - 3000 : log.index(marker) + 3000]


def _send(server: FuzzServer, path: str, content: bytes, headers: dict[str, str], what: str) -> httpx.Response:
    server.sent += 1
    try:
        resp = server.client.post(server.url + path, content=content, headers=headers)
    except httpx.TimeoutException:
        pytest.fail(f"{what}: no answer within {TIMEOUT_S} s (hang); body starts {content[:200]!r}")
    server.statuses[resp.status_code] = server.statuses.get(resp.status_code, 0) + 1
    return resp


def _check(resp: httpx.Response, expect: Expect, what: str, content: bytes) -> None:
    """The property: 2xx for valid input, otherwise 4xx with a JSON error; never 5xx."""
    context = f"{what}: {resp.status_code} {resp.text[:300]!r} for body {content[:300]!r}"
    event(f"expected {expect}, got {resp.status_code}")  # --hypothesis-show-statistics shows the mix
    assert resp.status_code < 500, context
    if resp.status_code >= 400:
        body = resp.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), context
    allowed = {
        "ok": {200},
        "reject": set(range(400, 500)),
        "any": {200, *range(400, 500)},
        "too_large": {413},
    }[expect]
    assert resp.status_code in allowed, f"expected {expect}; {context}"


def _check_v1_predictions(resp: httpx.Response, count: int) -> None:
    predictions = resp.json()["predictions"]
    assert len(predictions) == count
    for pred in predictions:
        assert 0 <= pred["class_id"] < NUM_CLASSES and 0.0 <= pred["probability"] <= 1.0
        assert len(pred["top_k"]) == 3


# ---- strategies ----------------------------------------------------------------------------------

MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"P6\n32 32\n255\n", b"P3\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]


@st.composite
def corrupted(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A real image cut short, with bytes flipped, or with bytes spliced in."""
    data = bytearray(draw(st.sampled_from(originals)))
    how = draw(st.sampled_from(["cut", "flip", "cut+flip", "splice", "header"]))
    if "cut" in how:
        data = data[: draw(st.integers(0, len(data) - 1))]
    if "flip" in how and data:
        for _ in range(draw(st.integers(1, 16))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    if how == "header":  # the header (sizes, chunk lengths) of the image is where parsers trust input
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, min(40, len(data) - 1)))
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def images(seeds: Seeds) -> st.SearchStrategy[tuple[bytes, Expect]]:
    """Image bytes and what the server must make of them."""
    return st.one_of(
        st.sampled_from(seeds.encoded).map(lambda b: (b, "ok")),
        corrupted(seeds.encoded).map(lambda b: (b, "any")),
        st.builds(lambda m, tail: m + tail, st.sampled_from(MAGIC), st.binary(max_size=200)).map(lambda b: (b, "any")),
        st.binary(max_size=200).map(lambda b: (b, "any" if b else "reject")),
        st.sampled_from(seeds.too_large).map(lambda b: (b, "reject")),
        st.sampled_from(seeds.other_formats).map(lambda b: (b, "reject")),
    )


def _worst(expects: list[Expect]) -> Expect:
    if "reject" in expects:
        return "reject"
    return "any" if "any" in expects else "ok"


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(["b64", "image_bytes", "instances", "inputs", "data", "shape", "x"]), inner),
    ),
    max_leaves=30,
)


def v1_instances(seeds: Seeds) -> st.SearchStrategy[tuple[Any, Expect]]:
    """One V1 instance: base64 image, pixel tensor, or junk."""
    side = st.integers(1, 6)
    hwc = st.tuples(side, side).flatmap(
        lambda hw: st.lists(
            st.lists(st.lists(st.integers(0, 255), min_size=3, max_size=3), min_size=hw[1], max_size=hw[1]),
            min_size=hw[0],
            max_size=hw[0],
        )
    )
    chw = st.tuples(side, side).flatmap(
        lambda hw: st.lists(
            st.lists(
                st.lists(st.floats(0.0, 1.0), min_size=hw[1], max_size=hw[1]),
                min_size=hw[0],
                max_size=hw[0],
            ),
            min_size=3,
            max_size=3,
        )
    )
    ragged = st.lists(st.lists(st.lists(st.integers(-300, 300), max_size=4), max_size=4), max_size=4)
    return st.one_of(
        images(seeds).map(lambda ie: ({"b64": base64.b64encode(ie[0]).decode()}, ie[1])),
        images(seeds).map(lambda ie: ({"image_bytes": {"b64": base64.b64encode(ie[0]).decode()}}, ie[1])),
        st.text(max_size=40).map(lambda t: ({"b64": t}, "any")),
        hwc.map(lambda x: (x, "ok")),
        chw.map(lambda x: (x, "ok")),
        st.sampled_from(seeds.pixels).map(lambda a: (a.tolist(), "ok")),
        ragged.map(lambda x: (x, "any")),
        json_values.map(lambda x: (x, "any")),
    )


@st.composite
def v1_requests(draw: st.DrawFn, seeds: Seeds) -> tuple[bytes, str | None, Expect, int]:
    """(body, content-type, expectation, images in a valid body) for POST /v1/models/<name>:predict."""
    kind = draw(
        st.sampled_from(["instances", "instances", "instances", "junk", "bytes", "cut", "deep", "huge", "amplify"])
    )
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                None,
                "application/x-www-form-urlencoded",
            ]
        )
    )
    if kind == "instances":
        pairs = draw(st.lists(v1_instances(seeds), max_size=MAX_BATCH + 2))
        key = draw(st.sampled_from(["instances", "instances", "inputs"]))
        body = json.dumps({key: [p[0] for p in pairs]}).encode()
        expect = _worst([p[1] for p in pairs]) if 1 <= len(pairs) <= MAX_BATCH else "reject"
        return body, content_type, expect, len(pairs)
    if kind == "junk":  # valid JSON of the wrong shape (or, rarely, of the right one)
        return json.dumps(draw(json_values)).encode(), content_type, "any", -1
    if kind == "bytes":  # not JSON at all, unicode included
        raw = draw(
            st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")))
        )
        return raw, content_type, "any", -1
    if kind == "amplify":  # tiny images of MAX_PIXELS each: over max_request_pixels from the fifth on
        count = draw(st.integers(1, MAX_BATCH))
        ok = count * MAX_PIXELS <= MAX_REQUEST_PIXELS
        return _v1_b64([seeds.amplifier] * count), content_type, "ok" if ok else "reject", count
    valid = _v1_b64([draw(st.sampled_from(seeds.encoded))])
    if kind == "cut":  # a valid body cut short is never valid JSON
        return valid[: draw(st.integers(0, len(valid) - 1))], content_type, "reject", -1
    if kind == "deep":
        depth = draw(st.integers(50, 20_000))
        inner = b"[" * depth + b"]" * depth
        return b'{"instances": ' + inner + b"}", content_type, "reject", -1
    # huge: a valid body padded with whitespace to just under, or over, the body limit
    over = draw(st.booleans())
    size = MAX_BODY + draw(st.integers(1, 4096)) if over else MAX_BODY - draw(st.integers(0, 4096))
    body = valid[:-1] + b" " * (size - len(valid)) + b"}"
    return body, content_type, "too_large" if over else "ok", 1


def _uint8_input(pixels: list[np.ndarray]) -> dict[str, Any]:
    arr = np.stack(pixels)
    return {"name": "image", "shape": list(arr.shape), "datatype": "UINT8", "data": arr.reshape(-1).tolist()}


def _fp32_input(pixels: list[np.ndarray]) -> dict[str, Any]:
    arr = (np.stack(pixels).transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    return {"name": "image", "shape": list(arr.shape), "datatype": "FP32", "data": arr.reshape(-1).tolist()}


def _bytes_input(images: list[bytes]) -> dict[str, Any]:
    data = [base64.b64encode(i).decode() for i in images]
    return {"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}


OUTPUT_NAMES = ["class_id", "probability", "class_name", "top_k_class_id", "top_k_probability"]


@st.composite
def v2_inputs(draw: st.DrawFn, seeds: Seeds) -> tuple[dict[str, Any], Expect, int]:
    """One V2 input tensor, valid or mutated."""
    count = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["BYTES", "UINT8", "FP32"]))
    if kind == "BYTES":
        pairs = draw(st.lists(images(seeds), min_size=count, max_size=count))
        inp, expect = _bytes_input([p[0] for p in pairs]), _worst([p[1] for p in pairs])
    else:
        pixels = draw(st.lists(st.sampled_from(seeds.pixels), min_size=count, max_size=count))
        inp, expect = (_uint8_input if kind == "UINT8" else _fp32_input)(pixels), "ok"
    mutation = draw(st.sampled_from(["none", "none", "datatype", "shape", "data", "drop", "name", "parameters"]))
    if mutation == "datatype":
        inp["datatype"] = draw(
            st.one_of(st.sampled_from(["INT32", "FP16", "BOOL", "FP64", "", "bytes"]), st.text(max_size=8))
        )
        expect = "reject" if inp["datatype"] not in ("BYTES", "UINT8", "FP32") else "any"
    elif mutation == "shape":
        inp["shape"] = draw(st.lists(st.integers(-3, 2**40), max_size=6))
        expect = "any"
    elif mutation == "data":
        inp["data"] = draw(st.one_of(json_values, st.lists(json_scalars, max_size=20)))
        expect = "any"
    elif mutation == "drop":
        del inp[draw(st.sampled_from(["name", "shape", "datatype", "data"]))]
        expect = "reject"
    elif mutation == "name":
        inp["name"] = draw(st.text(max_size=30))  # any name is allowed: unicode, empty
    elif mutation == "parameters":
        inp["parameters"] = draw(st.dictionaries(st.text(max_size=10), json_scalars, max_size=3))
        expect = "any"
    return inp, expect, count


@st.composite
def v2_json_requests(draw: st.DrawFn, seeds: Seeds) -> tuple[bytes, Expect, int, bool]:
    """(body, expectation, images, binary output asked) for a JSON POST /v2/models/<name>/infer."""
    n_inputs = draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
    drawn = [draw(v2_inputs(seeds)) for _ in range(n_inputs)]
    body: Any = {"inputs": [d[0] for d in drawn]}
    expect = drawn[0][1] if n_inputs == 1 else "reject"
    binary_output = False
    if draw(st.booleans()):
        body["id"] = draw(st.one_of(st.text(max_size=20), json_scalars))
        if not isinstance(body["id"], str | None):
            expect = "reject"
    if draw(st.booleans()):
        names = draw(st.lists(st.one_of(st.sampled_from(OUTPUT_NAMES), st.text(max_size=10)), max_size=3))
        body["outputs"] = [{"name": n} for n in names]
        if any(n not in OUTPUT_NAMES for n in names):
            expect = "reject" if expect == "reject" else "any"
    if draw(st.booleans()):
        body["parameters"] = {"binary_data_output": draw(st.booleans())}
        # Requested outputs (a non-empty list) carry their own `binary_data` flag (default JSON); it wins.
        binary_output = body["parameters"]["binary_data_output"] and not body.get("outputs")
    if draw(st.integers(0, 9)) == 0:
        body = draw(json_values)  # anything else that is JSON
        expect = "any"
    return json.dumps(body).encode(), expect, drawn[0][2] if drawn else 0, binary_output


def _binary_request(inp: dict[str, Any], raw_bytes: bool) -> tuple[dict[str, Any], bytes]:
    """Move an input's data into the binary extension's tail (little-endian, BYTES length-prefixed)."""
    header = {k: v for k, v in inp.items() if k != "data"}
    if inp["datatype"] == "BYTES":
        elements = [base64.b64decode(d) if raw_bytes else d.encode() for d in inp["data"]]
        tail = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    else:
        dtype = np.uint8 if inp["datatype"] == "UINT8" else np.float32
        tail = np.asarray(inp["data"], dtype=dtype).tobytes()
    header["parameters"] = {"binary_data_size": len(tail)}
    return header, tail


@st.composite
def v2_binary_requests(draw: st.DrawFn, seeds: Seeds) -> tuple[bytes, dict[str, str], Expect]:
    """(body, headers, expectation) for the binary-data extension of V2 infer."""
    kind = draw(st.sampled_from(["BYTES", "UINT8", "FP32"]))
    count = draw(st.integers(1, 3))
    if kind == "BYTES":
        inp = _bytes_input(draw(st.lists(st.sampled_from(seeds.encoded), min_size=count, max_size=count)))
    else:
        pixels = draw(st.lists(st.sampled_from(seeds.pixels), min_size=count, max_size=count))
        inp = (_uint8_input if kind == "UINT8" else _fp32_input)(pixels)
    raw_bytes = kind == "BYTES" and draw(st.booleans())  # raw image bytes: kserve 0.21 cannot take them
    header, tail = _binary_request(inp, raw_bytes)
    expect: Expect = "reject" if raw_bytes else "ok"
    mutation = draw(st.sampled_from(["none", "length", "size", "shape", "cut", "flip", "extra", "header", "json"]))
    if mutation == "size":
        header["parameters"]["binary_data_size"] = draw(
            st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=5), st.none(), st.floats(allow_nan=False))
        )
    elif mutation == "shape":
        header["shape"] = draw(st.one_of(st.lists(st.integers(-2, 2**40), max_size=5), st.text(max_size=5), st.none()))
    document: Any = {"inputs": [header]}
    if mutation == "header":  # the JSON header itself of the wrong shape
        document = draw(
            st.one_of(
                json_values,
                st.just({"inputs": "x"}),
                st.just({"inputs": [header], "outputs": "x"}),
                st.just({"inputs": [header], "id": 5}),
                st.just({"inputs": [header], "parameters": ["binary_data_output"]}),
            )
        )
    json_bytes = json.dumps(document).encode()
    length = str(len(json_bytes))
    if mutation == "length":
        length = draw(st.one_of(st.integers(-100, 10**6).map(str), st.text(alphabet="0123456789abc-+", max_size=8)))
    body = json_bytes + tail
    if mutation == "cut":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif mutation == "flip":
        data = bytearray(body)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        body = bytes(data)
    elif mutation == "extra":
        body += draw(st.binary(min_size=1, max_size=64))
    if mutation != "none":
        expect = "any"
    content_type = "application/json" if mutation == "json" else "application/octet-stream"
    if mutation == "json":  # FastAPI then parses the binary body as JSON: a 400, never more
        expect = "reject"
    return body, {"inference-header-content-length": length, "content-type": content_type}, expect


# ---- the codec in-process: any input is a batch of the right shape or a categorized rejection ------

CODEC_LIMITS = CodecLimits(
    max_batch=MAX_BATCH, max_pixels=MAX_PIXELS, max_image_bytes=256 * 1024, max_request_pixels=MAX_REQUEST_PIXELS
)
SIZE = 32


def _decoded_or_rejected(decode: Any, *args: Any) -> torch.Tensor | None:
    """The codec's contract: a uint8 (N, 3, S, S) batch with 1 <= N <= max_batch, or `Rejected` with a known reason."""
    try:
        batch: torch.Tensor = decode(*args, SIZE, CODEC_LIMITS)
    except Rejected as exc:
        assert exc.category in REJECTION_REASONS, exc.category
        assert str(exc), "a rejection must say what was wrong"
        return None
    assert batch.dtype == torch.uint8 and batch.ndim == 4 and batch.shape[1:] == (3, SIZE, SIZE), batch.shape
    assert 1 <= batch.shape[0] <= MAX_BATCH
    return batch


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow on damaged TIFF headers: expected here
@settings(FUZZ, max_examples=_examples(400))
@given(data=st.data())
def test_codec_any_image_bytes_decode_or_are_rejected(seeds: Seeds, data: st.DataObject) -> None:
    image, expect = data.draw(images(seeds))
    batch = _decoded_or_rejected(lambda body, size, limits: decode_raw_image(body, size, limits), image)
    assert (batch is not None) if expect == "ok" else (batch is None) if expect == "reject" else True


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow on damaged TIFF headers: expected here
@settings(FUZZ, max_examples=_examples(400))
@given(data=st.data())
def test_codec_any_v1_json_decodes_or_is_rejected(seeds: Seeds, data: st.DataObject) -> None:
    body_bytes, _, expect, count = data.draw(v1_requests(seeds).filter(lambda r: r[2] != "too_large"))
    try:
        body = json.loads(body_bytes)
    except (ValueError, RecursionError):
        return  # not JSON: the server refuses it before the codec (covered over HTTP above)
    batch = _decoded_or_rejected(decode_v1, body)
    if expect == "ok":
        assert batch is not None and batch.shape[0] == count
    elif expect == "reject":
        assert batch is None


@settings(FUZZ, max_examples=_examples(400))
@given(
    datatype=st.one_of(st.sampled_from(["BYTES", "UINT8", "FP32", "INT64", "FP16"]), st.text(max_size=5)),
    shape=st.one_of(st.lists(st.integers(-2, 2**40), max_size=5), json_values),
    data=st.one_of(json_values, st.lists(st.integers(-1, 256), max_size=200), st.binary(max_size=400)),
    raw=st.booleans(),
)
def test_codec_any_v2_input_decodes_or_is_rejected(datatype: Any, shape: Any, data: Any, raw: bool) -> None:
    """What the binary extension and gRPC hand over is not validated by kserve: shape and data may be anything."""
    if raw and isinstance(data, bytes):
        inp = InferInput(name="x", shape=shape, datatype=datatype)
        inp._raw_data = data  # as kserve's gRPC path sets it from raw_input_contents
    else:
        inp = InferInput(name="x", shape=shape, datatype=datatype, data=data)
    _decoded_or_rejected(decode_v2, InferRequest(model_name=NAME, infer_inputs=[inp]))


# ---- the property tests --------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_v1_predict_never_fails_the_server(server: FuzzServer, seeds: Seeds, data: st.DataObject) -> None:
    body, content_type, expect, count = data.draw(v1_requests(seeds))
    headers = {"content-type": content_type} if content_type is not None else {}
    resp = _send(server, f"/v1/models/{NAME}:predict", body, headers, "V1")
    _check(resp, expect, "V1", body)
    if resp.status_code == 200 and count > 0:
        _check_v1_predictions(resp, count)


@FUZZ
@given(data=st.data())
def test_v2_infer_json_never_fails_the_server(server: FuzzServer, seeds: Seeds, data: st.DataObject) -> None:
    body, expect, count, binary_output = data.draw(v2_json_requests(seeds))
    resp = _send(server, f"/v2/models/{NAME}/infer", body, {"content-type": "application/json"}, "V2 JSON")
    _check(resp, expect, "V2 JSON", body)
    if resp.status_code == 200 and expect == "ok":
        header_length = resp.headers.get("inference-header-content-length")
        assert (header_length is not None) == binary_output, resp.headers
        result = json.loads(resp.content[: int(header_length)] if header_length else resp.content)
        assert result["model_name"] == NAME
        assert all(out["shape"][0] == count for out in result["outputs"])


@FUZZ
@given(data=st.data())
def test_v2_infer_binary_extension_never_fails_the_server(
    server: FuzzServer, seeds: Seeds, data: st.DataObject
) -> None:
    body, headers, expect = data.draw(v2_binary_requests(seeds))
    resp = _send(server, f"/v2/models/{NAME}/infer", body, headers, "V2 binary")
    _check(resp, expect, "V2 binary", body)


@settings(FUZZ, max_examples=_examples(400))
@given(data=st.data())
def test_raw_image_body_never_fails_the_server(server: FuzzServer, seeds: Seeds, data: st.DataObject) -> None:
    image, expect = data.draw(images(seeds))
    content_type = data.draw(
        st.sampled_from(
            ["image/png", "image/jpeg", "image/x-portable-pixmap", "application/octet-stream", "image/webp"]
        )
    )
    resp = _send(server, f"/v1/models/{NAME}:predict", image, {"content-type": content_type}, "raw image")
    _check(resp, expect, "raw image", image)
    if resp.status_code == 200:
        _check_v1_predictions(resp, 1)


@settings(FUZZ, max_examples=_examples(150))
@given(name=st.text(st.characters(exclude_categories=["Cs"]), max_size=40).filter(lambda n: n != NAME))
def test_wrong_model_names_get_404(server: FuzzServer, seeds: Seeds, name: str) -> None:
    """Any other name (unicode, '/', '%', control characters, empty): 404, or 405 where no route fits."""
    quoted = quote(name, safe="")
    v2_body = json.dumps({"inputs": [_bytes_input(seeds.encoded[:1])]}).encode()
    for path, body in (
        (f"/v1/models/{quoted}:predict", _v1_b64(seeds.encoded[:1])),
        (f"/v2/models/{quoted}/infer", v2_body),
    ):
        resp = _send(server, path, body, {"content-type": "application/json"}, f"model name {name!r}")
        _check(resp, "reject", f"model name {name!r}", body)
        assert resp.status_code in (404, 405), (path, resp.status_code, resp.text)


# ---- schemathesis: every operation of the server's own OpenAPI document ---------------------------


@dataclass
class OpenAPIStrategies:
    """schemathesis strategies over every operation: as generated, and aimed at the served model."""

    operations: list[str]
    strategies: list[st.SearchStrategy[Any]]
    session: requests.Session  # schemathesis calls through `requests`: one keep-alive session


@pytest.fixture(scope="module")
def openapi(server: FuzzServer) -> Iterator[OpenAPIStrategies]:
    """KServe's FastAPI app serves /openapi.json; positive and negative cases are generated from it."""
    document = server.client.get(f"{server.url}/openapi.json").json()
    assert {"/v1/models/{model_name}:predict", "/v2/models/{model_name}/infer"} <= set(document["paths"])
    config = SchemathesisConfig.from_dict({"seed": 20261123, "generation": {"deterministic": True, "database": "none"}})
    # unload would take the model away (an admin operation, not a client mistake).
    schema = schemathesis.openapi.from_dict(document, config=config).exclude(path_regex=r"/unload$")
    # With the real model name, leave out the repository: `load` would reload the model on every call.
    aimed = schema.exclude(path_regex=r"^/v2/repository/")
    strategies = [
        s.as_strategy(generation_mode=mode, path_parameters=params)
        for s, params in ((schema, None), (aimed, {"model_name": NAME}))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    operations = [op.ok().label for op in schema.get_all_operations() if isinstance(op, Ok)]
    assert len(operations) >= 12, operations
    with requests.Session() as session:
        yield OpenAPIStrategies(operations, strategies, session)


@settings(FUZZ, max_examples=_examples(900))
@given(data=st.data())
def test_openapi_operations_never_fail_the_server(
    server: FuzzServer, openapi: OpenAPIStrategies, data: st.DataObject
) -> None:
    case = data.draw(st.one_of(openapi.strategies))
    server.sent += 1
    try:
        resp = case.call(base_url=server.url, session=openapi.session, timeout=TIMEOUT_S)
    except requests.Timeout:
        pytest.fail(f"{case.as_curl_command()}: no answer within {TIMEOUT_S} s (hang)")
    server.statuses[resp.status_code] = server.statuses.get(resp.status_code, 0) + 1
    event(f"{case.operation.label} -> {resp.status_code}")
    context = f"{case.as_curl_command()[:600]} -> {resp.status_code} {resp.text[:300]!r}"
    assert resp.status_code < 500, context
    if resp.status_code >= 400:
        body = resp.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), context


# ---- afterwards ----------------------------------------------------------------------------------


def test_after_fuzzing_memory_is_bounded_and_answers_are_unchanged(server: FuzzServer, seeds: Seeds) -> None:
    """Runs last (file order): the same valid request as before the fuzzing, the same answer."""
    if server.sent < min(MIN_FUZZ_REQUESTS, _examples(MIN_FUZZ_REQUESTS)):
        pytest.skip(f"only {server.sent} fuzz requests sent; run the whole file")
    resp = server.client.post(f"{server.url}/v1/models/{NAME}:predict", content=_v1_b64(seeds.encoded[:MAX_BATCH]))
    assert resp.status_code == 200, resp.text
    after = resp.json()["predictions"]
    assert [p["class_id"] for p in after] == [p["class_id"] for p in server.reference]
    np.testing.assert_allclose(
        [p["probability"] for p in after], [p["probability"] for p in server.reference], rtol=1e-5
    )
    growth = rss_mib(server.pid) - server.baseline_rss_mib
    print(f"\nfuzz: {server.sent} requests, statuses {dict(sorted(server.statuses.items()))}, RSS +{growth:.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT_MIB, f"server RSS grew {growth:.1f} MiB over {server.sent} fuzz requests"
