"""Registration against a real MinIO: the model card carries lineage, champion moves last."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from components.register.register import RegisterResult, build_model_card, register
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
    assert stored["temperature"] == config["temperature"] == 1.0  # what the served probabilities use
    assert result.uri == f"s3://models/m/{result.version}"


def test_register_without_promotion_leaves_the_champion(tiny_model_dir: Path, minio: StoreConfig) -> None:
    first = register(tiny_model_dir, "m", {}, minio)
    second = register(tiny_model_dir, "m", {}, minio, promote=False)
    registry = Registry.from_config(minio)
    assert registry.get_alias("m") == first.version
    assert registry.versions("m") == sorted([first.version, second.version])


def test_two_runs_compared_with_one_champion_promote_once(tiny_model_dir: Path, minio: StoreConfig) -> None:
    """Two pipeline runs gated against the same champion register at the same moment: exactly one
    replaces it and says so; the other is kept as a version, reports `champion_moved` false and why,
    and the alias history holds the one move with the right `previous`."""
    first = register(tiny_model_dir, "m", {}, minio)
    barrier = threading.Barrier(2)

    def run() -> RegisterResult:
        barrier.wait()
        return register(tiny_model_dir, "m", {}, minio, compared_with=first.version)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: run(), range(2)))
    assert [r.champion_moved for r in results].count(True) == 1, results
    (winner,) = [r for r in results if r.champion_moved]
    (loser,) = [r for r in results if not r.champion_moved]
    assert f"not at {first.version}" in loser.champion_note, loser
    registry = Registry.from_config(minio)
    assert registry.get_alias("m") == winner.version
    assert [(h["version"], h["previous"]) for h in registry.alias_history("m")] == [
        (first.version, None),
        (winner.version, first.version),
    ]
    assert sorted(registry.versions("m")) == sorted([first.version, winner.version, loser.version])
