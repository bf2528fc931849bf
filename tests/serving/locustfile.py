"""Locust users for tests/serving/test_load.py: real GTSRB signs to V1 and V2, every answer checked.

Run by test_load.py in its own process (`python -m locust -f tests/serving/locustfile.py ...`):
locust monkeypatches the standard library with gevent, so it must never be imported by pytest.

TSR_LOAD_SAMPLES names a JSON file written by the test: `{"model": <name>, "samples": [{"ppm_b64":
<base64 PPM>, "class_id": <the server's answer for it alone>}, ...]}`. Each response must
carry that class: under concurrency requests share forward passes, and an answer that went
to the wrong request is a failure, as is any non-200.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, task

_MANIFEST = json.loads(Path(os.environ["TSR_LOAD_SAMPLES"]).read_text())
MODEL: str = _MANIFEST["model"]
SAMPLES: list[dict[str, Any]] = _MANIFEST["samples"]
RAW: list[bytes] = [base64.b64decode(s["ppm_b64"]) for s in SAMPLES]


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
