"""Works installed, not only from a checkout: the wheel in a fresh venv, run from elsewhere.

The wheel is built from a copy of the sources (the build writes build/ and *.egg-info, never into the
checkout) and installed with --no-deps into a new venv; the dependencies come from the project's own
venv through a .pth file (no network). The commands then run in an empty working directory (itself a
git repository, to show the revision is not taken from the current directory) with HOME and
XDG_STATE_HOME in the temporary tree and no TSR_* variable but the store's.

Also here: the revision recorded in model cards (tsr.core.provenance), which must not depend on a
checkout either.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from components.register.register import register
from tests.conftest import make_model_dir
from tsr.core import provenance
from tsr.core.config import StoreConfig
from tsr.core.gtsrb import CLASS_NAMES
from tsr.core.processes import free_port
from tsr.local.checkout import REPO_ROOT

SOURCES = ("pyproject.toml", "README.md", "tsr", "components", "serving", "pipelines")  # as the Dockerfiles copy
MODEL_NAME = "wheel-check"


def _files(root: Path) -> set[str]:
    """Every file under `root` (relative), bytecode caches left out."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts
    }


@dataclass(frozen=True)
class Installed:
    venv: Path
    site: Path
    work: Path  # the commands' working directory
    home: Path
    xdg_state: Path
    store: Path  # a directory store, given by TSR_STORE_DIR
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def tsr(self) -> Path:
        return self.venv / "bin" / "tsr"

    def run(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", src],
        capture_output=True,
        text=True,
        env=offline,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("tsr_platform-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "--no-deps",
        "-q",
        str(wheel),
    ]
    done = subprocess.run(install, capture_output=True, text=True, env=offline, timeout=300)
    assert done.returncode == 0, done.stderr
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies: the project venv's site-packages, appended after the new venv's own. Its .pth
    # files (the editable install's finder among them) are not processed: only this directory is added.
    (site / "_tsr_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work, home, xdg_state = tmp / "work", tmp / "home", tmp / "xdg-state"
    for path in (work, home):
        path.mkdir()
    subprocess.run(["git", "init", "-q", work], check=True, timeout=60)  # a checkout, but not the package's
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TSR_") and k not in {"PYTHONPATH", "VIRTUAL_ENV", "XDG_STATE_HOME", "PYTHONHOME"}
    }
    env |= {
        "HOME": str(home),
        "XDG_STATE_HOME": str(xdg_state),
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "TSR_STORE_DIR": str(tmp / "store"),
        # The versions this test registers (in-process) are signed with the session's key (conftest).
        "TSR_SIGNING_PUBLIC_KEY": os.environ["TSR_SIGNING_PUBLIC_KEY"],
    }
    return Installed(venv, site, work, home, xdg_state, tmp / "store", env)


def _gtsrb_test_split(root: Path, n: int = 43) -> Path:
    """A tiny synthetic GTSRB test split: Final_Test/Images/*.ppm plus GT-final_test.csv."""
    images = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(n):
        name = f"{i:05d}.ppm"
        Image.frombytes("RGB", (32, 32), os.urandom(32 * 32 * 3)).save(images / name)
        rows.append(f"{name};32;32;0;0;32;32;{i % len(CLASS_NAMES)}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def served(installed: Installed, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`tsr serve --model champion` from the installed venv, the champion in the directory store."""
    register(make_model_dir(tmp_path / "model"), MODEL_NAME, {}, StoreConfig(kind="dir", directory=installed.store))
    port = free_port()
    log = tmp_path / "serve.log"
    args = ["serve", "--model", "champion", "--model-name", MODEL_NAME, "--http-port", str(port), "--threads", "1"]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [installed.tsr, *args], cwd=installed.work, env=installed.env, stdout=fh, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"tsr serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/v2/models/{MODEL_NAME}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"tsr serve not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _mentions_checkout(text: str) -> list[str]:
    """Lines naming a path in the checkout, other than its .venv (where the dependencies come from)."""
    root = str(REPO_ROOT)
    return [line for line in text.splitlines() if root in line.replace(f"{root}/.venv/", "")]


@pytest.mark.slow
def test_the_wheel_works_installed_from_another_directory(
    installed: Installed, served: tuple[str, Path], tmp_path: Path
) -> None:
    venv_before = _files(installed.venv)
    outputs: list[str] = []

    # `import tsr` (and the other packages) come from the new venv, and the checkout is not on sys.path
    probe = installed.run(
        installed.python,
        "-c",
        "import json, sys, tsr, serving, components, pipelines, pipelines.compile as c\n"
        "print(json.dumps({'files': [m.__file__ for m in (tsr, serving, components, pipelines)],"
        " 'compiled': c.COMPILED.is_file(), 'path': sys.path}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    for file in found["files"]:
        assert Path(file).is_relative_to(installed.site), found
    assert found["compiled"], "pipelines/compiled/tsr_training.yaml is package data"
    assert not [p for p in found["path"] if p and Path(p).is_relative_to(REPO_ROOT) and ".venv" not in Path(p).parts]

    help_ = installed.run(installed.tsr, "--help", timeout=120)
    assert help_.returncode == 0, help_.stderr
    assert "serve" in help_.stdout and "evaluate" in help_.stdout
    outputs += [help_.stdout, help_.stderr]

    # one request to the running `tsr serve`, through the installed `tsr predict`
    url, log = served
    image = tmp_path / "sign.png"
    Image.frombytes("RGB", (32, 32), os.urandom(32 * 32 * 3)).save(image)
    predict = installed.run(installed.tsr, "predict", image, "--url", url, "--model", MODEL_NAME, "--json")
    assert predict.returncode == 0, predict.stderr
    (prediction,) = json.loads(predict.stdout)["predictions"]
    assert 0 <= prediction["class_id"] < len(CLASS_NAMES)
    buf = io.BytesIO()
    Image.open(image).save(buf, format="PNG")
    body = {"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]}
    direct = httpx.post(f"{url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=60)
    assert direct.status_code == 200 and len(direct.json()["predictions"]) == 1
    outputs += [predict.stdout, predict.stderr]

    evaluate = installed.run(
        installed.tsr, "evaluate", "--model", make_model_dir(tmp_path / "model"), "--data", _gtsrb_test_split(tmp_path)
    )
    assert evaluate.returncode == 0, evaluate.stderr
    result = json.loads(evaluate.stdout.strip().splitlines()[-1])
    assert result["n"] == 43 and 0.0 <= result["accuracy"] <= 1.0
    outputs += [evaluate.stdout, evaluate.stderr]

    listed = installed.run(installed.tsr, "models", "list", "--model-name", MODEL_NAME, "--json", timeout=120)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["champion"] and row["version"]
    outputs += [listed.stdout, listed.stderr]

    # the revision: neither the working directory's git repository nor the checkout's
    revision = installed.run(installed.python, "-c", "from tsr.core.provenance import git_commit; print(git_commit())")
    assert revision.stdout.strip() == "tsr-platform==0.1.0", revision.stderr
    baked = installed.run(
        "env", "TSR_REVISION=abc123", installed.python, "-c", "import tsr.core.provenance as p; print(p.git_commit())"
    )
    assert baked.stdout.strip() == "abc123", baked.stderr

    # `tsr loop`'s Prometheus rules come from the package, identical to the committed file
    write = "import sys, pathlib, tsr.local.loop as loop; print(loop.write_rules_file(pathlib.Path(sys.argv[1])))"
    rules = installed.run(installed.python, "-c", write, tmp_path / "rules")
    assert rules.returncode == 0, rules.stderr
    committed = REPO_ROOT / "manifests" / "monitoring" / "tsr-rules.yaml"
    assert Path(rules.stdout.strip()).read_bytes() == committed.read_bytes()
    # ... and the monitoring generator names no default output (installed, there is no manifests/ to write)
    generator = installed.run(installed.python, "-m", "tsr.kube.monitoring")
    assert generator.returncode == 2 and "--out" in generator.stderr

    # state went to the XDG state directory: the champion's download is cached there
    state = installed.xdg_state / "tsr"
    cached = [p for p in (state / "cache" / "models").rglob("*") if p.is_file()]
    assert cached, sorted(installed.xdg_state.rglob("*"))
    # nothing beside the installed package (where a path derived from the package's location would point),
    # nothing in the working directory, nothing that names the checkout
    assert _files(installed.venv) == venv_before
    assert {p for p in _files(installed.work) if not p.startswith(".git/")} == set()
    outputs.append(log.read_text())
    assert not [line for text in outputs for line in _mentions_checkout(text)]


def test_revision_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSR_REVISION", "0123abc")
    monkeypatch.setenv("TSR_GIT_COMMIT", "ignored")
    assert provenance.git_commit() == "0123abc"
    monkeypatch.setenv("TSR_REVISION", "unknown")  # an image built without --build-arg REVISION
    assert provenance.git_commit() == "ignored"  # the older variable still counts


def test_revision_from_the_checkout_the_package_was_imported_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TSR_REVISION", raising=False)
    monkeypatch.delenv("TSR_GIT_COMMIT", raising=False)
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert provenance.git_commit() == head


def test_revision_without_a_checkout_is_the_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TSR_REVISION", raising=False)
    monkeypatch.delenv("TSR_GIT_COMMIT", raising=False)
    monkeypatch.setattr(provenance, "_checkout_root", lambda: None)
    assert provenance.git_commit() == "tsr-platform==0.1.0"
