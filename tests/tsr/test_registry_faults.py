"""Registry faults against a real MinIO that is really stopped, and real corrupted objects.

- MinIO stops in the middle of `publish`: the half-written version stays invisible, the champion
  does not move, the error names the endpoint and the object, and after a restart the same
  publish completes to exactly what an uninterrupted one would have written.
- A registered file is truncated in MinIO: `tsr evaluate` refuses it with a checksum error
  naming the file, and nothing half-downloaded is left in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_model_dir
from tsr.core.config import StoreConfig
from tsr.core.registry import SUMS_FILE, Registry, RegistryError, format_sums, sha256_file
from tsr.core.store import S3Store
from tsr.local.minio_server import LocalMinio

TSR = str(Path(sys.executable).parent / "tsr")
NAME = "faulty"
CARD: dict[str, Any] = {"metrics": {"validation": {"accuracy": 0.91}}, "run_id": "run-1"}


def _tsr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TSR, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def _one_line(text: str) -> str:
    """rich wraps stderr at 80 columns; compare messages with whitespace collapsed."""
    return " ".join(text.split())


def _port(config: StoreConfig) -> int:
    return int(config.endpoint.rsplit(":", 1)[1])


def _stop_after(store: S3Store, count: int, server: LocalMinio, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the store's two upload calls: once `count` objects are stored, stop MinIO (really) before the next."""
    stored: list[str] = []

    def wrap(upload: Callable[..., None]) -> Callable[..., None]:
        def wrapped(key: str, *args: Any, **kwargs: Any) -> None:
            upload(key, *args, **kwargs)
            stored.append(key)
            if len(stored) == count:
                server.stop()

        return wrapped

    monkeypatch.setattr(store, "put_file", wrap(store.put_file))
    monkeypatch.setattr(store, "put_bytes", wrap(store.put_bytes))
    return stored


@pytest.mark.parametrize("stop_after", [1, 4], ids=["after-first-object", "before-commit-marker"])
def test_minio_stopped_mid_publish(
    minio_server: LocalMinio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_after: int
) -> None:
    config = minio_server.running()
    assert config is not None
    registry = Registry.from_config(config)
    first = registry.publish(NAME, make_model_dir(tmp_path / "first", seed=1), CARD)
    registry.set_alias(NAME, first)
    model_dir = make_model_dir(tmp_path / "second", seed=2)  # config.json, model.safetensors (+ card, sig, SUMS)
    store = registry.store
    assert isinstance(store, S3Store)

    with monkeypatch.context() as patch:
        stored = _stop_after(store, stop_after, minio_server, patch)
        started = time.monotonic()
        with pytest.raises(RegistryError) as failure:
            registry.publish(NAME, model_dir, CARD, version="v2")
        elapsed = time.monotonic() - started
    message = str(failure.value)
    assert len(stored) == stop_after
    assert f"publishing s3://models/{NAME}/v2 stopped after {stop_after} of 5 objects" in message
    assert f"http://{config.endpoint}" in message  # the endpoint
    assert "Connection refused" in message and "HTTPConnection(" not in message  # the cause, not urllib3's reprs
    assert "no alias moved" in message and "version='v2'" in message  # and what to do about it
    assert elapsed < 30, f"a stopped server must fail fast, took {elapsed:.1f}s"

    # While MinIO is down the CLI says so in one line, naming the endpoint: no traceback.
    down = _tsr("models", "list", "--model-name", NAME, env=config.env())
    assert down.returncode != 0
    assert config.endpoint in down.stderr and "Traceback" not in down.stderr, down.stderr

    minio_server.start(port=_port(config))  # same endpoint: the same Registry object keeps working
    leftovers = store.list(f"{NAME}/v2/")
    assert leftovers == sorted(stored), "the interrupted publish left exactly what it had stored"
    assert SUMS_FILE not in {k.rsplit("/", 1)[-1] for k in leftovers}
    assert registry.versions(NAME) == [first]
    assert not registry.is_complete(NAME, "v2")
    assert registry.get_alias(NAME) == first, "the champion must not move"
    with pytest.raises(RegistryError, match="not a complete version"):
        registry.resolve(NAME, "v2")
    with pytest.raises(RegistryError, match="not a complete version"):
        registry.fetch(NAME, "v2", tmp_path / "cache")

    assert registry.publish(NAME, model_dir, CARD, version="v2") == "v2"  # the retry completes it
    expected_card = {**CARD, "name": NAME, "version": "v2", "uri": f"s3://models/{NAME}/v2"}
    assert registry.read_card(NAME, "v2") == expected_card
    card_bytes = (json.dumps(expected_card, indent=2, sort_keys=True) + "\n").encode()
    card_file = tmp_path / "card.json"
    card_file.write_bytes(card_bytes)
    expected_sums = {p.name: sha256_file(p) for p in model_dir.iterdir()} | {"model-card.json": sha256_file(card_file)}
    expected_sums["model.sig"] = hashlib.sha256(store.get_bytes(f"{NAME}/v2/model.sig")).hexdigest()
    assert store.get_bytes(f"{NAME}/v2/{SUMS_FILE}").decode() == format_sums(expected_sums)
    assert store.list(f"{NAME}/v2/") == sorted(f"{NAME}/v2/{n}" for n in [*expected_sums, SUMS_FILE])
    local = registry.fetch(NAME, "v2", tmp_path / "cache")
    for path in model_dir.iterdir():
        assert (local / path.name).read_bytes() == path.read_bytes()
    assert registry.versions(NAME) == sorted([first, "v2"])
    assert registry.get_alias(NAME) == first  # publishing alone still never moves the champion
    registry.set_alias(NAME, "v2")
    assert registry.get_alias(NAME) == "v2"


def test_a_complete_version_is_never_overwritten_by_a_retry(minio: StoreConfig, tmp_path: Path) -> None:
    """Finishing an interrupted publish must not turn into a way around immutability."""
    registry = Registry.from_config(minio)
    registry.publish(NAME, make_model_dir(tmp_path / "a", seed=1), CARD, version="v1")
    with pytest.raises(RegistryError, match="already exists; versions are immutable"):
        registry.publish(NAME, make_model_dir(tmp_path / "b", seed=2), CARD, version="v1")
    assert registry.fetch(NAME, "v1", tmp_path / "cache").joinpath("model.safetensors").read_bytes() == (
        (tmp_path / "a" / "model.safetensors").read_bytes()
    )


def test_evaluate_refuses_a_truncated_weights_file(minio: StoreConfig, tmp_path: Path, gtsrb_small: Path) -> None:
    victim = "model.safetensors"
    registry = Registry.from_config(minio)
    model_dir = make_model_dir(tmp_path / "model")
    version = registry.publish(NAME, model_dir, CARD)
    registry.set_alias(NAME, version)
    original = (model_dir / victim).read_bytes()
    S3Store(minio, "models").put_bytes(f"{NAME}/{version}/{victim}", original[: len(original) // 2])  # truncated

    state = tmp_path / "state"  # a cold cache: the download itself must be verified
    env = {**minio.env(), "TSR_STATE_DIR": str(state)}
    uri = f"s3://models/{NAME}/{version}"
    for model in (uri, "champion"):
        result = _tsr("evaluate", "--model", model, "--model-name", NAME, "--data", str(gtsrb_small), env=env)
        stderr = _one_line(result.stderr)
        assert result.returncode != 0 and not result.stdout.strip(), result.stdout
        assert f"checksum mismatch for {uri}/{victim}" in stderr, stderr
        assert "refusing to load it" in stderr and "Traceback" not in stderr, stderr
    cache = state / "cache" / "models"
    assert not (cache / NAME / version).exists(), "a corrupted download must not be cached"
    assert not list(cache.glob(".download-*")), "no half-downloaded directory may be left behind"
