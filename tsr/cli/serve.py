"""Serving: `tsr serve` (the KServe predictor), `tsr predict` (its client) and `tsr backend`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import typer

from serving.config import FeedbackConfig, PredictorOptions, ServeConfig, feedback_config
from tsr.cli import common
from tsr.cli.common import JsonOption, QuietOption, cache_dir, cli_errors, err, fail, model_spec, out, progress
from tsr.core.backend import main as backend_main
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.core.validation import InvalidParameter, check_range, check_registry_name
from tsr.local import ui


@cli_errors(
    renames={
        "uri": "feedback_uri",
        "sample_rate": "feedback_sample_rate",
        "max_per_minute": "feedback_max_per_minute",
        "retention_days": "feedback_retention_days",
        "max_pixels_in_flight": "max_decode_pixels",
        "wait_s": "decode_wait",
        "header_timeout_s": "header_timeout",
        "body_timeout_s": "body_timeout",
    }
)
def serve(
    model: Annotated[str, typer.Option(help="s3://models/<name>/<version> | champion | latest | model directory")],
    http_port: Annotated[
        int, typer.Option(min=1, max=65535, help="HTTP port for V1/V2 endpoints and /metrics")
    ] = ServeConfig.http_port,
    model_name: Annotated[
        str, typer.Option(help="name in the URL and, for champion/latest, in the registry")
    ] = ServeConfig.model_name,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = all cores)")] = ServeConfig.threads,
    grpc_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="also serve V2 over gRPC on this port")
    ] = ServeConfig.grpc_port,
    batch_size: Annotated[
        int, typer.Option(min=1, help="images per forward pass (1 = no batching)")
    ] = ServeConfig.batch_size,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="extra wait for a fuller batch")
    ] = ServeConfig.batch_wait_ms,
    reload_interval: Annotated[
        float, typer.Option(min=0.0, help="seconds between champion checks (0 = off)")
    ] = ServeConfig.reload_interval_s,
    top_k: Annotated[
        int, typer.Option(min=1, help="ranked classes in every answer (capped at the classes)")
    ] = ServeConfig.top_k,
    max_request_bytes: Annotated[
        int, typer.Option(min=1, help="largest HTTP body accepted")
    ] = ServeConfig.max_request_bytes,
    max_request_pixels: Annotated[
        int, typer.Option(min=1, help="pixels of all encoded images in one request, read from their headers")
    ] = ServeConfig.max_request_pixels,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="bytes of one request's request line and headers (431 over it)")
    ] = ServeConfig.max_header_bytes,
    header_timeout: Annotated[
        float, typer.Option(help="seconds to receive a request's headers (408 after)")
    ] = ServeConfig.header_timeout_s,
    body_timeout: Annotated[
        float, typer.Option(help="longest pause in seconds inside a request body (408)")
    ] = ServeConfig.body_timeout_s,
    decode_threads: Annotated[int, typer.Option(min=1, help="image decoding threads")] = ServeConfig.decode_threads,
    max_decode_pixels: Annotated[
        int, typer.Option(min=1, help="pixels being decoded at once in the process (more wait, then 503)")
    ] = ServeConfig.max_decode_pixels,
    decode_wait: Annotated[
        float, typer.Option(min=0.0, help="seconds a request waits for decoding room before a 503")
    ] = ServeConfig.decode_wait_s,
    load_retries: Annotated[
        int, typer.Option(min=0, help="first load: retries while the store is unreachable (0 = exit at once)")
    ] = ServeConfig.load_retries,
    load_backoff: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="seconds before the first load retry, doubled each time "
            f"(max {PredictorOptions.load_backoff_max_s:g})",
        ),
    ] = ServeConfig.load_backoff_s,
    feedback_uri: Annotated[
        str | None, typer.Option(help="log sampled inputs + predictions to s3://bucket/prefix (off by default)")
    ] = None,
    feedback_sample_rate: Annotated[
        float | None, typer.Option(help=f"share of images logged, in (0, 1] (default {FeedbackConfig.sample_rate})")
    ] = None,
    feedback_max_per_minute: Annotated[
        int | None,
        typer.Option(min=1, help=f"at most this many images logged a minute (default {FeedbackConfig.max_per_minute})"),
    ] = None,
    feedback_retention_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"days until logged data expires (bucket lifecycle rule; default {FeedbackConfig.retention_days})",
        ),
    ] = None,
    allow_unsigned: Annotated[
        bool, typer.Option(help="load a version without model.sig (as TSR_ALLOW_UNSIGNED=1; warned on every load)")
    ] = False,
) -> None:
    """Serve a model with the KServe model server (V1 and V2 REST, optional gRPC, /metrics).

    Every argument is checked before the server (or the store) starts.
    """
    spec = model_spec("model", model, model_name)
    common.allow_unsigned(allow_unsigned)
    if grpc_port == http_port:
        raise InvalidParameter("grpc_port", f"{grpc_port} is also the --http-port; use two different ports")

    feedback = feedback_config(feedback_uri, feedback_sample_rate, feedback_max_per_minute, feedback_retention_days)
    cfg = ServeConfig(
        model=model,
        model_name=model_name,
        http_port=http_port,
        grpc_port=grpc_port,
        threads=threads,
        cache_dir=cache_dir(),
        batch_size=batch_size,
        batch_wait_ms=batch_wait_ms,
        reload_interval_s=reload_interval,
        top_k=top_k,
        max_request_bytes=max_request_bytes,
        max_request_pixels=max_request_pixels,
        max_header_bytes=max_header_bytes,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        decode_threads=decode_threads,
        max_decode_pixels=max_decode_pixels,
        decode_wait_s=decode_wait,
        load_retries=load_retries,
        load_backoff_s=load_backoff,
        feedback=feedback,
    )
    # A limit that can never work (max_request_pixels over max_decode_pixels) is refused before anything starts.
    cfg.options()
    cfg.http_limits()
    # Late: kserve and torch take seconds to import; every other command starts without them.
    from serving.server import serve as run_server

    if spec.needs_store or feedback is not None:  # feedback data goes to the registry's store
        with common._store_session() as store:
            run_server(cfg, store)
    else:
        run_server(cfg, None)


@cli_errors()
def backend() -> None:
    """Print which CPU backends torch uses here (oneDNN, ACL on arm64, BLAS, threads) as JSON."""
    backend_main()


@cli_errors()
def predict(
    files: Annotated[
        list[Path],
        typer.Argument(help="image files (PNG, JPEG, PPM; any size)", exists=True, dir_okay=False, readable=True),
    ],
    url: Annotated[
        str, typer.Option(help="the predictor's base URL (tsr serve, a port-forward or an ingress)")
    ] = "http://127.0.0.1:8080",
    model: Annotated[str, typer.Option(help="model name in the URL (the InferenceService name)")] = DEFAULT_MODEL_NAME,
    top_k: Annotated[
        int, typer.Option(min=1, help="classes shown per image (up to the predictor's --top-k)")
    ] = ServeConfig.top_k,
    protocol: Annotated[Literal["v1", "v2"], typer.Option(help="V1 (:predict) or V2 (/infer) REST protocol")] = "v1",
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer (> 0)")] = 60.0,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Send image files to a running predictor and print each file's top-k classes with confidences.

    --json prints one object: url, model, protocol, model_version (V2) and predictions, one per
    file: file, class_id, class_name, probability and top_k (a list of the same three fields).
    """
    # Late: httpx adds about 0.1 s to the start of every command.
    from tsr.local.predict_client import PredictError, predict_files

    _check_http_url("url", url)
    check_registry_name("model", model)
    check_range("timeout", timeout, low=0.0, low_open=True)
    try:
        with progress(as_json, quiet) as activity:
            result = predict_files(
                url, model, files, protocol, top_k, timeout, on_progress=activity.bar(f"predicting via {url}")
            )
    except PredictError as exc:
        fail(str(exc))
    if result.returned_k < top_k:
        err.print(
            f"note: the predictor sent {result.returned_k} classes per image; start it with --top-k {top_k} for more",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )
    if as_json:
        print(json.dumps(result.to_dict()), flush=True)
        return
    version = f" ({result.model_version})" if result.model_version else ""
    out.print(ui.predictions_table([p.to_dict() for p in result.predictions], f"{model}{version} at {url}"))


def _check_http_url(param: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidParameter(param, f"{url!r} is not an http(s)://host[:port] URL")
