"""The arm64 images' own code on arm64 (qemu-user emulation), checked against the same code on this amd64 machine.

`make arm64-smoke` builds the images for linux/arm64 from the same Dockerfiles (.ci/images/build.sh under
.ci/images/foreign-arch.sh) and runs this module. Every arm64 command runs in a fresh working container of an arm64
image through .ci/images/foreign-run.sh: the image's own Python, torch wheel and tsr package, aarch64 code executed
by qemu-user, as the image's user (uid 10001). What it checks:

- `python -m tsr.core.backend` reports an aarch64 machine and which math libraries torch uses there;
- a model trained here (amd64) gives the same top-1 on arm64 for a fixed set of validation images, and logits
  within LOGIT_TOL; the optimize step's code quantizes it on arm64 with the engine it chooses there (qnnpack), the
  int8 variant loads with that engine, and its top-1 is compared with the amd64 int8 variant (x86 engine);
- the evaluate step of the compiled pipeline runs on arm64 with the IR's command, through the KFP launcher
  stand-in (tests/kfp_launcher.py), its artifacts in and out of a real MinIO;
- the predictor image loads a signed version from the registry (a real MinIO on 127.0.0.1), verifies it and answers
  a V1 request with real GTSRB images correctly.

The summary (.state/arm64-smoke/arm64-smoke.json, the JSON line `make arm64-smoke` ends with) is written pass or
fail; a field still null means its test did not get that far.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from components.ingest.ingest import IngestConfig, ingest
from components.optimize.optimize import optimize
from components.train.train import TrainConfig, train, write_model
from tests.conftest import wait_until_ok
from tests.e2e_summary import recorded
from tests.kfp_pods import ARTIFACT_SECRET, Pipeline, artifact_store, executor_input, read_object
from tsr.core.config import StoreConfig
from tsr.core.dataset import TRAIN_FILE, VAL_FILE, load_split, read_data_card, write_dataset
from tsr.core.models import load_model_dir, probabilities
from tsr.core.preprocessing import to_model_input
from tsr.core.processes import free_port
from tsr.core.registry import DEFAULT_MODEL_NAME, Registry
from tsr.core.signing import ENV_PUBLIC_KEY, ENV_REQUIRE_SIGNED, ensure_local_key_pair
from tsr.local.checkout import REPO_ROOT
from tsr.local.minio_server import LocalMinio, find_minio_binary

ARCH_DIR = REPO_ROOT / ".state" / "images" / "arm64"
BUILT = ARCH_DIR / "built.json"
RUN = REPO_ROOT / ".ci" / "images" / "foreign-run.sh"
SUMMARY_DIR = REPO_ROOT / ".state" / "arm64-smoke"
LAUNCHER = REPO_ROOT / "tests" / "kfp_launcher.py"
PROBE = Path(__file__).resolve().parent / "probe.py"
COMPILED = REPO_ROOT / "pipelines" / "compiled" / "tsr_training.yaml"
MODEL = DEFAULT_MODEL_NAME
USER = "10001:10001"  # the images' user (components/Dockerfile, serving/Dockerfile)
SAMPLES = 200  # the fixed validation images compared across architectures
CALIBRATION = 64  # int8 calibration images (the same uint8 tensor on both architectures)
V1_IMAGES = 8
# The evaluate step's validation split on arm64: a few images per class (a forward pass costs about a second per
# image under emulation; the whole split of ~1,000 images took over 20 minutes).
EVAL_PER_CLASS = 2
# fp32 logits may differ between x86 (oneDNN/MKL kernels) and arm64 (its own kernels) by summation order only;
# the measured difference is in the summary.
LOGIT_TOL = 1e-3
# qnnpack and x86 quantize differently (per-tensor vs per-channel weights, x86's reduced range), so their int8
# variants of this small 4-epoch model disagree on some low-margin images: 0.935 was measured (2026-12-03). The
# bound is a smoke bound; the measured rates are in the summary.
INT8_MIN_AGREEMENT = 0.90
COMMAND_TIMEOUT_S = 1800.0  # torch under emulation: importing it alone takes minutes


@dataclass(frozen=True)
class Fixture:
    """What the amd64 side prepared: the exchange directory mounted at /smoke, the references, the store."""

    smoke: Path
    images: torch.Tensor  # uint8 (SAMPLES, 3, 32, 32), validation tracks
    labels: torch.Tensor
    fp32: torch.Tensor  # amd64 logits of `images`
    int8: torch.Tensor  # amd64 int8 variant's logits (x86 engine)
    int8_engine: str
    eval_accuracy: float  # amd64 fp32 accuracy on the evaluate step's subset
    store: StoreConfig
    version_uri: str
    dataset: Path  # the evaluate step's input: the training split and EVAL_PER_CLASS validation images per class
    model: Path


Proc = subprocess.CompletedProcess[str] | subprocess.Popen[bytes]


def _built() -> dict[str, Any]:
    if not BUILT.is_file():
        pytest.fail(f"{BUILT} missing: build the arm64 images first (make images-local PLATFORMS=linux/arm64)")
    built: dict[str, Any] = json.loads(BUILT.read_text())
    return built


def foreign(
    image: str,
    *command: str,
    mounts: dict[Path, str] | None = None,
    env: dict[str, str] | None = None,
    background: bool = False,
    log: Path | None = None,
) -> Proc:
    """Run `command` in a fresh container of the arm64 `image` (tsr-components, tsr-predictor), under emulation."""
    args = [str(RUN), "arm64", _built()["images"][image], "--user", USER]
    for source, target in (mounts or {}).items():
        args += ["-v", f"{source}:{target}"]
    for name, value in (env or {}).items():
        args += ["--env", f"{name}={value}"]
    args += ["--", *command]
    if background:
        assert log is not None
        with log.open("wb") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def _ok(
    proc: subprocess.CompletedProcess[str] | subprocess.Popen[bytes], what: str
) -> subprocess.CompletedProcess[str]:
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 0, f"{what} on arm64 exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"
    return proc


def _top1(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1)


@pytest.fixture(scope="module")
def summary() -> Iterator[dict[str, Any]]:
    sizes = ARCH_DIR / "sizes.json"
    fields: dict[str, Any] = {
        "backend": None,
        "v1_correct": None,
        "int8_engine": None,
        "top1_agreement_fp32": None,
        "top1_agreement_int8": None,
        "max_logit_diff_fp32": None,
        "evaluate_step": None,
        "image_sizes": json.loads(sizes.read_text()) if sizes.is_file() else None,
        "emulated_seconds": {},
    }
    with recorded("arm64-smoke.json", fields, folder=SUMMARY_DIR) as s:
        yield s


@pytest.fixture(scope="module")
def prepared(gtsrb_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    """Train a small model here (amd64), its amd64 references, and a MinIO with the model as a signed version."""
    _built()
    work = tmp_path_factory.mktemp("arm64")
    dataset, model_dir = work / "dataset", work / "model"
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=4), dataset)
    tr, va = load_split(dataset / TRAIN_FILE), load_split(dataset / VAL_FILE)
    cfg = TrainConfig(epochs=4, width=16, threads=2, batch_size=64, lr=0.1, seed=0)
    write_model(train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False), model_dir)
    assert len(va) >= SAMPLES, len(va)
    pick = torch.linspace(0, len(va) - 1, SAMPLES).round().long()
    images, labels = va.images[pick].contiguous(), va.labels[pick].contiguous()
    calibration = tr.images[torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))[:CALIBRATION]]

    # the evaluate step's dataset: the same training split, EVAL_PER_CLASS validation images of each class
    few = torch.cat([torch.nonzero(va.labels == c).flatten()[:EVAL_PER_CLASS] for c in torch.unique(va.labels)])
    small = work / "dataset-small"
    card = {**read_data_card(dataset), "arm64_smoke_subset": f"{EVAL_PER_CLASS} validation images per class"}
    write_dataset(small, tr, va.subset(few), card)

    model, config = load_model_dir(model_dir)
    with torch.inference_mode():
        fp32 = model(to_model_input(images, config.preprocess))
        few_top1 = model(to_model_input(va.images[few], config.preprocess)).argmax(1)
    eval_accuracy = float((few_top1 == va.labels[few]).float().mean())
    int8_result = optimize(model_dir, calibration.contiguous(), work / "int8", "int8")
    int8_model, int8_config = load_model_dir(work / "int8")
    with torch.inference_mode():
        int8 = int8_model(to_model_input(images, int8_config.preprocess))

    # the exchange directory, mounted at /smoke: written by uid 10001 inside
    smoke = work / "smoke"
    smoke.mkdir()
    shutil.copytree(model_dir, smoke / "model")
    save_file({"images": images, "calibration": calibration.contiguous()}, str(smoke / "inputs.safetensors"))
    shutil.copy(PROBE, smoke / "probe.py")
    (smoke / "kfp-launcher").mkdir()
    shutil.copy(LAUNCHER, smoke / "kfp-launcher" / "launch.py")
    (smoke / "minio").mkdir()
    _, public_key = ensure_local_key_pair()  # the session's pair (tests/conftest.py): publish signs with it
    shutil.copy(os.environ.get(ENV_PUBLIC_KEY, str(public_key)), smoke / "model-signing.pub")
    for path in [smoke, *smoke.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)

    binary = find_minio_binary()
    if binary is None:
        pytest.fail("no MinIO binary: run `make tools` first")
    server = LocalMinio(root=work / "minio-data", binary=binary)
    store = server.start()
    try:
        registry = Registry.from_config(store)
        version = registry.publish(MODEL, model_dir, {"arm64_smoke": True})
        yield Fixture(
            smoke=smoke,
            images=images,
            labels=labels,
            fp32=fp32,
            int8=int8,
            int8_engine=str(int8_result.quant_engine),
            eval_accuracy=eval_accuracy,
            store=store,
            version_uri=registry.uri(MODEL, version),
            dataset=small,
            model=model_dir,
        )
    finally:
        server.stop()


def test_backend_report_on_arm64(prepared: Fixture, summary: dict[str, Any]) -> None:
    """`python -m tsr.core.backend` in the arm64 image: an aarch64 machine, and the math libraries torch uses there."""
    started = time.monotonic()
    proc = _ok(foreign("tsr-components", "python", "-m", "tsr.core.backend"), "python -m tsr.core.backend")
    summary["emulated_seconds"]["backend"] = round(time.monotonic() - started, 1)
    report = json.loads(proc.stdout)
    assert report["machine"] == "aarch64", report["machine"]
    summary["backend"] = {
        "machine": report["machine"],
        "torch": report["torch"],
        "cpu_capability": report["cpu_capability"],
        "blas": report["build"].get("BLAS_INFO"),
        "lapack": report["build"].get("LAPACK_INFO"),
        "mkldnn": report["mkldnn_available"],
        "acl": report["acl"],
        "mkl": report["mkl_available"],
        "cuda_build": report["cuda_build"],
        "bundled_math_libs": report["bundled_math_libs"],
        "summary": proc.stderr.strip().splitlines()[-1],
    }
    # a wheel built for x86 would have MKL; the aarch64 one never does
    assert not report["mkl_available"], report["build"]


def test_fp32_and_int8_match_amd64(prepared: Fixture, summary: dict[str, Any]) -> None:
    """The same model on arm64: same fp32 top-1; the int8 variant quantized and loaded there with qnnpack."""
    started = time.monotonic()
    mounts = {prepared.smoke: "/smoke"}
    _ok(foreign("tsr-components", "python", "/smoke/probe.py", "/smoke", mounts=mounts), "probe.py")
    summary["emulated_seconds"]["fp32_and_int8"] = round(time.monotonic() - started, 1)
    probe = json.loads((prepared.smoke / "arm64" / "probe.json").read_text())
    logits = load_file(str(prepared.smoke / "arm64" / "logits.safetensors"))
    assert probe["machine"] == "aarch64", probe
    summary["int8_engine"] = {
        "arm64": probe["loaded_quant_engine"],
        "amd64": prepared.int8_engine,
        "arm64_supported": probe["supported_engines"],
    }
    # the engine is the code's choice on arm64, written into the variant's config and used to load it
    assert probe["selected_engine"] == probe["optimize_engine"] == probe["loaded_quant_engine"] == "qnnpack", probe
    assert probe["torch_quantized_engine"] == "qnnpack", probe

    fp32_agree = float((_top1(logits["fp32"]) == _top1(prepared.fp32)).float().mean())
    diff = float((logits["fp32"] - prepared.fp32).abs().max())
    int8_agree = float((_top1(logits["int8"]) == _top1(prepared.int8)).float().mean())
    summary["top1_agreement_fp32"] = fp32_agree
    summary["max_logit_diff_fp32"] = diff
    summary["top1_agreement_int8"] = int8_agree
    summary["int8_vs_fp32_arm64"] = float((_top1(logits["int8"]) == _top1(logits["fp32"])).float().mean())
    summary["int8_vs_fp32_amd64"] = float((_top1(prepared.int8) == _top1(prepared.fp32)).float().mean())
    summary["samples"] = SAMPLES
    assert fp32_agree == 1.0, f"fp32 top-1 differs on {round((1 - fp32_agree) * SAMPLES)} of {SAMPLES} images"
    assert diff <= LOGIT_TOL, f"fp32 logits differ by up to {diff:.2e} (tolerance {LOGIT_TOL:.0e})"
    assert int8_agree >= INT8_MIN_AGREEMENT, f"int8 (qnnpack vs x86) top-1 agreement {int8_agree:.3f}"
    assert summary["int8_vs_fp32_arm64"] >= INT8_MIN_AGREEMENT, summary


def test_evaluate_step_on_arm64(prepared: Fixture, summary: dict[str, Any]) -> None:
    """The compiled pipeline's evaluate step, its IR command and arguments, run by the launcher stand-in on arm64."""
    pipeline = Pipeline.load(COMPILED)
    _, container, _ = pipeline.executor("evaluate-component")
    bucket, run = "mlpipeline", f"arm64-{uuid.uuid4().hex[:6]}"
    client = artifact_store(prepared.store)
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    inputs = {}
    for name, source in (("dataset", prepared.dataset), ("model", prepared.model)):
        key = f"v2/artifacts/smoke/{run}/{name}"
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            client.fput_object(bucket, f"{key}/{path.relative_to(source).as_posix()}", str(path))
        inputs[name] = {"uri": f"minio://{bucket}/{key}", "metadata": {}}
    # a low gate: the subject here is that the step runs on arm64, not this small model's quality
    values = {"min_accuracy": 0.1, "min_class_accuracy": 0.0}
    spec = executor_input(pipeline, "evaluate-component", values, inputs, bucket, run)
    output_uri = f"minio://{bucket}/v2/artifacts/smoke/{run}/executor_output.json"
    launcher = ["python3", "/kfp-launcher/launch.py", "--executor_input", json.dumps(spec), "--output_uri", output_uri]
    endpoint = prepared.store.endpoint
    env = {
        # what the driver stand-in fills from the `mlpipeline-minio-artifact` Secret in a pod
        "KFP_ARTIFACT_ENDPOINT": endpoint,
        "KFP_ARTIFACT_ACCESS_KEY": prepared.store.access_key,
        "KFP_ARTIFACT_SECRET_KEY": prepared.store.secret_key,
        # what the IR's secretAsEnv fills from tsr-s3-credentials (the champion lookup), and the public key
        **prepared.store.env(),
        ENV_PUBLIC_KEY: "/smoke/model-signing.pub",
    }
    started = time.monotonic()
    proc = foreign(
        "tsr-components",
        *launcher,
        "--",
        *container["command"],
        *container["args"],
        mounts={
            prepared.smoke: "/smoke",
            prepared.smoke / "kfp-launcher": "/kfp-launcher",
            prepared.smoke / "minio": "/minio",
        },
        env=env,
    )
    seconds = round(time.monotonic() - started, 1)
    summary["emulated_seconds"]["evaluate_step"] = seconds
    _ok(proc, f"the evaluate step (launcher stand-in, {ARTIFACT_SECRET} env)")
    executed = json.loads(read_object(prepared.store, output_uri))
    metrics = executed["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    gate = executed["parameterValues"]["Output"]
    summary["evaluate_step"] = {
        "command": [*container["command"], *container["args"][2:]],
        "gate": gate,
        "accuracy_arm64": metrics.get("validation_accuracy"),
        "accuracy_amd64": round(prepared.eval_accuracy, 6),
        "images": len(load_split(prepared.dataset / VAL_FILE)),
        "seconds": seconds,
    }
    assert gate == "pass", executed
    n_val = len(load_split(prepared.dataset / VAL_FILE))
    # the step's Metrics artifact names it validation_accuracy (components/evaluate/component.py)
    assert abs(float(metrics["validation_accuracy"]) - prepared.eval_accuracy) <= 1.5 / n_val, (
        metrics,
        prepared.eval_accuracy,
    )


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predictor_serves_a_signed_version_on_arm64(prepared: Fixture, summary: dict[str, Any], tmp_path: Path) -> None:
    """The arm64 predictor image fetches a signed version from MinIO, verifies it and answers V1 correctly."""
    _, config = load_model_dir(prepared.model)
    expected = probabilities(prepared.fp32, config)
    right = (_top1(prepared.fp32) == prepared.labels).nonzero().flatten()[:V1_IMAGES].tolist()
    assert len(right) == V1_IMAGES, "the amd64 model gets too few of the fixed images right"
    port = free_port()
    cache = prepared.smoke / "cache"
    cache.mkdir(mode=0o777, exist_ok=True)
    cache.chmod(0o777)
    env = {**prepared.store.env(), ENV_PUBLIC_KEY: "/smoke/model-signing.pub", ENV_REQUIRE_SIGNED: "1"}
    log = tmp_path / "predictor.log"
    started = time.monotonic()
    proc = foreign(
        "tsr-predictor",
        "python", "-m", "serving", "--model", prepared.version_uri, "--http-port", str(port), "--threads", "2",
        "--cache-dir", "/smoke/cache",
        mounts={prepared.smoke: "/smoke"},
        env=env,
        background=True,
        log=log,
    )  # fmt: skip
    assert isinstance(proc, subprocess.Popen)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ok(proc, f"{base}/v2/models/{MODEL}/ready", "the arm64 predictor", COMMAND_TIMEOUT_S, log, 3.0, 30.0)
        with httpx.Client(base_url=base, timeout=120) as http:
            summary["emulated_seconds"]["predictor_ready"] = round(time.monotonic() - started, 1)
            body = {"instances": [{"b64": base64.b64encode(_png(prepared.images[i])).decode()} for i in right]}
            answer = http.post(f"/v1/models/{MODEL}:predict", json=body)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        correct = sum(p["class_id"] == int(prepared.labels[i]) for p, i in zip(predictions, right, strict=True))
        summary["v1_correct"] = correct == V1_IMAGES
        summary["v1"] = {"correct": correct, "sent": V1_IMAGES, "model": prepared.version_uri}
        assert correct == V1_IMAGES, predictions
        for p, i in zip(predictions, right, strict=True):
            assert abs(p["probability"] - float(expected[i, int(prepared.labels[i])])) < 1e-3, (i, p)
        # what it loaded is the signed version: its copy in the cache carries model.sig (verified before loading,
        # TSR_REQUIRE_SIGNED=1), and nothing was loaded unverified
        assert list(cache.rglob("model.sig")), sorted(str(p) for p in cache.rglob("*"))
        assert "unsigned" not in log.read_text(), log.read_text()[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
