"""Where the object store is and how to reach it: one dataclass, resolved in one place.

Resolution order (first match wins):
  1. environment: TSR_S3_ENDPOINT (+ TSR_S3_ACCESS_KEY, TSR_S3_SECRET_KEY, TSR_S3_SECURE,
     TSR_S3_REGION), or TSR_STORE_DIR for a plain directory store;
  2. a TOML config file: $TSR_CONFIG, else ~/.config/tsr/config.toml, with a [store] table
     holding the same fields (endpoint, access_key, secret_key, secure, region, dir);
  3. the embedded default: a MinIO server under the state directory (state_dir()), started on
     demand on 127.0.0.1 with generated credentials (see tsr.local.minio_server).
In a cluster the environment variables come from a Kubernetes Secret, never from arguments.

Nothing here depends on where the package sits: installed from a wheel, it works the same as
from a checkout (the checkout's root, for development tooling, is tsr.local.checkout.REPO_ROOT).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BUCKET = "models"
DATA_BUCKET = "datasets"

ENV_ENDPOINT = "TSR_S3_ENDPOINT"
ENV_ACCESS_KEY = "TSR_S3_ACCESS_KEY"
ENV_SECRET_KEY = "TSR_S3_SECRET_KEY"
ENV_SECURE = "TSR_S3_SECURE"
ENV_REGION = "TSR_S3_REGION"
ENV_STORE_DIR = "TSR_STORE_DIR"
ENV_CONFIG = "TSR_CONFIG"
ENV_STATE_DIR = "TSR_STATE_DIR"
ENV_XDG_STATE_HOME = "XDG_STATE_HOME"


class ConfigError(ValueError):
    """The store configuration is incomplete or contradictory."""


@dataclass(frozen=True)
class StoreConfig:
    """An S3 endpoint (MinIO) or a local directory; `kind` says which."""

    kind: str  # "s3" | "dir"
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    secure: bool = False
    region: str | None = None
    directory: Path | None = None
    origin: str = ""  # where this config came from, for messages ("env", "file <path>", "embedded")

    def describe(self) -> str:
        if self.kind == "dir":
            return f"directory store {self.directory}"
        scheme = "https" if self.secure else "http"
        return f"MinIO/S3 at {scheme}://{self.endpoint}"

    def env(self) -> dict[str, str]:
        """The variables that hand this config to a child process (a pipeline step, the predictor)."""
        if self.kind == "dir":
            return {ENV_STORE_DIR: str(self.directory)}
        env = {
            ENV_ENDPOINT: self.endpoint,
            ENV_ACCESS_KEY: self.access_key,
            ENV_SECRET_KEY: self.secret_key,
            ENV_SECURE: "true" if self.secure else "false",
        }
        if self.region:
            env[ENV_REGION] = self.region
        return env


def _truthy(value: str | bool | None) -> bool:
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in {"1", "true", "yes", "on"}


def _from_mapping(values: Mapping[str, object], origin: str) -> StoreConfig | None:
    directory = values.get("dir")
    endpoint = values.get("endpoint")
    if directory and endpoint:
        raise ConfigError(f"{origin}: set either an S3 endpoint or a store directory, not both")
    if directory:
        return StoreConfig(kind="dir", directory=Path(str(directory)).expanduser(), origin=origin)
    if not endpoint:
        return None
    access_key, secret_key = values.get("access_key"), values.get("secret_key")
    if not access_key or not secret_key:
        raise ConfigError(f"{origin}: endpoint {endpoint} is set but access key or secret key is missing")
    endpoint_s = str(endpoint)
    secure = _truthy(values.get("secure"))  # type: ignore[arg-type]
    for prefix, is_secure in (("https://", True), ("http://", False)):
        if endpoint_s.startswith(prefix):
            endpoint_s, secure = endpoint_s[len(prefix) :], is_secure
    return StoreConfig(
        kind="s3",
        endpoint=endpoint_s.rstrip("/"),
        access_key=str(access_key),
        secret_key=str(secret_key),
        secure=secure,
        region=str(values["region"]) if values.get("region") else None,
        origin=origin,
    )


def store_config_from_env(environ: Mapping[str, str]) -> StoreConfig | None:
    return _from_mapping(
        {
            "endpoint": environ.get(ENV_ENDPOINT),
            "access_key": environ.get(ENV_ACCESS_KEY),
            "secret_key": environ.get(ENV_SECRET_KEY),
            "secure": environ.get(ENV_SECURE),
            "region": environ.get(ENV_REGION),
            "dir": environ.get(ENV_STORE_DIR),
        },
        origin="environment",
    )


def store_config_from_file(path: Path) -> StoreConfig | None:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    store = data.get("store")
    if not isinstance(store, dict):
        raise ConfigError(f"{path}: no [store] table")
    return _from_mapping(store, origin=f"config file {path}")


def config_file_path(environ: Mapping[str, str]) -> Path:
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG]).expanduser()
    return Path.home() / ".config" / "tsr" / "config.toml"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Local state (embedded MinIO data, caches, the local predictor's record, demo output).

    $TSR_STATE_DIR, else the XDG state directory: $XDG_STATE_HOME/tsr, by default ~/.local/state/tsr.
    `make demo` and the other Makefile targets export TSR_STATE_DIR=<checkout>/.state (git-ignored).
    """
    environ = os.environ if environ is None else environ
    if environ.get(ENV_STATE_DIR):
        return Path(environ[ENV_STATE_DIR]).expanduser().resolve()
    xdg = Path(environ.get(ENV_XDG_STATE_HOME) or "").expanduser()
    if not xdg.is_absolute():  # unset, empty or relative: the XDG spec says to ignore a relative one
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
        xdg = home / ".local" / "state"
    return (xdg / "tsr").resolve()


def explicit_store_config(environ: Mapping[str, str] | None = None) -> StoreConfig | None:
    """The store named by environment or config file, or None for the embedded default."""
    environ = os.environ if environ is None else environ
    found = store_config_from_env(environ)
    if found is not None:
        return found
    path = config_file_path(environ)
    if path.is_file():
        return store_config_from_file(path)
    if environ.get(ENV_CONFIG):
        raise ConfigError(f"{ENV_CONFIG} points at {path}, which does not exist")
    return None
