"""The predictor image, as `make test` builds it, run once under runc: it serves a model and answers correctly.

`make test` builds the images (`.ci/images/build.sh` with TSR_IMAGES_ARCHIVES=0: buildah, no archives) because the
pods tier (`make cluster-e2e`) does not fit CI's time. This test runs the predictor image's own entrypoint and
environment under runc, as a container runtime would: the image's root filesystem read-only, uid 10001, an empty
tmpfs on /tmp (what the InferenceService mounts), a model directory bind-mounted read-only at /mnt/models (where
KServe's storage-initializer puts it), the host's network namespace (so the server's port is on 127.0.0.1). A V1
request with real GTSRB images must come back with the local model's classes and probabilities.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig, train, write_model
from tsr.core.dataset import TRAIN_FILE, VAL_FILE, load_split
from tsr.core.models import load_model_dir, probabilities
from tsr.core.preprocessing import load_image_file, to_model_input
from tsr.core.processes import free_port
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.local.checkout import REPO_ROOT

BUILT = REPO_ROOT / ".state" / "images" / "built.json"
MODEL = DEFAULT_MODEL_NAME
READY_TIMEOUT_S = 300.0  # the image's python imports torch and kserve from a cold page cache
SAMPLES = 8


def _built() -> dict[str, Any]:
    if not BUILT.is_file():
        pytest.fail(f"{BUILT} missing: `make test` builds the images first (or run `make images-local`)")
    for tool in ("buildah", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: `make images-tools` installs it")
    built: dict[str, Any] = json.loads(BUILT.read_text())
    return built


def _buildah(built: dict[str, Any], *args: str, check: bool = True) -> str:
    store = built["buildah"]
    cmd = ["buildah", "--root", store["root"], "--runroot", store["runroot"], "--storage-driver", store["driver"]]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 or not check, f"buildah {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture
def predictor_rootfs() -> Iterator[tuple[Path, dict[str, Any]]]:
    """The predictor image's root filesystem (a buildah mount of a working container) and its config."""
    built = _built()
    ref = built["images"]["tsr-predictor"]
    config = json.loads(_buildah(built, "inspect", "--type", "image", ref))["OCIv1"]["config"]
    container = _buildah(built, "from", "--pull=never", ref).strip()
    try:
        yield Path(_buildah(built, "mount", container).strip()), config
    finally:
        _buildah(built, "rm", container, check=False)


def _bundle(bundle: Path, rootfs: Path, image: dict[str, Any], model_dir: Path, port: int) -> None:
    """An OCI runtime bundle: `runc spec`'s defaults, then the image's command, user, env and workdir."""
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    user, _, group = image["User"].partition(":")
    spec["process"].update(
        terminal=False,
        args=[*image["Entrypoint"], "--model", "/mnt/models", "--http-port", str(port), "--threads", "2"],
        env=image["Env"],
        cwd=image.get("WorkingDir") or "/",
        user={"uid": int(user), "gid": int(group or user)},
    )
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["mounts"] += [
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/mnt/models", "type": "bind", "source": str(model_dir), "options": ["rbind", "ro"]},
    ]
    # the host's network namespace: the server's port is reachable on 127.0.0.1 (no CNI needed)
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(spec))


def _model(gtsrb_small: Path, out: Path) -> Path:
    dataset = out / "dataset"
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=3), dataset)
    cfg = TrainConfig(epochs=3, width=8, threads=2, batch_size=64, lr=0.1, seed=0)
    tr, va = load_split(dataset / TRAIN_FILE), load_split(dataset / VAL_FILE)
    result = train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False)
    write_model(result, out / "model")
    return out / "model"


def test_predictor_image_serves_under_runc(
    predictor_rootfs: tuple[Path, dict[str, Any]], gtsrb_small: Path, tmp_path: Path
) -> None:
    rootfs, image = predictor_rootfs
    assert image["User"].split(":")[0] == "10001"
    model_dir = _model(gtsrb_small, tmp_path)
    # readable by uid 10001 inside, as the files KServe's storage-initializer downloads are (the weights are written
    # 0600 by an atomic rename here)
    model_dir.chmod(0o755)
    for path in model_dir.iterdir():
        path.chmod(0o644)
    # held-out GTSRB images and what the model itself says about them
    rows = [r.split(";") for r in (gtsrb_small / "gtsrb" / "GT-final_test.csv").read_text().splitlines()[1:]]
    paths = [gtsrb_small / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / r[0] for r in rows[:SAMPLES]]
    model, config = load_model_dir(model_dir)
    with torch.no_grad():
        logits = model(to_model_input(torch.stack([load_image_file(p, 32) for p in paths]), config.preprocess))
        expected = probabilities(logits, config)  # calibrated, as the predictor serves them
    port = free_port()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _bundle(bundle, rootfs, image, model_dir, port)
    state = tmp_path / "runc-state"
    name = f"tsr-smoke-{uuid.uuid4().hex[:8]}"
    log = (tmp_path / "predictor.log").open("w")
    proc = subprocess.Popen(
        ["runc", "--root", str(state), "run", "--bundle", str(bundle), name], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(base_url=base, timeout=30) as http:
            while True:
                assert proc.poll() is None, f"the container exited {proc.returncode}: {_tail(tmp_path)}"
                try:
                    if http.get(f"/v2/models/{MODEL}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"not ready in {READY_TIMEOUT_S:.0f} s: {_tail(tmp_path)}"
                time.sleep(1)
            body = {"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]}
            answer = http.post(f"/v1/models/{MODEL}:predict", json=body)
        assert answer.status_code == 200, answer.text
        for i, prediction in enumerate(answer.json()["predictions"]):
            top = int(expected[i].argmax())
            assert prediction["class_id"] == top, (i, prediction)
            assert abs(prediction["probability"] - float(expected[i, top])) < 1e-4, (i, prediction)
        # the process inside ran as the image's user, not root
        ps = subprocess.run(
            ["runc", "--root", str(state), "ps", "--format", "json", name], capture_output=True, text=True, check=True
        )
        pids = json.loads(ps.stdout)
        assert pids and all(Path(f"/proc/{pid}").stat().st_uid == 10001 for pid in pids), pids
    finally:
        subprocess.run(["runc", "--root", str(state), "kill", name, "KILL"], capture_output=True)
        try:
            proc.wait(timeout=30)
        finally:
            subprocess.run(["runc", "--root", str(state), "delete", "--force", name], capture_output=True)
            log.close()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "predictor.log").read_text()[-3000:]
