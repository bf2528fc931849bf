"""Registration against a real MinIO: the model card carries lineage, champion moves last."""

from __future__ import annotations

import json
from pathlib import Path

from components.register.register import build_model_card, register
from tsr.core.config import StoreConfig
from tsr.core.registry import Registry


def test_register_publishes_a_complete_version_with_its_card(tiny_model_dir: Path, minio: StoreConfig) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    data_card = {"source": "/data", "fingerprint": {"value": "f" * 64}, "totals": {"train": 1}}
    card = build_model_card("m", config, {"validation": {"accuracy": 0.97}}, data_card, {"result": "pass"})
    result = register(tiny_model_dir, "m", card, minio)
    registry = Registry.from_config(minio)
    assert registry.get_alias("m") == result.version and result.champion_moved
    stored = registry.read_card("m", result.version)
    for key in ("git_commit", "torch", "torchvision", "cpu_arch", "created"):
        assert stored[key]
    assert stored["data"]["fingerprint"]["value"] == "f" * 64
    assert stored["metrics"]["validation"]["accuracy"] == 0.97
    assert result.uri == f"s3://models/m/{result.version}"


def test_register_without_promotion_leaves_the_champion(tiny_model_dir: Path, minio: StoreConfig) -> None:
    first = register(tiny_model_dir, "m", {}, minio)
    second = register(tiny_model_dir, "m", {}, minio, promote=False)
    registry = Registry.from_config(minio)
    assert registry.get_alias("m") == first.version
    assert registry.versions("m") == sorted([first.version, second.version])
