"""`tsr`: the command line. Thin: parse arguments, call the functions the components call."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from tsr.core.config import ConfigError, state_dir
from tsr.core.registry import (
    CHAMPION,
    DEFAULT_MODEL_NAME,
    ModelSpec,
    Registry,
    RegistryError,
    materialize,
    parse_model_spec,
)
from tsr.core.validation import (
    InvalidParameter,
    check_data_source,
    check_existing_dir,
    check_model_ref,
    check_range,
    check_registry_name,
    check_s3_uri,
)
from tsr.local import ui

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the command ran and failed: unreadable or damaged data, no such model version,
     store or cluster unreachable, a pipeline step failed (one line on stderr: error: ...)
  2  usage error: a bad option or argument value (path, URI, range, name), refused
     before any work starts, so nothing is written (stderr: Error: Invalid value for ...)
  3  tsr demo ran to the end but the evaluation gate refused the model
Set TSR_DEBUG=1 to get the Python traceback of a failure instead of the one line."""

# Plain (not rich) rendering keeps every usage error on one line that names the option,
# whatever the terminal width; rich panels wrap long messages across lines.
_TYPER: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(
    help="Traffic-sign recognition platform: pipeline, registry, serving.", epilog=EXIT_CODES_HELP, **_TYPER
)
store_app = typer.Typer(help="The object store (embedded MinIO by default).", **_TYPER)
pipeline_app = typer.Typer(help="Compile or run the KFP training pipeline.", **_TYPER)
models_app = typer.Typer(help="Browse the model registry.", **_TYPER)
prometheus_app = typer.Typer(help="The local Prometheus the demo leaves running.", **_TYPER)
app.add_typer(store_app, name="store")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(models_app, name="models")
app.add_typer(prometheus_app, name="prometheus")

err = Console(stderr=True)
# Wide enough for the demo tables when stdout is a pipe or a log file (rich assumes 80 columns).
out = Console(width=None if sys.stdout.isatty() else 140)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (never wrapped, never read as rich markup), then exit with `code`."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


class _ParameterError(typer.BadParameter):
    """An `InvalidParameter` shown against the option or argument it came from (exit code 2).

    The option is looked up when click prints the error, once it has attached the context.
    """

    def __init__(self, exc: InvalidParameter, name: str) -> None:
        super().__init__(exc.reason)
        self.name = name

    def format_message(self) -> str:
        if self.param_hint is None:
            found = [p for p in self.ctx.command.params if p.name == self.name] if self.ctx is not None else []
            hint = getattr(found[0], "get_error_hint", None) if found else None  # typer's options and arguments
            self.param_hint = hint() if callable(hint) else f"'{self.name}'"
        return super().format_message()


_F = TypeVar("_F", bound=Callable[..., Any])


def cli_errors(renames: Mapping[str, str] | None = None) -> Callable[[_F], _F]:
    """Turn what a command raises into the exit-code convention (EXIT_CODES_HELP), never a traceback.

    `InvalidParameter` becomes a usage error (2) naming the option; `renames` maps a config's
    field name to the command's parameter (data_source -> data). Any other ValueError,
    RuntimeError or OSError (DataError, RegistryError, StoreError, ConfigError, a failed step,
    a full disk) is a runtime failure (1) printed as one line.
    """

    def decorate(func: _F) -> _F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except (typer.Exit, typer.Abort):
                raise
            except InvalidParameter as exc:
                raise _ParameterError(exc, (renames or {}).get(exc.param, exc.param)) from exc
            except (ValueError, RuntimeError, OSError) as exc:
                if os.environ.get("TSR_DEBUG"):
                    raise
                fail(str(exc) or type(exc).__name__)

        return cast(_F, wrapper)

    return decorate


@contextlib.contextmanager
def _as_parameter(param: str) -> Iterator[None]:
    """A ValueError or RegistryError from parsing an argument is a usage error naming `param`."""
    try:
        yield
    except InvalidParameter:
        raise
    except (ValueError, RegistryError) as exc:
        raise InvalidParameter(param, str(exc)) from exc


def _model_spec(param: str, model: str, model_name: str, name_param: str = "model_name") -> ModelSpec:
    """Parse a --model argument without touching the store: a directory, champion/latest or an s3:// URI."""
    check_registry_name(name_param, model_name)
    if "://" not in model and model not in {"champion", "latest"} and Path(model).is_file():
        raise InvalidParameter(param, f"{model} is a file; expected a model directory, champion, latest or s3://")
    if model.startswith("s3://"):
        check_s3_uri(param, model)
    with _as_parameter(param):
        spec = parse_model_spec(model, model_name)
    if spec.directory is None:
        check_model_ref(param, spec.ref)
    elif not (spec.directory / "config.json").is_file():
        raise InvalidParameter(param, f"{model} is not a model directory (no config.json)")
    return spec


def _registry_ref(param: str, ref: str) -> None:
    """A deploy/rollback target: an s3:// version URI, champion, latest or a version id."""
    if ref.startswith("s3://"):
        check_s3_uri(param, ref)
    elif "://" in ref:
        raise InvalidParameter(param, f"{ref!r}: unknown URI scheme (use s3://, a version id, champion or latest)")
    else:
        check_model_ref(param, ref)


def _store_session() -> Any:
    from tsr.local.minio_server import store_session

    return store_session()


def _cache_dir() -> Path:
    return state_dir() / "cache" / "models"


JsonOption = Annotated[
    bool, typer.Option("--json", help="print exactly one JSON document on stdout (no table, no progress bars)")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or spinners on stderr")]


def _activity(as_json: bool = False, quiet: bool = False) -> ui.Activity:
    """Progress on stderr for a person at a terminal; none in a pipe or with --json/--quiet (tsr.local.ui)."""
    return ui.Activity(err, ui.progress_enabled(err, quiet=quiet, as_json=as_json))


@contextlib.contextmanager
def _pipeline_output(activity: ui.Activity, echo: bool) -> Iterator[tuple[ui.PipelineWatcher, Path]]:
    """kfp.local prints every step's output on stdout: send it to a log file in the state dir (and to
    stderr when `echo`) and the steps to the progress display, so that stdout holds the result alone."""
    path = state_dir() / "kfp-local" / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    err.print(f"step logs: {path}", style="dim", markup=False, highlight=False, soft_wrap=True)
    with path.open("w", encoding="utf-8") as log:
        watcher = ui.PipelineWatcher(activity, log, sys.stderr if echo else None)
        with contextlib.redirect_stdout(watcher):
            yield watcher, path


# ---- store -----------------------------------------------------------------------------------------
@store_app.command("start")
@cli_errors()
def store_start() -> None:
    """Start the embedded MinIO (if no store is configured) and print its environment variables."""
    from tsr.core.config import explicit_store_config
    from tsr.local.minio_server import local_minio

    explicit = explicit_store_config()
    if explicit is not None:
        out.print(f"a store is configured ({explicit.origin}): {explicit.describe()}; nothing to start")
        return
    server = local_minio()
    config = server.running() or server.start()
    err.print(f"MinIO running: {config.describe()} (data {server.data_dir})")
    for key, value in config.env().items():
        out.print(f"export {key}={value}", markup=False, highlight=False)


@store_app.command("upload")
@cli_errors()
def store_upload(
    source: Annotated[Path, typer.Argument(help="a directory, or a .tar / .tar.gz / .tgz archive (extracted first)")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix (the bucket is created if needed)")],
    workers: Annotated[int, typer.Option(help="objects uploaded in parallel")] = 8,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Upload a dataset to the store, keeping relative paths: the data_source of a cluster run."""
    from tsr.local.upload import check_upload_args, upload_tree

    check_upload_args(source, dest, workers)
    with _store_session() as store, _activity(as_json, quiet) as activity:
        result = upload_tree(source, dest, store, workers=workers, on_progress=activity.bar("upload files", "items"))
    if as_json:
        print(json.dumps(dataclasses.asdict(result)))
        return
    rate = result.files / result.seconds if result.seconds else 0.0
    err.print(f"uploaded {result.files} files ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s ({rate:.0f}/s)")
    print(result.uri)


@store_app.command("stop")
@cli_errors()
def store_stop() -> None:
    """Stop the embedded MinIO."""
    from tsr.local.minio_server import local_minio

    local_minio().stop()
    err.print("embedded MinIO stopped")


@prometheus_app.command("stop")
@cli_errors()
def prometheus_stop() -> None:
    """Stop the Prometheus that `tsr demo` left running (state in <state>/prometheus)."""
    from tsr.local.prometheus_server import stop_recorded

    stopped = stop_recorded(state_dir() / "prometheus")
    err.print("local Prometheus stopped" if stopped else "no local Prometheus was running")


# ---- data, training, evaluation ---------------------------------------------------------------------
@app.command()
@cli_errors()
def ingest(
    source: Annotated[str, typer.Option(help="GTSRB/ImageFolder directory or s3://bucket/prefix")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="where to write the dataset: absent, empty or a previous ingest output")
    ],
    layout: Literal["auto", "gtsrb", "imagefolder"] = "auto",
    val_fraction: Annotated[float, typer.Option(help="share of tracks held out, in (0, 1)")] = 0.2,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    max_groups_per_class: Annotated[int, typer.Option(min=0, help="keep N tracks per class (0 = all)")] = 0,
    download: Annotated[bool, typer.Option(help="fetch GTSRB with torchvision's downloader")] = False,
    skip_corrupt: Annotated[
        bool, typer.Option(help="leave out unreadable images (counted and named in the data card) instead of failing")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Read and split a data source into uint8 tensors plus a data card (what the ingest step does).

    All or nothing: on any error the output directory is left as it was. Prints a summary table,
    or with --json one object: the data card's totals plus out, source, layout, num_classes,
    skipped and fingerprint (sha256 of every image file).
    """
    from components.ingest.ingest import IngestConfig
    from components.ingest.ingest import ingest as run_ingest
    from tsr.core.dataset import OUTPUT_FILES
    from tsr.core.validation import check_output_dir

    config = IngestConfig(
        source,
        layout,
        "train",
        val_fraction,
        seed,
        max_groups_per_class=max_groups_per_class,
        download=download,
        skip_corrupt=skip_corrupt,
    )
    check_data_source("source", source, must_exist=not download)
    check_output_dir("out_dir", out_dir, OUTPUT_FILES)
    with _activity(as_json, quiet) as activity, activity.step(f"ingest {source} -> {out_dir}"):
        reading = activity.bar("reading images")
        fetching = activity.bar("downloading GTSRB", "bytes") if download else activity.bar(f"copying {source}")
        if source.startswith("s3://"):
            with _store_session() as store:
                card = run_ingest(config, out_dir, store, reading, fetching)
        else:
            card = run_ingest(config, out_dir, None, reading, fetching)
    fingerprint = card["fingerprint"]["value"]
    summary = {
        **card["totals"],
        "out": str(out_dir),
        "source": source,
        "layout": card["layout"],
        "num_classes": card["num_classes"],
        "skipped": card["skipped_images"]["count"],
        "fingerprint": fingerprint,
    }
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    totals = card["totals"]
    skipped = summary["skipped"]
    out.print(
        ui.key_value_table(
            [
                ("dataset", f"{out_dir} (data card: {out_dir / 'data-card.json'})"),
                ("source", f"{source} ({card['layout']} layout, split {card['split_strategy']})"),
                ("images", f"{totals['images']:,} in {card['num_classes']} classes, {card['image_size']} px"),
                ("train", f"{totals['train']:,} images, {totals['train_groups']:,} tracks"),
                ("validation", f"{totals['val']:,} images, {totals['val_groups']:,} tracks"),
                ("skipped", Text(f"{skipped} unreadable", style="yellow") if skipped else "none"),
                ("sha256", fingerprint),
            ],
            title="ingest",
        )
    )


@app.command()
@cli_errors()
def evaluate(
    model: Annotated[str, typer.Option(help="s3://models/<name>/<version> | champion | latest | model directory")],
    data: Annotated[str, typer.Option(help="directory in GTSRB (or ImageFolder) layout, or s3://bucket/prefix")],
    split: Literal["test", "train"] = "test",
    model_name: Annotated[str, typer.Option(help="registry name used with champion/latest")] = DEFAULT_MODEL_NAME,
    per_class: Annotated[bool, typer.Option(help="include per-class accuracy in the JSON")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON line on stdout (the default)")] = False,
    table: Annotated[bool, typer.Option("--table", help="a table for people instead of the JSON line")] = False,
    quiet: QuietOption = False,
) -> None:
    """Evaluate a model on a data split; prints one JSON line with accuracy, macro_f1 and n.

    The JSON line is the default (scripts rely on it); --table shows the same numbers as a table.
    """
    from components.evaluate.evaluate import evaluate_model
    from tsr.core.dataset import DataError
    from tsr.core.models import load_model_dir
    from tsr.core.sources import read_source
    from tsr.core.store import StoreError

    spec = _model_spec("model", model, model_name)
    check_data_source("data", data, must_exist=True)
    if as_json and table:
        raise InvalidParameter("table", "--table and --json exclude each other")
    try:
        with _activity(as_json, quiet) as activity:
            with contextlib.ExitStack() as stack:  # the store only while the model and data are fetched
                store = stack.enter_context(_store_session()) if spec.needs_store or data.startswith("s3://") else None
                with activity.step(f"model {model}"):
                    model_dir, uri = materialize(spec, store, _cache_dir())
                    loaded, config = load_model_dir(model_dir)
                reading = activity.bar(f"reading {split} images")
                data_split, _ = read_source(data, split, config.preprocess.image_size, store, on_progress=reading)
            with activity.step(f"evaluating {len(data_split):,} images"):
                metrics = evaluate_model(loaded, config.preprocess, config.num_classes, data_split)
    except (DataError, RegistryError, StoreError, ConfigError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    result: dict[str, Any] = {**metrics.summary(), "model": uri, "data": data, "split": split}
    if per_class:
        result["per_class_accuracy"] = metrics.per_class_accuracy
    if not table:
        print(json.dumps(result), flush=True)
        return
    out.print(
        ui.key_value_table(
            [
                ("model", uri),
                ("data", f"{data} ({split} split)"),
                ("images", f"{metrics.n:,}"),
                ("accuracy", Text(ui.percent(metrics.accuracy), style="bold")),
                ("macro-F1", ui.percent(metrics.macro_f1)),
            ],
            title="evaluate",
        )
    )
    if per_class:
        out.print(ui.per_class_table(config.class_names, metrics.per_class_accuracy))


# ---- serving -----------------------------------------------------------------------------------------
@app.command()
@cli_errors(
    renames={
        "uri": "feedback_uri",
        "sample_rate": "feedback_sample_rate",
        "max_per_minute": "feedback_max_per_minute",
        "retention_days": "feedback_retention_days",
    }
)
def serve(
    model: Annotated[str, typer.Option(help="s3://models/<name>/<version> | champion | latest | model directory")],
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port for V1/V2 endpoints and /metrics")] = 8080,
    model_name: Annotated[
        str, typer.Option(help="name in the URL and, for champion/latest, in the registry")
    ] = DEFAULT_MODEL_NAME,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = all cores)")] = 0,
    grpc_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="also serve V2 over gRPC on this port")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward pass (1 = no batching)")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, help="extra wait for a fuller batch")] = 2.0,
    reload_interval: Annotated[float, typer.Option(min=0.0, help="seconds between champion checks (0 = off)")] = 0.0,
    top_k: Annotated[int, typer.Option(min=1, help="ranked classes in every answer (capped at the classes)")] = 3,
    max_request_bytes: Annotated[int, typer.Option(min=1, help="largest HTTP body accepted")] = 64 * 1024 * 1024,
    load_retries: Annotated[
        int, typer.Option(min=0, help="first load: retries while the store is unreachable (0 = exit at once)")
    ] = 5,
    load_backoff: Annotated[
        float, typer.Option(min=0.0, help="seconds before the first load retry, doubled each time (max 30)")
    ] = 1.0,
    feedback_uri: Annotated[
        str | None, typer.Option(help="log sampled inputs + predictions to s3://bucket/prefix (off by default)")
    ] = None,
    feedback_sample_rate: Annotated[
        float | None, typer.Option(help="share of images logged, in (0, 1] (default 0.05)")
    ] = None,
    feedback_max_per_minute: Annotated[
        int | None, typer.Option(min=1, help="at most this many images logged a minute (default 600)")
    ] = None,
    feedback_retention_days: Annotated[
        int | None, typer.Option(min=1, help="days until logged data expires (bucket lifecycle rule; default 14)")
    ] = None,
) -> None:
    """Serve a model with the KServe model server (V1 and V2 REST, optional gRPC, /metrics).

    Every argument is checked before the server (or the store) starts.
    """
    spec = _model_spec("model", model, model_name)
    if grpc_port == http_port:
        raise InvalidParameter("grpc_port", f"{grpc_port} is also the --http-port; use two different ports")

    from serving.feedback import feedback_config
    from serving.server import ServeConfig
    from serving.server import serve as run_server

    feedback = feedback_config(feedback_uri, feedback_sample_rate, feedback_max_per_minute, feedback_retention_days)
    cfg = ServeConfig(
        model=model,
        model_name=model_name,
        http_port=http_port,
        grpc_port=grpc_port,
        threads=threads,
        cache_dir=_cache_dir(),
        batch_size=batch_size,
        batch_wait_ms=batch_wait_ms,
        reload_interval_s=reload_interval,
        top_k=top_k,
        max_request_bytes=max_request_bytes,
        load_retries=load_retries,
        load_backoff_s=load_backoff,
        feedback=feedback,
    )
    if spec.needs_store or feedback is not None:  # feedback data goes to the registry's store
        with _store_session() as store:
            run_server(cfg, store)
    else:
        run_server(cfg, None)


@app.command()
@cli_errors()
def backend() -> None:
    """Print which CPU backends torch uses here (oneDNN, ACL on arm64, BLAS, threads) as JSON."""
    from tsr.core.backend import main as backend_main

    backend_main()


# ---- pipeline ----------------------------------------------------------------------------------------
@pipeline_app.command("compile")
@cli_errors()
def pipeline_compile(
    out_file: Annotated[Path, typer.Option("--out")] = Path("pipelines/compiled/tsr_training.yaml"),
    image: Annotated[str, typer.Option(help="component image, registry/name:tag")] = "",
    train_arch: Annotated[str, typer.Option(help="kubernetes.io/arch for the train step, e.g. arm64")] = "",
    train_arch_preferred: Annotated[bool, typer.Option(help="prefer --train-arch instead of requiring it")] = False,
    toleration: Annotated[
        list[str] | None, typer.Option(help="train-step toleration, kubectl taint syntax: arch=arm64:NoSchedule")
    ] = None,
) -> None:
    """Write the pipeline's KFP IR YAML (placement: see pipelines/README.md)."""
    from components.factory import DEFAULT_COMPONENT_IMAGE
    from pipelines.compile import compile_pipeline, placement_from_options

    try:
        placement = placement_from_options(train_arch, train_arch_preferred, toleration or [])
    except ValueError as exc:
        fail(str(exc), 2)
    out.print(str(compile_pipeline(out_file, image or DEFAULT_COMPONENT_IMAGE, placement)))


@pipeline_app.command("run-local")
@cli_errors(renames={"data_source": "data"})
def pipeline_run_local(
    data: Annotated[str, typer.Option(help="GTSRB/ImageFolder directory or s3://bucket/prefix")],
    epochs: Annotated[int, typer.Option(min=1)] = 18,
    max_groups_per_class: Annotated[int, typer.Option(min=0, help="N tracks per class (0 = all)")] = 0,
    model_name: str = DEFAULT_MODEL_NAME,
    min_accuracy: Annotated[float, typer.Option(min=0.0, max=1.0, help="gate: validation accuracy floor")] = 0.95,
    deploy_mode: Literal["none", "manifest", "local"] = "manifest",
    test_data: Annotated[str, typer.Option(help="GTSRB root with a test split, also evaluated")] = "",
    arch: Annotated[str, typer.Option(help="tsrnet or a torchvision.models classifier")] = "tsrnet",
    batch_size: Annotated[int, typer.Option(min=2)] = 256,
    lr: Annotated[float, typer.Option(help="peak learning rate, in (0, 10)")] = 0.2,
    threads: Annotated[int, typer.Option(min=0, help="torch threads in the train step (0 = all cores)")] = 0,
    val_fraction: Annotated[float, typer.Option(help="share of tracks held out, in (0, 1)")] = 0.2,
    layout: Literal["auto", "gtsrb", "imagefolder"] = "auto",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run the whole pipeline on this machine with kfp.local (store: configured or embedded MinIO).

    Every parameter is checked before the store starts or any step runs. The steps' output goes to
    a log file in the state dir (and to stderr when no progress is drawn); stdout gets a summary
    table, or with --json one object: run_id, seconds, champion, champion_uri, champion_from_this_run,
    gate, validation, test (when --test-data), report and log.
    """
    from pipelines.local_run import check_local_params, run_local

    params = {
        "data_source": data,
        "epochs": epochs,
        "max_groups_per_class": max_groups_per_class,
        "model_name": model_name,
        "min_accuracy": min_accuracy,
        "deploy_mode": deploy_mode,
        "test_data": test_data,
        "arch": arch,
        "batch_size": batch_size,
        "lr": lr,
        "threads": threads,
        "val_fraction": val_fraction,
        "layout": layout,
        "seed": seed,
    }
    check_local_params(params)
    with (
        _activity(as_json, quiet) as activity,
        _pipeline_output(activity, echo=not activity.enabled and not quiet) as (watcher, log),
        _store_session() as store,
    ):
        result = run_local(params, store, state_dir() / "kfp-local")
        registry = Registry.from_config(store)
        champion = registry.get_alias(model_name)
        from_this_run = champion is not None and registry.read_card(model_name, champion).get("run_id") == result.run_id
    metric_keys = ("accuracy", "macro_f1", "n")
    summary: dict[str, Any] = {
        "run_id": result.run_id,
        "seconds": round(result.seconds, 1),
        "champion": champion,
        "champion_uri": registry.uri(model_name, champion) if champion else None,
        "champion_from_this_run": from_this_run,
        "gate": result.gate,
        "validation": {k: result.evaluation["validation"].get(k) for k in metric_keys},
        "report": str(result.report) if result.report else None,
        "log": str(log),
    }
    if "test" in result.evaluation:
        summary["test"] = {k: result.evaluation["test"].get(k) for k in metric_keys}
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    if watcher.steps:
        out.print(ui.steps_table(list(watcher.steps.values())))
    rows: list[tuple[str, Any]] = [
        ("run id", result.run_id),
        ("gate", ui.gate_text(result.evaluation.get("gate") or result.gate)),
        ("validation", _metrics_text(summary["validation"])),
    ]
    if "test" in summary:
        rows.append(("test", _metrics_text(summary["test"])))
    rows += [
        (
            "champion",
            f"{summary['champion_uri']} ({'this run' if from_this_run else 'unchanged, an earlier run'})"
            if champion
            else "none",
        ),
        ("wall time", f"{summary['seconds']} s"),
        ("run report", summary["report"]),
        ("step logs", str(log)),
    ]
    out.print(ui.key_value_table(rows, title="pipeline run-local"))


def _metrics_text(metrics: Mapping[str, Any]) -> str:
    n = metrics.get("n")
    images = f" on {n:,} images" if isinstance(n, int) else ""
    return f"accuracy {ui.percent(metrics.get('accuracy'))}, macro-F1 {ui.percent(metrics.get('macro_f1'))}{images}"


_KFP_PACKAGE = Path("pipelines/compiled/tsr_training.yaml")
HostOption = Annotated[
    str,
    typer.Option(
        envvar="KF_PIPELINES_ENDPOINT",
        help="KFP API endpoint, e.g. https://kubeflow.example/pipeline; empty: in-cluster service or kubeconfig",
    ),
]
NamespaceOption = Annotated[str, typer.Option(help="profile namespace (multi-user KFP); single-user ignores it")]
TokenEnvOption = Annotated[
    str, typer.Option(help="environment variable holding the API bearer token (never pass a token as an argument)")
]
ParamOption = Annotated[list[str] | None, typer.Option("--param", help="pipeline parameter key=value (repeatable)")]
ExperimentOption = Annotated[str, typer.Option(help="experiment, created if missing")]
PackageOption = Annotated[Path, typer.Option(help="compiled pipeline YAML")]
UiUrlOption = Annotated[str, typer.Option(help="dashboard base URL for the printed link (default: --host)")]
InsecureOption = Annotated[bool, typer.Option(help="do not verify the server's TLS certificate")]
SaTokenOption = Annotated[
    bool, typer.Option(help="authenticate with the pod's projected KFP service-account token (in-cluster)")
]
PrivateOption = Annotated[bool, typer.Option(help="keep the pipeline in --namespace instead of shared")]


def _kfp_request(
    host: str,
    namespace: str,
    token_env: str,
    params: list[str] | None,
    package: Path,
    ui_url: str,
    insecure: bool,
    sa_token: bool,
    private_pipeline: bool,
) -> tuple[Any, dict[str, Any]]:
    """The target (token read from the environment, never echoed) and the typed, validated parameters."""
    import os

    from pipelines.submit import KfpTarget, ParameterError, PipelinePackage, SubmitError, parse_parameter_args

    token = os.environ.get(token_env, "").strip() if token_env else ""
    target = KfpTarget(
        host=host,
        namespace=namespace,
        existing_token=token or None,
        service_account_token=sa_token,
        verify_ssl=not insecure,
        ui_url=ui_url,
        private_pipeline=private_pipeline,
    )
    try:
        declared = PipelinePackage.load(package).parameters
        return target, parse_parameter_args(params or [], declared)
    except ParameterError as exc:
        fail(str(exc), 2)
    except SubmitError as exc:
        fail(str(exc))


RunnerOption = Annotated[
    str,
    typer.Option(
        help="Kubernetes service account the steps run as (the Helm chart's tsr-pipeline-runner may deploy "
        "InferenceServices); default: the KFP profile's"
    ),
]


@pipeline_app.command("submit")
@cli_errors()
def pipeline_submit(
    host: HostOption = "",
    namespace: NamespaceOption = "kubeflow",
    token_env: TokenEnvOption = "KFP_TOKEN",
    param: ParamOption = None,
    experiment: ExperimentOption = "tsr",
    package: PackageOption = _KFP_PACKAGE,
    run_name: Annotated[str, typer.Option(help="run name (default: tsr-training-<time>)")] = "",
    service_account: RunnerOption = "",
    ui_url: UiUrlOption = "",
    insecure: InsecureOption = False,
    sa_token: SaTokenOption = False,
    private_pipeline: PrivateOption = False,
) -> None:
    """Start one run of the compiled pipeline on a KFP backend; prints the run's dashboard URL."""
    from pipelines.submit import ParameterError, SubmitError, submit

    target, params = _kfp_request(
        host, namespace, token_env, param, package, ui_url, insecure, sa_token, private_pipeline
    )
    try:
        result = submit(
            target,
            params,
            package=package,
            experiment=experiment,
            run_name=run_name or None,
            service_account=service_account or None,
        )
    except ParameterError as exc:
        fail(str(exc), 2)
    except SubmitError as exc:
        fail(str(exc))
    err.print(f"run {result.id} (pipeline version {result.pipeline_version_id}, experiment {experiment})")
    print(result.url)


@pipeline_app.command("schedule")
@cli_errors()
def pipeline_schedule(
    cron: Annotated[str, typer.Option(help='standard 5-field cron, e.g. "0 3 * * 0" (Sundays 03:00, UTC)')],
    host: HostOption = "",
    namespace: NamespaceOption = "kubeflow",
    token_env: TokenEnvOption = "KFP_TOKEN",
    param: ParamOption = None,
    experiment: ExperimentOption = "tsr",
    package: PackageOption = _KFP_PACKAGE,
    name: Annotated[str, typer.Option(help="recurring run name (default: tsr-training-schedule)")] = "",
    max_concurrency: Annotated[int, typer.Option(help="runs of this schedule at once (1-10)")] = 1,
    service_account: RunnerOption = "",
    ui_url: UiUrlOption = "",
    insecure: InsecureOption = False,
    sa_token: SaTokenOption = False,
    private_pipeline: PrivateOption = False,
) -> None:
    """Create a recurring run (catch-up off) of the compiled pipeline; prints its dashboard URL."""
    from pipelines.submit import ParameterError, SubmitError, schedule

    target, params = _kfp_request(
        host, namespace, token_env, param, package, ui_url, insecure, sa_token, private_pipeline
    )
    try:
        result = schedule(
            target,
            params,
            cron=cron,
            package=package,
            experiment=experiment,
            name=name or None,
            max_concurrency=max_concurrency,
            service_account=service_account or None,
        )
    except ParameterError as exc:
        fail(str(exc), 2)
    except SubmitError as exc:
        fail(str(exc))
    err.print(f"recurring run {result.id} (pipeline version {result.pipeline_version_id}, experiment {experiment})")
    print(result.url)


# ---- cluster rollout ---------------------------------------------------------------------------------
def _rollout_outcome(result: Any) -> None:
    """One line for people on stderr, the details as JSON on stdout; exit 1 when it did not work,
    2 when the arguments were refused before any API call."""
    message = escape(result.message)
    err.print(message if result.ok else f"[bold red]error:[/] {message}", soft_wrap=True)
    print(json.dumps(result.details, default=str))
    if not result.ok:
        raise typer.Exit(2 if getattr(result, "invalid", False) else 1)


NamespaceArg = Annotated[str, typer.Option(help="namespace of the InferenceService")]
KubeConfigArg = Annotated[str, typer.Option(help="kubeconfig file (default: in-cluster, then ~/.kube/config)")]
TimeoutArg = Annotated[float, typer.Option(help="seconds to wait for Ready (> 0)")]


@app.command("deploy")
@cli_errors()
def deploy_cmd(
    model: Annotated[str, typer.Argument(help="s3://models/<name>/<version>, a version id, champion or latest")],
    model_name: Annotated[str, typer.Option(help="registry model and InferenceService name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = "tsr",
    image: Annotated[str, typer.Option(help="predictor image")] = "",
    deployment_mode: Annotated[str, typer.Option(help="Standard | Knative")] = "Standard",
    canary_percent: Annotated[
        int | None, typer.Option(min=0, max=100, help="Knative: traffic share of the new version")
    ] = None,
    min_replicas: Annotated[int, typer.Option(min=0)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1)] = 3,
    scale_target: Annotated[int | None, typer.Option(min=1, help="autoscaling target")] = None,
    scale_metric: Annotated[str | None, typer.Option(help="cpu|memory (Standard), concurrency|rps (Knative)")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="kubernetes.io/arch values, e.g. --arch arm64")] = None,
    arch_placement: Literal["required", "preferred"] = "required",
    toleration: Annotated[list[str] | None, typer.Option(help="kubectl taint syntax, key=value:Effect")] = None,
    timeout: TimeoutArg = 600.0,
    rollback_on_failure: Annotated[bool, typer.Option(help="restore the previous version if not Ready")] = True,
    kube_config: KubeConfigArg = "",
) -> None:
    """Create or patch the InferenceService, wait for Ready, roll back to the previous version on failure."""
    from tsr.kube.inference_service import DEFAULT_PREDICTOR_IMAGE
    from tsr.kube.rollout import deploy_command

    _registry_ref("model", model)
    check_registry_name("model_name", model_name)
    check_range("timeout", timeout, low=0.0, low_open=True)
    needs_registry = not model.startswith("s3://")
    with contextlib.ExitStack() as stack:
        registry = Registry.from_config(stack.enter_context(_store_session())) if needs_registry else None
        result = deploy_command(
            model,
            model_name=model_name,
            namespace=namespace,
            image=image or DEFAULT_PREDICTOR_IMAGE,
            deployment_mode=deployment_mode,
            canary_percent=canary_percent,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_target=scale_target,
            scale_metric=scale_metric,
            arch=tuple(arch or ()),
            arch_placement=arch_placement,
            tolerations=tuple(toleration or ()),
            timeout_s=timeout,
            rollback_on_failure=rollback_on_failure,
            registry=registry,
            kube_config=kube_config or None,
        )
    _rollout_outcome(result)


@app.command()
@cli_errors()
def promote(
    model_name: Annotated[str, typer.Argument(help="InferenceService / model name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = "tsr",
    timeout: TimeoutArg = 600.0,
    kube_config: KubeConfigArg = "",
) -> None:
    """Knative canary -> 100 % of the traffic (Standard mode has no canary: says so, changes nothing)."""
    from tsr.kube.rollout import promote_command

    check_registry_name("model_name", model_name)
    check_range("timeout", timeout, low=0.0, low_open=True)
    _rollout_outcome(
        promote_command(model_name, namespace=namespace, timeout_s=timeout, kube_config=kube_config or None)
    )


@app.command()
@cli_errors()
def rollback(
    model_name: Annotated[str, typer.Argument(help="InferenceService / model name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = "tsr",
    to_version: Annotated[str, typer.Option(help="a registry version (default: the previous deployment)")] = "",
    move_champion: Annotated[bool, typer.Option(help="also point the registry's champion at it")] = False,
    timeout: TimeoutArg = 600.0,
    kube_config: KubeConfigArg = "",
) -> None:
    """Serve the previous (or a given) model version again, optionally moving the champion alias back."""
    from tsr.kube.rollout import rollback_command

    check_registry_name("model_name", model_name)
    if to_version:
        _registry_ref("to_version", to_version)
    check_range("timeout", timeout, low=0.0, low_open=True)
    with contextlib.ExitStack() as stack:
        needs_registry = move_champion or (to_version and not to_version.startswith("s3://"))
        registry = Registry.from_config(stack.enter_context(_store_session())) if needs_registry else None
        result = rollback_command(
            model_name,
            namespace=namespace,
            to_version=to_version or None,
            move_champion=move_champion,
            registry=registry,
            timeout_s=timeout,
            kube_config=kube_config or None,
        )
    _rollout_outcome(result)


# ---- registry ----------------------------------------------------------------------------------------
def _champion_record(registry: Registry, model_name: str) -> dict[str, Any]:
    """The champion alias object (version, previous, updated; registry layout `<name>/champion`), or {}."""
    try:
        record: dict[str, Any] = json.loads(registry.store.get_bytes(f"{model_name}/{CHAMPION}"))
    except FileNotFoundError:
        return {}
    return record


def _version_row(card: Mapping[str, Any], version: str, champion: str | None) -> dict[str, Any]:
    metrics = card.get("metrics") or {}
    val, test = metrics.get("validation") or {}, metrics.get("test") or {}
    data = card.get("data") or {}
    parent = card.get("champion_before") or {}
    return {
        "version": version,
        "champion": version == champion,
        "accuracy": val.get("accuracy"),
        "arch": card.get("arch"),
        "uri": card.get("uri"),
        "aliases": [CHAMPION] if version == champion else [],
        "macro_f1": val.get("macro_f1"),
        "test_accuracy": test.get("accuracy"),
        "variant": card.get("variant"),
        "created": card.get("created"),
        "run_id": card.get("run_id"),
        "data_sha256": (data.get("fingerprint") or {}).get("value"),
        "champion_before": parent.get("uri"),
    }


@models_app.command("list")
@cli_errors()
def models_list(
    model_name: str = DEFAULT_MODEL_NAME,
    as_json: JsonOption = False,
) -> None:
    """List complete versions, oldest first: metrics, variant, creation time, run; the champion is starred.

    --json prints a list with one object per version: version, champion, accuracy, arch, uri,
    aliases, macro_f1, test_accuracy, variant, created, run_id, data_sha256, champion_before.
    """
    check_registry_name("model_name", model_name)
    with _store_session() as store:
        registry = Registry.from_config(store)
        champion = _champion_record(registry, model_name).get("version")
        rows = [
            _version_row(registry.read_card(model_name, version), version, champion)
            for version in registry.versions(model_name)
        ]
    if as_json:
        print(json.dumps(rows))
        return
    title = f"{model_name} ({store.describe()}): {len(rows)} version{'s' if len(rows) != 1 else ''}"
    out.print(ui.models_table(rows, title))
    if not rows:
        err.print("no complete versions yet: `tsr demo` or `tsr pipeline run-local` registers one")


@models_app.command("show")
@cli_errors()
def models_show(
    ref: Annotated[str, typer.Argument(help="version id, champion or latest")] = "champion",
    model_name: str = DEFAULT_MODEL_NAME,
    as_json: Annotated[bool, typer.Option("--json", help="print the version's model card as stored (JSON)")] = False,
) -> None:
    """Show a version's model card: metrics, gate, alias, lineage (run, code, data, parent) and parameters."""
    check_model_ref("ref", ref)
    check_registry_name("model_name", model_name)
    with _store_session() as store:
        registry = Registry.from_config(store)
        version = registry.resolve(model_name, ref)
        card = registry.read_card(model_name, version)
        alias = _champion_record(registry, model_name)
    if as_json:
        print(json.dumps(card, indent=2))
        return
    aliases = [CHAMPION] if alias.get("version") == version else []
    for view in ui.model_card_view(card, aliases, alias.get("updated") if aliases else None):
        out.print(view)
        out.print()


# ---- prediction ------------------------------------------------------------------------------------
@app.command()
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
    top_k: Annotated[int, typer.Option(min=1, help="classes shown per image (up to the predictor's --top-k)")] = 3,
    protocol: Annotated[Literal["v1", "v2"], typer.Option(help="V1 (:predict) or V2 (/infer) REST protocol")] = "v1",
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer (> 0)")] = 60.0,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Send image files to a running predictor and print each file's top-k classes with confidences.

    --json prints one object: url, model, protocol, model_version (V2) and predictions, one per
    file: file, class_id, class_name, probability and top_k (a list of the same three fields).
    """
    from tsr.local.predict_client import PredictError, predict_files

    _check_http_url("url", url)
    check_registry_name("model", model)
    check_range("timeout", timeout, low=0.0, low_open=True)
    try:
        with _activity(as_json, quiet) as activity:
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
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidParameter(param, f"{url!r} is not an http(s)://host[:port] URL")


# ---- demo --------------------------------------------------------------------------------------------
@app.command()
@cli_errors()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="GTSRB root (else cached, the shared archive, or download)")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="training epochs (the default config uses 18)")] = 18,
    max_groups_per_class: Annotated[
        int, typer.Option(min=0, help="tracks per class, 0 = all (quick runs use a few)")
    ] = 0,
    min_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="gate floor; quick runs need a lower one")
    ] = 0.95,
    batch_size: Annotated[int, typer.Option(min=2, help="training batch size (smaller helps tiny quick runs)")] = 256,
    requests: Annotated[int, typer.Option(min=1, help="images sent to the endpoint")] = 8,
    as_json: Annotated[
        bool, typer.Option("--json", help="print only the summary JSON on stdout (no table, no progress bars)")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """The main job end to end: MinIO, pipeline, registry, predictor, real HTTP requests, summary.

    Prints a summary table and, as its last line, the summary as one JSON object (what `make demo`
    and scripts read); --json prints that JSON line alone. The pipeline steps' output goes to a log
    file in the state dir (and to stderr when no progress is drawn). Exits 3 (not 0) when the run
    completes but the gate refuses the model.
    """
    from tsr.local.demo import DemoConfig, run_demo

    if data_dir is not None:
        check_existing_dir("data_dir", data_dir)
    cfg = DemoConfig(
        data_dir=data_dir,
        epochs=epochs,
        max_groups_per_class=max_groups_per_class,
        min_accuracy=min_accuracy,
        batch_size=batch_size,
        requests=requests,
    )
    from tsr.local.demo import print_summary

    with (
        _activity(as_json, quiet) as activity,
        _pipeline_output(activity, echo=not activity.enabled and not quiet),
    ):
        # The summary is printed below, once the progress display is gone.
        summary = run_demo(cfg, Console(quiet=True), err, on_extract=activity.bar("extracting GTSRB", "bytes"))
    if not as_json:
        print_summary(summary, cfg.model_name, out)
    print(json.dumps(summary), flush=True)
    if summary.get("gate") != "pass":
        raise typer.Exit(3)


@app.command("retrain-webhook")
@cli_errors()
def retrain_webhook(
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 in a pod)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port")] = 8080,
    params_file: Annotated[
        Path | None, typer.Option(help="JSON object of pipeline parameters (the run's data, namespace, image)")
    ] = None,
    param: ParamOption = None,
    kfp_host: Annotated[str, typer.Option(help="KFP API endpoint (empty: in-cluster ml-pipeline service)")] = "",
    kfp_in_cluster: Annotated[
        bool, typer.Option(help="authenticate with the pod's projected KFP service-account token")
    ] = False,
    namespace: NamespaceOption = "kubeflow",
    token_env: TokenEnvOption = "KFP_TOKEN",
    package: PackageOption = _KFP_PACKAGE,
    service_account: RunnerOption = "",
    cooldown_s: Annotated[float, typer.Option(min=0, help="seconds between two retraining runs")] = 6 * 3600.0,
    max_runs_per_day: Annotated[int, typer.Option(min=1, help="at most this many runs in 24 h")] = 4,
    alert: Annotated[
        list[str] | None,
        typer.Option("--alert", help="alert name that retrains (repeatable; default: drift, confidence)"),
    ] = None,
) -> None:
    """Alertmanager webhook receiver: a firing drift/low-confidence alert starts a KFP retraining run.

    Point Alertmanager's webhook_config at http://<host>:<port>/alerts (manifests/retrain/). A cooldown
    and a daily cap keep an alert storm from starting a run per notification; the new model goes through
    the pipeline's gate and champion comparison like any other run.
    """
    import uvicorn

    from pipelines.retrain import DEFAULT_ALERTS, KfpTrigger, RetrainController, RetrainPolicy, create_app
    from pipelines.submit import ParameterError, PipelinePackage, validate_parameters

    target, params = _kfp_request(kfp_host, namespace, token_env, param, package, "", False, kfp_in_cluster, False)
    if params_file is not None:
        try:
            loaded = json.loads(params_file.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidParameter("params-file", f"cannot read {params_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InvalidParameter("params-file", f"{params_file} must hold a JSON object of pipeline parameters")
        try:
            params = {**validate_parameters(loaded, PipelinePackage.load(package).parameters), **params}
        except ParameterError as exc:
            raise InvalidParameter("params-file", f"{params_file}: {exc}") from exc
    policy = RetrainPolicy(tuple(alert) if alert else DEFAULT_ALERTS, cooldown_s, max_runs_per_day)
    trigger = KfpTrigger(target, params, service_account=service_account or None)
    err.print(f"retrain webhook on http://{host}:{port}/alerts -> {target.where}; alerts {', '.join(policy.alerts)}")
    uvicorn.run(create_app(RetrainController(trigger, policy)), host=host, port=port, log_level="warning")


@app.command()
@cli_errors()
def loop(
    data: Annotated[str, typer.Option(help="GTSRB/ImageFolder directory the runs train on")],
    once: Annotated[bool, typer.Option("--once", help="one cycle (the only mode: a loop runs on a cluster)")] = False,
    model_name: Annotated[str, typer.Option(help="registry model name")] = DEFAULT_MODEL_NAME,
    epochs: Annotated[int, typer.Option(min=1, help="epochs of the retraining run")] = 3,
    max_groups_per_class: Annotated[int, typer.Option(min=0, help="tracks per class (0: all)")] = 5,
    shift: Annotated[float, typer.Option(min=0.01, max=0.99, help="brightness factor of the simulated drift")] = 0.3,
    as_json: Annotated[bool, typer.Option("--json", help="the summary as one JSON document")] = False,
) -> None:
    """Demonstrate the continuous-training cycle locally: serve -> drift -> alert -> retrain -> gate -> promote.

    Serves the champion (training a first one if there is none), sends normal then darkened images,
    evaluates the TSRInputDrift rule's PromQL with a real Prometheus (when installed), posts the alert to
    the retrain webhook receiver, which runs the pipeline; a model that passes the gate becomes champion
    and the running predictor reloads it. Exits 3 when the cycle completes without a promotion.
    """
    from tsr.local.loop import LoopConfig, run_loop

    if not once:
        raise InvalidParameter("once", "only --once is supported locally; on a cluster Alertmanager drives the loop")
    check_data_source("data", data, must_exist=True)
    cfg = LoopConfig(
        data=data, model_name=model_name, epochs=epochs, max_groups_per_class=max_groups_per_class, shift=shift
    )
    with _store_session() as store:
        summary = run_loop(cfg, store, state_dir() / "loop", say=lambda line: err.print(line, markup=False))
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(ui.key_value_table([(k, v) for k, v in summary.items()], title="tsr loop --once"))
    if summary.get("champion_after") in (None, summary.get("champion_before")):
        raise typer.Exit(3)


# ---- help examples -----------------------------------------------------------------------------------
# Every command's and group's --help ends with examples (tests/tsr/test_cli_operator.py checks); kept
# together here so the command functions stay readable. `\b` keeps click from rewrapping the lines.
# Keep this block after the last command: `_add_examples` sets the epilogs of the commands defined so far.
EXAMPLES: dict[str, list[str]] = {
    "": [
        "tsr demo --epochs 4 --max-groups-per-class 10 --min-accuracy 0.5   # a quick end-to-end run",
        "tsr models list",
        "tsr predict sign.png --url http://127.0.0.1:8080",
    ],
    "store": [
        'eval "$(tsr store start)"',
        "tsr store upload gtsrb-train-32.tar.gz s3://datasets/gtsrb",
        "tsr store stop",
    ],
    "store upload": [
        "tsr store upload gtsrb-train-32.tar.gz s3://datasets/gtsrb   # extracts, then uploads every file",
        "tsr store upload ./my-imagefolder s3://datasets/signs --workers 16 --json",
        "# into a cluster's MinIO: kubectl -n tsr port-forward svc/tsr-platform-minio 9000 &, then export",
        "# TSR_S3_ENDPOINT=127.0.0.1:9000 TSR_S3_ACCESS_KEY=... TSR_S3_SECRET_KEY=... (helm NOTES show how)",
    ],
    "store start": ['eval "$(tsr store start)"   # start the embedded MinIO, export TSR_S3_* in this shell'],
    "store stop": ["tsr store stop"],
    "prometheus": ["tsr prometheus stop"],
    "prometheus stop": ["tsr prometheus stop"],
    "ingest": [
        "tsr ingest --source .state/data --out /tmp/gtsrb-ds",
        "tsr ingest --source s3://datasets/gtsrb --out /tmp/ds --max-groups-per-class 5 --json",
        "tsr ingest --source ./my-signs --layout imagefolder --out /tmp/ds --skip-corrupt",
    ],
    "evaluate": [
        "tsr evaluate --model champion --data /data/GTSRB-root --split test",
        "tsr evaluate --model s3://models/gtsrb-classifier/<version> --data /data/GTSRB-root --table --per-class",
        "tsr evaluate --model ./model-dir --data s3://datasets/gtsrb-test --json | jq .accuracy",
    ],
    "serve": [
        "tsr serve --model champion --http-port 8080",
        "tsr serve --model ./model-dir --grpc-port 8081 --batch-size 32 --reload-interval 60",
        "tsr serve --model champion --feedback-uri s3://feedback/gtsrb-classifier --feedback-sample-rate 0.05 "
        "--feedback-max-per-minute 600 --feedback-retention-days 14",
    ],
    "predict": [
        "tsr predict stop.png yield.ppm",
        "tsr predict signs/*.png --url http://127.0.0.1:8080 --model gtsrb-classifier --top-k 3",
        "tsr predict sign.jpg --protocol v2 --json | jq '.predictions[0].class_name'",
    ],
    "backend": ["tsr backend | jq .mkldnn_available"],
    "pipeline": [
        "tsr pipeline run-local --data .state/data --epochs 4 --max-groups-per-class 10 --min-accuracy 0.5",
        "tsr pipeline compile --image ghcr.io/you/tsr-components:0.1.0",
    ],
    "pipeline compile": [
        "tsr pipeline compile",
        "tsr pipeline compile --image ghcr.io/you/tsr-components:0.1.0 --train-arch arm64 "
        "--toleration arch=arm64:NoSchedule",
    ],
    "pipeline run-local": [
        "tsr pipeline run-local --data .state/data --epochs 4 --max-groups-per-class 10 --min-accuracy 0.5",
        "tsr pipeline run-local --data s3://datasets/gtsrb --deploy-mode none --json | jq .gate",
    ],
    "pipeline submit": [
        "KFP_TOKEN=... tsr pipeline submit --host https://kubeflow.example/pipeline --namespace tsr "
        "--param data_source=s3://datasets/gtsrb",
    ],
    "pipeline schedule": [
        'tsr pipeline schedule --cron "0 3 * * 0" --host https://kubeflow.example/pipeline '
        "--param data_source=s3://datasets/gtsrb",
    ],
    "deploy": [
        "tsr deploy s3://models/gtsrb-classifier/<version> --namespace tsr",
        "tsr deploy champion --deployment-mode Knative --canary-percent 10",
    ],
    "promote": ["tsr promote gtsrb-classifier --namespace tsr"],
    "rollback": ["tsr rollback", "tsr rollback --to-version <version> --move-champion"],
    "models": ["tsr models list", "tsr models show champion"],
    "models list": ["tsr models list", "tsr models list --json | jq '.[] | select(.champion) | .version'"],
    "models show": [
        "tsr models show",
        "tsr models show <version>",
        "tsr models show latest --json | jq .metrics.validation",
    ],
    "retrain-webhook": [
        "tsr retrain-webhook --kfp-host http://localhost:8888 --param data_source=s3://datasets/gtsrb",
        "tsr retrain-webhook --host 0.0.0.0 --kfp-in-cluster --params-file /etc/tsr-retrain/params.json",
    ],
    "loop": [
        "tsr loop --once --data .state/data",
        "tsr loop --once --data .state/data --epochs 6 --max-groups-per-class 10 --json",
    ],
    "demo": [
        "tsr demo",
        "tsr demo --epochs 4 --max-groups-per-class 10 --batch-size 128 --min-accuracy 0.5",
        "tsr demo --data-dir /data/GTSRB-root --json > demo-summary.json",
    ],
}


def _examples(path: str) -> str | None:
    """The epilog for `tsr <path>`; None for a command without examples (tests/tsr/test_cli_operator.py fails)."""
    lines = EXAMPLES.get(path)
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None


def _add_examples(group: typer.Typer, prefix: str) -> None:
    """Set EXAMPLES as the help epilog of every command and sub-group of `group` (recursively)."""
    for command in group.registered_commands:
        name = command.name or (command.callback.__name__.lower().replace("_", "-") if command.callback else "")
        command.epilog = _examples(f"{prefix}{name}")
    for sub in group.registered_groups:
        if sub.typer_instance is None or not isinstance(sub.name, str):
            continue
        sub.typer_instance.info.epilog = _examples(f"{prefix}{sub.name}")
        _add_examples(sub.typer_instance, f"{prefix}{sub.name} ")


_add_examples(app, "")
app.info.epilog = f"{_examples('')}\n\n{EXIT_CODES_HELP}"


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="tsr")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
