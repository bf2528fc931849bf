"""Temperature scaling and the calibration error: fitted T, ECE, reliability bins, the config's temperature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import make_model_dir
from tsr.core.calibration import (
    calibration_summary,
    cross_fitted_ece,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
)
from tsr.core.models import CONFIG_FILE, ModelConfig, load_model_dir, probabilities


def _calibrated_set(n: int = 20000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from the model's own softmax: calibrated by construction (T = 1)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen) * 2.0
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen).flatten()
    return logits, labels


def test_a_calibrated_set_has_ece_near_zero_and_fits_t_near_one() -> None:
    logits, labels = _calibrated_set()
    assert expected_calibration_error(torch.softmax(logits, dim=1), labels) < 0.02
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)


def test_overconfident_logits_get_t_above_one_which_lowers_nll_and_ece() -> None:
    logits, labels = _calibrated_set()
    sharp = logits * 3.0  # the same ranking, three times too confident
    t = fit_temperature(sharp, labels)
    assert t > 1.0 and t == pytest.approx(3.0, rel=0.05)
    assert nll(sharp, labels, t) < nll(sharp, labels)
    before = expected_calibration_error(torch.softmax(sharp, dim=1), labels)
    after = expected_calibration_error(torch.softmax(sharp / t, dim=1), labels)
    assert before > 0.1 and after < 0.02
    assert fit_temperature(sharp, labels) == t  # deterministic


def test_underconfident_logits_get_t_below_one() -> None:
    logits, labels = _calibrated_set()
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.05)


def test_summary_records_temperature_and_ece_before_and_after() -> None:
    logits, labels = _calibrated_set(n=4000)
    summary = calibration_summary(logits * 4.0, labels)
    assert summary["temperature"] > 1.0 and summary["ece_after"] < summary["ece_before"]
    assert summary["nll_after"] < summary["nll_before"] and summary["n"] == 4000 and summary["bins"] == 15
    assert fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long)) == 1.0


def test_cross_fitted_ece_uses_temperatures_fitted_on_the_other_tracks() -> None:
    """Tracks dealt into two folds; each fold is scored with the T of the other. Where every track needs the same
    T it is as low as the in-sample figure; where the folds need different ones, only it shows the cost."""
    logits, labels = _calibrated_set(n=8000)
    groups = torch.arange(8000) // 100  # 80 "tracks" of 100 images
    same = calibration_summary(logits * 3.0, labels, groups=groups)
    assert same["ece_cross_fitted"] < 0.02 and same["ece_cross_fitted"] == pytest.approx(same["ece_after"], abs=0.01)
    # Odd tracks (one fold) three times too confident, even ones calibrated: one T cannot serve both.
    odd = (groups % 2 == 1).view(-1, 1)
    mixed = torch.where(odd, logits * 3.0, logits)
    crossed = cross_fitted_ece(mixed, labels, groups)
    assert crossed is not None and crossed > calibration_summary(mixed, labels)["ece_after"] + 0.02
    assert cross_fitted_ece(logits, labels, torch.zeros(8000, dtype=torch.long)) is None  # one track: no folds
    assert "ece_cross_fitted" not in calibration_summary(logits, labels)


def test_reliability_bins_are_equal_width_with_confidence_and_accuracy() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.42, 0.58]])
    labels = torch.tensor([0, 1, 0, 1])
    table = reliability_bins(probs, labels, bins=10)
    assert [round(b.low, 1) for b in table] == [i / 10 for i in range(10)]
    assert table[9].count == 2 and table[9].accuracy == 0.5 and table[9].confidence == pytest.approx(0.935)
    assert table[5].count == 2 and table[5].accuracy == 1.0  # 0.55 and 0.58 fall in (0.5, 0.6]
    assert sum(b.count for b in table) == 4 and table[0].confidence is None
    # ECE by hand: bin 9 |0.935 - 0.5| * 2/4, bin 5 |0.565 - 1| * 2/4
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.5 * 0.435 + 0.5 * 0.435)


def test_probabilities_divide_logits_by_the_configs_temperature(tmp_path: Path) -> None:
    config = load_model_dir(make_model_dir(tmp_path / "m", temperature=2.0))[1]
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert torch.allclose(probabilities(logits, config), torch.softmax(logits / 2.0, dim=1))
    with pytest.raises(ValueError, match="temperature"):
        ModelConfig.from_dict({**config.to_dict(), "temperature": 0.0})


def test_a_model_dir_without_a_temperature_loads_as_one(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "old")
    raw = json.loads((model_dir / CONFIG_FILE).read_text())
    raw.pop("temperature")  # as written before calibration existed
    (model_dir / CONFIG_FILE).write_text(json.dumps(raw))
    _, config = load_model_dir(model_dir)
    assert config.temperature == 1.0
    logits = torch.randn(3, config.num_classes)
    assert torch.allclose(probabilities(logits, config), torch.softmax(logits, dim=1))
