"""Feedback data: a sample of served inputs, stored with the model's predictions for review and retraining.

Opt-in (`--feedback-uri s3://bucket/prefix`). The request path only draws one random number per
image and, for the few images drawn, copies the 3 KiB uint8 tensor into a bounded queue; a
background thread encodes PNGs and uploads them. A full queue, the per-minute cap or a failed
upload drops the sample and counts it (`tsr_feedback_dropped_total{reason}`): feedback never
blocks, slows or fails a request.

Layout under the prefix, ImageFolder-compatible (ingest reads `<prefix>/<model-version>` with
layout `imagefolder`):

    <prefix>/<model-version>/<class_id:05d>/<UTC time>-<uuid>.png    the image as the model saw it
    <prefix>/<model-version>/<class_id:05d>/<UTC time>-<uuid>.json   prediction, probability, version, time

The PNG is the uint8 image at the model's input size after the shared decode and resize, before
equalization and standardization, so reading it back with `tsr.core.preprocessing` gives exactly the
pixels the model was fed. The class folder is the model's own prediction (a pseudo-label), not
ground truth. Retention is a bucket lifecycle rule (expire after `retention_days`) on the prefix,
set when the first sample is stored.
"""

from __future__ import annotations

import io
import json
import logging
import math
import queue
import random
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from PIL import Image

from serving.config import FeedbackConfig
from serving.config import feedback_config as feedback_config  # re-exported: the CLIs build it from flags
from serving.monitoring.metrics import FEEDBACK_DROP_REASONS, PredictorMetrics
from tsr.core.config import StoreConfig
from tsr.core.store import ObjectStore, S3Store, open_store

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

LABEL_SOURCE = "model_prediction"  # sidecar field: the folder's class is a pseudo-label
TOP_K = 3
ERROR_LOG_INTERVAL_S = 60.0  # upload failures: one log line per minute at most, all counted
RATE_WINDOW_S = 60.0
RULE_ID_PREFIX = "tsr-feedback-"


@dataclass(frozen=True)
class _Sample:
    image: torch.Tensor  # uint8 (3, S, S), a copy
    probs: torch.Tensor  # (C,) softmax row, a copy
    class_names: list[str]
    version: str
    model_uri: str
    at: float  # unix time of the forward pass


def encode_png(image: torch.Tensor) -> bytes:
    """uint8 (3, H, W) -> PNG bytes (lossless: reading it back gives the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def lifecycle_rule_id(prefix: str) -> str:
    return RULE_ID_PREFIX + re.sub(r"[^A-Za-z0-9._-]", "-", prefix)[:200]


def ensure_expiration(objects: S3Store, prefix: str, days: int) -> None:
    """Make the bucket expire objects under `prefix/` after `days`; other lifecycle rules are kept.

    `set_bucket_lifecycle` replaces the bucket's whole configuration, so the current one is read
    first and only this prefix's rule (by id) is replaced.
    """
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

    rule_id = lifecycle_rule_id(prefix)
    try:
        current = objects.client.get_bucket_lifecycle(objects.bucket)
        rules = [r for r in (current.rules if current is not None else []) if r.rule_id != rule_id]
        rules.append(
            Rule(ENABLED, rule_filter=Filter(prefix=f"{prefix}/"), rule_id=rule_id, expiration=Expiration(days=days))
        )
        objects.client.set_bucket_lifecycle(objects.bucket, LifecycleConfig(rules))
    except Exception as exc:
        raise objects._fail("set the lifecycle rule (retention) of", f"{prefix}/", exc) from exc


class FeedbackLogger:
    """Samples (image, prediction) pairs in the request path; stores them from a background thread.

    `offer` is called once per forward pass; `start` / `stop` bracket the server's lifetime.
    """

    def __init__(
        self,
        config: FeedbackConfig,
        store: StoreConfig | None,
        model: str,
        metrics: PredictorMetrics,
        objects: ObjectStore | None = None,
    ) -> None:
        if store is None and objects is None:
            raise ValueError(f"feedback logging to {config.uri} needs an object store (S3/MinIO); none is configured")
        self.config = config
        self.model = model
        if objects is None:
            assert store is not None
            # One quick retry: a sample is not worth holding the upload thread (and the queue) for long.
            objects = (
                S3Store(store, config.bucket, retries=1) if store.kind != "dir" else open_store(store, config.bucket)
            )
        self.objects = objects
        self._random = random.Random()
        self._queue: queue.Queue[_Sample] = queue.Queue(maxsize=config.queue_size)
        self._admitted: deque[float] = deque()  # monotonic times of the samples admitted in the last minute
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None
        self._prepared = False
        self._errors_unreported = 0
        self._last_error_log = -math.inf
        self._logged = metrics.feedback_logged.labels(model)
        self._dropped = {reason: metrics.feedback_dropped.labels(model, reason) for reason in FEEDBACK_DROP_REASONS}

    # ---- lifetime ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the upload thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tsr-feedback", daemon=True)
                self._thread.start()
        log.info(
            "feedback: sample rate %g, at most %d images a minute, to %s, kept %d days",
            self.config.sample_rate,
            self.config.max_per_minute,
            self.config.uri,
            self.config.retention_days,
        )

    def stop(self, timeout_s: float | None = None) -> int:
        """Upload what is queued, waiting at most `timeout_s` (default: the config's); returns how many were left."""
        timeout = self.config.flush_timeout_s if timeout_s is None else timeout_s
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._abandon.set()  # the thread finishes its current upload, then exits
        left = self._queue.qsize()
        if left:
            log.warning("feedback: %d sampled images not uploaded at shutdown (flush timeout %.1fs)", left, timeout)
        else:
            log.info("feedback: stopped, every queued image uploaded")
        return left

    # ---- the request path: cheap, never raises -------------------------------------------------

    def offer(
        self, images: torch.Tensor, probs: torch.Tensor, class_names: list[str], version: str, model_uri: str
    ) -> None:
        """Called after a forward pass with the uint8 (N, 3, S, S) images the model saw and their (N, C)
        probabilities: draws which to keep and queues copies; everything else is counted."""
        try:
            n = int(images.shape[0])
            rate = self.config.sample_rate
            picked = [i for i in range(n) if self._random.random() < rate]
            if len(picked) < n:
                self._dropped["sampled_out"].inc(n - len(picked))
            if not picked:
                return
            now, at = time.monotonic(), time.time()
            limited = full = 0
            with self._lock:
                for i in picked:
                    if not self._admit(now):
                        limited += 1
                        continue
                    sample = _Sample(images[i].clone(), probs[i].clone(), class_names, version, model_uri, at)
                    try:
                        self._queue.put_nowait(sample)
                    except queue.Full:
                        self._admitted.pop()  # a dropped sample does not use up the minute's budget
                        full += 1
            if limited:
                self._dropped["rate_limited"].inc(limited)
            if full:
                self._dropped["queue_full"].inc(full)
        except Exception as exc:  # feedback must never fail a request
            self._report(exc)

    def _admit(self, now: float) -> bool:
        """Sliding window: at most `max_per_minute` admitted in any 60 s."""
        window = self._admitted
        while window and now - window[0] >= RATE_WINDOW_S:
            window.popleft()
        if len(window) >= self.config.max_per_minute:
            return False
        window.append(now)
        return True

    # ---- the upload thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._abandon.is_set():
            try:
                sample = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            try:
                self._store(sample)
                self._logged.inc()
            except Exception as exc:
                self._dropped["upload_error"].inc()
                self._report(exc)

    def _prepare(self) -> None:
        """Bucket and retention rule, before the first upload; retried with the next sample until it works.

        Nothing is stored without the retention rule, so feedback data cannot pile up unbounded.
        """
        self.objects.ensure_bucket()
        if isinstance(self.objects, S3Store):
            ensure_expiration(self.objects, self.config.prefix, self.config.retention_days)
        else:
            log.warning(
                "feedback: %s is not S3 (a directory store has no lifecycle rules): retention_days=%d is not enforced",
                self.objects.uri(self.config.prefix),
                self.config.retention_days,
            )
        self._prepared = True

    def _store(self, sample: _Sample) -> None:
        if not self._prepared:
            self._prepare()
        k = min(TOP_K, int(sample.probs.shape[0]))
        top_p, top_i = sample.probs.float().topk(k)
        top = [
            {"class_id": i, "class_name": sample.class_names[i], "probability": round(p, 6)}
            for p, i in zip(top_p.tolist(), top_i.tolist(), strict=True)
        ]
        stamp = datetime.fromtimestamp(sample.at, UTC)
        name = f"{stamp:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex}"
        key = f"{self.config.prefix}/{sample.version}/{top[0]['class_id']:05d}/{name}"
        record = {
            "image": f"{name}.png",
            "class_id": top[0]["class_id"],
            "class_name": top[0]["class_name"],
            "probability": top[0]["probability"],
            "top_k": top,
            "label_source": LABEL_SOURCE,
            "model": self.model,
            "model_version": sample.version,
            "model_uri": sample.model_uri,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
            "image_size": [int(sample.image.shape[1]), int(sample.image.shape[2])],
        }
        # Image first: a sidecar never points at a missing image.
        self.objects.put_bytes(f"{key}.png", encode_png(sample.image), content_type="image/png")
        self.objects.put_bytes(
            f"{key}.json", (json.dumps(record, sort_keys=True) + "\n").encode(), content_type="application/json"
        )

    def _report(self, exc: BaseException) -> None:
        """At most one log line a minute, saying how many failures it stands for."""
        with self._lock:
            self._errors_unreported += 1
            now = time.monotonic()
            if now - self._last_error_log < ERROR_LOG_INTERVAL_S:
                return
            count, self._errors_unreported, self._last_error_log = self._errors_unreported, 0, now
        log.warning("feedback: %d sample(s) not stored (next report in a minute at most): %s", count, exc)
