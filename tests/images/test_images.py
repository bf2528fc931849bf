"""Facts about the images `make images-local` built, checked on the images themselves.

Configs come from `buildah inspect`; commands run inside with `buildah run` (chroot isolation, the image's
own user); files are read from a `buildah mount` of a working container. Missing images fail the tests
(run `make images-local`), they are never skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from tsr.core.config import StoreConfig
from tsr.local.checkout import REPO_ROOT

OUT = REPO_ROOT / ".state" / "images"
TSR_IMAGES = ("tsr-components", "tsr-predictor")
ALL_IMAGES = (*TSR_IMAGES, "tsr-storage-initializer")
USERS = {"tsr-components": "10001:10001", "tsr-predictor": "10001:10001", "tsr-storage-initializer": "1000:1000"}
COMPILERS = ("gcc", "cc", "g++", "c++", "clang", "x86_64-linux-gnu-gcc-12", "aarch64-linux-gnu-gcc-12")


def built() -> dict[str, Any]:
    path = OUT / "images.json"
    if not path.is_file():
        pytest.fail(f"no locally built images ({path} missing): run `make images-local` first")
    if shutil.which("buildah") is None:
        pytest.fail("buildah not found: run `make images-local` (it installs buildah and builds the images)")
    return json.loads(path.read_text())


def buildah(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    store = built()["buildah"]
    cmd = ["buildah", "--root", store["root"], "--runroot", store["runroot"], "--storage-driver", store["driver"]]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"buildah {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def image_ref(name: str) -> str:
    images = built()["images"]
    if name not in images:
        pytest.fail(f"{name} missing from {OUT / 'images.json'}: run `make images-local`")
    ref = images[name]["ref"]
    if buildah("inspect", "--type", "image", ref, check=False).returncode != 0:
        pytest.fail(f"{ref} is not in the buildah storage: run `make images-local`")
    return ref


def config(name: str) -> dict[str, Any]:
    return json.loads(buildah("inspect", "--type", "image", image_ref(name)).stdout)["Docker"]["config"]


class Container:
    """A buildah working container of one image: run commands in it, read its files from a mount."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.id = buildah("from", "--pull=never", image_ref(name)).stdout.strip()
        self.root = Path(buildah("mount", self.id).stdout.strip())

    def run(
        self, *cmd: str, env: dict[str, str] | None = None, volumes: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        args = ["run", "--isolation", "chroot"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        for volume in volumes:
            args += ["--volume", volume]
        return buildah(*args, self.id, "--", *cmd, check=False, timeout=600)

    def remove(self) -> None:
        buildah("umount", self.id, check=False)
        buildah("rm", self.id, check=False)


@pytest.fixture(scope="module")
def containers() -> Iterator[dict[str, Container]]:
    made: dict[str, Container] = {}

    class Lazy(dict[str, Container]):
        def __missing__(self, name: str) -> Container:
            made[name] = self[name] = Container(name)
            return made[name]

    try:
        yield Lazy()
    finally:
        for container in made.values():
            container.remove()


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_archive_and_sizes_match_the_image(name: str) -> None:
    ref = image_ref(name)
    entry = built()["images"][name]
    image_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref).stdout.strip()
    assert entry["id"] == image_id, f"{entry['archive']} is of an older build: run `make images-local`"
    with tarfile.open(entry["archive"]) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [ref]  # `ctr images import` names the image after this
    sizes = json.loads((OUT / "sizes.json").read_text())["images"][name]
    assert 0 < sizes["compressed_bytes"] < sizes["unpacked_bytes"]
    assert sizes["layers"] == len(manifest[0]["Layers"])


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_runs_as_its_numeric_non_root_user(name: str, containers: dict[str, Container]) -> None:
    assert config(name)["User"] == USERS[name]
    out = _ok(containers[name].run("sh", "-c", "id -u; id -g"), "id")
    assert out.split() == USERS[name].split(":")


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_no_compiler_and_no_pip_cache(name: str) -> None:
    container = Container(name)  # untouched by the other tests' commands
    try:
        check_no_compiler_and_no_cache(container)
    finally:
        container.remove()


def check_no_compiler_and_no_cache(container: Container) -> None:
    on_path = container.run("sh", "-c", f"for c in {' '.join(COMPILERS)}; do command -v $c; done")
    assert on_path.stdout.strip() == "", f"compilers on PATH: {on_path.stdout.split()}"
    for folder in ("usr/bin", "usr/local/bin", "opt/venv/bin"):
        found = [c for c in COMPILERS if (container.root / folder / c).exists()]
        assert not found, f"/{folder} holds {found}"
    caches = [
        str(p.relative_to(container.root))
        for pattern in ("root/.cache", "home/*/.cache", "tmp/*/.cache", "tmp/pip-*", "root/.cache/pip")
        for p in container.root.glob(pattern)
    ]
    assert not caches, f"pip/home caches in the image: {caches}"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_build_time_mounts_left_nothing_behind(name: str, containers: dict[str, Container]) -> None:
    """The host CA bundle and pip.conf were mounted for the build only: no /etc/pip.conf, and the CA bundle
    holds only the certificates of the image's own ca-certificates package (no TLS proxy CA baked in)."""
    root = containers[name].root
    assert not (root / "etc" / "pip.conf").exists()
    pem = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)

    def certs(text: str) -> set[str]:
        return {"".join(body.split()) for body in pem.findall(text)}

    packaged: set[str] = set()
    for crt in (root / "usr" / "share" / "ca-certificates").rglob("*.crt"):
        packaged |= certs(crt.read_text())
    bundle = certs((root / "etc" / "ssl" / "certs" / "ca-certificates.crt").read_text())
    assert packaged and bundle
    assert bundle <= packaged, f"{len(bundle - packaged)} certificate(s) in the bundle come from no Debian package"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_python_3_11_on_the_pinned_base(name: str, containers: dict[str, Container]) -> None:
    labels = config(name)["Labels"]
    assert labels["org.opencontainers.image.base.name"] == built()["base_ref"]
    out = _ok(containers[name].run("python", "-c", "import sys; print(sys.version_info[:2], sys.prefix)"), "python")
    assert out.split(")")[0] == "(3, 11" and out.split()[-1] == "/opt/venv"


@pytest.mark.parametrize("name", TSR_IMAGES)
def test_labels_name_this_build(name: str) -> None:
    cfg = config(name)
    labels, env = cfg["Labels"], dict(item.split("=", 1) for item in cfg["Env"])
    assert labels["org.opencontainers.image.revision"] == env["TSR_REVISION"] == built()["revision"]
    assert labels["org.opencontainers.image.version"] == image_ref(name).rsplit(":", 1)[1]
    assert labels["org.opencontainers.image.title"] == name


def test_components_backend_report(containers: dict[str, Container]) -> None:
    out = _ok(containers["tsr-components"].run("python", "-m", "tsr.core.backend"), "python -m tsr.core.backend")
    report = json.loads(out)
    assert report["torch"].startswith("2.14.1") and report["machine"] == "x86_64"
    assert "cpu_capability" in report and "num_threads" in report


def test_components_workdir_holds_the_kfp_config(containers: dict[str, Container]) -> None:
    cfg = config("tsr-components")
    assert cfg["WorkingDir"] == "/opt/tsr/kfp" and not cfg.get("Entrypoint")
    ini = containers["tsr-components"].root / "opt" / "tsr" / "kfp" / "kfp_config.ini"
    assert ini.is_file() and ini.stat().st_uid == 0  # root-owned: a step cannot change which code runs
    out = _ok(containers["tsr-components"].run("sh", "-c", "pwd; cat kfp_config.ini"), "cat kfp_config.ini")
    assert out.splitlines()[0] == "/opt/tsr/kfp" and "ingest" in out


def test_predictor_entrypoint_and_help(containers: dict[str, Container]) -> None:
    cfg = config("tsr-predictor")
    assert cfg["Entrypoint"] == ["python", "-m", "serving"] and cfg["Cmd"] == ["--model", "/mnt/models"]
    assert "8080/tcp" in cfg["ExposedPorts"]
    out = _ok(containers["tsr-predictor"].run(*cfg["Entrypoint"], "--help"), "python -m serving --help")
    assert "--model" in out


def test_storage_initializer_downloads_from_minio(
    minio: StoreConfig, tmp_path: Path, containers: dict[str, Container]
) -> None:
    """The image's own entrypoint, given `<src-uri> <dest-dir>` as the KServe controller gives them, copies a
    model prefix out of a real MinIO on 127.0.0.1 into the mounted directory, as uid 1000."""
    client = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False)
    client.make_bucket("models")
    files = {"tsr/v1/model.pt": os.urandom(4096), "tsr/v1/config.json": b'{"arch": "tsrnet"}'}
    for key, data in files.items():
        client.put_object("models", key, BytesIO(data), len(data))
    dest = tmp_path / "models"
    dest.mkdir()
    os.chown(dest, 1000, 1000)
    cfg = config("tsr-storage-initializer")
    env = {
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
        "AWS_ENDPOINT_URL": f"http://{minio.endpoint}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_USE_HTTPS": "0",
        "S3_VERIFY_SSL": "0",
    }
    proc = containers["tsr-storage-initializer"].run(
        *cfg["Entrypoint"], "s3://models/tsr/v1", "/mnt/models", env=env, volumes=(f"{dest}:/mnt/models",)
    )
    _ok(proc, "storage-initializer")
    assert (dest / "model.pt").read_bytes() == files["tsr/v1/model.pt"]
    assert (dest / "config.json").read_bytes() == files["tsr/v1/config.json"]
    assert (dest / "model.pt").stat().st_uid == 1000
    usage = containers["tsr-storage-initializer"].run(*cfg["Entrypoint"], "s3://only-a-source")
    assert usage.returncode == 2 and "usage" in usage.stderr
