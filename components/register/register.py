"""Register: publish a gated model as a new immutable version, then move the champion alias."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsr.core.config import DEFAULT_BUCKET, StoreConfig
from tsr.core.provenance import runtime_info
from tsr.core.registry import CHAMPION, Registry


@dataclass(frozen=True)
class RegisterResult:
    version: str
    uri: str
    champion_moved: bool


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
        "data": {
            "source": data_card.get("source"),
            "fingerprint": data_card.get("fingerprint"),
            "totals": data_card.get("totals"),
            "split_strategy": data_card.get("split_strategy"),
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
) -> RegisterResult:
    """Upload every file, write SHA256SUMS last, and only then point `champion` at the version."""
    registry = Registry.from_config(store, bucket)
    version = registry.publish(name, model_dir, {**card, "name": name}, on_progress=on_progress)
    if promote:
        registry.set_alias(name, version, CHAMPION)
    return RegisterResult(version=version, uri=registry.uri(name, version), champion_moved=promote)
