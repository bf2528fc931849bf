"""The drift reference and PSI: ~0 for the training distribution, large for a shifted one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tsr.core.drift import DriftMonitor, InputReference, build_reference, image_brightness, population_stability_index
from tsr.core.sources import list_source, load_samples


def test_reference_bins_and_round_trip() -> None:
    images = torch.randint(0, 256, (1000, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = build_reference(images)
    assert len(ref.fractions) == len(ref.edges) + 1 == 10
    assert sum(ref.fractions) == pytest.approx(1.0)
    assert all(f == pytest.approx(0.1, abs=0.02) for f in ref.fractions)  # decile edges
    assert ref.channel_mean == pytest.approx(tuple(image_brightness(images).mean(0).tolist()))
    assert InputReference.from_dict(ref.to_dict()).edges == pytest.approx(ref.edges, abs=1e-6)
    with pytest.raises(ValueError, match="invalid input reference"):
        InputReference.from_dict({"edges": [0.5]})
    with pytest.raises(ValueError, match="uint8"):
        image_brightness(images.float())


def test_psi_is_small_for_the_same_data_and_large_for_darker_data(gtsrb_root: Path) -> None:
    samples = list_source(gtsrb_root, "auto", "train").samples[::7]
    images = load_samples(samples, 32, 2, None).split.images
    images = images[torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))]  # mix classes
    half = images.shape[0] // 2
    ref = build_reference(images[:half])
    same = DriftMonitor(ref, window=2000, min_images=100)
    same.update(images[half : half + 2000])
    dark = DriftMonitor(ref, window=2000, min_images=100)
    dark.update((images[half : half + 2000].float() * 0.5).to(torch.uint8))
    assert same.snapshot().psi < 0.1
    assert dark.snapshot().psi > 0.25
    mean = dark.snapshot().channel_mean
    assert mean is not None and all(m < r for m, r in zip(mean, ref.channel_mean, strict=True))


def test_monitor_window_and_minimum() -> None:
    ref = build_reference(torch.randint(0, 256, (500, 3, 4, 4), dtype=torch.uint8))
    monitor = DriftMonitor(ref, window=50, min_images=20)
    assert monitor.snapshot().images == 0 and monitor.snapshot().channel_mean is None
    monitor.update(torch.zeros(10, 3, 4, 4, dtype=torch.uint8))
    assert math.isnan(monitor.snapshot().psi)  # too few images to judge
    monitor.update(torch.zeros(100, 3, 4, 4, dtype=torch.uint8))
    snap = monitor.snapshot()
    assert snap.images == 50 and snap.psi > 1.0
    with pytest.raises(ValueError, match="drift window"):
        DriftMonitor(ref, window=10, min_images=20)


def test_psi_formula() -> None:
    assert population_stability_index([0.5, 0.5], [0.5, 0.5]) == 0.0
    expected = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert population_stability_index([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="equal bin counts"):
        population_stability_index([1.0], [0.5, 0.5])
