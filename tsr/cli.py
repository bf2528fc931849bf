"""`tsr`: the command line. Thin: parse arguments, call the functions the components call."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from tsr.config import ConfigError, state_dir
from tsr.registry import DEFAULT_MODEL_NAME, Registry, RegistryError, materialize, parse_model_spec

app = typer.Typer(help="Traffic-sign recognition platform: pipeline, registry, serving.", no_args_is_help=True)
store_app = typer.Typer(help="The object store (embedded MinIO by default).", no_args_is_help=True)
pipeline_app = typer.Typer(help="Compile or run the KFP training pipeline.", no_args_is_help=True)
models_app = typer.Typer(help="Browse the model registry.", no_args_is_help=True)
prometheus_app = typer.Typer(help="The local Prometheus the demo leaves running.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(models_app, name="models")
app.add_typer(prometheus_app, name="prometheus")

err = Console(stderr=True)
# Wide enough for the demo tables when stdout is a pipe or a log file (rich assumes 80 columns).
out = Console(width=None if sys.stdout.isatty() else 140)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _store_session() -> Any:
    from tsr.local_minio import store_session

    return store_session()


def _cache_dir() -> Path:
    return state_dir() / "cache" / "models"


# ---- store -----------------------------------------------------------------------------------------
@store_app.command("start")
def store_start() -> None:
    """Start the embedded MinIO (if no store is configured) and print its environment variables."""
    from tsr.config import explicit_store_config
    from tsr.local_minio import local_minio

    explicit = explicit_store_config()
    if explicit is not None:
        out.print(f"a store is configured ({explicit.origin}): {explicit.describe()}; nothing to start")
        return
    server = local_minio()
    config = server.running() or server.start()
    err.print(f"MinIO running: {config.describe()} (data {server.data_dir})")
    for key, value in config.env().items():
        out.print(f"export {key}={value}", markup=False, highlight=False)


@store_app.command("stop")
def store_stop() -> None:
    """Stop the embedded MinIO."""
    from tsr.local_minio import local_minio

    local_minio().stop()
    err.print("embedded MinIO stopped")


@prometheus_app.command("stop")
def prometheus_stop() -> None:
    """Stop the Prometheus that `tsr demo` left running (state in <state>/prometheus)."""
    from tsr.local_prometheus import stop_recorded

    stopped = stop_recorded(state_dir() / "prometheus")
    err.print("local Prometheus stopped" if stopped else "no local Prometheus was running")


# ---- data, training, evaluation ---------------------------------------------------------------------
@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="GTSRB/ImageFolder directory or s3://bucket/prefix")],
    out_dir: Annotated[Path, typer.Option("--out", help="where to write the dataset")],
    layout: Annotated[str, typer.Option(help="auto | gtsrb | imagefolder")] = "auto",
    val_fraction: float = 0.2,
    seed: int = 0,
    max_groups_per_class: Annotated[int, typer.Option(help="keep N tracks per class (0 = all)")] = 0,
    download: Annotated[bool, typer.Option(help="fetch GTSRB with torchvision's downloader")] = False,
) -> None:
    """Read and split a data source into uint8 tensors plus a data card (what the ingest step does)."""
    from components.ingest.ingest import DataError, IngestConfig
    from components.ingest.ingest import ingest as run_ingest

    try:
        config = IngestConfig(
            source, layout, "train", val_fraction, seed, max_groups_per_class=max_groups_per_class, download=download
        )
        if source.startswith("s3://"):
            with _store_session() as store:
                card = run_ingest(config, out_dir, store)
        else:
            card = run_ingest(config, out_dir)
    except (DataError, ValueError) as exc:
        fail(str(exc))
    out.print_json(json.dumps(card["totals"]))


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="s3://models/<name>/<version> | champion | latest | model directory")],
    data: Annotated[str, typer.Option(help="directory in GTSRB (or ImageFolder) layout, or s3://bucket/prefix")],
    split: Annotated[str, typer.Option(help="test | train")] = "test",
    model_name: Annotated[str, typer.Option(help="registry name used with champion/latest")] = DEFAULT_MODEL_NAME,
    per_class: Annotated[bool, typer.Option(help="include per-class accuracy in the JSON")] = False,
) -> None:
    """Evaluate a model on a data split; prints one JSON line with accuracy, macro_f1 and n."""
    from components.evaluate.evaluate import evaluate_model
    from components.ingest.ingest import DataError, read_source
    from tsr.models import load_model_dir

    try:
        spec = parse_model_spec(model, model_name)
        if spec.needs_store or data.startswith("s3://"):
            with _store_session() as store:
                model_dir, uri = materialize(spec, store, _cache_dir())
                loaded, config = load_model_dir(model_dir)
                data_split, _ = read_source(data, split, config.preprocess.image_size, store)
        else:
            model_dir, uri = materialize(spec, None, _cache_dir())
            loaded, config = load_model_dir(model_dir)
            data_split, _ = read_source(data, split, config.preprocess.image_size)
        metrics = evaluate_model(loaded, config.preprocess, config.num_classes, data_split)
    except (DataError, RegistryError, ConfigError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    result: dict[str, Any] = {**metrics.summary(), "model": uri, "data": data, "split": split}
    if per_class:
        result["per_class_accuracy"] = metrics.per_class_accuracy
    print(json.dumps(result), flush=True)


# ---- serving -----------------------------------------------------------------------------------------
@app.command()
def serve(
    model: Annotated[str, typer.Option(help="s3://models/<name>/<version> | champion | latest | model directory")],
    http_port: Annotated[int, typer.Option(help="HTTP port for V1/V2 endpoints and /metrics")] = 8080,
    model_name: Annotated[
        str, typer.Option(help="name in the URL and, for champion/latest, in the registry")
    ] = DEFAULT_MODEL_NAME,
    threads: Annotated[int, typer.Option(help="torch threads (0 = all cores)")] = 0,
    grpc_port: Annotated[int | None, typer.Option(help="also serve V2 over gRPC on this port")] = None,
    batch_size: Annotated[int, typer.Option(help="images per forward pass (1 = no batching)")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(help="extra wait for a fuller batch")] = 2.0,
    reload_interval: Annotated[float, typer.Option(help="seconds between champion checks (0 = off)")] = 0.0,
    max_request_bytes: Annotated[int, typer.Option(help="largest HTTP body accepted")] = 64 * 1024 * 1024,
) -> None:
    """Serve a model with the KServe model server (V1 and V2 REST, optional gRPC, /metrics)."""
    from serving.server import ServeConfig
    from serving.server import serve as run_server

    try:
        spec = parse_model_spec(model, model_name)
    except (ValueError, RegistryError) as exc:
        fail(str(exc))
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
        max_request_bytes=max_request_bytes,
    )
    if spec.needs_store:
        with _store_session() as store:
            run_server(cfg, store)
    else:
        run_server(cfg, None)


@app.command()
def backend() -> None:
    """Print which CPU backends torch uses here (oneDNN, ACL on arm64, BLAS, threads) as JSON."""
    from tsr.backend import main as backend_main

    backend_main()


# ---- pipeline ----------------------------------------------------------------------------------------
@pipeline_app.command("compile")
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
def pipeline_run_local(
    data: Annotated[str, typer.Option(help="GTSRB/ImageFolder directory or s3://bucket/prefix")],
    epochs: int = 18,
    max_groups_per_class: int = 0,
    model_name: str = DEFAULT_MODEL_NAME,
    min_accuracy: float = 0.95,
    deploy_mode: Annotated[str, typer.Option(help="none | manifest | local")] = "manifest",
    test_data: str = "",
) -> None:
    """Run the whole pipeline on this machine with kfp.local (store: configured or embedded MinIO)."""
    from pipelines.local_run import run_local

    params = {
        "data_source": data,
        "epochs": epochs,
        "max_groups_per_class": max_groups_per_class,
        "model_name": model_name,
        "min_accuracy": min_accuracy,
        "deploy_mode": deploy_mode,
        "test_data": test_data,
    }
    with _store_session() as store:
        result = run_local(params, store, state_dir() / "kfp-local")
        registry = Registry.from_config(store)
        champion = registry.get_alias(model_name)
    print(json.dumps({"run_id": result.run_id, "seconds": round(result.seconds, 1), "champion": champion}))


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
    """One line for people on stderr, the details as JSON on stdout; exit 1 when it did not work."""
    err.print(result.message if result.ok else f"[bold red]error:[/] {result.message}")
    print(json.dumps(result.details, default=str))
    if not result.ok:
        raise typer.Exit(1)


NamespaceArg = Annotated[str, typer.Option(help="namespace of the InferenceService")]
KubeConfigArg = Annotated[str, typer.Option(help="kubeconfig file (default: in-cluster, then ~/.kube/config)")]
TimeoutArg = Annotated[float, typer.Option(help="seconds to wait for Ready")]


@app.command("deploy")
def deploy_cmd(
    model: Annotated[str, typer.Argument(help="s3://models/<name>/<version>, a version id, champion or latest")],
    model_name: Annotated[str, typer.Option(help="registry model and InferenceService name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = "tsr",
    image: Annotated[str, typer.Option(help="predictor image")] = "",
    deployment_mode: Annotated[str, typer.Option(help="Standard | Knative")] = "Standard",
    canary_percent: Annotated[int | None, typer.Option(help="Knative: traffic share of the new version")] = None,
    min_replicas: int = 1,
    max_replicas: int = 3,
    scale_target: Annotated[int | None, typer.Option(help="autoscaling target")] = None,
    scale_metric: Annotated[str | None, typer.Option(help="cpu|memory (Standard), concurrency|rps (Knative)")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="kubernetes.io/arch values, e.g. --arch arm64")] = None,
    arch_placement: Annotated[str, typer.Option(help="required | preferred")] = "required",
    toleration: Annotated[list[str] | None, typer.Option(help="kubectl taint syntax, key=value:Effect")] = None,
    timeout: TimeoutArg = 600.0,
    rollback_on_failure: Annotated[bool, typer.Option(help="restore the previous version if not Ready")] = True,
    kube_config: KubeConfigArg = "",
) -> None:
    """Create or patch the InferenceService, wait for Ready, roll back to the previous version on failure."""
    from components.deploy.deploy import DEFAULT_PREDICTOR_IMAGE
    from components.deploy.rollout import deploy_command

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
def promote(
    model_name: Annotated[str, typer.Argument(help="InferenceService / model name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = "tsr",
    timeout: TimeoutArg = 600.0,
    kube_config: KubeConfigArg = "",
) -> None:
    """Knative canary -> 100 % of the traffic (Standard mode has no canary: says so, changes nothing)."""
    from components.deploy.rollout import promote_command

    _rollout_outcome(
        promote_command(model_name, namespace=namespace, timeout_s=timeout, kube_config=kube_config or None)
    )


@app.command()
def rollback(
    model_name: Annotated[str, typer.Argument(help="InferenceService / model name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = "tsr",
    to_version: Annotated[str, typer.Option(help="a registry version (default: the previous deployment)")] = "",
    move_champion: Annotated[bool, typer.Option(help="also point the registry's champion at it")] = False,
    timeout: TimeoutArg = 600.0,
    kube_config: KubeConfigArg = "",
) -> None:
    """Serve the previous (or a given) model version again, optionally moving the champion alias back."""
    from components.deploy.rollout import rollback_command

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
@models_app.command("list")
def models_list(
    model_name: str = DEFAULT_MODEL_NAME,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List complete versions with their validation accuracy; the champion is marked."""
    with _store_session() as store:
        registry = Registry.from_config(store)
        champion = registry.get_alias(model_name)
        rows = []
        for version in registry.versions(model_name):
            card = registry.read_card(model_name, version)
            val = card.get("metrics", {}).get("validation", {})
            rows.append(
                {
                    "version": version,
                    "champion": version == champion,
                    "accuracy": val.get("accuracy"),
                    "arch": card.get("arch"),
                    "uri": card.get("uri"),
                }
            )
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"{model_name} ({store.describe()})")
    for col in ("version", "champion", "val accuracy", "arch"):
        table.add_column(col)
    for r in rows:
        acc = f"{100 * r['accuracy']:.2f}%" if isinstance(r["accuracy"], float) else "–"
        table.add_row(r["version"], "★" if r["champion"] else "", acc, str(r["arch"]))
    out.print(table)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="version id, champion or latest")] = "champion",
    model_name: str = DEFAULT_MODEL_NAME,
) -> None:
    """Print a version's model card."""
    with _store_session() as store:
        registry = Registry.from_config(store)
        try:
            version = registry.resolve(model_name, ref)
        except RegistryError as exc:
            fail(str(exc))
        print(json.dumps(registry.read_card(model_name, version), indent=2))


# ---- demo --------------------------------------------------------------------------------------------
@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="GTSRB root (else cached, the shared archive, or download)")
    ] = None,
    epochs: Annotated[int, typer.Option(help="training epochs (the default config uses 18)")] = 18,
    max_groups_per_class: Annotated[int, typer.Option(help="tracks per class, 0 = all (quick runs use a few)")] = 0,
    min_accuracy: Annotated[float, typer.Option(help="gate floor; quick runs need a lower one")] = 0.95,
    batch_size: Annotated[int, typer.Option(help="training batch size (smaller helps tiny quick runs)")] = 256,
    requests: Annotated[int, typer.Option(help="images sent to the endpoint")] = 8,
) -> None:
    """The main job end to end: MinIO, pipeline, registry, predictor, real HTTP requests, summary."""
    from tsr.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        data_dir=data_dir,
        epochs=epochs,
        max_groups_per_class=max_groups_per_class,
        min_accuracy=min_accuracy,
        batch_size=batch_size,
        requests=requests,
    )
    try:
        summary = run_demo(cfg, out, err)
    except (RuntimeError, ValueError, ConfigError) as exc:
        fail(str(exc))
    print(json.dumps(summary), flush=True)
    if summary.get("gate") != "pass":
        raise typer.Exit(2)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="tsr")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
