"""Start the KServe model server for one TSR predictor.

kserve's `model_server` module parses `sys.argv` at import time and uses the result as
constructor defaults; every ModelServer argument is therefore passed explicitly here, so
what `tsr serve` or `python -m serving` was given is what runs, whatever else is on argv.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kserve import ModelServer
from kserve.constants.constants import KSERVE_TLS_CERT_FILE_ENV, KSERVE_TLS_KEY_FILE_ENV
from kserve.predictor_config import PredictorConfig

from serving.codec import CodecLimits
from serving.predictor import ModelSource, TSRPredictor, default_cache_dir
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
    grpc_port: int | None = None  # None: gRPC disabled (the V1/V2 REST endpoints are the contract)
    threads: int = 0  # torch intra-op threads; 0 = every core this process may use
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_batch: int = 256
    max_pixels: int = 4_000_000

    def limits(self) -> CodecLimits:
        return CodecLimits(max_batch=self.max_batch, max_pixels=self.max_pixels)


def build_predictor(cfg: ServeConfig, store: StoreConfig | None) -> TSRPredictor:
    return TSRPredictor(
        cfg.model_name,
        ModelSource(spec=cfg.model, store=store, cache_dir=cfg.cache_dir),
        limits=cfg.limits(),
        threads=cfg.threads,
    )


def serve(cfg: ServeConfig, store: StoreConfig | None) -> None:
    """Load (and verify) the model first, then serve until SIGINT/SIGTERM.

    Loading before the server starts means a bad model or checksum fails the process at
    once instead of leaving a pod that answers /ready with 503 forever.
    """
    predictor = build_predictor(cfg, store)
    predictor.load()
    server = ModelServer(
        http_port=cfg.http_port,
        grpc_port=cfg.grpc_port if cfg.grpc_port is not None else _UNUSED_GRPC_PORT,
        enable_grpc=cfg.grpc_port is not None,
        workers=1,
        max_threads=4,
        max_asyncio_workers=None,
        enable_docs_url=False,
        enable_latency_logging=True,
        access_log_format=None,
        event_loop="auto",
        timeout_keep_alive=65,
        grace_period=30,
        predictor_config=PredictorConfig(predictor_host=""),
        ssl_certfile=os.environ.get(KSERVE_TLS_CERT_FILE_ENV),
        ssl_keyfile=os.environ.get(KSERVE_TLS_KEY_FILE_ENV),
    )
    server.start([predictor])
