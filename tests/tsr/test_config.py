from __future__ import annotations

from pathlib import Path

import pytest

from tsr.core.config import ConfigError, explicit_store_config, state_dir, store_config_from_env


def test_environment_wins_and_strips_the_scheme() -> None:
    cfg = store_config_from_env(
        {"TSR_S3_ENDPOINT": "https://minio.example:9000", "TSR_S3_ACCESS_KEY": "a", "TSR_S3_SECRET_KEY": "b"}
    )
    assert cfg is not None and cfg.endpoint == "minio.example:9000" and cfg.secure
    assert cfg.env()["TSR_S3_SECURE"] == "true"


def test_endpoint_without_credentials_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="access key or secret key is missing"):
        store_config_from_env({"TSR_S3_ENDPOINT": "127.0.0.1:9000"})


def test_config_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[store]\nendpoint = "127.0.0.1:9999"\naccess_key = "k"\nsecret_key = "s"\n')
    cfg = explicit_store_config({"TSR_CONFIG": str(path)})
    assert cfg is not None and cfg.endpoint == "127.0.0.1:9999" and "config file" in cfg.origin


def test_missing_config_file_named_by_env_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        explicit_store_config({"TSR_CONFIG": str(tmp_path / "nope.toml")})


def test_nothing_in_the_environment_means_no_explicit_store() -> None:
    assert store_config_from_env({}) is None


def test_directory_store(tmp_path: Path) -> None:
    cfg = store_config_from_env({"TSR_STORE_DIR": str(tmp_path)})
    assert cfg is not None and cfg.kind == "dir" and cfg.directory == tmp_path


def test_state_dir_from_the_environment(tmp_path: Path) -> None:
    env = {"TSR_STATE_DIR": str(tmp_path / "s"), "XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert state_dir(env) == tmp_path / "s"


def test_state_dir_defaults_to_the_xdg_state_directory(tmp_path: Path) -> None:
    """Never the checkout: installed from a wheel, the package's location says nothing about where state goes."""
    assert state_dir({"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}) == tmp_path / "xdg" / "tsr"
    assert state_dir({"HOME": str(tmp_path)}) == tmp_path / ".local" / "state" / "tsr"
    # an empty or relative XDG_STATE_HOME is invalid (XDG Base Directory spec) and ignored
    for xdg in ("", "relative/state"):
        assert state_dir({"XDG_STATE_HOME": xdg, "HOME": str(tmp_path)}) == tmp_path / ".local" / "state" / "tsr"
    assert state_dir({"TSR_STATE_DIR": "", "HOME": str(tmp_path)}) == tmp_path / ".local" / "state" / "tsr"
