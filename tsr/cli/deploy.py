"""Cluster rollout of the InferenceService: `tsr deploy`, `tsr promote` and `tsr rollback`."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Literal, cast

import typer
from rich.markup import escape

from tsr.cli import common
from tsr.cli.common import cli_errors, err, registry_ref
from tsr.core.registry import DEFAULT_MODEL_NAME, Registry
from tsr.core.validation import check_range, check_registry_name
from tsr.kube.spec import DEFAULT_NAMESPACE, DEFAULT_PREDICTOR_IMAGE, READY_TIMEOUT_S, InferenceServiceSpec


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

ArchPlacement = Literal["required", "preferred"]  # tsr.kube.placement.ARCH_PLACEMENTS
DEFAULT_ARCH_PLACEMENT = cast(ArchPlacement, InferenceServiceSpec.arch_placement)

# The defaults come from tsr.kube.spec, which imports neither SDK; the other tsr.kube imports below are
# late: kserve and the kubernetes client take about 2 s to import.


@cli_errors()
def deploy_cmd(
    model: Annotated[str, typer.Argument(help="s3://models/<name>/<version>, a version id, champion or latest")],
    model_name: Annotated[str, typer.Option(help="registry model and InferenceService name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = DEFAULT_NAMESPACE,
    image: Annotated[str, typer.Option(help="predictor image")] = "",
    deployment_mode: Annotated[str, typer.Option(help="Standard | Knative")] = InferenceServiceSpec.deployment_mode,
    canary_percent: Annotated[
        int | None, typer.Option(min=0, max=100, help="Knative: traffic share of the new version")
    ] = None,
    min_replicas: Annotated[int, typer.Option(min=0)] = InferenceServiceSpec.min_replicas,
    max_replicas: Annotated[int, typer.Option(min=1)] = InferenceServiceSpec.max_replicas,
    scale_target: Annotated[int | None, typer.Option(min=1, help="autoscaling target")] = None,
    scale_metric: Annotated[str | None, typer.Option(help="cpu|memory (Standard), concurrency|rps (Knative)")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="kubernetes.io/arch values, e.g. --arch arm64")] = None,
    arch_placement: ArchPlacement = DEFAULT_ARCH_PLACEMENT,
    toleration: Annotated[list[str] | None, typer.Option(help="kubectl taint syntax, key=value:Effect")] = None,
    timeout: TimeoutArg = READY_TIMEOUT_S,
    rollback_on_failure: Annotated[bool, typer.Option(help="restore the previous version if not Ready")] = True,
    kube_config: KubeConfigArg = "",
) -> None:
    """Create or patch the InferenceService, wait for Ready, roll back to the previous version on failure."""
    from tsr.kube.rollout import deploy_command

    registry_ref("model", model)
    check_registry_name("model_name", model_name)
    check_range("timeout", timeout, low=0.0, low_open=True)
    needs_registry = not model.startswith("s3://")
    with contextlib.ExitStack() as stack:
        registry = Registry.from_config(stack.enter_context(common._store_session())) if needs_registry else None
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


@cli_errors()
def promote(
    model_name: Annotated[str, typer.Argument(help="InferenceService / model name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = DEFAULT_NAMESPACE,
    timeout: TimeoutArg = READY_TIMEOUT_S,
    kube_config: KubeConfigArg = "",
) -> None:
    """Knative canary -> 100 % of the traffic (Standard mode has no canary: says so, changes nothing)."""
    from tsr.kube.rollout import promote_command

    check_registry_name("model_name", model_name)
    check_range("timeout", timeout, low=0.0, low_open=True)
    _rollout_outcome(
        promote_command(model_name, namespace=namespace, timeout_s=timeout, kube_config=kube_config or None)
    )


@cli_errors()
def rollback(
    model_name: Annotated[str, typer.Argument(help="InferenceService / model name")] = DEFAULT_MODEL_NAME,
    namespace: NamespaceArg = DEFAULT_NAMESPACE,
    to_version: Annotated[str, typer.Option(help="a registry version (default: the previous deployment)")] = "",
    move_champion: Annotated[bool, typer.Option(help="also point the registry's champion at it")] = False,
    timeout: TimeoutArg = READY_TIMEOUT_S,
    kube_config: KubeConfigArg = "",
) -> None:
    """Serve the previous (or a given) model version again, optionally moving the champion alias back."""
    from tsr.kube.rollout import rollback_command

    check_registry_name("model_name", model_name)
    if to_version:
        registry_ref("to_version", to_version)
    check_range("timeout", timeout, low=0.0, low_open=True)
    with contextlib.ExitStack() as stack:
        needs_registry = move_champion or (to_version and not to_version.startswith("s3://"))
        registry = Registry.from_config(stack.enter_context(common._store_session())) if needs_registry else None
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
