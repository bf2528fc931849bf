"""Locust users for tests/serving/test_load.py: real GTSRB signs to V1 and V2, every answer checked,
and one client that sends large and bad requests at a fixed pace.

Run by test_load.py in its own process (`python -m locust -f tests/serving/locustfile.py ...`):
locust monkeypatches the standard library with gevent, so it must never be imported by pytest.

TSR_LOAD_SAMPLES names a JSON file written by the test: `{"model": <name>, "samples": [{"ppm_b64":
<base64 PPM>, "class_id": <the server's answer for it alone>}, ...]}`. Each response must
carry that class: under concurrency requests share forward passes, and an answer that went
to the wrong request is a failure, as is any non-200. The manifest also names the server's
`max_batch` and `max_request_bytes`, which `HeavyClient` sends at and over.

`HeavyClient` (exactly one, of the run's users) sends one request every `pace_s` seconds, so their
number is bounded by the run's length: the kinds of request that made the predictor's RSS grow in the
red-team round of issue 17 (large JSON bodies) and the ones it must refuse cheaply. Each must get
its exact status (a 200 answer is checked too); anything else is a failure.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, constant_pacing, task
from PIL import Image

_MANIFEST = json.loads(Path(os.environ["TSR_LOAD_SAMPLES"]).read_text())
MODEL: str = _MANIFEST["model"]
SAMPLES: list[dict[str, Any]] = _MANIFEST["samples"]
RAW: list[bytes] = [base64.b64decode(s["ppm_b64"]) for s in SAMPLES]
MAX_BATCH: int = _MANIFEST["max_batch"]
MAX_REQUEST_BYTES: int = _MANIFEST["max_request_bytes"]
HEAVY_PACE_S: float = _MANIFEST["heavy_pace_s"]


def _large_v2_body(images: int, side: int) -> bytes:
    """A V2 FP32 tensor [N, 3, side, side] as JSON numbers (~12 MiB): millions of float objects while the
    server parses it, the kind of body (15.4 MiB of V2 JSON) that raised RSS in the red-team round."""
    pixels = random.Random(17).randbytes(images * 3 * side * side)
    values = [str(round(b / 255, 4)) for b in range(256)]  # written as text directly: json.dumps takes ~1 s
    data = ",".join(map(values.__getitem__, pixels))
    shape = f"[{images},3,{side},{side}]"
    return f'{{"inputs":[{{"name":"image","shape":{shape},"datatype":"FP32","data":[{data}]}}]}}'.encode()


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("P", (width, height)).save(out, format="PNG")
    return out.getvalue()


LARGE_V2_IMAGES = 64
LARGE_V2 = _large_v2_body(LARGE_V2_IMAGES, 96)
if not 1024 * 1024 <= len(LARGE_V2) < MAX_REQUEST_BYTES:
    raise SystemExit(f"the large V2 body is {len(LARGE_V2)} bytes: it must be >= 1 MiB and < {MAX_REQUEST_BYTES}")
# Small files that declare too many pixels (2048x2048 > max_pixels): refused from the header, never decoded.
PIXEL_BOMB_B64 = base64.b64encode(_png(2048, 2048)).decode()
GIF_B64 = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()


class SignClient(FastHttpUser):
    """One client sending one sign per request, back to back (no think time): sustained concurrency."""

    wait_time = constant(0)

    def _pick(self) -> int:
        return random.randrange(len(SAMPLES))

    @task(3)
    def v1_base64(self) -> None:
        i = self._pick()
        body = {"instances": [{"b64": SAMPLES[i]["ppm_b64"]}]}
        with self.client.post(f"/v1/models/{MODEL}:predict", json=body, name="v1 b64", catch_response=True) as resp:
            self._check_v1(resp, i)

    @task(1)
    def v1_raw_image(self) -> None:
        i = self._pick()
        headers = {"content-type": "image/x-portable-pixmap"}
        with self.client.post(
            f"/v1/models/{MODEL}:predict",
            data=RAW[i],  # type: ignore[arg-type]  # bytes are sent as they are; the stub says str | dict
            headers=headers,
            name="v1 raw",
            catch_response=True,
        ) as resp:
            self._check_v1(resp, i)

    @task(2)
    def v2_bytes(self) -> None:
        i = self._pick()
        tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [SAMPLES[i]["ppm_b64"]]}
        with self.client.post(
            f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]}, name="v2 BYTES", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
            if outputs["class_id"] != [SAMPLES[i]["class_id"]]:
                resp.failure(f"sample {i}: class {outputs['class_id']}, expected {SAMPLES[i]['class_id']}")

    @staticmethod
    def _check_v1(resp: Any, i: int) -> None:
        if resp.status_code != 200:
            resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
            return
        predictions = resp.json()["predictions"]
        if len(predictions) != 1 or predictions[0]["class_id"] != SAMPLES[i]["class_id"]:
            resp.failure(f"sample {i}: {predictions!r:.200}, expected class {SAMPLES[i]['class_id']}")


class HeavyClient(FastHttpUser):
    """Large and bad requests, one every HEAVY_PACE_S seconds: bounded in count by the run's length."""

    fixed_count = 1
    wait_time = constant_pacing(HEAVY_PACE_S)

    def _expect(self, name: str, status: int, **kwargs: Any) -> Any:
        with self.client.post(name=name, catch_response=True, **kwargs) as resp:
            if resp.status_code == status:
                resp.success()  # a refusal that was asked for
            else:
                resp.failure(f"HTTP {resp.status_code}, expected {status}: {resp.text[:200]}")
            return resp

    @task(2)
    def v1_max_batch(self) -> None:
        """max_batch real signs in one request (over 1 MiB of JSON): a pass of its own, every answer checked."""
        picks = [random.randrange(len(SAMPLES)) for _ in range(MAX_BATCH)]
        body = {"instances": [{"b64": SAMPLES[i]["ppm_b64"]} for i in picks]}
        with self.client.post(
            f"/v1/models/{MODEL}:predict", json=body, name="heavy v1 max_batch", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            got = [p["class_id"] for p in resp.json()["predictions"]]
            if got != [SAMPLES[i]["class_id"] for i in picks]:
                resp.failure("a max_batch request got answers that are not its images' classes")

    @task(2)
    def v2_large_json(self) -> None:
        headers = {"content-type": "application/json"}
        with self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=LARGE_V2,  # type: ignore[arg-type]  # bytes are sent as they are
            headers=headers,
            name="heavy v2 FP32 json",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
            if len(outputs["class_id"]) != LARGE_V2_IMAGES:
                resp.failure(f"{len(outputs['class_id'])} answers for {LARGE_V2_IMAGES} images")

    @task(1)
    def v1_over_max_batch(self) -> None:
        body = {"instances": [{"b64": SAMPLES[0]["ppm_b64"]}] * (MAX_BATCH + 1)}
        self._expect("bad v1 over max_batch", 400, url=f"/v1/models/{MODEL}:predict", json=body)

    @task(1)
    def body_too_large(self) -> None:
        """One byte over max_request_bytes: 413 from Content-Length, before the body is read."""
        self._expect(
            "bad body over max_request_bytes",
            413,
            url=f"/v1/models/{MODEL}:predict",
            data=b" " * (MAX_REQUEST_BYTES + 1),
            headers={"content-type": "application/json"},
        )

    @task(1)
    def wrong_format(self) -> None:
        body = {"instances": [{"b64": GIF_B64}]}
        self._expect("bad v1 gif", 400, url=f"/v1/models/{MODEL}:predict", json=body)

    @task(1)
    def raw_garbage(self) -> None:
        headers = {"content-type": "image/x-portable-pixmap"}
        data = random.Random(1).randbytes(64 * 1024)
        self._expect("bad v1 raw garbage", 400, url=f"/v1/models/{MODEL}:predict", data=data, headers=headers)

    @task(1)
    def pixel_bombs(self) -> None:
        body = {"instances": [{"b64": PIXEL_BOMB_B64}] * 8}
        self._expect("bad v1 2048x2048 png", 400, url=f"/v1/models/{MODEL}:predict", json=body)

    @task(1)
    def malformed_json(self) -> None:
        headers = {"content-type": "application/json"}
        data = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})[:-7]
        self._expect("bad v2 truncated json", 400, url=f"/v2/models/{MODEL}/infer", data=data, headers=headers)
