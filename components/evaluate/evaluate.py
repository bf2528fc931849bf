"""Evaluate and gate: metrics on a split, and the pass/fail decision that guards the registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from components.ingest.ingest import Split
from tsr.preprocessing import PreprocessConfig, to_model_input


@dataclass
class EvalMetrics:
    n: int
    accuracy: float
    macro_f1: float
    per_class_accuracy: list[float | None]  # None where the split has no image of that class
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    def summary(self) -> dict[str, Any]:
        return {"accuracy": round(self.accuracy, 6), "macro_f1": round(self.macro_f1, 6), "n": self.n}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateConfig:
    min_accuracy: float = 0.95
    # A challenger may trail the champion by at most this much (absolute accuracy) and still pass.
    champion_tolerance: float = 0.005


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str

    @property
    def label(self) -> str:
        return "pass" if self.passed else "fail"


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, pre: PreprocessConfig, batch_size: int = 1024) -> torch.Tensor:
    """Predicted class ids for uint8 images, through the shared preprocessing path."""
    model.eval()
    out = [
        model(to_model_input(images[s : s + batch_size], pre)).argmax(1) for s in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def compute_metrics(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> EvalMetrics:
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
    )


def evaluate_model(model: nn.Module, pre: PreprocessConfig, num_classes: int, split: Split) -> EvalMetrics:
    return compute_metrics(split.labels, predict(model, split.images, pre), num_classes)


def gate(accuracy: float, cfg: GateConfig, champion_accuracy: float | None) -> GateResult:
    """Fail below the floor, or when worse than the champion by more than the tolerance."""
    if accuracy < cfg.min_accuracy:
        return GateResult(False, f"accuracy {accuracy:.4f} < min_accuracy {cfg.min_accuracy:.4f}")
    if champion_accuracy is not None and accuracy < champion_accuracy - cfg.champion_tolerance:
        return GateResult(
            False,
            f"accuracy {accuracy:.4f} trails the champion's {champion_accuracy:.4f} "
            f"by more than {cfg.champion_tolerance:.4f}",
        )
    against = f"champion {champion_accuracy:.4f}" if champion_accuracy is not None else "no champion yet"
    return GateResult(True, f"accuracy {accuracy:.4f} >= {cfg.min_accuracy:.4f}; {against}")


def champion_accuracy_on(
    split: Split, num_classes: int, store: Any, model_name: str, cache_dir: Any
) -> tuple[float | None, str | None]:
    """Re-evaluate the current champion on the challenger's own split, so the gate compares like with like."""
    from tsr.models import load_model_dir
    from tsr.registry import CHAMPION, Registry, RegistryError

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
    return evaluate_model(model, config.preprocess, num_classes, split).accuracy, registry.uri(model_name, version)


def run_evaluation(
    model_dir: Any, dataset_dir: Any, gate_cfg: GateConfig, model_name: str, test_data: str = "", store: Any = None
) -> dict[str, Any]:
    """Validation (and optional test) metrics, the champion comparison and the gate decision."""
    import tempfile
    from pathlib import Path

    from components.ingest.ingest import VAL_FILE, load_split, read_source
    from tsr.models import load_model_dir

    model, config = load_model_dir(Path(model_dir))
    val = load_split(Path(dataset_dir) / VAL_FILE)
    val_metrics = evaluate_model(model, config.preprocess, config.num_classes, val)
    result: dict[str, Any] = {"validation": val_metrics.to_dict(), "class_names": config.class_names}
    if test_data:
        test_split, _ = read_source(test_data, "test", config.preprocess.image_size, store)
        result["test"] = evaluate_model(model, config.preprocess, config.num_classes, test_split).to_dict()
    with tempfile.TemporaryDirectory(prefix="tsr-champion-") as cache:
        champ_acc, champ_uri = champion_accuracy_on(val, config.num_classes, store, model_name, Path(cache))
    decision = gate(val_metrics.accuracy, gate_cfg, champ_acc)
    result["champion"] = {"uri": champ_uri, "accuracy": champ_acc}
    result["gate"] = {"result": decision.label, "reason": decision.reason, **asdict(gate_cfg)}
    return result
