"""Registry rules against a real MinIO: immutability, checksums, the alias moves last."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tsr.core.config import StoreConfig
from tsr.core.registry import (
    CHAMPION,
    AliasMove,
    Registry,
    RegistryError,
    materialize,
    parse_model_spec,
)
from tsr.core.store import S3Store, open_store


def test_publish_fetch_and_alias(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish("gtsrb-test", tiny_model_dir, {"metrics": {"validation": {"accuracy": 0.5}}})
    assert registry.versions("gtsrb-test") == [version]
    assert registry.get_alias("gtsrb-test") is None
    registry.set_alias("gtsrb-test", version)
    assert registry.resolve("gtsrb-test", CHAMPION) == version
    card = registry.read_card("gtsrb-test", version)
    assert card["version"] == version and card["uri"] == f"s3://models/gtsrb-test/{version}"
    local = registry.fetch("gtsrb-test", version, tmp_path / "cache")
    for name in ("model.safetensors", "config.json", "model-card.json", "SHA256SUMS"):
        assert (local / name).is_file()
    assert (local / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_publish_reports_upload_progress_in_bytes(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    registry = Registry.from_config(minio)
    version = registry.publish("gtsrb-progress", tiny_model_dir, {}, on_progress=lambda d, t: seen.append((d, t)))
    files = [p for p in tiny_model_dir.iterdir() if p.is_file()]
    assert len(seen) == len(files) + 3, "one call per object: the files, the card, model.sig, SHA256SUMS"
    total = seen[0][1]
    assert all(t == total for _, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == total > sum(p.stat().st_size for p in files)
    fetched = registry.fetch("gtsrb-progress", version, tmp_path / "cache")
    assert sum(p.stat().st_size for p in fetched.iterdir() if p.is_file()) == total, "bytes = what was stored"


def test_versions_are_immutable(minio: StoreConfig, tiny_model_dir: Path) -> None:
    registry = Registry.from_config(minio)
    registry.publish("m", tiny_model_dir, {}, version="v1")
    with pytest.raises(RegistryError, match="already exists; versions are immutable"):
        registry.publish("m", tiny_model_dir, {}, version="v1")


def test_checksum_mismatch_is_refused_and_nothing_is_cached(
    minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish("m", tiny_model_dir, {})
    store = S3Store(minio, "models")
    store.put_bytes(f"m/{version}/model.safetensors", b"tampered")
    with pytest.raises(RegistryError, match=r"checksum mismatch for .*model\.safetensors"):
        registry.fetch("m", version, tmp_path / "cache")
    assert not (tmp_path / "cache" / "m" / version).exists()


def test_tampered_cache_is_detected_and_replaced(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish("m", tiny_model_dir, {})
    local = registry.fetch("m", version, tmp_path / "cache")
    (local / "config.json").write_text("{}")
    again = registry.fetch("m", version, tmp_path / "cache")
    assert json.loads((again / "config.json").read_text())["arch"] == "tsrnet"


def test_incomplete_version_is_invisible_and_cannot_be_champion(minio: StoreConfig, tiny_model_dir: Path) -> None:
    registry = Registry.from_config(minio)
    store = S3Store(minio, "models")
    store.ensure_bucket()
    # An upload that died before its SHA256SUMS (the commit marker) was written:
    store.put_file("m/half/model.safetensors", tiny_model_dir / "model.safetensors")
    assert registry.versions("m") == []
    with pytest.raises(RegistryError, match="no such complete version"):
        registry.set_alias("m", "half")
    with pytest.raises(RegistryError, match="not a complete version"):
        registry.resolve("m", "half")


def test_alias_moves_only_after_the_version_is_complete(minio: StoreConfig, tiny_model_dir: Path) -> None:
    registry = Registry.from_config(minio)
    first = registry.publish("m", tiny_model_dir, {})
    registry.set_alias("m", first)
    second = registry.publish("m", tiny_model_dir, {})
    assert registry.get_alias("m") == first  # publishing alone never moves the champion
    registry.set_alias("m", second)
    record = json.loads(S3Store(minio, "models").get_bytes("m/champion"))
    assert record["version"] == second and record["previous"] == first


def test_dir_store_behaves_the_same(tmp_path: Path, tiny_model_dir: Path) -> None:
    registry = Registry.from_config(StoreConfig(kind="dir", directory=tmp_path / "store"))
    version = registry.publish("m", tiny_model_dir, {})
    registry.set_alias("m", version)
    assert registry.versions("m") == [version]
    assert registry.resolve("m", "champion") == version
    assert (registry.fetch("m", version, tmp_path / "cache") / "model.safetensors").is_file()


def test_model_spec_parsing(tmp_path: Path) -> None:
    assert parse_model_spec("champion").ref == "champion"
    spec = parse_model_spec("s3://models/gtsrb-classifier/20261123-000000-abc123")
    assert (spec.bucket, spec.name, spec.ref) == ("models", "gtsrb-classifier", "20261123-000000-abc123")
    assert parse_model_spec(str(tmp_path)).directory == tmp_path
    with pytest.raises(ValueError, match="no bucket name"):
        parse_model_spec("s3:///x/y")
    with pytest.raises(ValueError, match="unknown URI scheme"):
        parse_model_spec("gs://models/x/y")
    with pytest.raises(ValueError, match="must look like"):
        parse_model_spec("s3://models/only-name")
    with pytest.raises(ValueError, match="no such directory"):
        parse_model_spec(str(tmp_path / "missing"))


def test_materialize_a_directory_needs_no_store(tiny_model_dir: Path, tmp_path: Path) -> None:
    path, uri = materialize(parse_model_spec(str(tiny_model_dir)), None, tmp_path)
    assert path == tiny_model_dir and uri == str(tiny_model_dir.resolve())


# ---- the alias: compare-and-swap moves and their history -------------------------------------------------
@pytest.fixture(params=["minio", "dir"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, minio_binary: Path) -> StoreConfig:
    """Both backends: a real MinIO on loopback, and the directory store (one lock per bucket).

    It asks for `minio_binary` so that both variants count as integration tests (conftest's tiers
    see the fixtures a test requests, not the one `getfixturevalue` starts)."""
    if request.param == "minio":
        config: StoreConfig = request.getfixturevalue("minio")
        return config
    return StoreConfig(kind="dir", directory=tmp_path / "store")


def _publish(registry: Registry, model_dir: Path, count: int) -> list[str]:
    return [registry.publish("m", model_dir, {}, version=f"v{i}") for i in range(1, count + 1)]


def _promotion(config: StoreConfig, version: str) -> Callable[[], AliasMove]:
    """One promotion, as a separate process would make it: its own registry and store client."""
    return lambda: Registry.from_config(config).set_alias("m", version)


def _at_once(calls: list[Callable[[], AliasMove]]) -> list[AliasMove]:
    """Run `calls` on as many threads, released together by a barrier, each with its own store client."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], AliasMove]) -> AliasMove:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def test_the_store_honours_conditional_writes(any_store: StoreConfig) -> None:
    """The real MinIO (the pinned build in .tools) applies If-None-Match: * and If-Match; the directory
    store does the same. Without this, the alias's compare-and-swap would silently be last-writer-wins."""
    store = open_store(any_store, "models")
    store.ensure_bucket()
    assert store.put_bytes_if("k", b"one", None) is True
    assert store.put_bytes_if("k", b"two", None) is False, "create-only must not replace an existing object"
    data, etag = store.get_bytes_etag("k")
    assert data == b"one"
    assert store.put_bytes_if("k", b"three", '"0123456789abcdef0123456789abcdef"') is False
    assert store.put_bytes_if("k", b"four", etag) is True
    assert store.put_bytes_if("k", b"five", etag) is False, "a stale ETag must not replace the newer object"
    assert store.get_bytes("k") == b"four"
    assert store.put_bytes_if("missing", b"x", etag) is False
    assert not store.exists("missing")


def test_concurrent_promotions_of_one_version_move_it_once(any_store: StoreConfig, tiny_model_dir: Path) -> None:
    registry = Registry.from_config(any_store)
    v1, v2 = _publish(registry, tiny_model_dir, 2)
    registry.set_alias("m", v1)
    moves = _at_once([_promotion(any_store, v2) for _ in range(8)])
    assert [m.moved for m in moves].count(True) == 1, moves
    assert all(m.version == v2 for m in moves)
    (winner,) = [m for m in moves if m.moved]
    assert winner.previous == v1 and winner.seq == 2
    record = json.loads(open_store(any_store, "models").get_bytes("m/champion"))
    assert record["version"] == v2 and record["previous"] == v1
    history = registry.alias_history("m")
    assert [(h["seq"], h["version"], h["previous"]) for h in history] == [(1, v1, None), (2, v2, v1)]


def test_concurrent_promotions_of_different_versions_are_all_recorded(
    any_store: StoreConfig, tiny_model_dir: Path
) -> None:
    """Each distinct state is reached by exactly one move; the history chains them, with no move lost."""
    registry = Registry.from_config(any_store)
    first, *others = _publish(registry, tiny_model_dir, 7)
    registry.set_alias("m", first)
    moves = _at_once([_promotion(any_store, v) for v in others])
    assert all(m.moved for m in moves), moves
    history = registry.alias_history("m")
    assert [h["seq"] for h in history] == list(range(1, len(others) + 2))
    assert history[0]["version"] == first and sorted(h["version"] for h in history[1:]) == sorted(others)
    for earlier, later in itertools.pairwise(history):
        assert later["previous"] == earlier["version"], history
    assert {(m.version, m.previous, m.seq) for m in moves} == {
        (h["version"], h["previous"], h["seq"]) for h in history[1:]
    }
    assert registry.get_alias("m") == history[-1]["version"]
    keys = open_store(any_store, "models").list("m/_aliases/champion/history/")
    assert len(keys) == len(history), "one immutable object per move"


def test_repromoting_the_champion_is_a_no_op(any_store: StoreConfig, tiny_model_dir: Path) -> None:
    registry = Registry.from_config(any_store)
    v1, v2 = _publish(registry, tiny_model_dir, 2)
    registry.set_alias("m", v1)
    registry.set_alias("m", v2)
    before = open_store(any_store, "models").get_bytes("m/champion")
    again = registry.set_alias("m", v2)
    assert not again.moved and again.version == v2 and again.previous == v1, again
    assert "already points at" in again.reason
    assert open_store(any_store, "models").get_bytes("m/champion") == before, "the record is not rewritten"
    assert [h["version"] for h in registry.alias_history("m")] == [v1, v2]


def test_only_from_refuses_to_replace_a_champion_it_was_not_compared_with(
    any_store: StoreConfig, tiny_model_dir: Path
) -> None:
    registry = Registry.from_config(any_store)
    v1, v2, v3 = _publish(registry, tiny_model_dir, 3)
    assert registry.set_alias("m", v1, only_from=None).moved  # no champion yet, as expected
    assert not registry.set_alias("m", v2, only_from=None).moved  # one appeared meanwhile
    refused = registry.set_alias("m", v3, only_from=v2)
    assert not refused.moved and refused.version == v1 and "not at v2" in refused.reason
    assert registry.set_alias("m", v3, only_from=v1).moved
    assert registry.get_alias("m") == v3


def test_a_move_that_died_before_its_history_entry_is_completed_by_the_next(
    any_store: StoreConfig, tiny_model_dir: Path
) -> None:
    """A record written by an older version (no seq, no history) counts as entry 0 and is kept."""
    registry = Registry.from_config(any_store)
    v1, v2 = _publish(registry, tiny_model_dir, 2)
    store = open_store(any_store, "models")
    store.put_bytes("m/champion", json.dumps({"version": v1, "uri": "…", "previous": None}).encode())
    assert [h["version"] for h in registry.alias_history("m")] == [v1]  # the current record, until written
    move = registry.set_alias("m", v2)
    assert move.moved and move.previous == v1 and move.seq == 1
    assert [(h.get("seq", 0), h["version"]) for h in registry.alias_history("m")] == [(0, v1), (1, v2)]
    assert len(store.list("m/_aliases/champion/history/")) == 2
