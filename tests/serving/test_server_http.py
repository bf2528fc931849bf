"""The real server in a subprocess: V1 and V2 over HTTP, 4xx for client mistakes, and it keeps serving."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import make_model_dir
from tsr.config import REPO_ROOT
from tsr.local_minio import free_port
from tsr.preprocessing import load_image_file

NAME = "gtsrb-classifier"


@dataclass
class Server:
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    model_dir = make_model_dir(root / "model")
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "TSR_STATE_DIR": str(root / "state")}
    cmd = [sys.executable, "-m", "serving", "--model", str(model_dir), "--model-name", NAME]
    cmd += ["--http-port", str(port), "--threads", "1"]
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v2/models/{NAME}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after 180s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
            422,
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
