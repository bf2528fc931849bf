"""Input drift: the training-time brightness distribution and a rolling comparison against it.

Ingest records an `InputReference` in the data card (per-channel mean brightness, and the
distribution of per-image brightness in decile bins); training copies it into the model's
config, so the predictor compares what it is sent with what *its* model was trained on.
Brightness is measured on the uint8 images at the model's size, i.e. after the shared
resize and before contrast equalization, on both sides.

The drift score is the population stability index (PSI) between the reference bins and the
last `window` served images: < 0.1 is usually read as stable, 0.1-0.25 as a shift worth a
look, > 0.25 as a different population.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_BINS = 10
_EPS = 1e-4  # floor for empty bins, so log() stays finite


def image_brightness(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 3) per-image, per-channel mean brightness in [0, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    return images.float().mean(dim=(2, 3)).div_(255.0)


def _bin_fractions(values: torch.Tensor, edges: torch.Tensor) -> list[float]:
    idx = torch.bucketize(values, edges, right=True)
    counts = torch.bincount(idx, minlength=len(edges) + 1).double()
    return (counts / max(values.numel(), 1)).tolist()


@dataclass(frozen=True)
class InputReference:
    """What 'normal input' looked like at training time."""

    channel_mean: tuple[float, float, float]
    edges: tuple[float, ...]  # inner bin edges over per-image brightness (mean of the 3 channels)
    fractions: tuple[float, ...]  # share of training images per bin; len(edges) + 1 entries
    images: int

    def __post_init__(self) -> None:
        if len(self.fractions) != len(self.edges) + 1:
            raise ValueError(f"input reference: {len(self.edges)} edges need {len(self.edges) + 1} fractions")
        if list(self.edges) != sorted(self.edges):
            raise ValueError("input reference: bin edges must be increasing")

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": "per-image mean brightness (0..1) of uint8 images at model size",
            "channel_mean": [round(v, 6) for v in self.channel_mean],
            "edges": [round(v, 6) for v in self.edges],
            "fractions": [round(v, 6) for v in self.fractions],
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputReference:
        try:
            mean = [float(v) for v in data["channel_mean"]]
            return cls(
                channel_mean=(mean[0], mean[1], mean[2]),
                edges=tuple(float(v) for v in data["edges"]),
                fractions=tuple(float(v) for v in data["fractions"]),
                images=int(data["images"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"invalid input reference: {exc!r}") from exc


def build_reference(images: torch.Tensor, bins: int = DEFAULT_BINS, chunk: int = 8192) -> InputReference:
    """Decile bins (quantile edges) of per-image brightness, so each bin starts with ~10 % of the data."""
    if images.shape[0] == 0:
        raise ValueError("cannot build an input reference from zero images")
    per_image = torch.cat([image_brightness(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)])
    gray = per_image.mean(dim=1)
    quantiles = torch.linspace(0, 1, bins + 1)[1:-1]
    edges = torch.unique(torch.quantile(gray.double(), quantiles.double()).float())
    mean = per_image.mean(dim=0).tolist()
    return InputReference(
        channel_mean=(mean[0], mean[1], mean[2]),
        edges=tuple(edges.tolist()),
        fractions=tuple(_bin_fractions(gray, edges)),
        images=int(images.shape[0]),
    )


def population_stability_index(expected: list[float] | tuple[float, ...], observed: list[float]) -> float:
    """PSI = sum((o - e) * ln(o / e)) over bins, with empty bins floored at a small epsilon."""
    if len(expected) != len(observed):
        raise ValueError(f"PSI needs equal bin counts, got {len(expected)} and {len(observed)}")
    total = 0.0
    for e, o in zip(expected, observed, strict=True):
        e, o = max(e, _EPS), max(o, _EPS)
        total += (o - e) * math.log(o / e)
    return total


@dataclass(frozen=True)
class DriftSnapshot:
    images: int
    channel_mean: tuple[float, float, float] | None  # None while the window is empty
    psi: float  # NaN until the window holds min_images


class DriftMonitor:
    """The last `window` images' brightness vs the reference; thread-safe, O(window) memory."""

    def __init__(self, reference: InputReference, window: int = 1000, min_images: int = 100) -> None:
        if window < 1 or not 1 <= min_images <= window:
            raise ValueError(f"drift window must be >= 1 and 1 <= min_images <= window, got {window}, {min_images}")
        self.reference = reference
        self.window = window
        self.min_images = min_images
        self._edges = torch.tensor(reference.edges, dtype=torch.float32)
        self._values: deque[tuple[float, float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def update(self, images: torch.Tensor) -> None:
        rows = [(r[0], r[1], r[2]) for r in image_brightness(images).tolist()]
        with self._lock:
            self._values.extend(rows)

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            values = torch.tensor(list(self._values), dtype=torch.float32).reshape(-1, 3)
        n = values.shape[0]
        if n == 0:
            return DriftSnapshot(0, None, math.nan)
        mean = values.mean(dim=0).tolist()
        psi = math.nan
        if n >= self.min_images:
            psi = population_stability_index(self.reference.fractions, _bin_fractions(values.mean(dim=1), self._edges))
        return DriftSnapshot(n, (mean[0], mean[1], mean[2]), psi)
