"""The predictor's own Prometheus metrics, beside KServe's `request_*_seconds` histograms.

Labels stay low-cardinality: the served model name, its registry version, and closed sets
(43 classes, three channels, fixed lists of rejection and feedback-drop reasons). A client-chosen string
(an unknown model name, say) never becomes a label value.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

# Why a request was refused; `reason` label values (README: "Metrics").
REJECTION_REASONS = (
    "malformed_json",  # body is not JSON / not the protocol's shape
    "bad_shape",  # tensor shape does not fit (H, W, 3) / (3, H, W) or disagrees with its data
    "bad_dtype",  # unsupported datatype, non-numeric values, values out of range
    "undecodable_image",  # bytes that are not PNG/JPEG/PPM, or invalid base64
    "empty_batch",  # zero images
    "batch_too_large",  # more images than max_batch
    "image_too_large",  # more pixels (or bytes) than max_pixels / max_image_bytes
    "request_too_large",  # the encoded images of one request declare more than max_request_pixels
    "body_too_large",  # request body over max_request_bytes (HTTP 413)
    "unknown_model",  # a model name this server does not serve, or that cannot be one (HTTP 404)
    "method_not_allowed",  # e.g. GET on a POST-only inference route (HTTP 405)
    "header_too_large",  # request line + headers over max_header_bytes (HTTP 431)
    "request_timeout",  # headers or body not received within header_timeout_s / body_timeout_s (HTTP 408)
    "invalid_http",  # not parseable as HTTP/1.1 (e.g. a space in the URL) (HTTP 400)
    "overloaded",  # the process was decoding max_decode_pixels already for decode_wait_s (HTTP 503)
    "bad_request",  # any other client mistake
)
CHANNELS = ("red", "green", "blue")
# Why a sampled-for-feedback input was not stored (serving/feedback.py); `reason` label values.
FEEDBACK_DROP_REASONS = (
    "sampled_out",  # not drawn by --feedback-sample-rate (the usual case)
    "queue_full",  # the upload queue was full: uploads are slower than traffic
    "rate_limited",  # over --feedback-max-per-minute
    "upload_error",  # the store refused or could not be reached
)

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class PredictorMetrics:
    """Every metric the predictor exports; one instance per registry."""

    predictions: Counter
    confidence: Histogram
    request_images: Histogram
    batch_size: Histogram
    queue_seconds: Histogram
    request_seconds: Histogram
    rejected: Counter
    model_info: Info
    model_loaded: Gauge
    reloads: Counter
    channel_mean: Gauge
    reference_channel_mean: Gauge
    drift_psi: Gauge
    drift_window: Gauge
    feedback_logged: Counter
    feedback_dropped: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PredictorMetrics:
        r = registry
        return cls(
            predictions=Counter(
                "tsr_predictions",
                "Top-1 predictions served, by predicted class",
                ["model", "version", "class_id", "class_name"],
                registry=r,
            ),
            confidence=Histogram(
                "tsr_prediction_confidence",
                "Top-1 calibrated probability (softmax(logits / T)) of each prediction",
                ["model", "version"],
                buckets=CONFIDENCE_BUCKETS,
                registry=r,
            ),
            request_images=Histogram(
                "tsr_request_images",
                "Images per inference request (what the client sent)",
                ["model", "protocol"],
                buckets=IMAGES_BUCKETS,
                registry=r,
            ),
            batch_size=Histogram(
                "tsr_inference_batch_size",
                "Images per forward pass after in-process batching",
                ["model"],
                buckets=IMAGES_BUCKETS,
                registry=r,
            ),
            queue_seconds=Histogram(
                "tsr_batch_queue_seconds",
                "Time a request waited for its batch to start",
                ["model"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            request_seconds=Histogram(
                "tsr_request_duration_seconds",
                "End-to-end HTTP inference request latency, by protocol and status code",
                ["model", "protocol", "code"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            rejected=Counter(
                "tsr_requests_rejected",
                "Inference requests refused as the client's mistake, by reason",
                ["model", "reason"],
                registry=r,
            ),
            model_info=Info(
                "tsr_model",
                "The model being served: registry version, architecture, torch version",
                ["model"],
                registry=r,
            ),
            model_loaded=Gauge(
                "tsr_model_loaded_timestamp_seconds",
                "Unix time the served model was loaded (changes on hot reload)",
                ["model"],
                registry=r,
            ),
            reloads=Counter(
                "tsr_model_reloads",
                "Model reloads: success = a new model serves, failure = the previous one still does",
                ["model", "result"],
                registry=r,
            ),
            channel_mean=Gauge(
                "tsr_input_channel_mean",
                "Mean brightness (0..1) per channel of the last window of input images",
                ["model", "channel"],
                registry=r,
            ),
            reference_channel_mean=Gauge(
                "tsr_input_reference_channel_mean",
                "Mean brightness (0..1) per channel of the training data (from the data card)",
                ["model", "channel"],
                registry=r,
            ),
            drift_psi=Gauge(
                "tsr_input_drift_psi",
                "Population stability index of input brightness vs training (NaN until the window fills)",
                ["model"],
                registry=r,
            ),
            drift_window=Gauge(
                "tsr_input_drift_window_images",
                "Input images in the rolling drift window",
                ["model"],
                registry=r,
            ),
            feedback_logged=Counter(
                "tsr_feedback_logged",
                "Input images stored with their prediction as feedback data",
                ["model"],
                registry=r,
            ),
            feedback_dropped=Counter(
                "tsr_feedback_dropped",
                "Input images not stored as feedback data, by reason",
                ["model", "reason"],
                registry=r,
            ),
        )


@cache
def default_metrics() -> PredictorMetrics:
    """The metrics on prometheus-client's global registry, which KServe's /metrics exposes."""
    return PredictorMetrics.create(REGISTRY)
