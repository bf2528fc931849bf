"""Training logic on a small real subset: it learns, it is seeded, it writes a loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig, WeightAverage, augment, calibrate, epoch_order, train, write_model
from tsr.core.dataset import TRAIN_FILE, VAL_FILE, Split, load_split
from tsr.core.drift import build_reference
from tsr.core.models import PROGRAM_FILE, ModelConfig, load_model_dir
from tsr.core.preprocessing import PreprocessConfig, to_model_input


@pytest.fixture(scope="module")
def small_dataset(gtsrb_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=3), out)
    return out


def test_training_learns_and_writes_a_loadable_model(small_dataset: Path, tmp_path: Path) -> None:
    tr, va = load_split(small_dataset / TRAIN_FILE), load_split(small_dataset / VAL_FILE)
    names = [str(i) for i in range(43)]
    result = train(tr, va, names, TrainConfig(epochs=3, width=8, threads=2, batch_size=64, lr=0.1), show_progress=False)
    assert len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss
    chance = 1 / 43
    assert result.history[-1].val_accuracy > 5 * chance
    write_model(result, tmp_path / "model")
    model, config = load_model_dir(tmp_path / "model")
    assert config.class_names == names and config.train_params["epochs"] == 3
    assert config.input_reference == build_reference(tr.images).to_dict()  # the predictor's drift baseline
    assert (tmp_path / "model" / PROGRAM_FILE).is_file()
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert len(history["epochs"]) == 3
    assert all(e["lr"] > 0 and e["seconds"] > 0 for e in history["epochs"])  # the run report's curves
    # Calibrated on the validation split: the temperature is the config's, ECE/NLL before and after recorded.
    calibration = config.train_params["calibration"]
    assert config.temperature == calibration["temperature"] == result.config.temperature != 1.0
    assert history["calibration"] == calibration == result.calibration and calibration["n"] == len(va)
    assert calibration["nll_after"] <= calibration["nll_before"]
    x = to_model_input(va.images[:8], config.preprocess)
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-5)
    program = torch.export.load(str(tmp_path / "model" / PROGRAM_FILE))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-4)


def test_training_is_seeded(small_dataset: Path) -> None:
    tr = load_split(small_dataset / TRAIN_FILE)
    tr = tr.subset(torch.arange(0, len(tr), 4))
    va = load_split(small_dataset / VAL_FILE)
    cfg = TrainConfig(epochs=1, width=8, threads=1, seed=3)
    a = train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False)
    b = train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False)
    for (ka, va_), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(va_, vb), ka


def test_calibrate_fits_a_temperature_above_one_for_an_overconfident_model() -> None:
    """A model whose logits are scaled up 5x is overconfident: calibrate() finds T > 1 and lowers NLL and ECE."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (600, 3, 8, 8), dtype=torch.uint8, generator=gen)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    config = ModelConfig(arch="tsrnet", class_names=list("abcd"), preprocess=PreprocessConfig(image_size=8))
    with torch.no_grad():
        probs = torch.softmax(model(to_model_input(images, config.preprocess)), dim=1)
    labels = torch.multinomial(probs, 1, generator=gen).flatten()  # calibrated at T = 1 by construction
    with torch.no_grad():
        model[1].weight.mul_(5.0)
        model[1].bias.mul_(5.0)
    calibrate(model, config, Split(images, labels, torch.zeros_like(labels)))
    summary = config.train_params["calibration"]
    assert config.temperature == summary["temperature"] == pytest.approx(5.0, rel=0.25)
    assert summary["nll_after"] < summary["nll_before"] and summary["ece_after"] < summary["ece_before"]
    empty = ModelConfig(arch="tsrnet", class_names=list("abcd"), preprocess=PreprocessConfig(image_size=8))
    calibrate(model, empty, Split(images[:0], labels[:0], labels[:0]))
    assert empty.temperature == 1.0 and "calibration" not in empty.train_params


def test_augment_keeps_shape_and_range_and_varies() -> None:
    x = torch.rand(16, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    y = augment(x, TrainConfig(erase=0.5), gen)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.allclose(x, y)


def test_photometric_jitter_changes_brightness_within_range() -> None:
    x = torch.full((64, 3, 8, 8), 0.5)
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(rotate_deg=0, scale=0, translate=0, erase=0, brightness=0.2, contrast_jitter=0.3)
    y = augment(x, cfg, gen)
    means = y.mean(dim=(1, 2, 3))
    assert float(means.min()) >= 0.3 - 1e-6 and float(means.max()) <= 0.7 + 1e-6
    assert float(means.std()) > 0.05  # each image its own shift


def test_balanced_order_draws_rare_classes_more_often() -> None:
    labels = torch.tensor([0] * 900 + [1] * 100)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(epoch_order(labels, 0.0, gen).sort().values, torch.arange(1000))  # a permutation
    share = float((labels[epoch_order(labels, 1.0, gen)] == 1).float().mean())
    assert 0.45 < share < 0.55  # fully balanced: half the draws from the 10 % class
    share = float((labels[epoch_order(labels, 0.5, gen)] == 1).float().mean())
    assert 0.2 < share < 0.3  # square-root balanced: 100 ** 0.5 / (900 ** 0.5 + 100 ** 0.5) = 0.25


def test_weight_average_follows_the_model_and_copies_integer_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 3
    average.update()  # first step: decay min(0.5, 2 / 11)
    expected = start + 1.0 * (1 - 2 / 11)
    assert torch.allclose(average.model[0].weight, expected)
    assert int(average.model[1].num_batches_tracked) == 3
    assert not average.model.training


def test_training_with_balance_and_weight_average(small_dataset: Path) -> None:
    tr, va = load_split(small_dataset / TRAIN_FILE), load_split(small_dataset / VAL_FILE)
    cfg = TrainConfig(epochs=1, width=8, threads=1, batch_size=64, lr=0.1, balance=0.5, ema=0.9, brightness=0.2)
    result = train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False)
    assert not result.model.training
    assert result.config.train_params["ema"] == 0.9 and result.config.train_params["balance"] == 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_precision_is_recorded_and_the_model_is_float32(small_dataset: Path, precision: str) -> None:
    """bf16 is autocast for the training steps only: the weights, the returned model and its calibration stay
    float32, so serving (always float32) runs the model that was validated."""
    tr, va = load_split(small_dataset / TRAIN_FILE), load_split(small_dataset / VAL_FILE)
    cfg = TrainConfig(epochs=2, width=8, threads=1, batch_size=64, lr=0.1, precision=precision)
    result = train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False)
    assert result.config.train_params["precision_used"] == precision
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_auto_precision_follows_the_cpus_bf16_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.train import train as train_module
    from tsr.core import backend

    monkeypatch.setattr(backend, "native_bf16", lambda: True)
    assert train_module.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(backend, "native_bf16", lambda: False)
    assert train_module.resolve_precision("auto") == "fp32"
    assert train_module.resolve_precision("bf16") == "bf16"


def test_torchvision_architecture_by_name(small_dataset: Path) -> None:
    tr, va = load_split(small_dataset / TRAIN_FILE), load_split(small_dataset / VAL_FILE)
    tr = tr.subset(torch.arange(0, 64))
    result = train(
        tr,
        va.subset(torch.arange(0, 32)),
        [str(i) for i in range(43)],
        TrainConfig(arch="mobilenet_v3_small", epochs=1),
        show_progress=False,
    )
    assert result.config.arch == "mobilenet_v3_small"


def test_bad_training_parameters() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
    with pytest.raises(ValueError, match="balance"):
        TrainConfig(balance=2.0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    from tsr.core.models import build_model

    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000", 43)
