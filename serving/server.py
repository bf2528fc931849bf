"""Start the KServe model server for one TSR predictor.

kserve's `model_server` module parses `sys.argv` at import time and uses the result as
constructor defaults; every ModelServer argument is therefore passed explicitly here, so
what `tsr serve` or `python -m serving` was given is what runs, whatever else is on argv.

The HTTP server starts before the model is loaded: the predictor is registered not ready and
loads in the background (retrying an unreachable store), so liveness answers at once while
every readiness endpoint, V1 `/v1/models/<name>` included, answers 503 until the model is
loaded, verified and warmed up. KServe 0.21 would refuse to start without a ready model and
answers `/v2/health/ready` with 200 unconditionally; `TSRModelServer` changes both.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import prometheus_client
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve import ModelServer
from kserve.constants.constants import KSERVE_TLS_CERT_FILE_ENV, KSERVE_TLS_KEY_FILE_ENV
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady
from kserve.logging import KSERVE_LOGGER_DATE_FORMAT, KSERVE_LOGGER_FORMAT
from kserve.model import BaseKServeModel
from kserve.model_repository import ModelRepository
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.config import HttpLimits, ServeConfig
from serving.decoding import DecodeOverloaded
from serving.guard import RequestGuard, note_rejection, validation_error_handler
from serving.http import guarded_protocol
from serving.monitoring.metrics import PredictorMetrics, default_metrics
from serving.predictor import ModelSource, TSRPredictor
from tsr.core.config import StoreConfig

# kserve's default gRPC port, used only when gRPC is switched on without a port.
_UNUSED_GRPC_PORT = 8081


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
        try:
            await model.reload()
        except Exception as exc:  # KServe answers 503 with the message; the log says what still serves
            logging.getLogger("serving.predictor").warning(
                "model %s: reload failed, still serving %s: %s", name, model.model_uri, exc
            )
            raise
        return model.ready


class ReadinessDataPlane(DataPlane):
    """`/v2/health/ready` (and gRPC ServerReady): KServe answers True as soon as the server runs;
    here only once every registered model is loaded."""

    async def ready(self) -> bool:
        models = self.model_registry.get_models().values()
        return bool(models) and all(model.ready for model in models)


class TSRModelServer(ModelServer):
    """KServe's ModelServer, able to start before its model is loaded (see the module docstring),
    whose HTTP connections have header size and read time limits (serving/http.py)."""

    def __init__(self, http_protocol: type | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataplane = ReadinessDataPlane(model_registry=self.registered_models)
        self.http_protocol = http_protocol

    def setup_event_loop(self) -> None:
        """Called by `start` after it built the REST server and before the server runs: the one point
        where uvicorn's config can still be changed (kserve passes no protocol option through)."""
        super().setup_event_loop()
        rest = getattr(self, "_rest_server", None)
        if self.http_protocol is not None and rest is not None and not rest.config.loaded:
            rest.config.http = self.http_protocol

    def _register_and_check_atleast_one_model_is_ready(self, models: Sequence[BaseKServeModel]) -> None:
        """KServe registers only ready models and refuses to start without one; register them all,
        so the model endpoints answer 503 (not 404) while `start_engine` loads in the background."""
        for model in models:
            self.register_model(model)
            model.start()
            if model.engine:
                self.servers.append(model.start_engine())


class _QuietNotReady(logging.Filter):
    """KServe logs a full traceback for every 503 'not ready' answer, i.e. for every readiness probe
    while the model loads; the load's own log lines already say why."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ModelNotReady | ServerNotReady):
            return False
        if isinstance(exc, InvalidInput | ModelNotFound):
            # A client's mistake: answered 4xx and counted in tsr_requests_rejected_total; one INFO line,
            # not an ERROR with a traceback per bad request (a fuzzing client would flood the log).
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "client error (answered 4xx): %s", (exc,)
        return True


# Every character that could end or forge a log line (C0 controls, DEL, C1 controls, Unicode line breaks).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r"}.get(char, f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


class OneLineFormatter(logging.Formatter):
    """Wraps a handler's formatter so that each record is exactly one line.

    Log lines carry what clients sent (a model name from the URL, a field of a refused request); a
    newline in one (`%0a` in a URL) would write a forged, well-formed line into the log, a NUL would
    break readers. Control characters, tracebacks' newlines included, are written escaped (`\\n`).
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return _CONTROL.sub(_escape, self.inner.format(record))


_LOGGERS = ("", "serving", "tsr", "kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging() -> None:
    """KServe configures only its own loggers; ours (load retries, reloads) get its format on stderr.
    Every handler of the process writes one line per record (`OneLineFormatter`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(KSERVE_LOGGER_FORMAT, KSERVE_LOGGER_DATE_FORMAT))
    for name in ("serving", "tsr"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
    # urllib3 logs each of its connection retries; the predictor logs one line per load attempt instead.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # KServe's per-request timing lines (kserve.trace) repeat what the histograms already say.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    kserve_logger = logging.getLogger("kserve")
    if not any(isinstance(f, _QuietNotReady) for f in kserve_logger.filters):
        kserve_logger.addFilter(_QuietNotReady())
    for name in _LOGGERS:
        for each in logging.getLogger(name).handlers:
            if not isinstance(each.formatter, OneLineFormatter):
                each.setFormatter(OneLineFormatter(each.formatter))


async def http_exception_handler(request: Request, exc: Exception) -> ORJSONResponse:
    """Starlette answers its own errors (no route, method not allowed, a body it cannot parse) with
    `{"detail": ...}`; every error of this server is `{"error": ...}` (README, Errors)."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else str(exc)
    headers = getattr(exc, "headers", None)
    return ORJSONResponse(status_code=status, content={"error": str(detail)}, headers=headers)


async def overloaded_handler(request: Request, exc: Exception) -> ORJSONResponse:
    """A request that found the process's decoding budget taken (serving/decoding.py): 503, retry later."""
    note_rejection("overloaded")
    return ORJSONResponse(status_code=503, content={"error": str(exc)}, headers={"retry-after": "1"})


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
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(DecodeOverloaded, overloaded_handler)


def http_protocol(limits: HttpLimits, model_name: str, metrics: PredictorMetrics) -> type:
    """uvicorn's protocol class for this server: refusals below the app are counted like the others."""

    def count(reason: str) -> None:
        metrics.rejected.labels(model_name, reason).inc()

    return guarded_protocol(limits, count)


def serve(cfg: ServeConfig, store: StoreConfig | None) -> None:
    """Serve until SIGINT/SIGTERM; the model loads in the background once the server runs.

    Readiness stays 503 until the model is loaded. A model that cannot be loaded (no such
    version, checksum mismatch, store still unreachable after `load_retries`) stops the server
    and is raised here, so the process exits non-zero instead of staying up never ready.
    """
    prometheus_client.disable_created_metrics()  # no *_created series: half the series, no information
    metrics = default_metrics()
    predictor = build_predictor(cfg, store)
    repository = TSRModelRepository()
    install_http_guard(cfg, metrics)
    server = TSRModelServer(
        http_protocol=http_protocol(cfg.http_limits(), cfg.model_name, metrics),
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
    configure_logging()  # after ModelServer(), which (re)configures KServe's loggers
    server.start([predictor])
    if predictor.load_error is not None:
        raise predictor.load_error
