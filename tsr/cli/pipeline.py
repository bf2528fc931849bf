"""The KFP training pipeline: `tsr pipeline compile|run-local|submit|schedule`, and `tsr retrain-webhook`
(the Alertmanager receiver that submits a retraining run)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from components.evaluate.config import GateConfig
from components.train.config import TrainConfig
from tsr.cli import common
from tsr.cli.common import (
    TYPER_SETTINGS,
    JsonOption,
    QuietOption,
    cli_errors,
    err,
    fail,
    out,
    pipeline_output,
    progress,
)
from tsr.core.config import state_dir
from tsr.core.registry import DEFAULT_MODEL_NAME, Registry
from tsr.core.validation import InvalidParameter
from tsr.local import ui

# The imports from components, pipelines and uvicorn below are late: kfp (and kserve, which some of them pull
# in) take about 2 s to import, which every other command would pay at its start.

pipeline_app = typer.Typer(help="Compile or run the KFP training pipeline.", **TYPER_SETTINGS)


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
    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs,
    max_groups_per_class: Annotated[int, typer.Option(min=0, help="N tracks per class (0 = all)")] = 0,
    model_name: str = DEFAULT_MODEL_NAME,
    min_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="gate: validation accuracy floor")
    ] = GateConfig.min_accuracy,
    min_class_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="gate: accuracy floor for the worst class")
    ] = GateConfig.min_class_accuracy,
    deploy_mode: Literal["none", "manifest", "local"] = "manifest",
    test_data: Annotated[str, typer.Option(help="GTSRB root with a test split, also evaluated")] = "",
    arch: Annotated[str, typer.Option(help="tsrnet or a torchvision.models classifier")] = TrainConfig.arch,
    batch_size: Annotated[int, typer.Option(min=2)] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option(help="peak learning rate, in (0, 10)")] = TrainConfig.lr,
    threads: Annotated[
        int, typer.Option(min=0, help="torch threads in the train step (0 = all cores)")
    ] = TrainConfig.threads,
    val_fraction: Annotated[float, typer.Option(help="share of tracks held out, in (0, 1)")] = 0.2,
    layout: Literal["auto", "gtsrb", "imagefolder"] = "auto",
    seed: Annotated[int, typer.Option(min=0)] = TrainConfig.seed,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run the whole pipeline on this machine with kfp.local (store: configured or embedded MinIO).

    Every parameter is checked before the store starts or any step runs. The steps' output goes to
    a log file in the state dir (when no progress is drawn, stderr gets one line per step); stdout gets a summary
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
        "min_class_accuracy": min_class_accuracy,
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
        progress(as_json, quiet) as activity,
        pipeline_output(activity, rows=not activity.enabled and not quiet) as (watcher, log),
        common._store_session() as store,
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


# ---- a KFP backend: submit, schedule, retrain-webhook ------------------------------------------------
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
RunnerOption = Annotated[
    str,
    typer.Option(
        help="Kubernetes service account the steps run as (the Helm chart's tsr-pipeline-runner may deploy "
        "InferenceServices); default: the KFP profile's"
    ),
]


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
