"""Start the KServe model server for one TSR predictor.

kserve's `model_server` module parses `sys.argv` at import time and uses the result as
constructor defaults; every ModelServer argument is therefore passed explicitly here, so
what `tsr serve` or `python -m serving` was given is what runs, whatever else is on argv.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import prometheus_client
from fastapi.exceptions import RequestValidationError
from kserve import ModelServer
from kserve.constants.constants import KSERVE_TLS_CERT_FILE_ENV, KSERVE_TLS_KEY_FILE_ENV
from kserve.errors import ModelNotFound
from kserve.model_repository import ModelRepository
from kserve.predictor_config import PredictorConfig

from serving.batcher import BatchingConfig
from serving.codec import CodecLimits
from serving.guard import RequestGuard, validation_error_handler
from serving.monitoring.metrics import PredictorMetrics, default_metrics
from serving.predictor import ModelSource, PredictorOptions, TSRPredictor, default_cache_dir
from tsr.config import StoreConfig
from tsr.registry import DEFAULT_MODEL_NAME

# kserve's default gRPC port, used only when gRPC is switched on without a port.
_UNUSED_GRPC_PORT = 8081


@dataclass
class ServeConfig:
    """Everything `serve` needs; the CLI and `python -m serving` both build one of these."""

    model: str
    model_name: str = DEFAULT_MODEL_NAME
    http_port: int = 8080
    grpc_port: int | None = None  # None: gRPC disabled
    threads: int = 0  # torch intra-op threads; 0 = every core this process may use
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_batch: int = 256  # images in one request
    max_pixels: int = 4_000_000  # pixels in one image (checked before it is decoded)
    max_image_bytes: int = 16 * 1024 * 1024  # encoded bytes of one image
    max_request_bytes: int = 64 * 1024 * 1024  # one HTTP body (checked before it is parsed)
    batch_size: int = 32  # images per forward pass when requests are batched; 1 = no batching
    batch_wait_ms: float = 2.0  # extra wait for a fuller batch
    reload_interval_s: float = 0.0  # poll the registry alias; 0 = reload only on request
    drift_window: int = 1000
    drift_min_images: int = 100

    def limits(self) -> CodecLimits:
        return CodecLimits(max_batch=self.max_batch, max_pixels=self.max_pixels, max_image_bytes=self.max_image_bytes)

    def options(self) -> PredictorOptions:
        return PredictorOptions(
            limits=self.limits(),
            batching=BatchingConfig(max_batch_size=self.batch_size, max_wait_s=self.batch_wait_ms / 1000),
            threads=self.threads,
            reload_interval_s=self.reload_interval_s,
            drift_window=self.drift_window,
            drift_min_images=self.drift_min_images,
        )


def build_predictor(cfg: ServeConfig, store: StoreConfig | None) -> TSRPredictor:
    return TSRPredictor(
        cfg.model_name, ModelSource(spec=cfg.model, store=store, cache_dir=cfg.cache_dir), options=cfg.options()
    )


class TSRModelRepository(ModelRepository):
    """Makes KServe's `POST /v2/repository/models/{name}/load` (and gRPC RepositoryModelLoad) a reload."""

    async def load(self, name: str) -> bool:
        model = self.get_model(name)
        if not isinstance(model, TSRPredictor):
            raise ModelNotFound(name)
        await model.reload()
        return model.ready


def install_http_guard(cfg: ServeConfig, metrics: PredictorMetrics) -> None:
    """Adds the body limit / latency / rejection middleware and a 400 for invalid V2 bodies to KServe's app."""
    from kserve.model_server import app  # the FastAPI app KServe's REST server runs

    if not any(m.cls is RequestGuard for m in app.user_middleware):
        app.add_middleware(
            RequestGuard,  # type: ignore[arg-type]
            model_name=cfg.model_name,
            max_request_bytes=cfg.max_request_bytes,
            metrics=metrics,
        )
    app.add_exception_handler(RequestValidationError, validation_error_handler)


def serve(cfg: ServeConfig, store: StoreConfig | None) -> None:
    """Load (and verify) the model first, then serve until SIGINT/SIGTERM.

    Loading before the server starts means a bad model or checksum fails the process at
    once instead of leaving a pod that answers /ready with 503 forever.
    """
    # KServe's per-request timing lines (kserve.trace) repeat what the histograms already say.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    prometheus_client.disable_created_metrics()  # no *_created series: half the series, no information
    metrics = default_metrics()
    predictor = build_predictor(cfg, store)
    predictor.load()
    # Everything imported and loaded so far lives as long as the process: keep the cyclic GC
    # from re-scanning it (torch + kserve are millions of objects; full collections stall requests).
    gc.freeze()
    repository = TSRModelRepository()
    install_http_guard(cfg, metrics)
    server = ModelServer(
        http_port=cfg.http_port,
        grpc_port=cfg.grpc_port if cfg.grpc_port is not None else _UNUSED_GRPC_PORT,
        enable_grpc=cfg.grpc_port is not None,
        workers=1,
        max_threads=4,
        max_asyncio_workers=None,
        registered_models=repository,
        enable_docs_url=False,
        enable_latency_logging=False,
        access_log_format=None,
        event_loop="auto",
        timeout_keep_alive=65,
        grace_period=30,
        predictor_config=PredictorConfig(predictor_host=""),
        ssl_certfile=os.environ.get(KSERVE_TLS_CERT_FILE_ENV),
        ssl_keyfile=os.environ.get(KSERVE_TLS_KEY_FILE_ENV),
    )
    server.start([predictor])
