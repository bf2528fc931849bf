"""The predictor gives exactly what the model gives on `to_model_input`, and loads only verified registry models."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from serving.predictor import ModelSource, TSRPredictor
from tsr.config import StoreConfig
from tsr.models import WEIGHTS_FILE, load_model_dir
from tsr.preprocessing import load_image_file, to_model_input
from tsr.registry import Registry, RegistryError
from tsr.store import S3Store


@pytest.fixture(scope="module")
def images(gtsrb_root: Path) -> list[Path]:
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    return [sorted((training / f"{c:05d}").glob("*.ppm"))[3] for c in (1, 12, 25, 40)]


def _call(predictor: TSRPredictor, body: Any) -> Any:
    response, _headers = asyncio.run(predictor(body, headers={}))
    return response


def _direct(model_dir: Path, paths: list[Path]) -> torch.Tensor:
    model, config = load_model_dir(model_dir)
    batch = torch.stack([load_image_file(p, config.preprocess.image_size) for p in paths])
    with torch.inference_mode():
        return torch.softmax(model(to_model_input(batch, config.preprocess)), dim=1)


def test_v1_output_equals_direct_model_call(tiny_model_dir: Path, images: list[Path]) -> None:
    predictor = TSRPredictor("gtsrb-classifier", ModelSource(str(tiny_model_dir)), threads=1)
    assert not predictor.ready
    assert predictor.load() and predictor.ready
    assert predictor.model_uri == str(tiny_model_dir.resolve()) and predictor.model_version is None
    body = {"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in images]}
    predictions = _call(predictor, body)["predictions"]
    expected = _direct(tiny_model_dir, images)
    names = predictor.config.class_names
    assert len(predictions) == len(images)
    for pred, probs in zip(predictions, expected, strict=True):
        class_id = int(probs.argmax())
        assert pred["class_id"] == class_id and pred["class_name"] == names[class_id]
        assert pred["probability"] == pytest.approx(float(probs[class_id]), abs=1e-5)
        assert [t["class_id"] for t in pred["top_k"]] == probs.topk(3).indices.tolist()
        assert pred["top_k"][0]["probability"] == pred["probability"]
    json.dumps(predictions)


def test_v2_response_serializes_and_matches(tiny_model_dir: Path, images: list[Path]) -> None:
    predictor = TSRPredictor("gtsrb-classifier", ModelSource(str(tiny_model_dir)), threads=1)
    predictor.load()
    data = [base64.b64encode(p.read_bytes()).decode() for p in images]
    request = InferRequest(
        model_name="gtsrb-classifier",
        infer_inputs=[InferInput(name="image", shape=[len(data)], datatype="BYTES", data=data)],
        request_id="req-1",
    )
    response = _call(predictor, request)
    assert isinstance(response, InferResponse)
    rest, json_length = response.to_rest()
    assert json_length is None and isinstance(rest, dict)
    body = json.loads(json.dumps(rest))
    assert body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    expected = _direct(tiny_model_dir, images)
    assert outputs["class_id"]["datatype"] == "INT64" and outputs["class_id"]["shape"] == [len(images)]
    assert outputs["probability"]["datatype"] == "FP32"
    assert outputs["class_name"]["datatype"] == "BYTES"
    assert outputs["class_id"]["data"] == expected.argmax(1).tolist()
    assert outputs["probability"]["data"] == pytest.approx(expected.max(1).values.tolist(), abs=1e-5)
    assert outputs["class_name"]["data"] == [predictor.config.class_names[i] for i in outputs["class_id"]["data"]]
    assert outputs["top_k_class_id"]["shape"] == [len(images), 3]
    assert [o["name"] for o in predictor.get_output_types()] == [o["name"] for o in body["outputs"]]


def _publish(cfg: StoreConfig, model_dir: Path, name: str) -> str:
    registry = Registry.from_config(cfg)
    version = registry.publish(name, model_dir, card={})
    registry.set_alias(name, version)
    return version


def test_registry_champion_and_uri_load(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    name = "signs-test"
    version = _publish(minio, tiny_model_dir, name)
    for spec in ("champion", f"s3://models/{name}/{version}"):
        predictor = TSRPredictor(name, ModelSource(spec, minio, tmp_path / spec.replace("/", "_")), threads=1)
        assert predictor.load() and predictor.ready
        assert predictor.model_uri is not None and predictor.model_uri.endswith(f"{name}/{version}")
        assert predictor.model_version == version  # the alias is reported as the version it resolved to
        request = InferRequest(
            model_name=name, infer_inputs=[InferInput(name="image", shape=[1, 32, 32, 3], datatype="UINT8")]
        )
        request.inputs[0].set_data_from_numpy(np.zeros((1, 32, 32, 3), dtype=np.uint8), binary_data=False)
        assert _call(predictor, request).model_version == version


def test_tampered_registry_object_is_refused(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    name = "signs-test"
    version = _publish(minio, tiny_model_dir, name)
    S3Store(minio, "models").put_bytes(f"{name}/{version}/{WEIGHTS_FILE}", b"not the weights")
    predictor = TSRPredictor(name, ModelSource("champion", minio, tmp_path / "cache"), threads=1)
    with pytest.raises(RegistryError, match=WEIGHTS_FILE):
        predictor.load()
    assert not predictor.ready
