"""Deploy: the pipeline step's logic. An InferenceService for a cluster, or a local predictor process.

Modes of `deploy()`: `none` (nothing), `manifest` (render the YAML), `cluster` (render, then
create or merge-patch the InferenceService, wait for it to be Ready and roll back to the previous
version if it is not: `tsr.kube.rollout`), `local` (start `python -m serving` as a detached process and
wait until the model reports ready: `serving.process`). The objects come from `tsr.kube`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kserve import V1beta1InferenceService
from kubernetes import client as k8s

from serving.process import PredictorProcessError, start_local_predictor
from tsr.core.config import StoreConfig
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.kube.client import cluster_endpoint, kube_api_client
from tsr.kube.inference_service import (
    DEFAULT_NAMESPACE,
    DEFAULT_PREDICTOR_IMAGE,
    DEFAULT_SERVICE_ACCOUNT,
    DeployError,
    InferenceServiceSpec,
    build_inference_service,
    isvc_name,
)
from tsr.kube.placement import parse_toleration
from tsr.kube.render import render_yaml
from tsr.kube.rollout import rollout_inference_service
from tsr.kube.spec import READY_TIMEOUT_S

MODES = ("none", "manifest", "cluster", "local")


# ---- the step ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeployResult:
    """What a deploy did: `endpoint` is a base URL ("" when nothing serves yet)."""

    mode: str
    endpoint: str = ""
    manifest: str = ""  # the rendered YAML ("" when the model URI is not a registry version)
    manifest_path: Path | None = None
    name: str = ""  # the InferenceService name
    action: str = ""  # "created|patched|unchanged <ns>/<name>", "started pid <n>", ...


def deploy(
    mode: str,
    model_uri: str,
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    predictor_image: str = DEFAULT_PREDICTOR_IMAGE,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    deployment_mode: str = InferenceServiceSpec.deployment_mode,
    canary_traffic_percent: int | None = None,
    manifest_path: Path | None = None,
    kube_config: str | None = None,
    cluster_ready_timeout_s: float = READY_TIMEOUT_S,
    state_dir: Path | None = None,
    store: StoreConfig | None = None,
    port: int | None = None,
    ready_timeout_s: float = 180.0,
    threads: int | None = None,
    command: Sequence[str] | None = None,
    spec_options: Mapping[str, Any] | None = None,
    api: Any = None,
    rollback_on_failure: bool = True,
) -> DeployResult:
    """Dispatch on `mode`: none | manifest | cluster | local (see the module docstring).

    `spec_options` are further InferenceServiceSpec fields (replicas, scale_target, arch,
    tolerations, resources). In `cluster` mode the object is rolled out by
    `rollout.rollout_inference_service`: created or merge-patched, waited for, and rolled back to
    the previous version if it does not become Ready (`rollback_on_failure`); `api` is a
    CustomObjectsApi to use instead of one built from `kube_config`.

    The InferenceService YAML is rendered whenever `model_uri` is a registry version
    (s3://<bucket>/<name>/<version>) and written to `manifest_path` when one is given (a
    comment line stands in for it otherwise, so a KFP output artifact always exists).
    `cluster` needs such a URI; `local` takes anything `python -m serving --model` does.
    """
    if mode not in MODES:
        raise ValueError(f"deploy mode must be one of {MODES}, got {mode!r}")
    name = isvc_name(model_name)
    manifest = ""
    isvc: V1beta1InferenceService | None = None
    if mode != "none" and model_uri.startswith("s3://"):
        spec = InferenceServiceSpec(
            name=name,
            namespace=namespace,
            storage_uri=model_uri,
            image=predictor_image,
            service_account=service_account,
            model_name=model_name,
            deployment_mode=deployment_mode,
            canary_traffic_percent=canary_traffic_percent,
            **dict(spec_options or {}),
        )
        isvc = build_inference_service(spec)
        manifest = render_yaml([isvc], header=f"InferenceService for {model_uri}")
    if manifest_path is not None:
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(manifest or f"# deploy mode {mode}: no InferenceService for {model_uri}\n")
    if mode == "none":
        return DeployResult(mode, manifest_path=manifest_path, action="nothing deployed")
    if mode == "manifest":
        return DeployResult(mode, manifest=manifest, manifest_path=manifest_path, name=name, action="rendered")
    if mode == "cluster":
        if isvc is None:
            raise DeployError(f"cluster deploys need a registry version URI (s3://...), got {model_uri!r}")
        if api is None:
            api = k8s.CustomObjectsApi(kube_api_client(kube_config))
        rolled = rollout_inference_service(
            isvc,
            api=api,
            timeout_s=cluster_ready_timeout_s,
            rollback_on_failure=rollback_on_failure,
            wait=cluster_ready_timeout_s > 0,
        )
        action = f"{rolled.action} {namespace}/{name}"
        return DeployResult(
            mode, rolled.endpoint or cluster_endpoint(name, namespace), manifest, manifest_path, name, action
        )
    if state_dir is None:
        raise ValueError("local deploys need a state directory")
    try:
        info = start_local_predictor(model_uri, model_name, state_dir, store, port, ready_timeout_s, threads, command)
    except PredictorProcessError as exc:
        raise DeployError(str(exc)) from exc
    return DeployResult(mode, str(info["url"]), manifest, manifest_path, name, f"started pid {info['pid']}")


def split_csv(text: str) -> tuple[str, ...]:
    """ "a, b,,c" -> ("a", "b", "c"): how list-valued pipeline parameters are written in the KFP UI."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def pipeline_serving_options(
    *,
    min_replicas: int,
    max_replicas: int,
    scale_metric: str,
    scale_target: int,
    arch: str,
    arch_placement: str,
    tolerations: str,
    cpu_request: str,
    cpu_limit: str,
    memory_request: str,
    memory_limit: str,
    allow_unsigned: bool,
) -> dict[str, Any]:
    """The deploy step's scalar parameters as `InferenceServiceSpec` fields (`deploy(spec_options=...)`).

    Pipeline parameters are plain scalars a person types into the Kubeflow UI, so "unset" is spelled
    "" or 0 and lists are comma-separated (`arch="arm64,amd64"`, `tolerations="arch=arm64:NoSchedule"`,
    kubectl's taint syntax); `allow_unsigned` is the operator's opt-in for unsigned versions (TSR_ALLOW_UNSIGNED).
    Everything is validated by `InferenceServiceSpec`, before any API call.
    """
    if scale_target < 0:
        raise ValueError(f"scale_target must be >= 1, or 0 for KServe's default; got {scale_target}")
    return {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "scale_metric": scale_metric or None,
        "scale_target": scale_target or None,
        "arch": split_csv(arch),
        "arch_placement": arch_placement,
        "tolerations": tuple(parse_toleration(t) for t in split_csv(tolerations)),
        "cpu_request": cpu_request,
        "cpu_limit": cpu_limit,
        "memory_request": memory_request,
        "memory_limit": memory_limit,
        "allow_unsigned": allow_unsigned,
    }
