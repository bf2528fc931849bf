"""Register: publish a gated model as a new immutable version, then move the champion alias."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsr.core.config import DEFAULT_BUCKET, StoreConfig
from tsr.core.provenance import runtime_info
from tsr.core.registry import ANY_VERSION, CHAMPION, AnyVersion, Registry


@dataclass(frozen=True)
class RegisterResult:
    """`champion_moved` is true only when this call moved the alias; `champion_note` says what happened."""

    version: str
    uri: str
    champion_moved: bool
    champion_note: str = "not promoted"


def build_model_card(
    name: str, model_config: dict[str, Any], metrics: dict[str, Any], data_card: dict[str, Any], gate: dict[str, Any]
) -> dict[str, Any]:
    """What a reader needs to trust and reproduce a version, without opening the weights."""
    return {
        "name": name,
        "metrics": metrics,
        "gate": gate,
        "arch": model_config.get("arch"),
        "class_names": model_config.get("class_names"),
        "preprocess": model_config.get("preprocess"),
        "params": model_config.get("train_params", {}),
        # The calibration temperature the served probabilities use (1.0: not calibrated).
        "temperature": model_config.get("temperature", 1.0),
        "data": {
            "source": data_card.get("source"),
            "fingerprint": data_card.get("fingerprint"),
            "totals": data_card.get("totals"),
            "split_strategy": data_card.get("split_strategy"),
            # How the data was split: a retrain that repeats them validates on the same tracks (tsr loop).
            "seed": data_card.get("seed"),
            "val_fraction": data_card.get("val_fraction"),
            "max_groups_per_class": data_card.get("max_groups_per_class"),
            "channel_mean": data_card.get("channel_mean"),
            "channel_std": data_card.get("channel_std"),
            "counts": data_card.get("counts"),
        },
        **runtime_info(),
    }


def register(
    model_dir: Path,
    name: str,
    card: dict[str, Any],
    store: StoreConfig,
    bucket: str = DEFAULT_BUCKET,
    promote: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    compared_with: str | AnyVersion | None = ANY_VERSION,
) -> RegisterResult:
    """Upload every file, write SHA256SUMS last, and only then point `champion` at the version.

    `compared_with` is the champion version the gate measured the model against (None: there was
    none): the alias then moves only if it still points there, so a run never replaces a champion
    it was not compared with (another run's, promoted meanwhile).
    """
    registry = Registry.from_config(store, bucket)
    version = registry.publish(name, model_dir, {**card, "name": name}, on_progress=on_progress)
    uri = registry.uri(name, version)
    if not promote:
        return RegisterResult(version=version, uri=uri, champion_moved=False)
    move = registry.set_alias(name, version, CHAMPION, only_from=compared_with)
    return RegisterResult(version=version, uri=uri, champion_moved=move.moved, champion_note=move.reason)
