"""Signed model versions: what a bucket writer can no longer do (issue 17, point 7).

SHA256SUMS only vouches for the transfer: whoever can write the bucket rewrites a file and SHA256SUMS
together. Every version carries `model.sig` (the register step's key); the registry's fetch, the
predictor (`python -m serving`, KServe's /mnt/models) and `tsr evaluate` verify it with the public key
before anything is loaded, and an unsigned version loads only when an operator opts in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import PredictorOptions
from serving.predictor import ModelSource, TSRPredictor
from tests.conftest import make_model_dir
from tsr.core.config import StoreConfig
from tsr.core.models import WEIGHTS_FILE, load_model_dir
from tsr.core.registry import SUMS_FILE, ModelSpec, Registry, RegistryError, format_sums, materialize, parse_sums
from tsr.core.signing import (
    ENV_ALLOW_UNSIGNED,
    ENV_PUBLIC_KEY,
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    SIG_FILE,
    SignatureError,
    Trust,
    ensure_local_key_pair,
    local_key_dir,
    sign_directory,
    verify_directory,
)
from tsr.core.store import DirStore, S3Store
from tsr.local.checkout import REPO_ROOT

NAME = "signed"


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state dir of this test's own: its own local key pair, no opt-in inherited from the caller."""
    directory = tmp_path / "state"
    monkeypatch.setenv("TSR_STATE_DIR", str(directory))
    for variable in (ENV_ALLOW_UNSIGNED, "TSR_SIGNING_KEY", "TSR_SIGNING_PUBLIC_KEY", "TSR_REQUIRE_SIGNED"):
        monkeypatch.delenv(variable, raising=False)
    return directory


def _rewrite(store: S3Store, version: str, filename: str, data: bytes) -> None:
    """What a bucket writer can do: replace a file and make SHA256SUMS agree with it."""
    prefix = f"{NAME}/{version}/"
    sums = parse_sums(store.get_bytes(prefix + SUMS_FILE).decode(), "test")
    store.put_bytes(prefix + filename, data)
    sums[filename] = hashlib.sha256(data).hexdigest()
    store.put_bytes(prefix + SUMS_FILE, format_sums(sums).encode())


def _other_weights(tmp_path: Path) -> bytes:
    """Weights that load fine (a model of the same shape): only the signature tells them apart."""
    return (make_model_dir(tmp_path / "attacker", seed=7) / WEIGHTS_FILE).read_bytes()


def test_local_key_pair_is_generated_once_and_private(state: Path) -> None:
    private, public = ensure_local_key_pair()
    assert private == local_key_dir() / PRIVATE_KEY_NAME and public == local_key_dir() / PUBLIC_KEY_NAME
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(local_key_dir().stat().st_mode) == 0o700
    before = private.read_bytes()
    assert ensure_local_key_pair() == (private, public) and private.read_bytes() == before, "generated once"
    assert b"PRIVATE KEY" in before and b"PUBLIC KEY" in public.read_bytes()


def test_signed_version_loads(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish(NAME, tiny_model_dir, {})
    assert stat.S_IMODE((local_key_dir() / PRIVATE_KEY_NAME).stat().st_mode) == 0o600  # made by the publish
    store = registry.store
    assert store.exists(f"{NAME}/{version}/{SIG_FILE}")
    assert SIG_FILE in parse_sums(store.get_bytes(f"{NAME}/{version}/{SUMS_FILE}").decode(), "test")
    local = registry.fetch(NAME, version, tmp_path / "cache")
    assert (local / SIG_FILE).is_file()
    _model, config = load_model_dir(local)
    assert config.arch == "tsrnet"
    assert registry.fetch(NAME, version, tmp_path / "cache") == local  # the warm cache, verified again


def test_rewritten_file_and_sums_are_refused_at_fetch(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish(NAME, tiny_model_dir, {})
    _rewrite(S3Store(minio, "models"), version, WEIGHTS_FILE, _other_weights(tmp_path))
    with pytest.raises(RegistryError) as refused:
        registry.fetch(NAME, version, tmp_path / "cache")
    message = str(refused.value)
    assert "\n" not in message
    assert f"s3://models/{NAME}/{version}" in message and WEIGHTS_FILE in message, message
    assert not (tmp_path / "cache" / NAME / version).exists(), "nothing refused is left in the cache"


def test_a_signature_by_another_key_is_refused(minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path) -> None:
    registry = Registry.from_config(minio)
    other_private, _ = ensure_local_key_pair({"TSR_STATE_DIR": str(tmp_path / "attacker-state")})
    version = registry.publish(NAME, tiny_model_dir, {}, key=other_private)
    ensure_local_key_pair()  # ours, which the readers trust
    with pytest.raises(RegistryError, match="another key"):
        registry.fetch(NAME, version, tmp_path / "cache")


def test_the_predictor_refuses_a_rewritten_version_before_loading_anything(
    minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish(NAME, tiny_model_dir, {})
    registry.set_alias(NAME, version)
    _rewrite(S3Store(minio, "models"), version, WEIGHTS_FILE, _other_weights(tmp_path))
    loads: list[Path] = []
    monkeypatch.setattr("serving.predictor.load_model_dir", lambda d: loads.append(d) or load_model_dir(d))
    predictor = TSRPredictor(NAME, ModelSource("champion", minio, tmp_path / "cache"), PredictorOptions(threads=1))
    with pytest.raises(RegistryError, match=f"refusing s3://models/{NAME}/{version}"):
        predictor.load()
    assert not predictor.ready and loads == [], "nothing may be loaded before the signature verified"


def _storage_initializer_copy(store: S3Store, version: str, target: Path) -> Path:
    """What KServe's storage-initializer puts at /mnt/models: every object under the version's prefix."""
    prefix = f"{NAME}/{version}/"
    for key in store.list(prefix):
        store.get_file(key, target / key[len(prefix) :])
    return target


def test_the_predictor_process_refuses_a_rewritten_mnt_models(
    minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path, state: Path
) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish(NAME, tiny_model_dir, {})
    store = S3Store(minio, "models")
    _rewrite(store, version, WEIGHTS_FILE, _other_weights(tmp_path))
    mnt = _storage_initializer_copy(store, version, tmp_path / "mnt-models")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "TSR_STATE_DIR": str(state),  # the public key: the local pair's
        "PYTHONPATH": str(REPO_ROOT),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "serving", "--model", str(mnt), "--model-name", NAME, "--http-port", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the predictor started serving a rewritten model")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing" in errors[0] and WEIGHTS_FILE in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_mnt_models_signed_copy_loads_and_plain_training_output_is_left_alone(
    minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish(NAME, tiny_model_dir, {})
    mnt = _storage_initializer_copy(S3Store(minio, "models"), version, tmp_path / "mnt-models")
    assert materialize(_dir_spec(mnt), None, tmp_path / "cache")[0] == mnt
    assert load_model_dir(mnt)[1].arch == "tsrnet"
    # A training run's output (no model.sig, no SHA256SUMS) is the operator's own directory ...
    assert materialize(_dir_spec(tiny_model_dir), None, tmp_path / "cache")[0] == tiny_model_dir
    # ... unless the predictor is told that every directory must be signed (TSR_REQUIRE_SIGNED=1).
    strict = Trust(public_key=local_key_dir() / PUBLIC_KEY_NAME, require_signed_dirs=True)
    with pytest.raises(RegistryError, match="unsigned"):
        materialize(_dir_spec(tiny_model_dir), None, tmp_path / "cache", strict)
    # A registry copy whose signature was removed is unsigned: refused.
    (mnt / SIG_FILE).unlink()
    with pytest.raises(RegistryError, match="unsigned"):
        materialize(_dir_spec(mnt), None, tmp_path / "cache")


def _dir_spec(directory: Path) -> ModelSpec:
    return ModelSpec(directory=directory)


def test_unsigned_legacy_version_is_refused_unless_opted_in(
    minio: StoreConfig,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry.from_config(minio)
    ensure_local_key_pair()
    version = registry.publish(NAME, tiny_model_dir, {}, sign=False)  # as every release before signing did
    registry.set_alias(NAME, version)
    with pytest.raises(RegistryError) as refused:
        registry.fetch(NAME, version, tmp_path / "cache")
    message = str(refused.value)
    assert f"s3://models/{NAME}/{version}" in message and "unsigned" in message and "\n" not in message
    assert ENV_ALLOW_UNSIGNED in message and "--allow-unsigned" in message  # how to opt in

    predictor = TSRPredictor(NAME, ModelSource("champion", minio, tmp_path / "cache"), PredictorOptions(threads=1))
    with pytest.raises(RegistryError, match="unsigned"):
        predictor.load()

    monkeypatch.setenv(ENV_ALLOW_UNSIGNED, "1")
    with caplog.at_level(logging.WARNING, logger="tsr.core.signing"):
        assert predictor.load() and predictor.ready
        assert predictor.load()  # from the cache: warned again, on every load
    warnings = [r.getMessage() for r in caplog.records if "UNSIGNED" in r.getMessage()]
    assert len(warnings) == 2 and f"s3://models/{NAME}/{version}" in warnings[0], warnings


def test_tampered_store_copy_behind_a_warm_cache_is_reported_and_refused(
    minio: StoreConfig, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish(NAME, tiny_model_dir, {})
    cache = tmp_path / "cache"
    local = registry.fetch(NAME, version, cache)  # warm
    store = S3Store(minio, "models")

    # Only the file is corrupted (SHA256SUMS untouched): the cached copy still matches SHA256SUMS.
    original = store.get_bytes(f"{NAME}/{version}/{WEIGHTS_FILE}")
    store.put_bytes(f"{NAME}/{version}/{WEIGHTS_FILE}", original[: len(original) // 2])
    with caplog.at_level(logging.WARNING, logger="tsr.core.registry"), pytest.raises(RegistryError, match="checksum"):
        registry.fetch(NAME, version, cache)
    changed = [r.getMessage() for r in caplog.records if "changed since it was cached" in r.getMessage()]
    assert len(changed) == 1 and WEIGHTS_FILE in changed[0] and "\n" not in changed[0], caplog.text

    assert (local / WEIGHTS_FILE).read_bytes() == original, "the refused download left the verified copy alone"

    # The file and SHA256SUMS rewritten together: reported, then refused by the signature.
    caplog.clear()
    _rewrite(store, version, WEIGHTS_FILE, _other_weights(tmp_path))
    with caplog.at_level(logging.WARNING, logger="tsr.core.registry"), pytest.raises(RegistryError, match="refusing"):
        registry.fetch(NAME, version, cache)
    changed = [r.getMessage() for r in caplog.records if "changed since it was cached" in r.getMessage()]
    assert len(changed) == 1 and WEIGHTS_FILE in changed[0] and SUMS_FILE in changed[0], caplog.text


def test_without_a_public_key_a_signed_directory_is_refused_unless_opted_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    private, public = ensure_local_key_pair()
    directory = tmp_path / "version"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    sign_directory(directory, private)
    assert verify_directory(directory, "v1", Trust(public_key=public))
    with pytest.raises(SignatureError, match=f"refusing v1: no public key.*{ENV_PUBLIC_KEY}"):
        verify_directory(directory, "v1", Trust(public_key=None))
    with caplog.at_level(logging.WARNING, logger="tsr.core.signing"):
        assert not verify_directory(directory, "v1", Trust(public_key=None, allow_unsigned=True))
    assert "NOT verified" in caplog.text
    (directory / "config.json").write_text('{"evil": 1}')
    with pytest.raises(SignatureError, match=r"refusing v1: content differs from the signed content: config\.json"):
        verify_directory(directory, "v1", Trust(public_key=public, allow_unsigned=True))  # no opt-in helps
    (directory / "config.json").write_text("{}")
    (directory / "model.pt").write_bytes(b"an archive nobody signed")
    with pytest.raises(SignatureError, match=r"refusing v1: files that are not signed: model\.pt$"):
        verify_directory(directory, "v1", Trust(public_key=public))


def test_a_missing_signing_key_fails_the_publish_before_anything_is_uploaded(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TSR_SIGNING_KEY", str(tmp_path / "no-such-key.pem"))
    registry = Registry(DirStore(tmp_path / "store", "models"))
    with pytest.raises(RegistryError, match=r"cannot sign the version: TSR_SIGNING_KEY=.*no-such-key\.pem"):
        registry.publish(NAME, tiny_model_dir, {})
    assert registry.store.list(f"{NAME}/") == []
