"""`python -m serving --model X [--model-name N] [--http-port P] [...]` (the container entrypoint; --help lists all)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serving.config import FeedbackConfig, ServeConfig, feedback_config
from tsr.core.validation import InvalidParameter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, with ServeConfig's defaults (serving/config.py imports neither torch nor kserve)."""
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--model", required=True, help="s3://models/<name>/<version> | champion | latest | directory")
    parser.add_argument("--model-name", default=ServeConfig.model_name, help="name in the URL and in the registry")
    parser.add_argument("--http-port", type=int, default=ServeConfig.http_port)
    parser.add_argument(
        "--grpc-port", type=int, default=ServeConfig.grpc_port, help="enable gRPC on this port (off by default)"
    )
    parser.add_argument("--threads", type=int, default=ServeConfig.threads, help="torch threads (0 = all cores)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where registry downloads are kept")
    parser.add_argument("--max-batch", type=int, default=ServeConfig.max_batch, help="images in one request")
    parser.add_argument("--max-pixels", type=int, default=ServeConfig.max_pixels, help="pixels in one image")
    parser.add_argument(
        "--max-image-bytes", type=int, default=ServeConfig.max_image_bytes, help="encoded bytes of one image"
    )
    parser.add_argument(
        "--max-request-pixels",
        type=int,
        default=ServeConfig.max_request_pixels,
        help="pixels of all encoded images in one request, read from their headers before decoding",
    )
    parser.add_argument(
        "--max-request-bytes", type=int, default=ServeConfig.max_request_bytes, help="bytes in one HTTP body"
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=ServeConfig.max_header_bytes,
        help="bytes of one request's request line and headers (431 over it)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=ServeConfig.header_timeout_s,
        help="seconds to receive a request's headers (408 after)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=ServeConfig.body_timeout_s,
        help="longest pause in seconds inside a request body (408 after)",
    )
    parser.add_argument("--decode-threads", type=int, default=ServeConfig.decode_threads, help="image decoding threads")
    parser.add_argument(
        "--max-decode-pixels",
        type=int,
        default=ServeConfig.max_decode_pixels,
        help="pixels being decoded at once in the whole process (more wait, then 503)",
    )
    parser.add_argument(
        "--decode-wait",
        type=float,
        default=ServeConfig.decode_wait_s,
        help="seconds a request waits for decoding room before a 503",
    )
    parser.add_argument(
        "--batch-size", type=int, default=ServeConfig.batch_size, help="images per forward pass (1 = no batching)"
    )
    parser.add_argument(
        "--batch-wait-ms", type=float, default=ServeConfig.batch_wait_ms, help="extra wait for a fuller batch"
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=ServeConfig.reload_interval_s,
        help="seconds between registry alias checks (0 = off)",
    )
    parser.add_argument(
        "--drift-window", type=int, default=ServeConfig.drift_window, help="images in the rolling drift window"
    )
    parser.add_argument(
        "--top-k", type=int, default=ServeConfig.top_k, help="ranked classes in every answer (capped at the classes)"
    )
    parser.add_argument(
        "--load-retries",
        type=int,
        default=ServeConfig.load_retries,
        help="first load: retries while the store is unreachable (0 = none)",
    )
    parser.add_argument(
        "--load-backoff",
        type=float,
        default=ServeConfig.load_backoff_s,
        help="seconds before the first load retry, doubled each time",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="load a model version without model.sig (as TSR_ALLOW_UNSIGNED=1; a warning on every load)",
    )
    feedback = parser.add_argument_group("feedback data (off unless --feedback-uri is given; serving/README.md)")
    feedback.add_argument("--feedback-uri", default=None, help="log sampled inputs + predictions to s3://bucket/prefix")
    feedback.add_argument(
        "--feedback-sample-rate",
        type=float,
        default=None,
        help=f"share of images logged, in (0, 1] (default {FeedbackConfig.sample_rate})",
    )
    feedback.add_argument(
        "--feedback-max-per-minute",
        type=int,
        default=None,
        help=f"most images logged a minute (default {FeedbackConfig.max_per_minute})",
    )
    feedback.add_argument(
        "--feedback-retention-days",
        type=int,
        default=None,
        help=f"days until logged data expires (default {FeedbackConfig.retention_days})",
    )
    args = parser.parse_args(argv)
    # Checked here so a bad value is a usage error (exit 2) naming the flag, before anything starts.
    try:
        args.feedback = feedback_config(
            args.feedback_uri, args.feedback_sample_rate, args.feedback_max_per_minute, args.feedback_retention_days
        )
    except InvalidParameter as exc:
        parser.error(f"argument --feedback-{exc.param.replace('_', '-')}: {exc.reason}")
    if args.top_k < 1:
        parser.error(f"argument --top-k: must be >= 1, got {args.top_k}")
    try:
        config_from_args(args).options()
        config_from_args(args).http_limits()
    except InvalidParameter as exc:
        parser.error(f"argument {_FLAGS.get(exc.param, exc.param)}: {exc.reason}")
    return args


# The config fields whose names differ from their flags, for error messages.
_FLAGS = {
    "max_batch": "--max-batch",
    "max_pixels": "--max-pixels",
    "max_image_bytes": "--max-image-bytes",
    "max_request_pixels": "--max-request-pixels",
    "threads": "--decode-threads",
    "max_pixels_in_flight": "--max-decode-pixels",
    "wait_s": "--decode-wait",
    "max_header_bytes": "--max-header-bytes",
    "header_timeout_s": "--header-timeout",
    "body_timeout_s": "--body-timeout",
}


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    cfg = ServeConfig(
        model=args.model,
        model_name=args.model_name,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        threads=args.threads,
        max_batch=args.max_batch,
        max_pixels=args.max_pixels,
        max_image_bytes=args.max_image_bytes,
        max_request_pixels=args.max_request_pixels,
        max_request_bytes=args.max_request_bytes,
        max_header_bytes=args.max_header_bytes,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        decode_threads=args.decode_threads,
        max_decode_pixels=args.max_decode_pixels,
        decode_wait_s=args.decode_wait,
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms,
        reload_interval_s=args.reload_interval,
        drift_window=args.drift_window,
        drift_min_images=min(ServeConfig.drift_min_images, args.drift_window),
        top_k=args.top_k,
        load_retries=args.load_retries,
        load_backoff_s=args.load_backoff,
        feedback=args.feedback,
    )
    if args.cache_dir is not None:
        cfg.cache_dir = args.cache_dir
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported late so a bad flag is reported before torch and the model are loaded.
    from serving.server import serve
    from tsr.core.config import explicit_store_config
    from tsr.core.registry import RegistryError, parse_model_spec
    from tsr.core.signing import ENV_ALLOW_UNSIGNED
    from tsr.core.store import StoreError

    cfg = config_from_args(args)
    if args.allow_unsigned:  # read by tsr.core.signing.Trust.from_env at every load (reloads too)
        os.environ[ENV_ALLOW_UNSIGNED] = "1"
    try:
        spec = parse_model_spec(args.model, args.model_name)
        store = None
        if spec.needs_store or cfg.feedback is not None:  # feedback goes to the registry's store
            # The process entry point of the image: the store comes from the environment (or TSR_CONFIG).
            # Starting the embedded MinIO is the local tooling's job (`tsr serve`), not the predictor's.
            store = explicit_store_config()
            if store is None:
                raise ValueError(
                    f"--model {args.model} needs an object store: set TSR_S3_ENDPOINT/TSR_S3_ACCESS_KEY/"
                    "TSR_S3_SECRET_KEY (or TSR_STORE_DIR), or run `tsr serve`, which starts the embedded MinIO"
                )
        serve(cfg, store)
    except (ValueError, FileNotFoundError, RegistryError, StoreError) as exc:
        # A missing, unreadable or tampered model: one line and exit code 2, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
