"""How the predictor runs: its typed configs, the one place each serving default is written.

`CodecLimits` (request bounds), `BatchingConfig` (dynamic batching), `FeedbackConfig` (feedback data)
and `PredictorOptions` (the rest of the predictor) hold the defaults; `ServeConfig`, the flat config of
one predictor process, takes its defaults from them, and `python -m serving` (argparse), `tsr serve`
(typer) and the InferenceService's port (tsr.kube) take theirs from `ServeConfig`. The Helm chart's
values must stay literal; tests/test_defaults.py holds the ones it shares to these.

No torch, no kserve at import: the `tsr` command line reads these defaults when it starts (serving/__init__.py
imports kserve only when a module of the predictor needs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tsr.core.config import state_dir
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.core.validation import InvalidParameter, check_range, check_s3_uri

TOP_K = 3  # ranked classes in every answer


def default_cache_dir() -> Path:
    return state_dir() / "cache" / "models"


@dataclass(frozen=True)
class CodecLimits:
    """Bounds on one request, so a single client cannot exhaust the predictor's memory."""

    max_batch: int = 256
    max_pixels: int = 4_000_000
    max_image_bytes: int = 16 * 1024 * 1024
    # All encoded images of one request together, read from their headers before any is decoded: a
    # 581-byte palette PNG can declare 2000x2000 pixels, so max_batch small files could otherwise ask
    # for a billion pixels of decoding. Raw tensors are not counted: their pixels are in the body.
    max_request_pixels: int = 16_000_000

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_pixels", "max_image_bytes", "max_request_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidParameter(name, f"must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True)
class DecodeConfig:
    """How the process decodes images: never on the event loop, and never more at once than it can afford.

    Every request's images are decoded in a pool of `threads` worker threads (Pillow releases the GIL
    while it decodes), so health probes and small requests are answered while large ones decode. A request
    first reserves its pixels (from the image headers) out of `max_pixels_in_flight`; when the process is
    already decoding that much, it waits at most `wait_s` for room, then gets a 503 (retry later).
    """

    threads: int = 2
    max_pixels_in_flight: int = 64_000_000
    wait_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("threads", "max_pixels_in_flight"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidParameter(name, f"must be a whole number >= 1, got {value!r}")
        if not math.isfinite(self.wait_s) or self.wait_s < 0:
            raise InvalidParameter("wait_s", f"must be >= 0 seconds, got {self.wait_s}")


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on one HTTP connection, enforced in the HTTP protocol (serving/http.py) before the app runs.

    Without them a client could send a 60 MiB header (read and answered), or hold a connection, and its
    buffers, forever by sending its headers or body a byte every few seconds.
    """

    max_header_bytes: int = 32 * 1024  # request line + all headers -> 431
    header_timeout_s: float = 10.0  # from the first byte (or the connection) to the end of the headers -> 408
    body_timeout_s: float = 30.0  # longest pause between two pieces of a body still expected -> 408

    def __post_init__(self) -> None:
        if not isinstance(self.max_header_bytes, int) or self.max_header_bytes < 1024:
            raise InvalidParameter("max_header_bytes", f"must be a whole number >= 1024, got {self.max_header_bytes!r}")
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InvalidParameter(name, f"must be > 0 seconds, got {value}")


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32  # images per forward pass; a larger request still runs, alone
    max_wait_s: float = 0.002  # extra wait for a fuller batch once the first request is in

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_wait_s < 0:
            raise ValueError(f"batching needs max_batch_size >= 1 and max_wait_s >= 0, got {self}")


@dataclass(frozen=True)
class FeedbackConfig:
    """Where and how much to log; `--feedback-*` flags map onto these."""

    uri: str  # s3://bucket/prefix; the lifecycle rule expires everything under the prefix
    sample_rate: float = 0.05  # share of images stored, in (0, 1]
    max_per_minute: int = 600  # at most this many stored in any 60 s; more are dropped (rate_limited)
    queue_size: int = 256  # images waiting for upload; more are dropped (queue_full)
    retention_days: int = 14  # lifecycle rule: objects under the prefix expire after this many days
    flush_timeout_s: float = 5.0  # on shutdown, how long queued images may still take to upload

    def __post_init__(self) -> None:
        """Refuse values that can never work; `InvalidParameter` names the field."""
        _, prefix = check_s3_uri("uri", self.uri)
        if not prefix:
            # The lifecycle rule would cover the whole bucket and expire everything in it.
            raise InvalidParameter("uri", f"{self.uri!r} needs a prefix (s3://bucket/prefix) of its own")
        if not math.isfinite(self.sample_rate):
            raise InvalidParameter("sample_rate", f"must be in (0, 1], got {self.sample_rate}")
        check_range("sample_rate", self.sample_rate, low=0.0, high=1.0, low_open=True)
        for name in ("max_per_minute", "queue_size", "retention_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidParameter(name, f"must be a whole number, got {value!r}")
            check_range(name, value, low=1)
        if not math.isfinite(self.flush_timeout_s):
            raise InvalidParameter("flush_timeout_s", f"must be >= 0, got {self.flush_timeout_s}")
        check_range("flush_timeout_s", self.flush_timeout_s, low=0.0)

    @property
    def bucket(self) -> str:
        return check_s3_uri("uri", self.uri)[0]

    @property
    def prefix(self) -> str:
        """The object prefix without slashes at either end."""
        return check_s3_uri("uri", self.uri)[1]


def feedback_config(
    uri: str | None,
    sample_rate: float | None = None,
    max_per_minute: int | None = None,
    retention_days: int | None = None,
) -> FeedbackConfig | None:
    """The config from CLI flags (None = not given): None without a URI, and a flag without one is refused."""
    given = {
        name: value
        for name, value in (
            ("sample_rate", sample_rate),
            ("max_per_minute", max_per_minute),
            ("retention_days", retention_days),
        )
        if value is not None
    }
    if uri is None:
        if given:
            raise InvalidParameter(next(iter(given)), "needs --feedback-uri (feedback logging is off without it)")
        return None
    return FeedbackConfig(uri, **given)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PredictorOptions:
    """How the predictor runs; `tsr serve` / `python -m serving` flags map onto these one to one."""

    limits: CodecLimits = field(default_factory=CodecLimits)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    threads: int = 0  # torch intra-op threads; 0 = every core this process may use
    reload_interval_s: float = 0.0  # poll the registry alias this often; 0 = only on POST .../load
    drift_window: int = 1000  # images in the rolling drift window
    drift_min_images: int = 100  # PSI is NaN until the window holds this many
    top_k: int = TOP_K  # ranked classes in every answer (V1 top_k, V2 top_k_* outputs); capped at the class count
    feedback: FeedbackConfig | None = None  # store sampled inputs + predictions (serving/feedback.py); off by default
    # The first load, when the store is unreachable (MinIO still starting, a network blip): this many
    # more attempts, waiting load_backoff_s, then twice that, ... (at most load_backoff_max_s) in between.
    # Other failures (no such version, checksum mismatch) are not retried. 5 retries wait 1+2+4+8+16 s.
    load_retries: int = 5
    load_backoff_s: float = 1.0
    load_backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.load_retries < 0 or self.load_backoff_s < 0 or self.load_backoff_max_s < 0:
            raise ValueError("load_retries, load_backoff_s and load_backoff_max_s must be >= 0")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.limits.max_request_pixels > self.decode.max_pixels_in_flight:
            # Such a request could never get its pixels reserved: every one would wait, then 503.
            raise InvalidParameter(
                "max_request_pixels",
                f"{self.limits.max_request_pixels} is more than max_decode_pixels="
                f"{self.decode.max_pixels_in_flight}, so a request at the limit could never be decoded",
            )

    def load_waits(self) -> list[float]:
        """The waits before each retry: exponential, capped, `load_retries` of them."""
        return [min(self.load_backoff_s * 2**i, self.load_backoff_max_s) for i in range(self.load_retries)]


@dataclass
class ServeConfig:
    """Everything `serve` needs; the CLI and `python -m serving` both build one of these.

    A field that `options()` hands on takes its default from the config it goes to; the others (the
    process's own: name, ports, cache, HTTP body limit) are written here.
    """

    model: str
    model_name: str = DEFAULT_MODEL_NAME
    http_port: int = 8080
    grpc_port: int | None = None  # None: gRPC disabled
    threads: int = PredictorOptions.threads  # torch intra-op threads; 0 = every core this process may use
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_batch: int = CodecLimits.max_batch  # images in one request
    max_pixels: int = CodecLimits.max_pixels  # pixels in one image (checked before it is decoded)
    max_image_bytes: int = CodecLimits.max_image_bytes  # encoded bytes of one image
    max_request_pixels: int = CodecLimits.max_request_pixels  # all encoded images of one request (from headers)
    max_request_bytes: int = 64 * 1024 * 1024  # one HTTP body (checked before it is parsed)
    max_header_bytes: int = HttpLimits.max_header_bytes  # request line + headers of one HTTP request
    header_timeout_s: float = HttpLimits.header_timeout_s  # to receive a request's headers
    body_timeout_s: float = HttpLimits.body_timeout_s  # longest pause inside a request body
    decode_threads: int = DecodeConfig.threads  # image decoding threads (never the event loop)
    max_decode_pixels: int = DecodeConfig.max_pixels_in_flight  # pixels being decoded at once, process-wide
    decode_wait_s: float = DecodeConfig.wait_s  # wait for decoding room before a 503
    batch_size: int = BatchingConfig.max_batch_size  # images per forward pass when batched; 1 = no batching
    batch_wait_ms: float = BatchingConfig.max_wait_s * 1000  # extra wait for a fuller batch
    reload_interval_s: float = PredictorOptions.reload_interval_s  # poll the registry alias; 0 = only on request
    drift_window: int = PredictorOptions.drift_window
    drift_min_images: int = PredictorOptions.drift_min_images
    top_k: int = PredictorOptions.top_k  # ranked classes in every answer
    load_retries: int = PredictorOptions.load_retries  # first load: retries while the store is unreachable
    load_backoff_s: float = PredictorOptions.load_backoff_s  # wait before the first retry, doubled each time
    feedback: FeedbackConfig | None = None  # log sampled inputs + predictions to s3:// (off by default)

    def limits(self) -> CodecLimits:
        return CodecLimits(
            max_batch=self.max_batch,
            max_pixels=self.max_pixels,
            max_image_bytes=self.max_image_bytes,
            max_request_pixels=self.max_request_pixels,
        )

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_header_bytes=self.max_header_bytes,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
        )

    def decode(self) -> DecodeConfig:
        return DecodeConfig(
            threads=self.decode_threads, max_pixels_in_flight=self.max_decode_pixels, wait_s=self.decode_wait_s
        )

    def options(self) -> PredictorOptions:
        return PredictorOptions(
            limits=self.limits(),
            decode=self.decode(),
            batching=BatchingConfig(max_batch_size=self.batch_size, max_wait_s=self.batch_wait_ms / 1000),
            threads=self.threads,
            reload_interval_s=self.reload_interval_s,
            drift_window=self.drift_window,
            drift_min_images=self.drift_min_images,
            top_k=self.top_k,
            load_retries=self.load_retries,
            load_backoff_s=self.load_backoff_s,
            feedback=self.feedback,
        )
