"""Calibration: a temperature fitted on held-out logits, and how far probabilities are from honest.

A network trained with cross-entropy is usually overconfident: among the images it gives 0.99, fewer than
99 % are right. Temperature scaling (Guo et al., 2017) divides the logits by one scalar T before the
softmax. It never changes the argmax (accuracy is untouched), and one parameter fitted on the validation
split cannot overfit it. The platform serves `softmax(logits / T)` (tsr.core.models.probabilities), so the
confidence alert, the feedback samples and every client read a probability that means what it says.

`expected_calibration_error` is the summary number: the top-1 probabilities are put into equal-width bins
and the gap between each bin's mean confidence and its accuracy is averaged, weighted by the bin's size.

No I/O; torch only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

ECE_BINS = 15
# The search range of the temperature: 0.05 sharpens logits 20x, 20 flattens them 20x; beyond either a
# model is broken rather than miscalibrated, and a bounded search can never run away on degenerate data.
T_MIN, T_MAX = 0.05, 20.0


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 60) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of softmax(logits / T) on (logits, labels).

    A golden-section search over log T: the NLL is convex in 1/T, so unimodal in log T, and a
    bounded 1-D search is deterministic, needs no learning rate and cannot diverge. 60 steps narrow
    the bracket by 0.618^60 (~1e-13 of its width). Returns 1.0 when there is nothing to fit on.
    """
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits must be (N, C) with one label each, got {tuple(logits.shape)} and {len(labels)}")
    if logits.shape[0] == 0:
        return 1.0
    x, y = logits.detach().double(), labels.detach().long()

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(x / math.exp(log_t), y))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    best = math.exp((lo + hi) / 2)
    # Never worse than not calibrating (a flat stretch or a bracket end can leave the search beside T=1).
    return best if loss(math.log(best)) <= loss(0.0) else 1.0


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-width bin of top-1 probability: its range, how many predictions fell in, their mean
    confidence and their accuracy (None for an empty bin)."""

    low: float
    high: float
    count: int
    confidence: float | None
    accuracy: float | None


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """The reliability diagram's data: top-1 probability in `bins` equal-width bins over [0, 1].

    Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to the first bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (N, C) with one label each, got {tuple(probs.shape)} and {len(labels)}")
    conf, pred = probs.double().max(dim=1)
    correct = (pred == labels.long()).double()
    index = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    out = []
    for i in range(bins):
        mask = index == i
        n = int(mask.sum())
        out.append(
            ReliabilityBin(
                low=i / bins,
                high=(i + 1) / bins,
                count=n,
                confidence=float(conf[mask].mean()) if n else None,
                accuracy=float(correct[mask].mean()) if n else None,
            )
        )
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin size / N) * |mean confidence - accuracy|; 0 is perfectly calibrated."""
    table = reliability_bins(probs, labels, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return 0.0
    ece = 0.0
    for b in table:
        if b.confidence is not None and b.accuracy is not None:
            ece += b.count / total * abs(b.confidence - b.accuracy)
    return ece


def cross_fitted_ece(
    logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, bins: int = ECE_BINS
) -> float | None:
    """The ECE of temperatures fitted on other tracks: what calibration is worth on tracks it never saw.

    `ece_after` measures T on the images it was fitted on, which flatters it a little. Here the groups (GTSRB
    tracks) are dealt alternately into two folds in sorted order, so each class's tracks land on both sides;
    each fold's probabilities use the T fitted on the other fold, and the ECE is taken over all of them.
    None when there are fewer than two groups.
    """
    unique = torch.unique(groups)
    if unique.numel() < 2:
        return None
    fold_of_group = torch.arange(unique.numel()) % 2
    fold = fold_of_group[torch.searchsorted(unique, groups)]
    probs = torch.empty(logits.shape, dtype=torch.float64)
    for k in (0, 1):
        held_out = fold == k
        temperature = fit_temperature(logits[~held_out], labels[~held_out])
        probs[held_out] = torch.softmax(logits[held_out].double() / temperature, dim=1)
    return expected_calibration_error(probs, labels, bins)


def calibration_summary(
    logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS, groups: torch.Tensor | None = None
) -> dict[str, Any]:
    """Fit T on (logits, labels) and report it with the ECE and NLL before and after: what training
    records in the model's config (train_params["calibration"]) and history. With `groups` (tracks), also the
    cross-fitted ECE (`cross_fitted_ece`): the number to quote for unseen tracks."""
    temperature = fit_temperature(logits, labels)
    before = torch.softmax(logits.double(), dim=1)
    after = torch.softmax(logits.double() / temperature, dim=1)
    summary: dict[str, Any] = {
        "temperature": round(temperature, 6),
        "ece_before": round(expected_calibration_error(before, labels, bins), 6),
        "ece_after": round(expected_calibration_error(after, labels, bins), 6),
        "nll_before": round(nll(logits, labels), 6),
        "nll_after": round(nll(logits, labels, temperature), 6),
        "bins": bins,
        "n": int(labels.numel()),
    }
    if groups is not None:
        crossed = cross_fitted_ece(logits, labels, groups, bins)
        summary["ece_cross_fitted"] = round(crossed, 6) if crossed is not None else None
    return summary


def bins_to_dicts(table: list[ReliabilityBin]) -> list[dict[str, Any]]:
    return [asdict(b) for b in table]
