"""The optimize step on a briefly trained model: int8 agrees with fp32, the frozen export matches
eager exactly, both variants round-trip through the model directory, and the predictor serves them."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from components.ingest.ingest import IngestConfig, ingest
from components.optimize.optimize import (
    compare_latency,
    export_frozen,
    measure_latency,
    optimize,
    quantize_int8,
    select_engine,
)
from components.train.train import TrainConfig, train, write_model
from serving.monitoring.metrics import PredictorMetrics
from serving.predictor import ModelSource, PredictorOptions, TSRPredictor
from tsr.core import models
from tsr.core.dataset import TRAIN_FILE, VAL_FILE, Split, load_split
from tsr.core.models import CONFIG_FILE, VARIANT_FILES, WEIGHTS_FILE, ModelConfig, load_model_dir, save_model_dir
from tsr.core.preprocessing import to_model_input


@pytest.fixture(scope="module")
def opt_dataset(gtsrb_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ingest step's output for all 4 training tracks per class of the small GTSRB subset."""
    data = tmp_path_factory.mktemp("opt-ds")
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=4), data)
    return data


@pytest.fixture(scope="module")
def trained(opt_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Split, Split]:
    """A tsrnet (width 8) trained for 5 short epochs (~43 % held-out accuracy): (model dir, train, held-out).

    A barely trained model has near-tied logits, which int8 rounding flips; this one is trained
    just enough for the agreement check to measure quantization rather than ties.
    """
    data = opt_dataset
    tr, va = load_split(data / TRAIN_FILE), load_split(data / VAL_FILE)
    cfg = TrainConfig(epochs=5, width=8, threads=2, batch_size=64, lr=0.2, augment=False, export_program=False)
    result = train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False)
    out = tmp_path_factory.mktemp("opt-model") / "fp32"
    write_model(result, out, export_program=False)
    return out, tr, va


def _logits(model: torch.nn.Module, config: ModelConfig, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(to_model_input(images, config.preprocess))


def test_select_engine_is_supported_here() -> None:
    assert select_engine() in torch.backends.quantized.supported_engines


def test_int8_agrees_with_fp32_on_held_out_images(trained: tuple[Path, Split, Split], tmp_path: Path) -> None:
    model_dir, tr, va = trained
    model, config = load_model_dir(model_dir)
    calibration = tr.images[torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))[:256]]
    quantized = quantize_int8(model, config.preprocess, calibration)
    fp32, int8 = _logits(model, config, va.images), _logits(quantized, config, va.images)
    agreement = float((fp32.argmax(1) == int8.argmax(1)).float().mean())
    acc_fp32 = float((fp32.argmax(1) == va.labels).float().mean())
    acc_int8 = float((int8.argmax(1) == va.labels).float().mean())
    assert acc_fp32 > 5 / 43, "the model should have learned something for the comparison to mean anything"
    assert agreement >= 0.95, f"int8 agrees with fp32 on {agreement:.3f} of {len(va)} held-out images"
    assert abs(acc_fp32 - acc_int8) <= 0.02, (acc_fp32, acc_int8)

    # The written int8 directory gives the same predictions as the in-process quantized model.
    result = optimize(model_dir, calibration, tmp_path / "int8", "int8")
    assert result.variant == "int8" and result.quant_engine == select_engine()
    assert result.size_bytes < result.fp32_size_bytes / 2
    loaded, loaded_cfg = load_model_dir(tmp_path / "int8")
    assert loaded_cfg.variant == "int8" and loaded_cfg.quant_engine == select_engine()
    assert loaded_cfg.class_names == config.class_names and loaded_cfg.preprocess == config.preprocess
    assert not (tmp_path / "int8" / WEIGHTS_FILE).exists()
    assert torch.allclose(_logits(loaded, loaded_cfg, va.images[:64]), int8[:64], atol=1e-4)
    # Dynamic batch: a single image works on an archive traced at another batch size.
    assert _logits(loaded, loaded_cfg, va.images[:1]).shape == (1, 43)


def test_exported_matches_eager_and_round_trips(trained: tuple[Path, Split, Split], tmp_path: Path) -> None:
    model_dir, _, va = trained
    model, config = load_model_dir(model_dir)
    eager = _logits(model, config, va.images[:200])
    frozen = export_frozen(model, config.preprocess.image_size)
    assert torch.allclose(_logits(frozen, config, va.images[:200]), eager, atol=1e-4)
    result = optimize(model_dir, torch.empty(0, 3, 32, 32, dtype=torch.uint8), tmp_path / "exp", "exported")
    assert result.archive == VARIANT_FILES["exported"] and result.quant_engine is None
    loaded, loaded_cfg = load_model_dir(tmp_path / "exp")
    assert loaded_cfg.variant == "exported" and isinstance(loaded, torch.jit.ScriptModule)
    for n in (1, 7, 200):
        assert torch.allclose(_logits(loaded, loaded_cfg, va.images[:n]), eager[:n], atol=1e-4)


def test_int8_archive_refuses_an_unsupported_engine(
    trained: tuple[Path, Split, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, tr, _ = trained
    optimize(model_dir, tr.images[:64], tmp_path / "int8", "int8")
    monkeypatch.setattr(models, "supported_quant_engines", lambda: ["some-other-engine"])
    with pytest.raises(ValueError, match=rf"int8 variant was quantized for {select_engine()}.*serve the fp32 version"):
        load_model_dir(tmp_path / "int8")


def test_variant_config_is_validated_and_old_configs_stay_fp32(tmp_path: Path, tiny_model_dir: Path) -> None:
    raw = json.loads((tiny_model_dir / CONFIG_FILE).read_text())
    assert raw["variant"] == "fp32"
    del raw["variant"], raw["quant_engine"]  # a model directory written before variants existed
    (tiny_model_dir / CONFIG_FILE).write_text(json.dumps(raw))
    _, config = load_model_dir(tiny_model_dir)
    assert config.variant == "fp32" and config.quant_engine is None
    with pytest.raises(ValueError, match="variant must be one of"):
        ModelConfig.from_dict({**raw, "variant": "fp16"})
    with pytest.raises(ValueError, match="needs the quant_engine"):
        ModelConfig.from_dict({**raw, "variant": "int8"})
    (tiny_model_dir / CONFIG_FILE).write_text(json.dumps({**raw, "variant": "exported"}))
    with pytest.raises(FileNotFoundError, match=r"model\.frozen\.ts"):
        load_model_dir(tiny_model_dir)
    (tiny_model_dir / VARIANT_FILES["exported"]).write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a loadable TorchScript archive"):
        load_model_dir(tiny_model_dir)
    with pytest.raises(ValueError, match="save_variant_dir"):
        save_model_dir(torch.nn.Linear(1, 1), ModelConfig.from_dict({**raw, "variant": "exported"}), tmp_path)
    with pytest.raises(ValueError, match="variant must be one of"):
        optimize(tiny_model_dir, torch.empty(0), tmp_path / "x", "fp32")


def test_predictor_serves_an_int8_directory(
    trained: tuple[Path, Split, Split], tmp_path: Path, gtsrb_root: Path
) -> None:
    model_dir, tr, _ = trained
    optimize(model_dir, tr.images[:256], tmp_path / "int8", "int8")
    predictor = TSRPredictor(
        "gtsrb-classifier",
        ModelSource(str(tmp_path / "int8")),
        PredictorOptions(threads=1),
        PredictorMetrics.create(CollectorRegistry()),
    )
    assert predictor.load() and predictor.config.variant == "int8"
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    paths = [sorted((training / f"{c:05d}").glob("*.ppm"))[3] for c in (1, 12, 25, 40)]
    body = {"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]}
    response, _ = asyncio.run(predictor(body, headers={}))
    predictions = response["predictions"]
    from tsr.core.preprocessing import load_image_file

    loaded, config = load_model_dir(tmp_path / "int8")
    logits = _logits(loaded, config, torch.stack([load_image_file(p, 32) for p in paths]))
    assert config.temperature != 1.0  # the trained model's calibration came with the variant
    probs = torch.softmax(logits / config.temperature, dim=1)  # what the predictor serves
    assert [p["class_id"] for p in predictions] == probs.argmax(1).tolist()
    for pred, row in zip(predictions, probs, strict=True):
        assert pred["probability"] == pytest.approx(float(row.max()), abs=1e-5)


def test_latency_helpers_report_p50(trained: tuple[Path, Split, Split]) -> None:
    model, config = load_model_dir(trained[0])
    x = to_model_input(trained[2].images[:4], config.preprocess)
    stats = measure_latency(model, x, repeats=3)
    assert stats["batch"] == 4 and 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"]
    report = compare_latency(model, model, 32, batch_sizes=(1, 2), repeats=2)
    assert set(report) == {f"{k}_b{b}" for k in ("fp32_p50_ms", "variant_p50_ms", "speedup") for b in (1, 2)}
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, x, repeats=0)


def test_component_runs_alone_under_kfp_local(
    trained: tuple[Path, Split, Split], opt_dataset: Path, tmp_path: Path
) -> None:
    """The KFP step in kfp.local's SubprocessRunner, its inputs imported from a trained model and dataset."""
    import warnings

    from kfp import dsl, local

    from components.factory import DEFAULT_COMPONENT_IMAGE, kfp_component
    from components.optimize.component import optimize_component

    model_dir, _, _ = trained
    dataset_dir = opt_dataset
    step = kfp_component(optimize_component, DEFAULT_COMPONENT_IMAGE)

    def alone(model_uri, dataset_uri):  # type: ignore[no-untyped-def]
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=False)
        data = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset, reimport=False)
        task = step(model=model.output, dataset=data.output, variant="int8", calibration_images=128, latency_repeats=3)
        return task.outputs["optimized"]

    # Real annotation objects: KFP reads them, and this module's `from __future__ import annotations`
    # would turn written ones into strings.
    alone.__annotations__ = {"model_uri": str, "dataset_uri": str, "return": dsl.Model}
    pipeline = dsl.pipeline(name="optimize-alone")(alone)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        run = pipeline(model_uri=str(model_dir), dataset_uri=str(dataset_dir))
    out = Path(run.output.path)
    model, config = load_model_dir(out)
    assert config.variant == "int8" and isinstance(model, torch.jit.ScriptModule)
    report = json.loads((out / "optimize.json").read_text())
    assert report["calibration_images"] == 128
    assert {"fp32_p50_ms_b1", "variant_p50_ms_b64", "speedup_b64"} <= set(report["latency"])


@pytest.mark.parametrize("variant", sorted(VARIANT_FILES))
def test_variants_carry_the_temperature(variant: str, tmp_path: Path) -> None:
    """The int8 and exported variants serve the same calibrated probabilities: the temperature goes with them."""
    from tests.conftest import make_model_dir

    model_dir = make_model_dir(tmp_path / "fp32", temperature=1.7)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    optimize(model_dir, images, tmp_path / variant, variant)
    _, config = load_model_dir(tmp_path / variant)
    assert config.variant == variant and config.temperature == 1.7
