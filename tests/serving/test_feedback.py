"""Feedback data: the real predictor logs sampled inputs + predictions to a real MinIO, ingest reads them back.

Two predictor processes share one MinIO: `logging` (sample rate 1, a registry model) for the layout,
the pixels, the sidecars, the lifecycle rule, ingest and a MinIO outage; `limited` (3 a minute, a
model directory) for the rate limit. The logger's queue, its error handling and the config checks
run in-process.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image
from prometheus_client import CollectorRegistry
from torch import nn
from typer.testing import CliRunner

from components.ingest.ingest import IngestConfig, ingest
from serving.feedback import FeedbackConfig, FeedbackLogger, feedback_config, lifecycle_rule_id
from serving.monitoring.metrics import FEEDBACK_DROP_REASONS, PredictorMetrics
from tests.conftest import ARCHIVE, make_model_dir
from tests.serving.predictor_process import running_predictor
from tsr.core.config import StoreConfig
from tsr.core.dataset import load_split
from tsr.core.models import TSRNet, load_model_dir, save_model_dir
from tsr.core.preprocessing import decode_image, image_to_uint8, to_model_input
from tsr.core.processes import free_port
from tsr.core.registry import Registry
from tsr.core.store import S3Store
from tsr.core.validation import InvalidParameter
from tsr.local.minio_server import LocalMinio

NAME = "signs-feedback"
BUCKET = "feedback"
CLASSES = (1, 14, 25, 38)
RETENTION_DAYS = 7
DEADLINE_S = 30.0


# ---- fixtures: MinIO, a model that tells the test signs apart, two predictors ----------------------------
@pytest.fixture(scope="module")
def minio_srv(tmp_path_factory: pytest.TempPathFactory, minio_binary: Path) -> Iterator[tuple[LocalMinio, StoreConfig]]:
    server = LocalMinio(root=tmp_path_factory.mktemp("feedback-minio"), binary=minio_binary)
    config = server.start()
    try:
        yield server, config
    finally:
        server.stop()


@dataclass(frozen=True)
class Sign:
    data: bytes  # what is sent (base64 in a V1 instance)
    seen: torch.Tensor  # uint8 (3, 32, 32): what the shared preprocessing makes of it, i.e. what the model sees


@pytest.fixture(scope="module")
def signs() -> list[Sign]:
    """A real sign per class in CLASSES as it is (32x32 PPM), then upscaled to 48x48 PNGs (the server resizes them).

    Read straight from the archive (about 2 s) rather than through `gtsrb_root` (extracting all of it).
    """
    if not ARCHIVE.is_file():
        pytest.fail(f"GTSRB archive not found at {ARCHIVE} (set TSR_GTSRB_ARCHIVE)")
    wanted = {f"gtsrb/GTSRB/Training/{c:05d}/00000_00000.ppm": c for c in CLASSES}
    found: dict[int, bytes] = {}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            if member.name in wanted and (fh := tar.extractfile(member)) is not None:
                found[wanted[member.name]] = fh.read()
                if len(found) == len(wanted):
                    break
    out = []
    for variant in ("ppm", "png48"):
        for c in CLASSES:
            data = found[c]
            if variant == "png48":
                buffer = io.BytesIO()
                Image.open(io.BytesIO(data)).convert("RGB").resize((48, 48), Image.Resampling.BICUBIC).save(
                    buffer, format="PNG"
                )
                data = buffer.getvalue()
            out.append(Sign(data, image_to_uint8(decode_image(data, source="sign"), 32)))
    return out


def anchor_model_dir(path: Path, anchors: list[torch.Tensor], classes: tuple[int, ...]) -> Path:
    """An untrained tsrnet whose last layer is a cosine nearest-anchor classifier: each anchor image is
    predicted as its own class, so the predictions (and the feedback's class folders) are known and varied."""
    make_model_dir(path)
    model, config = load_model_dir(path)
    assert isinstance(model, TSRNet)
    linear = model.head[-1]
    assert isinstance(linear, nn.Linear)
    with torch.inference_mode():
        feats = model.head[:2](model.features(to_model_input(torch.stack(anchors), config.preprocess)))
        linear.weight.zero_()
        linear.bias.fill_(-10.0)
        for c, f in zip(classes, feats, strict=True):
            linear.weight[c] = 10.0 * f / f.norm()
            linear.bias[c] = 0.0
    save_model_dir(model, config, path, export_program=False)
    return path


def _env(store: StoreConfig, state: Path) -> dict[str, str]:
    return {**store.env(), "TSR_STATE_DIR": str(state)}


@dataclass
class Predictor:
    url: str
    log: Path
    version: str


@pytest.fixture(scope="module")
def logging_predictor(
    minio_srv: tuple[LocalMinio, StoreConfig], signs: list[Sign], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Predictor]:
    _, store = minio_srv
    root = tmp_path_factory.mktemp("feedback-serve")
    model_dir = anchor_model_dir(root / "model", [s.seen for s in signs[: len(CLASSES)]], CLASSES)
    version = Registry.from_config(store).publish(NAME, model_dir, card={})
    args = ["--model", f"s3://models/{NAME}/{version}", "--model-name", NAME, "--http-port", str(free_port())]
    args += ["--threads", "1", "--load-retries", "0", "--feedback-uri", f"s3://{BUCKET}/{NAME}"]
    args += ["--feedback-sample-rate", "1.0", "--feedback-retention-days", str(RETENTION_DAYS)]
    log = root / "server.log"
    with running_predictor(args, log, env=_env(store, root / "state"), name=NAME) as url:
        yield Predictor(url, log, version)


# ---- helpers ---------------------------------------------------------------------------------------------
def _predict(url: str, signs: list[Sign], name: str = NAME) -> list[dict[str, Any]]:
    body = {"instances": [{"b64": base64.b64encode(s.data).decode()} for s in signs]}
    resp = httpx.post(f"{url}/v1/models/{name}:predict", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    predictions: list[dict[str, Any]] = resp.json()["predictions"]
    return predictions


def _metric(url: str, name: str, **labels: str) -> float:
    """The value of one series on /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if match and match.group(1) == name and ",".join(sorted(match.group(2).split(","))) == want:
            return float(match.group(3))
    return 0.0


def _logged(url: str, model: str = NAME) -> float:
    return _metric(url, "tsr_feedback_logged_total", model=model)


def _dropped(url: str, model: str, reason: str) -> float:
    return _metric(url, "tsr_feedback_dropped_total", model=model, reason=reason)


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S:.0f}s waiting for {what}")
        time.sleep(0.2)


def _pixels(png: bytes) -> torch.Tensor:
    return image_to_uint8(decode_image(png, source="feedback"), 32)


# ---- the real predictor -----------------------------------------------------------------------------------
def test_sampled_inputs_are_stored_as_the_model_saw_them(
    logging_predictor: Predictor, minio_srv: tuple[LocalMinio, StoreConfig], signs: list[Sign]
) -> None:
    _, store = minio_srv
    url, version = logging_predictor.url, logging_predictor.version
    objects = S3Store(store, BUCKET)
    prefix = f"{NAME}/{version}/"
    earlier = set(objects.list(prefix))
    before = _logged(url)
    predictions = _predict(url, signs)
    assert {p["class_id"] for p in predictions[: len(CLASSES)]} == set(CLASSES)  # the anchors are told apart

    _wait_for(lambda: _logged(url) - before >= len(signs), f"{len(signs)} samples logged")
    keys = sorted(set(objects.list(prefix)) - earlier)
    pngs = [k for k in keys if k.endswith(".png")]
    assert len(pngs) == len(signs) and len(keys) == 2 * len(signs), keys
    assert _logged(url) - before == len(signs)
    assert _dropped(url, NAME, "sampled_out") == 0  # sample rate 1.0

    unmatched = list(range(len(signs)))
    for key in pngs:
        assert re.fullmatch(rf"{prefix}(\d{{5}})/\d{{8}}T\d{{6}}\.\d{{6}}Z-[0-9a-f]{{32}}\.png", key), key
        pixels = _pixels(objects.get_bytes(key))
        # Which sent image this is: the 32x32 pixels the model saw, compared exactly.
        index = next(i for i in unmatched if torch.equal(signs[i].seen, pixels))
        unmatched.remove(index)
        sidecar = json.loads(objects.get_bytes(key.removesuffix(".png") + ".json"))
        expected = predictions[index]
        assert key.split("/")[-2] == f"{expected['class_id']:05d}"
        assert sidecar["class_id"] == expected["class_id"] and sidecar["class_name"] == expected["class_name"]
        assert sidecar["probability"] == pytest.approx(expected["probability"], abs=1e-5)
        assert [t["class_id"] for t in sidecar["top_k"]] == [t["class_id"] for t in expected["top_k"]]
        assert sidecar["model"] == NAME and sidecar["model_version"] == version
        assert sidecar["model_uri"] == f"s3://models/{NAME}/{version}"
        assert sidecar["label_source"] == "model_prediction" and sidecar["image"] == key.rsplit("/", 1)[-1]
        assert sidecar["timestamp"].endswith("Z") and sidecar["image_size"] == [32, 32]
    assert unmatched == []
    # The 48x48 PNGs were resized by the server: stored is the resized image, not the one sent.
    assert all(Image.open(io.BytesIO(s.data)).size == (48, 48) for s in signs[len(CLASSES) :])


def test_retention_is_a_lifecycle_rule_on_the_prefix(
    logging_predictor: Predictor, minio_srv: tuple[LocalMinio, StoreConfig], signs: list[Sign]
) -> None:
    _, store = minio_srv
    objects = S3Store(store, BUCKET)
    before = _logged(logging_predictor.url)
    _predict(logging_predictor.url, signs[:1])
    _wait_for(lambda: _logged(logging_predictor.url) > before, "an upload")  # the rule is set before the first
    lifecycle = objects.client.get_bucket_lifecycle(BUCKET)
    assert lifecycle is not None
    rules = {r.rule_id: r for r in lifecycle.rules}
    rule = rules[lifecycle_rule_id(NAME)]
    assert rule.status == "Enabled" and rule.rule_filter is not None and rule.rule_filter.prefix == f"{NAME}/"
    assert rule.expiration is not None and rule.expiration.days == RETENTION_DAYS


def test_ingest_reads_the_feedback_prefix_back(
    logging_predictor: Predictor, minio_srv: tuple[LocalMinio, StoreConfig], signs: list[Sign], tmp_path: Path
) -> None:
    _, store = minio_srv
    objects = S3Store(store, BUCKET)
    prefix = f"{NAME}/{logging_predictor.version}"
    before = _logged(logging_predictor.url)
    _predict(logging_predictor.url, signs)
    _wait_for(lambda: _logged(logging_predictor.url) - before >= len(signs), "the uploads")
    stored: Counter[tuple[bytes, int]] = Counter()  # (pixels, pseudo-label) of everything under the prefix
    for key in objects.list(prefix + "/"):
        if key.endswith(".png"):
            sidecar = json.loads(objects.get_bytes(key.removesuffix(".png") + ".json"))
            stored[(_pixels(objects.get_bytes(key)).numpy().tobytes(), sidecar["class_id"])] += 1

    out = tmp_path / "dataset"
    source = f"s3://{BUCKET}/{prefix}"
    card = ingest(IngestConfig(source=source, layout="imagefolder", threads=1), out, store)
    # ImageFolder: labels index the class folders present, whose names are the 5-digit GTSRB class ids.
    assert card["layout"] == "imagefolder" and card["class_names"] == sorted({f"{c:05d}" for _, c in stored})
    read: Counter[tuple[bytes, int]] = Counter()
    for split in ("train", "val"):
        data = load_split(out / f"{split}.safetensors")
        for image, label in zip(data.images, data.labels.tolist(), strict=True):
            read[(image.numpy().tobytes(), int(card["class_names"][label]))] += 1
    assert read == stored  # every logged image, pixel for pixel, with its pseudo-label
    assert card["totals"]["images"] == sum(stored.values())


def test_store_outage_never_fails_a_request(
    logging_predictor: Predictor, minio_srv: tuple[LocalMinio, StoreConfig], signs: list[Sign]
) -> None:
    server, store = minio_srv
    url = logging_predictor.url
    port = int(store.endpoint.rsplit(":", 1)[1])
    errors = _dropped(url, NAME, "upload_error")
    server.stop()
    try:
        for _ in range(3):
            predictions = _predict(url, signs[:2])  # 200, with the model's answers
            assert [p["class_id"] for p in predictions] == [CLASSES[0], CLASSES[1]]
        _wait_for(lambda: _dropped(url, NAME, "upload_error") - errors == 6, "6 upload errors")
        log = logging_predictor.log.read_text()
        assert len(re.findall(r"feedback: \d+ sample\(s\) not stored", log)) == 1, "one log line a minute at most"
    finally:
        server.start(port=port)
    logged = _logged(url)
    assert _predict(url, signs[:1])  # and it logs again once the store is back
    _wait_for(lambda: _logged(url) > logged, "an upload after the outage")
    assert _dropped(url, NAME, "upload_error") - errors == 6


def test_over_the_per_minute_cap_samples_are_dropped_and_counted(
    minio_srv: tuple[LocalMinio, StoreConfig], signs: list[Sign], tmp_path: Path
) -> None:
    """A model directory (version "local") with feedback: the store is opened for feedback alone.
    The server is stopped right after the requests: what is still queued is uploaded on shutdown."""
    _, store = minio_srv
    args = ["--model", str(make_model_dir(tmp_path / "model")), "--model-name", "limited"]
    args += ["--http-port", str(free_port()), "--threads", "1", "--feedback-uri", f"s3://{BUCKET}/limited"]
    args += ["--feedback-sample-rate", "1", "--feedback-max-per-minute", "3"]
    log = tmp_path / "server.log"
    with running_predictor(args, log, env=_env(store, tmp_path / "state"), name="limited") as url:
        for batch in (signs[:5], signs[5:]):
            assert len(_predict(url, batch, name="limited")) == len(batch)
        # Counted in the request path, before the answer was sent.
        assert _dropped(url, "limited", "rate_limited") == len(signs) - 3
        assert _dropped(url, "limited", "queue_full") == _dropped(url, "limited", "upload_error") == 0
    keys = S3Store(store, BUCKET).list("limited/")
    assert len(keys) == 6 and all(k.startswith("limited/local/") for k in keys), keys
    assert "feedback: stopped, every queued image uploaded" in log.read_text()


# ---- the logger in-process: queue bound, failures, shutdown -------------------------------------------------
class FakeStore:
    """An ObjectStore that can hold uploads (gate) or fail them."""

    bucket = BUCKET

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def uri(self, key: str) -> str:
        return f"fake://{key}"

    def ensure_bucket(self) -> None:
        pass

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.objects[key] = data


def _logger(store: FakeStore, **config: Any) -> tuple[FeedbackLogger, PredictorMetrics]:
    metrics = PredictorMetrics.create(CollectorRegistry())
    cfg = FeedbackConfig(f"s3://{BUCKET}/unit", **{"sample_rate": 1.0, **config})
    return FeedbackLogger(cfg, None, "unit", metrics, objects=store), metrics  # type: ignore[arg-type]


def _count(metrics: PredictorMetrics, reason: str | None = None) -> float:
    if reason is None:
        return float(metrics.feedback_logged.labels("unit")._value.get())
    return float(metrics.feedback_dropped.labels("unit", reason)._value.get())


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return images, torch.softmax(torch.randn(n, 43, generator=gen), dim=1), [f"class {i}" for i in range(43)]


def test_full_queue_drops_instead_of_waiting_and_stop_flushes() -> None:
    store = FakeStore()
    logger, metrics = _logger(store, queue_size=2)
    logger.start()
    store.gate.clear()  # uploads hang: the first sample is taken by the thread, two more fill the queue
    images, probs, names = _batch(1)
    logger.offer(images, probs, names, "v1", "uri")
    _wait_for(lambda: logger._queue.empty(), "the thread to take the first sample")
    images, probs, names = _batch(5)
    started = time.perf_counter()
    logger.offer(images, probs, names, "v1", "uri")
    assert time.perf_counter() - started < 0.05  # never waits for the store
    assert _count(metrics, "queue_full") == 3
    store.gate.set()
    assert logger.stop(timeout_s=10) == 0
    assert _count(metrics) == 3 and len(store.objects) == 6
    assert {_count(metrics, r) for r in ("rate_limited", "upload_error", "sampled_out")} == {0.0}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_sampling_and_upload_errors_are_counted_and_logged_once() -> None:
    store = FakeStore()
    store.fail = OSError("disk on fire")
    logger, metrics = _logger(store, sample_rate=0.25)
    lines = _Lines()
    feedback_log = logging.getLogger("serving.feedback")
    feedback_log.addHandler(lines)
    try:
        logger.start()
        images, probs, names = _batch(400)
        logger.offer(images, probs, names, "v1", "uri")
        assert logger.stop(timeout_s=10) == 0
    finally:
        feedback_log.removeHandler(lines)
    errors, sampled_out = _count(metrics, "upload_error"), _count(metrics, "sampled_out")
    assert 60 <= errors <= 140 and errors + sampled_out == 400  # ~100 of 400 drawn, every upload failed
    assert _count(metrics) == 0
    reports = [line for line in lines.lines if "not stored" in line]
    assert len(reports) == 1 and "disk on fire" in reports[0], reports


def test_bad_input_to_offer_never_raises() -> None:
    logger, metrics = _logger(FakeStore())
    images, probs, names = _batch(4)
    logger.offer(images, probs[:1], names, "v1", "uri")  # rows missing: swallowed, the request goes on
    logger.offer(images, probs, [], "v1", "uri")  # no class names: fails in the upload thread, counted there
    logger.start()
    _wait_for(lambda: _count(metrics, "upload_error") == 4, "4 upload errors")
    logger.stop(timeout_s=5)


def test_stop_gives_up_after_the_flush_timeout() -> None:
    store = FakeStore()
    logger, _ = _logger(store, queue_size=8)
    store.gate.clear()
    logger.start()
    images, probs, names = _batch(4)
    logger.offer(images, probs, names, "v1", "uri")
    started = time.monotonic()
    left = logger.stop(timeout_s=0.3)
    assert time.monotonic() - started < 2 and left >= 2
    store.gate.set()


# ---- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("uri", "http://minio/feedback", "not an s3:// URI"),
        ("uri", "s3://feedback", "needs a prefix"),
        ("uri", "s3:///prefix", "no bucket name"),
        ("uri", "s3://Feedback/x", "invalid bucket name"),
        ("uri", "s3://feedback/../models", "'..'"),
        ("sample_rate", 0.0, "(0, 1]"),
        ("sample_rate", 1.5, "(0, 1]"),
        ("sample_rate", float("nan"), "(0, 1]"),
        ("max_per_minute", 0, ">= 1"),
        ("queue_size", 0, ">= 1"),
        ("retention_days", 0, ">= 1"),
        ("retention_days", 1.5, "whole number"),
        ("flush_timeout_s", -1.0, ">= 0"),
    ],
)
def test_config_refuses_values_that_cannot_work(field: str, value: Any, fragment: str) -> None:
    kwargs: dict[str, Any] = {"uri": "s3://feedback/tsr", field: value}
    with pytest.raises(InvalidParameter) as info:
        FeedbackConfig(**kwargs)
    assert info.value.param == field and str(info.value).startswith(f"{field}: ") and fragment in str(info.value)


def test_config_defaults_and_flags() -> None:
    cfg = FeedbackConfig("s3://feedback/a/b/")
    assert (cfg.bucket, cfg.prefix) == ("feedback", "a/b")
    assert (cfg.sample_rate, cfg.max_per_minute, cfg.retention_days) == (0.05, 600, 14)
    assert feedback_config(None) is None
    assert feedback_config("s3://feedback/x", 0.5, None, 3) == FeedbackConfig("s3://feedback/x", 0.5, retention_days=3)
    with pytest.raises(InvalidParameter, match="needs --feedback-uri"):
        feedback_config(None, sample_rate=0.5)


def test_python_m_serving_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from serving.__main__ import parse_args

    args = parse_args(["--model", "m", "--feedback-uri", "s3://feedback/x", "--feedback-max-per-minute", "9"])
    assert args.feedback == FeedbackConfig("s3://feedback/x", max_per_minute=9)
    assert parse_args(["--model", "m"]).feedback is None
    for bad, flag in (
        (["--feedback-uri", "s3://feedback/x", "--feedback-sample-rate", "0"], "--feedback-sample-rate"),
        (["--feedback-retention-days", "3"], "--feedback-retention-days"),
    ):
        with pytest.raises(SystemExit) as info:
            parse_args(["--model", "m", *bad])
        assert info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


def test_tsr_serve_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    import serving.server as server
    from tsr.cli import app, common

    seen: list[Any] = []
    monkeypatch.setattr(server, "serve", lambda cfg, store: seen.append((cfg, store)))
    store = StoreConfig(kind="dir", directory=tmp_path / "store")
    monkeypatch.setattr(common, "_store_session", lambda: contextlib.nullcontext(store))
    model = make_model_dir(tmp_path / "model")
    env = {"TSR_STATE_DIR": str(tmp_path / "state")}
    flags = ["--feedback-uri", "s3://feedback/x", "--feedback-sample-rate", "0.5", "--feedback-retention-days", "3"]
    result = CliRunner().invoke(app, ["serve", "--model", str(model), *flags], env=env)
    assert result.exit_code == 0, result.output
    cfg, used = seen.pop()
    assert cfg.feedback == FeedbackConfig("s3://feedback/x", 0.5, retention_days=3) and used == store
    result = CliRunner().invoke(app, ["serve", "--model", str(model)], env=env)
    assert result.exit_code == 0, result.output
    cfg, used = seen.pop()
    assert cfg.feedback is None and used is None  # off by default; a directory model needs no store then
    for bad, option in (
        (["--feedback-uri", "s3://feedback/x", "--feedback-sample-rate", "2"], "'--feedback-sample-rate'"),
        (["--feedback-uri", "s3://feedback"], "'--feedback-uri'"),
        (["--feedback-max-per-minute", "5"], "'--feedback-max-per-minute'"),
    ):
        result = CliRunner().invoke(app, ["serve", "--model", str(model), *bad], env=env)
        assert result.exit_code == 2 and option in result.output, result.output
    assert seen == []


def test_every_drop_reason_is_exported_from_the_start() -> None:
    _, metrics = _logger(FakeStore())
    reasons = {s.labels["reason"] for m in metrics.feedback_dropped.collect() for s in m.samples}
    assert reasons == set(FEEDBACK_DROP_REASONS)
