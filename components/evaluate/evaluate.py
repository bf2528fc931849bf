"""Evaluate and gate: metrics on a split, and the pass/fail decision that guards the registry."""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.evaluate.config import GateConfig
from tsr.core.calibration import ECE_BINS, bins_to_dicts, expected_calibration_error, reliability_bins
from tsr.core.dataset import Split
from tsr.core.models import ModelConfig, probabilities
from tsr.core.preprocessing import PreprocessConfig, to_model_input

# Report material, gathered alongside the evaluation: cheap enough for every run.
LATENCY_SAMPLES = 200  # single-image passes timed for the latency histogram
WORST_CLASSES = 6  # classes whose misclassified images the report shows
SAMPLES_PER_CLASS = 4
EVAL_BATCH = 1024  # images per forward pass in the evaluation
HISTORY_FILE = "history.json"  # written into the model directory by the train step


@dataclass
class EvalMetrics:
    n: int
    accuracy: float
    macro_f1: float
    per_class_accuracy: list[float | None]  # None where the split has no image of that class
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    # Calibration of the probabilities the model serves (softmax(logits / T)): the expected calibration
    # error over ECE_BINS equal-width bins of top-1 probability, and those bins (the reliability diagram).
    # None when only class ids were given.
    ece: float | None = None
    reliability: list[dict[str, Any]] | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": round(self.accuracy, 6), "macro_f1": round(self.macro_f1, 6), "n": self.n}
        if self.ece is not None:
            out["ece"] = round(self.ece, 6)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst_class(self, class_names: list[str]) -> dict[str, Any] | None:
        """The class with the lowest accuracy among those the split contains (the lowest id among equals):
        {class_id, class_name, accuracy}, or None for a split without images."""
        present = [(acc, c) for c, acc in enumerate(self.per_class_accuracy) if acc is not None]
        if not present:
            return None
        acc, c = min(present)
        return {"class_id": c, "class_name": class_names[c] if c < len(class_names) else str(c), "accuracy": acc}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    worst_class: dict[str, Any] | None = None  # {class_id, class_name, accuracy}: what min_class_accuracy judged

    @property
    def label(self) -> str:
        return "pass" if self.passed else "fail"


@torch.inference_mode()
def predict_probabilities_timed(
    model: nn.Module, images: torch.Tensor, config: ModelConfig, batch_size: int = EVAL_BATCH
) -> tuple[torch.Tensor, list[float]]:
    """The served (calibrated) probabilities (N, C) for uint8 images, and each batch's wall time in ms.

    Probabilities come from `tsr.core.models.probabilities`, the function the predictor uses, so the ECE
    measured here is that of what clients and the confidence alert see. The timing comes free with the
    evaluation pass (preprocessing included), so the report's throughput costs nothing extra.
    """
    model.eval()
    out, batch_ms = [], []
    for s in range(0, images.shape[0], batch_size):
        t0 = time.perf_counter()
        out.append(probabilities(model(to_model_input(images[s : s + batch_size], config.preprocess)), config))
        batch_ms.append((time.perf_counter() - t0) * 1000)
    return (torch.cat(out) if out else torch.empty(0, config.num_classes)), batch_ms


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q  # linear interpolation between closest ranks, as numpy's default
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    images: torch.Tensor,
    pre: PreprocessConfig,
    samples: int = LATENCY_SAMPLES,
    warmup: int = 5,
    budget_s: float = 5.0,
) -> dict[str, Any]:
    """Single-image forward latency (preprocessing included) over `samples` images spread across the split.

    Batch 1 is what an unbatched request costs the predictor; a few hundred passes of a small model take
    well under a second, so the evaluate step stays quick; `budget_s` caps it on a slow model or a busy
    node. Empty when there are no images.
    """
    model.eval()
    n = int(images.shape[0])
    if n == 0 or samples <= 0:
        return {"batch_size": 1, "samples_ms": [], "threads": torch.get_num_threads()}
    index = torch.linspace(0, n - 1, min(samples, n)).round().long().tolist()
    for i in index[:warmup]:
        model(to_model_input(images[i : i + 1], pre))
    timings: list[float] = []
    deadline = time.perf_counter() + budget_s  # a slow model or a busy node gets fewer samples, not a slow step
    for i in index:
        t0 = time.perf_counter()
        model(to_model_input(images[i : i + 1], pre)).argmax(1)
        timings.append((time.perf_counter() - t0) * 1000)
        if t0 > deadline:
            break
    return {
        "batch_size": 1,
        "samples_ms": [round(t, 4) for t in timings],
        "threads": torch.get_num_threads(),
        **latency_summary(timings),
    }


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean of latency samples in ms (empty for no samples)."""
    if not samples_ms:
        return {}
    return {
        "p50_ms": round(_percentile(samples_ms, 0.50), 4),
        "p90_ms": round(_percentile(samples_ms, 0.90), 4),
        "p99_ms": round(_percentile(samples_ms, 0.99), 4),
        "mean_ms": round(sum(samples_ms) / len(samples_ms), 4),
    }


def png_base64(image: torch.Tensor) -> str:
    """A uint8 CHW image as a base64 PNG (the report upscales it with CSS, so the file stays tiny)."""
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def misclassified_samples(
    split: Split,
    y_pred: torch.Tensor,
    metrics: EvalMetrics,
    class_names: list[str],
    worst: int = WORST_CLASSES,
    per_class: int = SAMPLES_PER_CLASS,
) -> list[dict[str, Any]]:
    """The `worst` classes by accuracy that have errors, each with up to `per_class` wrong images.

    Images are spread over the class's errors: GTSRB tracks are runs of near-identical frames, so the
    first few errors would often show the same sign four times.
    """
    ranked = sorted(
        (acc, -sum(metrics.confusion[c]), c)
        for c, acc in enumerate(metrics.per_class_accuracy)
        if acc is not None and acc < 1.0
    )  # lowest accuracy first; among equals, the class with more images (so more errors)
    out = []
    for acc, _, c in ranked[:worst]:
        wrong = torch.nonzero((split.labels == c) & (y_pred != c)).flatten()
        picks = wrong[torch.linspace(0, len(wrong) - 1, min(per_class, len(wrong))).round().long()]
        row = metrics.confusion[c]
        out.append(
            {
                "class_id": c,
                "class_name": class_names[c],
                "accuracy": acc,
                "support": sum(row),
                "errors": len(wrong),
                "samples": [
                    {
                        "predicted": int(y_pred[i]),
                        "predicted_name": class_names[int(y_pred[i])],
                        "png_base64": png_base64(split.images[i]),
                    }
                    for i in picks.tolist()
                ],
            }
        )
    return out


def data_card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of ingest's data card: identity, counts, pixel statistics.

    Leaves out the class names (the evaluation has them) and the drift reference histograms (bulky).
    """
    keep = (
        "source",
        "layout",
        "split_strategy",
        "seed",
        "val_fraction",
        "max_groups_per_class",
        "num_classes",
        "counts",
        "totals",
        "original_size",
        "image_size",
        "channel_mean",
        "channel_std",
        "fingerprint",
        "created",
    )
    return {key: card[key] for key in keep if key in card}


def compute_metrics(
    y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int, probs: torch.Tensor | None = None
) -> EvalMetrics:
    """Accuracy, macro-F1, per-class accuracy and confusion; with `probs` (N, C) also the ECE and the
    reliability bins of those probabilities."""
    if y_true.numel() == 0:
        raise ValueError("cannot evaluate on an empty split")
    if int(y_true.max()) >= num_classes or int(y_true.min()) < 0:
        raise ValueError(f"labels outside 0..{num_classes - 1}: the data does not match the model's classes")
    confusion = torch.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp)
    )
    present = support > 0  # macro-F1 over the classes the split contains
    return EvalMetrics(
        n=int(y_true.numel()),
        accuracy=float(tp.sum() / support.sum()),
        macro_f1=float(f1[present].mean()),
        per_class_accuracy=[
            float(r) if s > 0 else None for r, s in zip(recall.tolist(), support.tolist(), strict=True)
        ],
        confusion=confusion.tolist(),
        ece=expected_calibration_error(probs, y_true, ECE_BINS) if probs is not None else None,
        reliability=bins_to_dicts(reliability_bins(probs, y_true, ECE_BINS)) if probs is not None else None,
    )


def evaluate_model(model: nn.Module, config: ModelConfig, split: Split) -> EvalMetrics:
    """Metrics of a model on a split, ECE included, from the probabilities it serves."""
    probs, _ = predict_probabilities_timed(model, split.images, config)
    return compute_metrics(split.labels, probs.argmax(1), config.num_classes, probs)


def _worst_text(worst: dict[str, Any]) -> str:
    return f"class {worst['class_id']} ({worst['class_name']}) at {worst['accuracy']:.4f}"


def gate(
    accuracy: float, cfg: GateConfig, champion_accuracy: float | None, worst_class: dict[str, Any] | None = None
) -> GateResult:
    """Fail below the accuracy floor, when the worst class (`EvalMetrics.worst_class`) is below the per-class
    floor, or when worse than the champion by more than the tolerance.

    The per-class floor exists because 43 classes are far from balanced: a model can clear 95 % overall
    while getting one rare sign (say a speed limit) mostly wrong, and the average hides it.
    """
    if accuracy < cfg.min_accuracy:
        return GateResult(False, f"accuracy {accuracy:.4f} < min_accuracy {cfg.min_accuracy:.4f}", worst_class)
    if worst_class is not None and worst_class["accuracy"] < cfg.min_class_accuracy:
        return GateResult(
            False,
            f"worst {_worst_text(worst_class)} < min_class_accuracy {cfg.min_class_accuracy:.4f}",
            worst_class,
        )
    if champion_accuracy is not None and accuracy < champion_accuracy - cfg.champion_tolerance:
        return GateResult(
            False,
            f"accuracy {accuracy:.4f} trails the champion's {champion_accuracy:.4f} "
            f"by more than {cfg.champion_tolerance:.4f}",
            worst_class,
        )
    against = f"champion {champion_accuracy:.4f}" if champion_accuracy is not None else "no champion yet"
    worst = f"; worst {_worst_text(worst_class)}" if worst_class is not None else ""
    return GateResult(True, f"accuracy {accuracy:.4f} >= {cfg.min_accuracy:.4f}{worst}; {against}", worst_class)


def champion_metrics_on(
    split: Split, num_classes: int, store: Any, model_name: str, cache_dir: Any
) -> tuple[EvalMetrics | None, str | None]:
    """Re-evaluate the current champion on the challenger's own split, so the gate compares like with like.

    (None, uri) when the champion has another class set; (None, None) when there is none or no store.
    """
    from tsr.core.models import load_model_dir
    from tsr.core.registry import CHAMPION, Registry, RegistryError

    if store is None:
        return None, None
    registry = Registry.from_config(store)
    try:
        version = registry.get_alias(model_name, CHAMPION)
    except Exception as exc:  # an unreachable store must not pass a model silently
        raise RuntimeError(f"cannot read the champion of {model_name!r} from {store.describe()}: {exc}") from exc
    if version is None:
        return None, None
    try:
        model_dir = registry.fetch(model_name, version, cache_dir)
    except RegistryError as exc:
        raise RuntimeError(f"champion {registry.uri(model_name, version)} is unusable: {exc}") from exc
    model, config = load_model_dir(model_dir)
    if config.num_classes != num_classes:
        return None, registry.uri(model_name, version)
    return evaluate_model(model, config, split), registry.uri(model_name, version)


def read_history(model_dir: Path) -> dict[str, Any] | None:
    """The train step's per-epoch history, or None (optimized variants and foreign models have none)."""
    path = model_dir / HISTORY_FILE
    if not path.is_file():
        return None
    history: dict[str, Any] = json.loads(path.read_text())
    return history if history.get("epochs") else None


def run_evaluation(
    model_dir: Any, dataset_dir: Any, gate_cfg: GateConfig, model_name: str, test_data: str = "", store: Any = None
) -> dict[str, Any]:
    """Validation (and optional test) metrics, the champion comparison, the gate decision, and what the
    run report needs: latency samples, misclassified images, the data card and the training history."""
    import tempfile

    from tsr.core.dataset import CARD_FILE, VAL_FILE, load_split, read_data_card
    from tsr.core.models import load_model_dir
    from tsr.core.sources import read_source

    model_dir, dataset_dir = Path(model_dir), Path(dataset_dir)
    model, config = load_model_dir(model_dir)
    val = load_split(dataset_dir / VAL_FILE)
    probs, batch_ms = predict_probabilities_timed(model, val.images, config, EVAL_BATCH)
    y_pred = probs.argmax(1)
    val_metrics = compute_metrics(val.labels, y_pred, config.num_classes, probs)
    worst = val_metrics.worst_class(config.class_names)
    result: dict[str, Any] = {
        "validation": val_metrics.to_dict(),
        "class_names": config.class_names,
        "temperature": config.temperature,
        "worst_class": worst,
    }
    if test_data:
        test_split, _ = read_source(test_data, "test", config.preprocess.image_size, store)
        result["test"] = evaluate_model(model, config, test_split).to_dict()
    latency = measure_latency(model, val.images, config.preprocess)
    latency["batched"] = {
        "batch_size": EVAL_BATCH,
        "batch_ms": [round(t, 3) for t in batch_ms],
        "images_per_second": round(len(val) / (sum(batch_ms) / 1000), 1) if sum(batch_ms) > 0 else None,
    }
    with tempfile.TemporaryDirectory(prefix="tsr-champion-") as cache:
        champ, champ_uri = champion_metrics_on(val, config.num_classes, store, model_name, Path(cache))
    champ_acc = champ.accuracy if champ is not None else None
    decision = gate(val_metrics.accuracy, gate_cfg, champ_acc, worst)
    result["champion"] = {
        "uri": champ_uri,
        "accuracy": champ_acc,
        "macro_f1": champ.macro_f1 if champ is not None else None,
    }
    result["gate"] = {
        "result": decision.label,
        "reason": decision.reason,
        **asdict(gate_cfg),
        "worst_class": decision.worst_class,
    }
    result["latency"] = latency
    result["report"] = {
        "champion_per_class_accuracy": champ.per_class_accuracy if champ is not None else None,
        "misclassified": misclassified_samples(val, y_pred, val_metrics, config.class_names),
        "data": data_card_summary(read_data_card(dataset_dir)) if (dataset_dir / CARD_FILE).is_file() else None,
        "history": read_history(model_dir),
        "model": {"name": model_name, "arch": config.arch, "variant": _variant(model_dir)},
    }
    return result


def _variant(model_dir: Path) -> str:
    try:
        return str(json.loads((model_dir / "config.json").read_text()).get("variant", "fp32"))
    except (OSError, ValueError):
        return "fp32"
