"""Shared fixtures: the real GTSRB archive extracted once, a real MinIO on loopback, small models."""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import subprocess
import tarfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tsr.core.config import StoreConfig
from tsr.core.drift import build_reference
from tsr.core.gtsrb import CLASS_NAMES
from tsr.core.models import ModelConfig, build_model, save_model_dir
from tsr.core.preprocessing import PreprocessConfig
from tsr.core.signing import ENV_PUBLIC_KEY, ENV_SIGNING_KEY, ensure_local_key_pair
from tsr.local.checkout import REPO_ROOT
from tsr.local.minio_server import LocalMinio, find_minio_binary

ARCHIVE = Path(os.environ.get("TSR_GTSRB_ARCHIVE", REPO_ROOT.parent / "shared" / "data" / "gtsrb-train-32.tar.gz"))
# The suite keeps the checkout's git-ignored .state/ (as the Makefile's targets do) rather than the
# installed default ~/.local/state/tsr; a test that needs another state dir sets TSR_STATE_DIR itself.
os.environ.setdefault("TSR_STATE_DIR", str(REPO_ROOT / ".state"))
# One signing key pair for the session, handed to every child process by path (as the cluster hands the
# register step and the predictor theirs): a test that runs the predictor with a state dir of its own
# still trusts the versions the test published. tests/tsr/test_signing.py unsets these to test the defaults.
_SIGNING_KEY, _PUBLIC_KEY = ensure_local_key_pair()
os.environ.setdefault(ENV_SIGNING_KEY, str(_SIGNING_KEY))
os.environ.setdefault(ENV_PUBLIC_KEY, str(_PUBLIC_KEY))


@pytest.fixture(scope="session")
def gtsrb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official GTSRB training set (32x32) in torchvision layout, extracted to a temp dir."""
    if not ARCHIVE.is_file():
        pytest.fail(f"GTSRB archive not found at {ARCHIVE} (set TSR_GTSRB_ARCHIVE)")
    root = tmp_path_factory.mktemp("gtsrb")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="session")
def gtsrb_small(gtsrb_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train split with 4 tracks per class plus a test split (Final_Test + CSV) built from
    2 further tracks per class, so held-out evaluation runs on unseen tracks."""
    root = tmp_path_factory.mktemp("gtsrb-small")
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    out_train = root / "gtsrb" / "GTSRB" / "Training"
    out_test = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    out_test.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for class_dir in sorted(training.iterdir()):
        tracks = sorted({p.name[:5] for p in class_dir.glob("*.ppm")})
        (out_train / class_dir.name).mkdir(parents=True)
        for track in tracks[:4]:
            for path in class_dir.glob(f"{track}_*.ppm"):
                shutil.copy(path, out_train / class_dir.name / path.name)
        for track in tracks[4:6]:
            for path in sorted(class_dir.glob(f"{track}_*.ppm"))[::3]:
                name = f"{len(rows) - 1:05d}.ppm"
                shutil.copy(path, out_test / name)
                rows.append(f"{name};32;32;0;0;32;32;{int(class_dir.name)}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def minio_binary() -> Path:
    binary = find_minio_binary()
    if binary is None:
        pytest.fail("no MinIO binary: run `make tools` first (the Makefile's test target does)")
    return binary


@pytest.fixture
def minio(tmp_path: Path, minio_binary: Path) -> Iterator[StoreConfig]:
    """A real MinIO server on 127.0.0.1 with fresh data and generated credentials."""
    server = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
    config = server.start()
    try:
        yield config
    finally:
        server.stop()


@pytest.fixture
def minio_server(tmp_path: Path, minio_binary: Path) -> Iterator[LocalMinio]:
    """Like `minio`, but hands over the server object for tests that stop and restart it."""
    server = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until_ok(
    proc: subprocess.Popen[Any],
    url: str,
    what: str,
    timeout_s: float,
    log: Path | None = None,
    interval_s: float = 0.2,
    request_timeout_s: float = 1.0,
) -> None:
    """Poll `url` until it answers 200; fail the test if `proc` exits first (with its output: the `log`
    file's tail, else its stdout pipe) or `timeout_s` passes (with the log's tail, if there is one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            output = log.read_text()[-3000:] if log is not None else (proc.stdout.read() if proc.stdout else "")
            pytest.fail(f"{what} exited with {proc.returncode}:\n{output}")
        try:
            if httpx.get(url, timeout=request_timeout_s).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout_s:.0f}s" + (f":\n{log.read_text()[-3000:]}" if log else ""))
        time.sleep(interval_s)


def make_model_dir(path: Path, seed: int = 0, export_program: bool = False, temperature: float = 1.0) -> Path:
    """An untrained (random) tsrnet model directory: enough for format and protocol tests.

    Its drift reference is that of uniform random images, so real photos read as drifted.
    `temperature` is the calibration the config carries (1.0: none).
    """
    torch.manual_seed(seed)
    model = build_model("tsrnet", len(CLASS_NAMES), width=8)
    reference = build_reference(torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8))
    config = ModelConfig(
        arch="tsrnet",
        class_names=list(CLASS_NAMES),
        preprocess=PreprocessConfig(),
        width=8,
        input_reference=reference.to_dict(),
        temperature=temperature,
    )
    save_model_dir(model, config, path, export_program=export_program)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model")


# ---- test tiers -----------------------------------------------------------------------------------------
# `make test` runs everything; `make test-fast` runs `-m unit`: what needs no GTSRB archive, no MinIO,
# Prometheus, helm, kustomize or API server, starts no process and finishes in seconds. Every test gets
# exactly one of the two markers here, at collection, so test files carry no tier markers of their own.
TESTS_DIR = Path(__file__).resolve().parent
# Fixtures that need the archive or an external server binary; everything requesting them, directly or
# through another fixture (gtsrb_small, minio, minio_server, module fixtures), is integration.
INTEGRATION_FIXTURES = frozenset({"gtsrb_root", "minio_binary", "prometheus_binary", "promtool"})
# Names that mean a real process, server or tool when the code of a test, of a fixture it requests, or of a
# tests/ helper either calls (followed transitively) refers to them: sys.executable, subprocess, shutil.which,
# kfp.local's runner, MinIO, the benchmark harness's server process, the CRDs that `make crds` fetches.
INTEGRATION_NAMES = frozenset(
    {"subprocess", "executable", "which", "SubprocessRunner", "DockerRunner", "LocalMinio", "find_minio_binary"}
    | {"server_process", "CRD_DIR"}
)
# Whole modules (or folders, ending in /) that are integration whatever their tests look like (relative to tests/).
INTEGRATION_MODULES = frozenset(
    {
        "serving/test_fuzz.py",  # hypothesis against the real server; even its in-process codec fuzz takes ~10 s
        "serving/test_load.py",
        "serving/test_prometheus_integration.py",
        "cluster/",  # the cluster tier: a real control plane (tests/cluster_plane.py) for every test
        "images/",  # the image tier: buildah and the images `make images-local` built (tests/images/conftest.py)
        "node/",  # the node tier: that control plane plus a real node (tests/cluster_node.py), -m node only
    }
)
_tier_cache: dict[types.CodeType, str | None] = {}


@functools.cache
def _in_tests(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(TESTS_DIR)


def _code_names(code: types.CodeType) -> set[str]:
    """Global and attribute names used by `code` and the code nested in it (comprehensions, lambdas, closures)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _integration_name(func: Any, seen: set[types.CodeType]) -> str | None:
    """The first INTEGRATION_NAMES name that `func` (a test, fixture or helper under tests/) reaches, if any."""
    func = inspect.unwrap(getattr(func, "__func__", func))
    code = getattr(func, "__code__", None)
    if code is None or code in seen or not _in_tests(code.co_filename):
        return None
    seen.add(code)
    names = _code_names(code)
    if hit := sorted(names & INTEGRATION_NAMES):
        return f"{hit[0]} in {code.co_name}"
    scope = getattr(func, "__globals__", {})
    for name in sorted(names):
        obj = scope.get(name)
        if isinstance(obj, types.ModuleType):  # a tests/ helper module: follow the attributes used
            if not _in_tests(getattr(obj, "__file__", None) or "/"):
                continue
            targets = [getattr(obj, n) for n in sorted(names) if hasattr(obj, n)]
        elif isinstance(obj, type):  # a helper class: its methods
            targets = list(vars(obj).values())
        else:
            targets = [obj]
        for target in targets:
            if (callable(target) or isinstance(target, staticmethod | classmethod)) and (
                found := _integration_name(target, seen)
            ):
                return found
    return None


def _integration_reason(item: pytest.Item) -> str | None:
    """Why `item` belongs to the integration tier, or None for a unit test."""
    if item.get_closest_marker("slow"):
        return "marked slow"
    rel = item.path.resolve().relative_to(TESTS_DIR).as_posix()
    if rel in INTEGRATION_MODULES or any(rel.startswith(m) for m in INTEGRATION_MODULES if m.endswith("/")):
        return "integration module"
    if used := sorted(INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))):
        return f"fixture {used[0]}"
    fixturedefs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    funcs = [defs[-1].func for defs in fixturedefs.values() if defs] + [getattr(item, "function", None)]
    for func in funcs:
        code = getattr(inspect.unwrap(func), "__code__", None) if func is not None else None
        if code is None:
            continue
        if code not in _tier_cache:
            _tier_cache[code] = _integration_name(func, set())
        if _tier_cache[code]:
            return _tier_cache[code]
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = _integration_reason(item)
        item.add_marker(pytest.mark.integration(reason=reason) if reason else pytest.mark.unit)
