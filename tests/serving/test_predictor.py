"""The predictor gives exactly what the model gives on `to_model_input`, and loads only verified registry models."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse
from prometheus_client import CollectorRegistry

from serving.batcher import BatchingConfig
from serving.monitoring.metrics import PredictorMetrics
from serving.predictor import ModelSource, PredictorOptions, TSRPredictor
from tests.conftest import make_model_dir
from tsr.core.config import StoreConfig
from tsr.core.models import WEIGHTS_FILE, load_model_dir
from tsr.core.preprocessing import load_image_file, to_model_input
from tsr.core.registry import Registry, RegistryError
from tsr.core.store import S3Store


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
    predictor = TSRPredictor("gtsrb-classifier", ModelSource(str(tiny_model_dir)), PredictorOptions(threads=1))
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
    predictor = TSRPredictor("gtsrb-classifier", ModelSource(str(tiny_model_dir)), PredictorOptions(threads=1))
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
        predictor = TSRPredictor(
            name, ModelSource(spec, minio, tmp_path / spec.replace("/", "_")), PredictorOptions(threads=1)
        )
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
    predictor = TSRPredictor(name, ModelSource("champion", minio, tmp_path / "cache"), PredictorOptions(threads=1))
    with pytest.raises(RegistryError, match=WEIGHTS_FILE):
        predictor.load()
    assert not predictor.ready


# ---- metrics, drift and hot reload -----------------------------------------------------------------


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} not exported"
    return value


def _uint8_request(name: str, pixels: np.ndarray) -> InferRequest:
    request = InferRequest(
        model_name=name, infer_inputs=[InferInput(name="image", shape=list(pixels.shape), datatype="UINT8")]
    )
    request.inputs[0].set_data_from_numpy(pixels, binary_data=False)
    return request


def test_metrics_count_predictions_rejections_and_drift(tiny_model_dir: Path, images: list[Path]) -> None:
    registry = CollectorRegistry()
    options = PredictorOptions(threads=1, drift_window=50, drift_min_images=10)
    predictor = TSRPredictor("m", ModelSource(str(tiny_model_dir)), options, PredictorMetrics.create(registry))
    predictor.load()
    labels = {"model": "m", "version": "local"}
    assert _sample(registry, "tsr_model_info", {"model": "m", **_info_labels(registry)}) == 1.0
    assert math.isnan(_sample(registry, "tsr_input_drift_psi", {"model": "m"}))  # nothing seen yet

    body = {"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in images]}
    predictions = _call(predictor, body)["predictions"]
    classes = Counter(p["class_id"] for p in predictions)
    for class_id, count in classes.items():
        class_labels = {**labels, "class_id": str(class_id), "class_name": predictor.config.class_names[class_id]}
        assert _sample(registry, "tsr_predictions_total", class_labels) == count
    assert _sample(registry, "tsr_prediction_confidence_count", labels) == len(images)
    assert _sample(registry, "tsr_request_images_sum", {"model": "m", "protocol": "v1"}) == len(images)
    assert _sample(registry, "tsr_inference_batch_size_sum", {"model": "m"}) == len(images)

    # Outside an HTTP request (as for gRPC) the predictor counts its own rejections, by reason.
    with pytest.raises(InvalidInput):
        _call(predictor, {"instances": []})
    with pytest.raises(InvalidInput):
        _call(predictor, {"instances": [{"b64": "%%%"}]})
    assert _sample(registry, "tsr_requests_rejected_total", {"model": "m", "reason": "empty_batch"}) == 1
    assert _sample(registry, "tsr_requests_rejected_total", {"model": "m", "reason": "undecodable_image"}) == 1

    # Black images are far from the (uniform random) training reference: PSI far above 0.25.
    _call(predictor, _uint8_request("m", np.zeros((20, 32, 32, 3), dtype=np.uint8)))
    assert _sample(registry, "tsr_input_drift_window_images", {"model": "m"}) == len(images) + 20
    assert _sample(registry, "tsr_input_drift_psi", {"model": "m"}) > 1.0
    for channel in ("red", "green", "blue"):
        observed = _sample(registry, "tsr_input_channel_mean", {"model": "m", "channel": channel})
        reference = _sample(registry, "tsr_input_reference_channel_mean", {"model": "m", "channel": channel})
        assert 0.0 <= observed < reference  # zeros pulled the window's brightness down
        assert reference == pytest.approx(0.5, abs=0.02)  # uniform random pixels


def test_served_probability_is_softmax_of_logits_over_the_temperature(tmp_path: Path) -> None:
    """The calibrated probability leaves through V1, V2 and the confidence histogram alike."""
    temperature = 2.5
    model_dir = make_model_dir(tmp_path / "calibrated", temperature=temperature)
    registry = CollectorRegistry()
    predictor = TSRPredictor(
        "m", ModelSource(str(model_dir)), PredictorOptions(threads=1), PredictorMetrics.create(registry)
    )
    predictor.load()
    assert predictor.config.temperature == temperature
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    model, config = load_model_dir(model_dir)
    with torch.inference_mode():
        logits = model(to_model_input(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), config.preprocess))
    calibrated = torch.softmax(logits / temperature, dim=1).max(1).values
    raw = torch.softmax(logits, dim=1).max(1).values
    assert not torch.allclose(calibrated, raw, atol=1e-3)  # the test can tell the two apart

    outputs = {
        o["name"]: o
        for o in json.loads(json.dumps(_call(predictor, _uint8_request("m", pixels)).to_rest()[0]))["outputs"]
    }
    assert outputs["probability"]["data"] == pytest.approx(calibrated.tolist(), abs=1e-5)
    confidence_sum = _sample(registry, "tsr_prediction_confidence_sum", {"model": "m", "version": "local"})
    assert confidence_sum == pytest.approx(float(calibrated.sum()), abs=1e-4)


def _info_labels(registry: CollectorRegistry) -> dict[str, str]:
    for metric in registry.collect():
        if metric.name == "tsr_model":
            for sample in metric.samples:
                return {k: v for k, v in sample.labels.items() if k != "model"}
    raise AssertionError("tsr_model_info not exported")


def test_concurrent_requests_share_forward_passes(tiny_model_dir: Path, images: list[Path]) -> None:
    registry = CollectorRegistry()
    options = PredictorOptions(threads=1, batching=BatchingConfig(max_batch_size=64, max_wait_s=0.05))
    predictor = TSRPredictor("m", ModelSource(str(tiny_model_dir)), options, PredictorMetrics.create(registry))
    predictor.load()
    body = {"instances": [{"b64": base64.b64encode(images[0].read_bytes()).decode()}]}

    async def many() -> list[Any]:
        return list(await asyncio.gather(*(predictor(body, headers={}) for _ in range(16))))

    results = asyncio.run(many())
    first = results[0][0]["predictions"][0]
    assert all(r[0]["predictions"][0] == first for r in results)  # each caller gets its own row back
    passes = _sample(registry, "tsr_inference_batch_size_count", {"model": "m"})
    assert _sample(registry, "tsr_inference_batch_size_sum", {"model": "m"}) == 16
    assert passes < 16  # at least two requests shared a forward pass


def test_reload_follows_champion_and_keeps_old_model_on_failure(
    minio: StoreConfig, tmp_path: Path, images: list[Path]
) -> None:
    name = "signs-reload"
    registry_metrics = CollectorRegistry()
    first = _publish(minio, make_model_dir(tmp_path / "a", seed=1), name)
    predictor = TSRPredictor(
        name,
        ModelSource("champion", minio, tmp_path / "cache"),
        PredictorOptions(threads=1),
        PredictorMetrics.create(registry_metrics),
    )
    predictor.load()
    assert predictor.model_version == first
    assert asyncio.run(predictor.reload()) is False  # champion unchanged: nothing downloaded or swapped

    second = _publish(minio, make_model_dir(tmp_path / "b", seed=2), name)
    assert second != first
    assert asyncio.run(predictor.reload()) is True
    assert predictor.model_version == second and predictor.ready
    request = _uint8_request(name, np.zeros((1, 32, 32, 3), dtype=np.uint8))
    assert _call(predictor, request).model_version == second

    # A champion whose files were tampered with: the reload fails, the verified model keeps serving.
    third = _publish(minio, make_model_dir(tmp_path / "c", seed=3), name)
    S3Store(minio, "models").put_bytes(f"{name}/{third}/{WEIGHTS_FILE}", b"not the weights")
    with pytest.raises(RegistryError):
        asyncio.run(predictor.reload())
    assert predictor.model_version == second and predictor.ready
    assert _call(predictor, request).model_version == second
    assert _sample(registry_metrics, "tsr_model_reloads_total", {"model": name, "result": "success"}) == 1
    assert _sample(registry_metrics, "tsr_model_reloads_total", {"model": name, "result": "failure"}) == 1


def test_a_registry_version_copied_whole_reports_its_version(tmp_path: Path) -> None:
    """Under KServe the storage-initializer copies s3://models/<name>/<version>/ into /mnt/models and the
    predictor loads that directory: it reports the registry version and URI from the card, after checking
    every file against its signature and SHA256SUMS, instead of "local"."""
    store = StoreConfig(kind="dir", directory=tmp_path / "store")
    registry = Registry.from_config(store)
    version = registry.publish("m", make_model_dir(tmp_path / "model"), card={})
    mnt = tmp_path / "mnt-models"
    shutil.copytree(tmp_path / "store" / "models" / "m" / version, mnt)  # what the storage-initializer does
    predictor = TSRPredictor("m", ModelSource(str(mnt)), PredictorOptions(threads=1))
    assert predictor.load()
    assert predictor.model_version == version and predictor.model_uri == registry.uri("m", version)
    (mnt / WEIGHTS_FILE).write_bytes(b"not the weights")
    # the signature is checked first and names the changed file
    with pytest.raises(RegistryError, match=r"content differs from the signed content: model\.safetensors"):
        TSRPredictor("m", ModelSource(str(mnt)), PredictorOptions(threads=1)).load()
