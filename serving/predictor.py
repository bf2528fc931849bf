"""The KServe predictor: registry model in, V1/V2 predictions out.

`load`, `preprocess`, `predict` and `postprocess` are KServe's stages, so KServe's own
`__call__` times each into its Prometheus histograms (request_*_seconds). Beside them:
`predict` goes through the in-process batcher, `reload` swaps in a new champion between two
forward passes (in-flight requests finish on the model they started with), and the
tsr_* metrics and drift gauges are updated on the way (serving/monitoring/metrics.py).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import orjson
import torch
from kserve import Model
from kserve.errors import ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from torch import nn

from serving.batcher import DynamicBatcher
from serving.codec import Rejected, plan_raw_image, plan_v1, plan_v2
from serving.config import TOP_K, PredictorOptions, default_cache_dir
from serving.decoding import DecodeOverloaded, Decoder, Planner
from serving.feedback import FeedbackLogger
from serving.guard import note_rejection
from serving.monitoring.metrics import CHANNELS, PredictorMetrics, default_metrics
from tsr.core.config import StoreConfig
from tsr.core.drift import DriftMonitor, InputReference
from tsr.core.models import ModelConfig, load_model_dir, probabilities
from tsr.core.preprocessing import resize_uint8, to_model_input
from tsr.core.registry import Registry, downloaded_version, materialize, parse_model_spec
from tsr.core.store import StoreError

log = logging.getLogger(__name__)

# V1 bodies with these content types are one encoded image, not JSON.
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class ModelSource:
    """Where `load()` gets the model: a `--model` spec, plus the store when the spec needs one."""

    spec: str
    store: StoreConfig | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model and everything that must change together with it on a reload."""

    model: nn.Module
    config: ModelConfig
    uri: str
    version: str | None  # registry version id; None for a local directory
    directory: Path
    drift: DriftMonitor | None  # None for models trained before input references existed
    loaded_at: float


class PreparedBatch(TypedDict):
    """What preprocess hands to predict; a dict because kserve's `validate` probes it with `in`."""

    images: torch.Tensor
    protocol: str  # "v1" | "v2"
    request: InferRequest | None


class BatchResult(TypedDict):
    probabilities: torch.Tensor  # (N, C) float32
    protocol: str
    request: InferRequest | None
    model: LoadedModel  # the model that produced these rows (a reload may have happened since)


def resolve_threads(threads: int) -> int:
    """0 means every core this process may run on (the affinity mask, not the machine's count)."""
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class TSRPredictor(Model):
    """A GTSRB classifier behind KServe's V1 and V2 (REST and gRPC) protocols."""

    def __init__(
        self,
        name: str,
        source: ModelSource,
        options: PredictorOptions | None = None,
        metrics: PredictorMetrics | None = None,
    ) -> None:
        super().__init__(name)
        self.source = source
        self.options = options or PredictorOptions()
        self.limits = self.options.limits
        self.threads = resolve_threads(self.options.threads)
        self.decoder = Decoder(self.options.decode, self.limits)
        self.metrics = metrics or default_metrics()
        self._loaded: LoadedModel | None = None
        self._reload_lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self._startup_task: asyncio.Task[None] | None = None
        self.load_error: BaseException | None = None  # why the background first load gave up (server exits)
        self.batcher: DynamicBatcher[LoadedModel] = DynamicBatcher(
            self._forward, self.options.batching, self._observe_batch
        )
        self.engine = True  # asks KServe to call start_engine()/stop_engine(): the reload watcher
        self._export_drift_gauges()
        self.feedback: FeedbackLogger | None = None
        if self.options.feedback is not None:  # the same store as the model registry
            self.feedback = FeedbackLogger(self.options.feedback, source.store, name, self.metrics)

    # ---- the model being served ----------------------------------------------------------------

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._loaded

    @property
    def config(self) -> ModelConfig:
        return self.loaded.config

    @property
    def model_uri(self) -> str | None:
        return self._loaded.uri if self._loaded else None

    @property
    def model_version(self) -> str | None:
        return self._loaded.version if self._loaded else None

    @property
    def model_dir(self) -> Path | None:
        return self._loaded.directory if self._loaded else None

    def _load_from_source(self) -> LoadedModel:
        """Resolve, download, checksum-verify and warm up; nothing is swapped in here."""
        spec = parse_model_spec(self.source.spec, self.name)
        model_dir, uri = materialize(spec, self.source.store, self.source.cache_dir)
        # A registry version copied whole (KServe's storage-initializer into /mnt/models): checked, and named.
        downloaded = None if spec.needs_store else downloaded_version(model_dir)
        model, config = load_model_dir(model_dir)
        drift = None
        if config.input_reference:
            reference = InputReference.from_dict(config.input_reference)
            drift = DriftMonitor(reference, self.options.drift_window, self.options.drift_min_images)
        else:
            log.warning("model %s has no input reference: drift gauges stay empty", uri)
        # The alias was resolved to an immutable version: report that, not "champion".
        version = uri.rstrip("/").rsplit("/", 1)[-1] if spec.needs_store else None
        if downloaded is not None:
            version, uri = downloaded
        loaded = LoadedModel(model, config, uri, version, model_dir, drift, time.time())
        size = config.preprocess.image_size
        self._run_model(loaded, torch.zeros(1, 3, size, size, dtype=torch.uint8))  # warm-up
        return loaded

    def _activate(self, loaded: LoadedModel) -> None:
        previous = self._loaded
        self._loaded = loaded  # one reference assignment: the next forward pass uses the new model
        m = self.metrics
        m.model_info.labels(self.name).info(
            {
                "version": loaded.version or "local",
                "arch": loaded.config.arch,
                "torch_version": torch.__version__,
                "uri": loaded.uri,
            }
        )
        m.model_loaded.labels(self.name).set(loaded.loaded_at)
        reference = loaded.drift.reference.channel_mean if loaded.drift else (math.nan,) * 3
        for channel, value in zip(CHANNELS, reference, strict=True):
            m.reference_channel_mean.labels(self.name, channel).set(value)
        log.info(
            "model %s serving %s (%s, %d threads)%s",
            self.name,
            loaded.uri,
            loaded.config.arch,
            self.threads,
            f", replaced {previous.uri}" if previous else "",
        )

    def load(self) -> bool:
        """Load and verify the model; `ready` only turns True if all of that worked."""
        self.ready = False
        torch.set_num_threads(self.threads)
        self._activate(self._load_from_source())
        self.ready = True
        return self.ready

    async def load_with_retries(self) -> None:
        """The first load, in the server's event loop, while the server already answers (not ready).

        An unreachable store is retried with exponential backoff (`PredictorOptions.load_*`), one log
        line per failed attempt; anything else (no such version, checksum mismatch) fails at once,
        and so does the last attempt. `ready` turns True only after download, verification and warm-up.
        """
        waits = self.options.load_waits()
        attempts = len(waits) + 1
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                async with self._reload_lock:  # a POST .../load meanwhile waits for this one
                    loaded = await asyncio.to_thread(self._load_from_source)
                    self._activate(loaded)
                    self.ready = True
                return
            except StoreError as exc:
                if not exc.transient:
                    raise
                if attempt == attempts:
                    raise StoreError(
                        f"gave up loading {self.source.spec!r} after {attempts} attempt{'s' * (attempts > 1)} "
                        f"in {time.monotonic() - started:.0f}s (load_retries={len(waits)}): {exc}"
                    ) from exc
                wait = waits[attempt - 1]
                log.warning(
                    "model %s: loading %r failed (attempt %d/%d), next attempt in %.1fs: %s",
                    self.name,
                    self.source.spec,
                    attempt,
                    attempts,
                    wait,
                    exc,
                )
                await asyncio.sleep(wait)

    async def reload(self) -> bool:
        """Load the source again (the alias may point elsewhere now); True if the model changed.

        Serving goes on with the old model while the new one downloads and warms up; a failed
        reload keeps the old model and raises.
        """
        async with self._reload_lock:
            try:
                spec = parse_model_spec(self.source.spec, self.name)
                if spec.needs_store and self._loaded is not None and self._loaded.version is not None:
                    current = await asyncio.to_thread(self._resolve_version)
                    if current == self._loaded.version:
                        return False
                loaded = await asyncio.to_thread(self._load_from_source)
            except Exception:
                self.metrics.reloads.labels(self.name, "failure").inc()
                raise
            changed = self._loaded is None or loaded.uri != self._loaded.uri or not spec.needs_store
            if changed:
                self._activate(loaded)
                self.metrics.reloads.labels(self.name, "success").inc()
            self.ready = True
            return changed

    def _resolve_version(self) -> str:
        spec = parse_model_spec(self.source.spec, self.name)
        if self.source.store is None:
            raise RuntimeError("a registry model needs a store")
        return Registry.from_config(self.source.store, spec.bucket).resolve(spec.name, spec.ref)

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await self.reload():
                    log.info("model %s: champion changed, now %s", self.name, self.model_uri)
            except Exception as exc:  # keep serving the old model; the metric and the log say why
                log.warning("model %s: reload failed, still serving %s: %s", self.name, self.model_uri, exc)

    def start(self) -> None:
        """KServe's `start` marks the model ready; here only a loaded model is ready (see `load*`)."""
        self.ready = self._loaded is not None

    async def start_engine(self) -> None:
        """KServe calls this inside the server's event loop as the server starts: load the model in the
        background if it is not loaded yet (readiness answers 503 until then), then poll the alias."""
        self._startup_task = asyncio.get_running_loop().create_task(self._start(), name="tsr-load")
        if self.feedback is not None:
            self.feedback.start()

    async def _start(self) -> None:
        if self._loaded is None:
            torch.set_num_threads(self.threads)  # on the loop's (main) thread, as `load` does
            try:
                await self.load_with_retries()
            except Exception as exc:
                # Stop the whole server the way the kubelet would (SIGTERM: graceful shutdown through
                # uvicorn and KServe); `serve` then raises `load_error`, so the process exits non-zero.
                self.load_error = exc
                log.error("model %s: first load failed, stopping the server: %s", self.name, exc)
                signal.raise_signal(signal.SIGTERM)
                return
            # Everything imported and loaded so far lives as long as the process: keep the cyclic GC
            # from re-scanning it (torch + kserve are millions of objects; full collections stall requests).
            gc.freeze()
        interval = self.options.reload_interval_s
        if interval > 0 and parse_model_spec(self.source.spec, self.name).needs_store:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(interval), name="tsr-reload")

    def stop_engine(self) -> None:
        for task in (self._startup_task, self._watch_task):
            if task is not None:
                task.cancel()
        self.batcher.close()
        self.decoder.close()
        if self.feedback is not None:
            self.feedback.stop()  # uploads what is queued, for at most FeedbackConfig.flush_timeout_s
        self.ready = False

    # ---- KServe stages -------------------------------------------------------------------------

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> PreparedBatch:
        size = self.config.preprocess.image_size
        try:
            if isinstance(payload, InferRequest):
                images = await self._decode(plan_v2, payload, size)
                protocol = "v2"
            else:
                content_type = (headers or {}).get("content-type", "")
                if isinstance(payload, bytes) and content_type.startswith(RAW_IMAGE_TYPES):
                    # `curl --data-binary @sign.png -H 'content-type: image/png'`: the body is one image.
                    images = await self._decode(plan_raw_image, payload, size)
                else:
                    if isinstance(payload, bytes | str):
                        # kserve passes the body through undecoded when the content-type is not JSON (curl -d).
                        try:
                            payload = orjson.loads(payload)
                        except orjson.JSONDecodeError as exc:
                            raise Rejected("malformed_json", f"request body is not valid JSON: {exc}") from exc
                    images = await self._decode(plan_v1, payload, size)
                payload, protocol = None, "v1"
        except Rejected as exc:
            if not note_rejection(exc.category):  # gRPC: no HTTP middleware to count it
                self.metrics.rejected.labels(self.name, exc.category).inc()
            raise
        except DecodeOverloaded:
            if not note_rejection("overloaded"):
                self.metrics.rejected.labels(self.name, "overloaded").inc()
            raise
        self.metrics.request_images.labels(self.name, protocol).observe(images.shape[0])
        return PreparedBatch(images=images, protocol=protocol, request=payload)

    async def predict(
        self, payload: PreparedBatch, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> BatchResult:
        probabilities, model = await self.batcher.submit(payload["images"])
        return BatchResult(
            probabilities=probabilities, protocol=payload["protocol"], request=payload["request"], model=model
        )

    async def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> dict[str, Any] | InferResponse:
        probs: torch.Tensor = result["probabilities"]
        model: LoadedModel = result["model"]
        self._count_predictions(probs, model)
        if result["protocol"] == "v2":
            return self._v2_response(probs, result["request"], model)
        return {"predictions": self.describe(probs, model.config.class_names, self.options.top_k)}

    async def _decode(self, planner: Planner, payload: Any, size: int) -> torch.Tensor:
        """Never on the event loop: a few hundred bytes can ask for seconds of decoding (serving/decoding.py)."""
        return await self.decoder.decode(planner, payload, size)

    # ---- forward pass and metrics --------------------------------------------------------------

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, LoadedModel]:
        """Runs in the batcher's thread: one pass of the model current at the start of the pass."""
        loaded = self.loaded
        size = loaded.config.preprocess.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = resize_uint8(images, size)  # decoded for a model with another input size (reload)
        if loaded.drift is not None:
            loaded.drift.update(images)
        probs = self._run_model(loaded, images)
        if self.feedback is not None:  # a random draw per image here; encoding and upload in its own thread
            self.feedback.offer(images, probs, loaded.config.class_names, loaded.version or "local", loaded.uri)
        return probs, loaded

    @staticmethod
    def _run_model(loaded: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> calibrated probabilities (softmax(logits / T), the model config's
        temperature), via the one shared preprocessing path and the one probability function."""
        with torch.inference_mode():
            logits = loaded.model(to_model_input(images, loaded.config.preprocess))
            return probabilities(logits, loaded.config)

    def _observe_batch(self, images: int, waits: list[float]) -> None:
        self.metrics.batch_size.labels(self.name).observe(images)
        queue = self.metrics.queue_seconds.labels(self.name)
        for wait in waits:
            queue.observe(wait)

    def _count_predictions(self, probs: torch.Tensor, model: LoadedModel) -> None:
        version = model.version or "local"
        top_p, top_i = probs.max(dim=1)
        names = model.config.class_names
        counts = torch.bincount(top_i, minlength=len(names)).tolist()
        for class_id, count in enumerate(counts):
            if count:
                self.metrics.predictions.labels(self.name, version, str(class_id), names[class_id]).inc(count)
        confidence = self.metrics.confidence.labels(self.name, version)
        for p in top_p.tolist():
            confidence.observe(p)

    def _export_drift_gauges(self) -> None:
        """Drift gauges are computed when Prometheus scrapes, not on every request."""
        m = self.metrics

        def channel(i: int) -> float:
            snap = self._drift_snapshot()
            return snap.channel_mean[i] if snap is not None and snap.channel_mean is not None else math.nan

        for i, name in enumerate(CHANNELS):
            m.channel_mean.labels(self.name, name).set_function(functools.partial(channel, i))
        m.drift_psi.labels(self.name).set_function(
            lambda: snap.psi if (snap := self._drift_snapshot()) is not None else math.nan
        )
        m.drift_window.labels(self.name).set_function(
            lambda: float(snap.images) if (snap := self._drift_snapshot()) is not None else 0.0
        )

    def _drift_snapshot(self) -> Any:
        loaded = self._loaded
        return loaded.drift.snapshot() if loaded is not None and loaded.drift is not None else None

    # ---- responses -----------------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        """V2 metadata lists the image input; UINT8 [N,H,W,3] and FP32 [N,3,H,W] tensors work too (README)."""
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        if self._loaded is None:  # V2 metadata while the first load runs: 503 like readiness, not a 500
            raise ModelNotReady(self.name)
        k = min(self.options.top_k, self.config.num_classes)
        return [
            {"name": "class_id", "datatype": "INT64", "shape": [-1]},
            {"name": "probability", "datatype": "FP32", "shape": [-1]},
            {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
            {"name": "top_k_class_id", "datatype": "INT64", "shape": [-1, k]},
            {"name": "top_k_probability", "datatype": "FP32", "shape": [-1, k]},
        ]

    @staticmethod
    def describe(probs: torch.Tensor, names: list[str], top_k: int = TOP_K) -> list[dict[str, Any]]:
        k = min(top_k, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        out = []
        for row_p, row_i in zip(top_p.tolist(), top_i.tolist(), strict=True):
            top = [{"class_id": i, "class_name": names[i], "probability": p} for p, i in zip(row_p, row_i, strict=True)]
            out.append({**top[0], "top_k": top})
        return out

    def _v2_response(self, probs: torch.Tensor, request: InferRequest | None, model: LoadedModel) -> InferResponse:
        names = model.config.class_names
        k = min(self.options.top_k, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        class_ids = top_i[:, 0].to(torch.int64).numpy()
        arrays = {
            "class_id": ("INT64", class_ids),
            "probability": ("FP32", top_p[:, 0].to(torch.float32).numpy()),
            "class_name": ("BYTES", np.array([names[i] for i in class_ids], dtype=np.object_)),
            "top_k_class_id": ("INT64", top_i.to(torch.int64).numpy()),
            "top_k_probability": ("FP32", top_p.to(torch.float32).numpy()),
        }
        # gRPC and the REST binary extension want raw bytes; plain REST wants JSON lists.
        binary = bool(request is not None and (request.from_grpc or request.use_binary_outputs))
        outputs = []
        for name, (datatype, array) in arrays.items():
            output = InferOutput(name, list(array.shape), datatype)
            output.set_data_from_numpy(array, binary_data=binary)
            outputs.append(output)
        return InferResponse(
            response_id=(request.id if request is not None and request.id else str(uuid.uuid4())),
            model_name=self.name,
            model_version=model.version,
            infer_outputs=outputs,
            use_binary_outputs=bool(request is not None and request.use_binary_outputs),
            requested_outputs=request.request_outputs if request is not None else None,
        )
