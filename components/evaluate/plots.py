"""The run report's figures: matplotlib on the Agg canvas, each returned as PNG bytes.

Figures are built with `matplotlib.figure.Figure` on an explicit `FigureCanvasAgg`, never `pyplot`:
no global figure state and no backend switch (importing this module changes nothing for a notebook
that also plots), no GUI lookup, so they render the same in a pipeline step, a test or a headless
container. Every function takes plain lists/dicts (what the evaluation JSON holds), so the
report can be re-rendered from a stored evaluation without torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

DPI = 100
PASS_COLOUR = "#1a7f37"
FAIL_COLOUR = "#cf222e"
CHALLENGER_COLOUR = "#0969da"
CHAMPION_COLOUR = "#6e7781"


def to_png(fig: Figure) -> bytes:
    """PNG bytes of a figure, without the Software metadata (keeps output free of version strings/URLs)."""
    FigureCanvasAgg(fig)  # attaches itself to the figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _short(name: str, width: int = 30) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _finite(values: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def training_curves(history: dict[str, Any]) -> bytes:
    """Loss, accuracy, learning rate and epoch time per epoch, from the train step's history.json."""
    epochs = history["epochs"]
    x = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(10, 6.5))
    (loss_ax, acc_ax), (lr_ax, time_ax) = fig.subplots(2, 2)
    loss_ax.plot(x, _finite([e["train_loss"] for e in epochs]), "o-", label="train (augmented, smoothed labels)")
    loss_ax.plot(x, _finite([e.get("val_loss") for e in epochs]), "o-", label="validation")
    loss_ax.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.plot(x, _finite([e["train_accuracy"] for e in epochs]), "o-", label="train (augmented)")
    acc_ax.plot(x, _finite([e.get("val_accuracy") for e in epochs]), "o-", label="validation")
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    lrs = _finite([e.get("lr") for e in epochs])
    if any(not math.isnan(v) for v in lrs):
        lr_ax.plot(x, lrs, "o-", color="#8250df")
        lr_ax.set(title="learning rate (last step of each epoch)", xlabel="epoch", ylabel="lr")
    else:
        lr_ax.text(0.5, 0.5, "learning rate not recorded", ha="center", va="center", transform=lr_ax.transAxes)
        lr_ax.set(title="learning rate", xticks=[], yticks=[])
    time_ax.bar(x, _finite([e["seconds"] for e in epochs]), color="#bf8700")
    time_ax.set(title="epoch wall time (validation included)", xlabel="epoch", ylabel="seconds")
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=8)
    for ax in (loss_ax, acc_ax, lr_ax, time_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def confusion_heatmap(confusion: list[list[int]], class_names: list[str]) -> bytes:
    """Row-normalized confusion (each row: where that true class's images went) on a log colour scale.

    Row normalization makes small classes as visible as large ones; the log scale makes a 1 % confusion
    visible next to a 99 % diagonal. Zero cells stay white.
    """
    n = len(confusion)
    fractions: list[list[float]] = []
    for row in confusion:
        total = sum(row)
        fractions.append([v / total if total and v else float("nan") for v in row])
    floor = min((v for row in fractions for v in row if not math.isnan(v)), default=1e-3)
    side = max(4.0, min(11.0, 0.2 * n + 2))
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(
        fractions,
        cmap="viridis",
        norm=LogNorm(vmin=max(min(floor, 0.01), 1e-4), vmax=1.0),
        interpolation="nearest",
    )
    ax.set_facecolor("white")
    ticks = list(range(n))
    ax.set_xticks(ticks, [str(i) for i in ticks], fontsize=6, rotation=90)
    ax.set_yticks(ticks, [str(i) for i in ticks], fontsize=6)
    ax.set(xlabel="predicted class id", ylabel="true class id", title="confusion matrix (rows normalized, log scale)")
    colourbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    colourbar.set_label("fraction of the true class")
    fig.tight_layout()
    return to_png(fig)


def per_class_accuracy(
    accuracy: list[float | None],
    class_names: list[str],
    champion: list[float | None] | None = None,
    highlight: Sequence[int] = (),
) -> bytes:
    """Horizontal bars, one per class; `highlight`ed (worst) classes in red, the champion as black ticks.

    The axis starts just below the lowest accuracy, so differences near 100 % stay visible.
    """
    n = len(class_names)
    values = [a if a is not None else 0.0 for a in accuracy]
    present = [a for a in accuracy if a is not None] + [a for a in (champion or []) if a is not None]
    low = max(0.0, min(present, default=0.0) - 0.02)
    fig = Figure(figsize=(8, max(3.0, 0.22 * n + 1)))
    ax = fig.subplots()
    colours = [FAIL_COLOUR if i in highlight else CHALLENGER_COLOUR for i in range(n)]
    ys = list(range(n))
    ax.barh(ys, values, color=colours, height=0.7, label="this model")
    if champion is not None:
        points = [(a, i) for i, a in enumerate(champion) if a is not None]
        ax.scatter(
            [a for a, _ in points], [i for _, i in points], marker="|", s=120, color="black", zorder=3, label="champion"
        )
        ax.legend(loc="lower left", fontsize=8)
    for i in highlight:
        if accuracy[i] is not None:
            ax.annotate(
                f"{100 * values[i]:.1f}%",
                (max(values[i], low), i),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color=FAIL_COLOUR,
            )
    labels = [
        f"{i} {_short(name)}" + (" (no images)" if accuracy[i] is None else "") for i, name in enumerate(class_names)
    ]
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(low, 1.0)
    ax.set(xlabel="accuracy (recall) on the validation split", title="per-class accuracy")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def class_counts(counts: dict[str, list[int]], class_names: list[str]) -> bytes:
    """Images per class in each split of the data card, stacked."""
    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots()
    xs = list(range(len(class_names)))
    bottom = [0] * len(xs)
    for split, colour in (("train", CHALLENGER_COLOUR), ("val", "#bf8700")):
        values = counts.get(split) or [0] * len(xs)
        ax.bar(xs, values, bottom=bottom, color=colour, label=split, width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(xs, [str(i) for i in xs], fontsize=7)
    ax.set(xlabel="class id", ylabel="images", title="images per class (train + validation)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def latency_histogram(samples_ms: list[float], summary: dict[str, Any], threads: int | None = None) -> bytes:
    """Histogram of single-image inference times with the p50 and p99 marked."""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    bins = min(40, max(5, len(samples_ms) // 5))
    low, high = min(samples_ms), max(samples_ms)
    # A busy node gives a long tail (a few passes 10-100x the median); a log axis keeps the bulk readable.
    log_axis = low > 0 and high > 10 * summary.get("p50_ms", high)
    if log_axis:
        edges = [low * (high / low) ** (k / bins) for k in range(bins + 1)]
        ax.hist(samples_ms, bins=edges, color=CHALLENGER_COLOUR, alpha=0.85)
        ax.set_xscale("log")
    else:
        ax.hist(samples_ms, bins=bins, color=CHALLENGER_COLOUR, alpha=0.85)
    for key, colour in (("p50_ms", PASS_COLOUR), ("p99_ms", FAIL_COLOUR)):
        if key in summary:
            ax.axvline(summary[key], color=colour, linestyle="--", label=f"{key[:3]} {summary[key]:.2f} ms")
    where = f", {threads} thread(s)" if threads else ""
    ax.set(
        xlabel="ms per image (batch 1, preprocessing included" + (", log scale)" if log_axis else ")"),
        ylabel="images",
        title=f"inference latency, {len(samples_ms)} single-image passes{where}",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def champion_comparison(
    challenger: dict[str, float],
    champion: dict[str, float],
    challenger_per_class: list[float | None],
    champion_per_class: list[float | None] | None,
) -> bytes:
    """Accuracy and macro-F1 side by side, and the per-class accuracy difference (challenger - champion)."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2, width_ratios=[1, 2.4])
    keys = ("accuracy", "macro_f1")
    xs = list(range(len(keys)))
    width = 0.38
    for offset, (label, values, colour) in enumerate(
        (("champion", champion, CHAMPION_COLOUR), ("this model", challenger, CHALLENGER_COLOUR))
    ):
        heights = [100 * float(values.get(k) or 0.0) for k in keys]
        bars = left.bar([x + (offset - 0.5) * width for x in xs], heights, width, color=colour, label=label)
        left.bar_label(bars, labels=[f"{h:.2f}" for h in heights], fontsize=7, padding=2)
    # Zoomed to the lower value: two models at 98.9 and 99.1 % must not look equal.
    floor = min(100 * float(v.get(k) or 0.0) for v in (champion, challenger) for k in keys)
    left.set_ylim(max(0.0, floor - max(2.0, 0.1 * (100 - floor))), 101)
    left.set_xticks(xs, ["accuracy", "macro-F1"])
    left.set(title="overall (%, axis zoomed)")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, frameon=False)
    if champion_per_class is not None:
        deltas = [
            100 * (a - b) if a is not None and b is not None else 0.0
            for a, b in zip(challenger_per_class, champion_per_class, strict=True)
        ]
        right.bar(
            range(len(deltas)),
            deltas,
            color=[PASS_COLOUR if d >= 0 else FAIL_COLOUR for d in deltas],
            width=0.8,
        )
        right.axhline(0, color="black", linewidth=0.8)
        right.set_xticks(range(len(deltas)), [str(i) for i in range(len(deltas))], fontsize=6)
        right.set(xlabel="class id", ylabel="points", title="per-class accuracy: this model - champion")
        right.grid(axis="y", alpha=0.3)
    else:
        right.axis("off")
    fig.tight_layout()
    return to_png(fig)


def reliability_diagram(bins: list[dict[str, Any]], ece: float | None, temperature: float | None = None) -> bytes:
    """Accuracy against mean confidence per bin of top-1 probability (the evaluation's `reliability`),
    with the diagonal of perfect calibration, the gap shaded, and how many predictions each bin holds."""
    fig = Figure(figsize=(9, 4))
    ax, counts_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    filled = [b for b in bins if b.get("count")]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = (bins[0]["high"] - bins[0]["low"]) if bins else 0.1
    ax.plot([0, 1], [0, 1], color=CHAMPION_COLOUR, linestyle="--", label="perfectly calibrated")
    ax.bar(
        [(b["low"] + b["high"]) / 2 for b in filled],
        [b["accuracy"] for b in filled],
        width=width * 0.9,
        color=CHALLENGER_COLOUR,
        alpha=0.85,
        label="accuracy",
    )
    ax.bar(
        [(b["low"] + b["high"]) / 2 for b in filled],
        [b["confidence"] - b["accuracy"] for b in filled],
        bottom=[b["accuracy"] for b in filled],
        width=width * 0.9,
        color=FAIL_COLOUR,
        alpha=0.35,
        label="gap to confidence",
    )
    calibration = f"ECE {ece:.4f}" if ece is not None else "ECE –"
    if temperature is not None:
        calibration += f", temperature {temperature:g}"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy")
    ax.set_title(f"reliability diagram ({calibration})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    counts_ax.bar(centres, [b.get("count", 0) for b in bins], width=width * 0.9, color=CHALLENGER_COLOUR)
    counts_ax.set_yscale("symlog")
    counts_ax.set(xlim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="predictions")
    counts_ax.set_title("predictions per confidence bin", fontsize=10)
    counts_ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return to_png(fig)
