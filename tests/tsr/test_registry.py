"""Registry rules against a real MinIO: immutability, checksums, the alias moves last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsr.core.config import StoreConfig
from tsr.core.registry import (
    CHAMPION,
    Registry,
    RegistryError,
    materialize,
    parse_model_spec,
)
from tsr.core.store import S3Store


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
    assert len(seen) == len(files) + 2, "one call per object: the files, the card, SHA256SUMS"
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
