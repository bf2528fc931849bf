"""Deploy: an InferenceService for a cluster (typed kserve SDK objects), or a local predictor process.

Cluster objects are built only from the `kserve` and `kubernetes` SDK models, so what we render
is what the API server's schema expects. No credential ever appears in them: KServe's
storage-initializer finds the S3 Secret through the predictor's ServiceAccount and downloads
the version to /mnt/models before the predictor starts.

Modes of `deploy()`: `none` (nothing), `manifest` (render the YAML), `cluster` (render, then
create or merge-patch the InferenceService, wait for it to be Ready and roll back to the previous
version if it is not: `rollout.py`), `local` (start `python -m serving` as a detached process and
wait until the model reports ready).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kserve.models
import yaml
from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec
from kserve.constants.constants import (
    KSERVE_GROUP,
    KSERVE_KIND_INFERENCESERVICE,
    KSERVE_PLURAL_INFERENCESERVICE,
    KSERVE_V1BETA1,
    KSERVE_V1BETA1_VERSION,
)
from kubernetes import client as k8s

from tsr.config import ENV_STATE_DIR, REPO_ROOT, StoreConfig
from tsr.local_minio import free_port
from tsr.processes import proc_start_time, send_signal_to_group, terminate
from tsr.registry import CHAMPION, DEFAULT_MODEL_NAME, check_name
from tsr.store import split_s3_uri

DEFAULT_NAMESPACE = "tsr"
DEFAULT_PREDICTOR_IMAGE = "ghcr.io/tsr-platform/tsr-predictor:0.1.0"
DEFAULT_SERVICE_ACCOUNT = "tsr-predictor"
# KServe's layout (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY + s3-* annotations), which differs from
# the pipeline steps' `tsr-s3-credentials` Secret (endpoint / accesskey / secretkey / secure keys).
DEFAULT_S3_SECRET = "tsr-predictor-s3"
DEFAULT_HTTP_PORT = 8080
PLACEHOLDER_VERSION = "REPLACE_WITH_VERSION"

MODES = ("none", "manifest", "cluster", "local")
# KServe >= 0.15 names its modes Standard (Deployment + Service + HPA) and Knative (serverless,
# revisions, canaries); the controller still accepts the old names and maps them. The Python SDK
# (0.21) carries no constants for these: the values are the controller's (pkg/constants/constants.go:
# Standard, Knative, LegacyRawDeployment="RawDeployment", LegacyServerless="Serverless").
DEPLOYMENT_MODES = ("Standard", "Knative")
LEGACY_DEPLOYMENT_MODES = {"RawDeployment": "Standard", "Serverless": "Knative"}

ANNOTATION_DEPLOYMENT_MODE = f"{KSERVE_GROUP}/deploymentMode"
ANNOTATION_PROMETHEUS = f"{KSERVE_GROUP}/enable-prometheus-scraping"
ANNOTATION_S3_ENDPOINT = f"{KSERVE_GROUP}/s3-endpoint"
ANNOTATION_S3_USEHTTPS = f"{KSERVE_GROUP}/s3-usehttps"
ANNOTATION_S3_REGION = f"{KSERVE_GROUP}/s3-region"
ANNOTATION_S3_VERIFYSSL = f"{KSERVE_GROUP}/s3-verifyssl"
S3_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"

KSERVE_CONTAINER = "kserve-container"  # the name KServe looks for in a custom predictor
MODEL_MOUNT_PATH = "/mnt/models"  # where the storage-initializer puts STORAGE_URI's files
STORAGE_URI_ENV = "STORAGE_URI"
PROMETHEUS_PORT_ENV = "KSERVE_CONTAINER_PROMETHEUS_METRICS_PORT"
RUN_AS_USER = 10001  # the USER of serving/Dockerfile and the Helm chart

LOCAL_STATE_FILE = "predictor.json"
LOCAL_LOG_FILE = "predictor.log"

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_PART_OF = {"app.kubernetes.io/part-of": "tsr-platform"}
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

ARCH_LABEL = "kubernetes.io/arch"
ARCH_PLACEMENTS = ("required", "preferred")
# Which metrics KServe's autoscalers understand per mode: Knative's KPA scales on requests in flight or
# per second; Standard mode's HPA on resource utilisation (percent of the request).
SCALE_METRICS = {"Knative": ("concurrency", "rps"), "Standard": ("cpu", "memory")}
TOLERATION_OPERATORS = ("Equal", "Exists")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class DeployError(RuntimeError):
    """A deployment could not be carried out; the message says what to fix."""


def _check_storage_uri(uri: str) -> str:
    """KServe needs a concrete version prefix: an alias (`champion`) is a JSON file, not a model."""
    bucket, key = split_s3_uri(uri)
    parts = key.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"storage_uri {uri!r} must look like s3://<bucket>/<model name>/<version>")
    check_name(bucket, "bucket")
    check_name(parts[0])
    if parts[1] in {CHAMPION, "latest"} or not _VERSION.match(parts[1]):
        raise ValueError(
            f"storage_uri {uri!r} must name a concrete version, not {parts[1]!r}: "
            "resolve the alias first (Registry.resolve)"
        )
    return uri


def _cpu_threads(cpu_limit: str) -> int:
    """Torch threads that fit the CPU limit, so a 2-CPU pod does not start one thread per node core."""
    millis = float(cpu_limit[:-1]) if cpu_limit.endswith("m") else float(cpu_limit) * 1000
    return max(1, int(millis // 1000))


@dataclass
class InferenceServiceSpec:
    """Everything that varies between InferenceServices of this platform; validated on creation."""

    name: str
    namespace: str
    storage_uri: str  # s3://models/<name>/<version>
    image: str = DEFAULT_PREDICTOR_IMAGE
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    model_name: str = DEFAULT_MODEL_NAME
    min_replicas: int = 1
    max_replicas: int = 3
    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"
    deployment_mode: str = "Standard"  # "Standard" | "Knative" (legacy RawDeployment / Serverless accepted)
    canary_traffic_percent: int | None = None  # Knative only: share of traffic for the new revision
    node_selector: dict[str, str] = field(default_factory=lambda: {"kubernetes.io/os": "linux"})
    enable_prometheus_scraping: bool = True
    http_port: int = DEFAULT_HTTP_PORT
    torch_threads: int | None = None  # None: derived from cpu_limit
    tmp_size_limit: str = "512Mi"  # the writable /tmp under a read-only root filesystem
    scale_target: int | None = None  # autoscaler target for scale_metric (KServe's own default when None)
    scale_metric: str | None = None  # Knative: concurrency | rps; Standard: cpu | memory (SCALE_METRICS)
    arch: tuple[str, ...] = ()  # kubernetes.io/arch values the image runs on (amd64, arm64, ...); () = any
    arch_placement: str = "required"  # required: only those nodes; preferred: those first, others allowed
    tolerations: tuple[Mapping[str, Any], ...] = ()  # V1Toleration fields: key, operator, value, effect

    def __post_init__(self) -> None:
        self.deployment_mode = LEGACY_DEPLOYMENT_MODES.get(self.deployment_mode, self.deployment_mode)
        if self.deployment_mode not in DEPLOYMENT_MODES:
            raise ValueError(f"deployment_mode must be one of {DEPLOYMENT_MODES}, got {self.deployment_mode!r}")
        if len(self.name) > 63 or not _DNS1035.match(self.name):
            raise ValueError(f"name {self.name!r} must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter)")
        for what, value in (("namespace", self.namespace), ("service_account", self.service_account)):
            if len(value) > 63 or not _DNS1123.match(value):
                raise ValueError(f"{what} {value!r} must be a DNS-1123 label")
        _check_storage_uri(self.storage_uri)
        check_name(self.model_name)
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"image {self.image!r} is not an image reference")
        if self.canary_traffic_percent is not None:
            if not 0 <= self.canary_traffic_percent <= 100:
                raise ValueError("canary_traffic_percent must be within 0..100")
            if self.deployment_mode != "Knative":
                raise ValueError(
                    "canary_traffic_percent needs deployment_mode 'Knative' (KServe canaries are revisions)"
                )
        lowest = 0 if self.deployment_mode == "Knative" else 1  # only Knative scales to zero
        if not (lowest <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            raise ValueError(f"need {lowest} <= min_replicas <= max_replicas and max_replicas >= 1")
        for what, value in (
            ("cpu_request", self.cpu_request),
            ("cpu_limit", self.cpu_limit),
            ("memory_request", self.memory_request),
            ("memory_limit", self.memory_limit),
            ("tmp_size_limit", self.tmp_size_limit),
        ):
            if not _QUANTITY.match(value):
                raise ValueError(f"{what} {value!r} is not a Kubernetes quantity")
        if not 1 <= self.http_port <= 65535:
            raise ValueError(f"http_port {self.http_port} out of range")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError("torch_threads must be >= 1")
        self._check_scaling_and_placement()

    def _check_scaling_and_placement(self) -> None:
        """Refuse what KServe would accept but not act on: a metric the mode's autoscaler ignores,
        an arch constraint stated twice, a toleration the scheduler cannot parse."""
        if self.scale_target is not None and self.scale_target < 1:
            raise ValueError("scale_target must be >= 1")
        if self.scale_metric is not None and self.scale_metric not in SCALE_METRICS[self.deployment_mode]:
            raise ValueError(
                f"scale_metric {self.scale_metric!r} is not used by {self.deployment_mode} mode's autoscaler: "
                f"use one of {SCALE_METRICS[self.deployment_mode]}"
            )
        if isinstance(self.arch, str):  # a single value passed as a string
            self.arch = (self.arch,)
        self.arch = tuple(self.arch)
        for value in self.arch:
            if not value or not _LABEL_VALUE.match(value):
                raise ValueError(f"arch {value!r} is not a label value (amd64, arm64, ...)")
        if self.arch_placement not in ARCH_PLACEMENTS:
            raise ValueError(f"arch_placement must be one of {ARCH_PLACEMENTS}, got {self.arch_placement!r}")
        if self.arch and ARCH_LABEL in self.node_selector:
            raise ValueError(f"give the architecture either as arch or as node_selector[{ARCH_LABEL!r}], not both")
        self.tolerations = tuple(dict(t) for t in self.tolerations)
        for toleration in self.tolerations:
            unknown = set(toleration) - {"key", "operator", "value", "effect", "tolerationSeconds"}
            if unknown:
                raise ValueError(f"toleration {toleration}: unknown fields {sorted(unknown)}")
            operator = toleration.get("operator", "Equal")
            if operator not in TOLERATION_OPERATORS:
                raise ValueError(f"toleration {toleration}: operator must be one of {TOLERATION_OPERATORS}")
            if operator == "Exists" and toleration.get("value"):
                raise ValueError(f"toleration {toleration}: operator Exists takes no value")
            if operator == "Equal" and not toleration.get("key"):
                raise ValueError(f"toleration {toleration}: operator Equal needs a key")
            effect = toleration.get("effect")
            if effect and effect not in TOLERATION_EFFECTS:
                raise ValueError(f"toleration {toleration}: effect must be one of {TOLERATION_EFFECTS}")
            if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
                raise ValueError(f"toleration {toleration}: tolerationSeconds only applies to effect NoExecute")

    @property
    def threads(self) -> int:
        return self.torch_threads or _cpu_threads(self.cpu_limit)


def isvc_name(model_name: str) -> str:
    """A registry model name as an InferenceService name: a DNS-1035 label short enough (<= 47) to
    leave room for the suffixes KServe and Knative append (`-predictor-00001`)."""
    name = re.sub(r"[^a-z0-9-]", "-", model_name.lower())
    if not name[:1].isalpha():
        name = "m-" + name
    return name[:47].rstrip("-")


def _labels(spec: InferenceServiceSpec) -> dict[str, str]:
    return {
        **_PART_OF,
        "app.kubernetes.io/name": "tsr-predictor",
        "app.kubernetes.io/component": "predictor",
        "app.kubernetes.io/instance": spec.name,
    }


def parse_toleration(text: str) -> dict[str, Any]:
    """A toleration dict from kubectl's taint syntax, `key[=value][:effect]`, for the CLI.

    `dedicated=ml:NoSchedule` tolerates that taint exactly; `gpu:NoSchedule` tolerates
    any value of key `gpu` with that effect (operator Exists); `:NoExecute` alone tolerates every
    NoExecute taint. The result is validated when an InferenceServiceSpec is built from it.
    """
    key_value, _, effect = text.partition(":")
    key, sep, value = key_value.partition("=")
    toleration: dict[str, Any] = {"key": key} if key else {}
    if sep:
        toleration.update(operator="Equal", value=value)
    else:
        toleration["operator"] = "Exists"
    if effect:
        toleration["effect"] = effect
    return toleration


def _affinity(spec: InferenceServiceSpec) -> k8s.V1Affinity | None:
    """Node affinity on kubernetes.io/arch: affinity, not nodeSelector, because it takes several
    values (a multi-arch image) and can be a preference that still lets pods land elsewhere."""
    if not spec.arch:
        return None
    term = k8s.V1NodeSelectorTerm(
        match_expressions=[k8s.V1NodeSelectorRequirement(key=ARCH_LABEL, operator="In", values=list(spec.arch))]
    )
    if spec.arch_placement == "required":
        node_affinity = k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(node_selector_terms=[term])
        )
    else:
        node_affinity = k8s.V1NodeAffinity(
            preferred_during_scheduling_ignored_during_execution=[
                k8s.V1PreferredSchedulingTerm(weight=100, preference=term)
            ]
        )
    return k8s.V1Affinity(node_affinity=node_affinity)


def _tolerations(spec: InferenceServiceSpec) -> list[k8s.V1Toleration] | None:
    if not spec.tolerations:
        return None
    return [
        k8s.V1Toleration(
            key=t.get("key"),
            operator=t.get("operator", "Equal"),
            value=t.get("value"),
            effect=t.get("effect"),
            toleration_seconds=t.get("tolerationSeconds"),
        )
        for t in spec.tolerations
    ]


def restricted_pod_security() -> k8s.V1PodSecurityContext:
    """Pod Security Standards "restricted", as the images run (uid/gid 10001); `fs_group` keeps mounted
    volumes (model files, the projected token) readable for that user."""
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        run_as_group=RUN_AS_USER,
        fs_group=RUN_AS_USER,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def restricted_container_security(seccomp_profile: bool = False) -> k8s.V1SecurityContext:
    """The container half of "restricted": read-only root filesystem, no privilege escalation, no
    capabilities. `seccomp_profile` repeats the pod's RuntimeDefault profile on the container."""
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        run_as_group=RUN_AS_USER,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault") if seccomp_profile else None,
    )


def build_inference_service(spec: InferenceServiceSpec) -> V1beta1InferenceService:
    """The InferenceService for one registered version, from typed SDK models only.

    The custom container carries STORAGE_URI, which makes KServe inject its storage-initializer
    (credentials from the ServiceAccount's Secret) and mount the files at /mnt/models; the
    predictor then loads that directory and never needs the store itself.
    """
    annotations = {ANNOTATION_DEPLOYMENT_MODE: spec.deployment_mode}
    env = [
        k8s.V1EnvVar(name=STORAGE_URI_ENV, value=spec.storage_uri),
        # Everything the process writes goes to the /tmp emptyDir; the root filesystem is read-only.
        k8s.V1EnvVar(name="HOME", value="/tmp"),
        k8s.V1EnvVar(name=ENV_STATE_DIR, value="/tmp/tsr"),
    ]
    if spec.enable_prometheus_scraping:
        annotations[ANNOTATION_PROMETHEUS] = "true"
        # KServe reads the scrape port from this variable; /metrics is served on the HTTP port.
        env.append(k8s.V1EnvVar(name=PROMETHEUS_PORT_ENV, value=str(spec.http_port)))
    container = k8s.V1Container(
        name=KSERVE_CONTAINER,
        image=spec.image,
        image_pull_policy="IfNotPresent",
        args=[
            "--model",
            MODEL_MOUNT_PATH,
            "--model-name",
            spec.model_name,
            "--http-port",
            str(spec.http_port),
            "--threads",
            str(spec.threads),
        ],
        env=env,
        ports=[k8s.V1ContainerPort(container_port=spec.http_port, name="http1", protocol="TCP")],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": spec.cpu_request, "memory": spec.memory_request},
            limits={"cpu": spec.cpu_limit, "memory": spec.memory_limit},
        ),
        readiness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path=f"/v2/models/{spec.model_name}/ready", port=spec.http_port),
            period_seconds=5,
            failure_threshold=3,
        ),
        liveness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/v2/health/live", port=spec.http_port),
            initial_delay_seconds=30,
            period_seconds=15,
            failure_threshold=4,
        ),
        security_context=restricted_container_security(),
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
    )
    predictor = V1beta1PredictorSpec(
        containers=[container],
        service_account_name=spec.service_account,
        automount_service_account_token=False,  # the predictor never calls the Kubernetes API
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        canary_traffic_percent=spec.canary_traffic_percent,
        scale_target=spec.scale_target,
        scale_metric=spec.scale_metric,
        node_selector=dict(spec.node_selector) or None,
        affinity=_affinity(spec),
        tolerations=_tolerations(spec),
        security_context=restricted_pod_security(),  # fs_group: the storage-initializer's /mnt/models stays readable
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=spec.tmp_size_limit))],
    )
    return V1beta1InferenceService(
        api_version=KSERVE_V1BETA1,
        kind=KSERVE_KIND_INFERENCESERVICE,
        metadata=k8s.V1ObjectMeta(
            name=spec.name, namespace=spec.namespace, labels=_labels(spec), annotations=annotations
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def build_service_account(
    namespace: str, name: str = DEFAULT_SERVICE_ACCOUNT, secret_name: str = DEFAULT_S3_SECRET
) -> k8s.V1ServiceAccount:
    """The predictor's identity; KServe's storage-initializer reads the S3 credentials of its Secret."""
    return k8s.V1ServiceAccount(
        api_version="v1",
        kind="ServiceAccount",
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=dict(_PART_OF)),
        secrets=[k8s.V1ObjectReference(name=secret_name)],
        automount_service_account_token=False,
    )


def build_s3_secret(
    namespace: str,
    secret_name: str,
    endpoint: str,
    use_https: bool,
    access_key: str,
    secret_key: str,
    region: str | None = None,
    verify_ssl: bool | None = None,
) -> k8s.V1Secret:
    """The S3 Secret in KServe's layout (AWS_* keys + s3-* annotations) for the storage-initializer.

    Credentials come only from the arguments (no defaults) and the result is meant for the API
    server, never for a file in the repository. `endpoint` is host:port; a scheme, if given,
    must agree with `use_https`.
    """
    if not access_key or not secret_key:
        raise ValueError("access_key and secret_key are required")
    for scheme, secure in (("https://", True), ("http://", False)):
        if endpoint.startswith(scheme):
            if secure != use_https:
                raise ValueError(f"endpoint {endpoint!r} contradicts use_https={use_https}")
            endpoint = endpoint[len(scheme) :]
    endpoint = endpoint.rstrip("/")
    if not endpoint or "/" in endpoint:
        raise ValueError(f"endpoint {endpoint!r} must be host[:port]")
    annotations = {ANNOTATION_S3_ENDPOINT: endpoint, ANNOTATION_S3_USEHTTPS: "1" if use_https else "0"}
    if region:
        annotations[ANNOTATION_S3_REGION] = region
    if verify_ssl is not None:
        annotations[ANNOTATION_S3_VERIFYSSL] = "1" if verify_ssl else "0"
    return k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=k8s.V1ObjectMeta(
            name=secret_name, namespace=namespace, labels=dict(_PART_OF), annotations=annotations
        ),
        string_data={S3_ACCESS_KEY_ID: access_key, S3_SECRET_ACCESS_KEY: secret_key},
    )


def build_s3_secret_and_service_account(
    namespace: str,
    *,
    endpoint: str,
    use_https: bool,
    access_key: str,
    secret_key: str,
    region: str | None = None,
    verify_ssl: bool | None = None,
    secret_name: str = DEFAULT_S3_SECRET,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
) -> tuple[k8s.V1Secret, k8s.V1ServiceAccount]:
    """The Secret plus the ServiceAccount that lends it to the storage-initializer, names matching."""
    secret = build_s3_secret(namespace, secret_name, endpoint, use_https, access_key, secret_key, region, verify_ssl)
    return secret, build_service_account(namespace, service_account, secret_name)


# ---- serialization -------------------------------------------------------------------------------
def to_manifest_dict(obj: Any) -> dict[str, Any]:
    """The API-server JSON form (camelCase keys, None fields dropped) of an SDK object."""
    data: dict[str, Any] = k8s.ApiClient().sanitize_for_serialization(obj)
    return data


def _model_class(name: str) -> type:
    """kserve's own models first, then the kubernetes client's (V1Container & co live there)."""
    found = getattr(kserve.models, name, None) or getattr(k8s, name, None)
    if found is None:
        raise TypeError(f"unknown SDK model {name!r}")
    return found  # type: ignore[no-any-return]


def _from_json(data: Any, type_name: str) -> Any:
    if data is None:
        return None
    if type_name.startswith("list["):
        return [_from_json(item, type_name[5:-1]) for item in data]
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {k: _from_json(v, value_type) for k, v in data.items()}
    if type_name in {"str", "int", "float", "bool", "object", "ResourceQuantity", "datetime", "date"}:
        return data
    cls = _model_class(type_name)
    kwargs = {
        attr: _from_json(data[json_key], cls.openapi_types[attr])  # type: ignore[attr-defined]
        for attr, json_key in cls.attribute_map.items()  # type: ignore[attr-defined]
        if json_key in data
    }
    return cls(**kwargs)


def from_manifest_dict(data: Mapping[str, Any], type_name: str = "V1beta1InferenceService") -> Any:
    """The inverse of to_manifest_dict for kserve + kubernetes models (kserve's ApiClient cannot
    deserialize the kubernetes types that its models embed)."""
    return _from_json(dict(data), type_name)


def render_yaml(objs: Sequence[Any], header: str = "") -> str:
    """Multi-document YAML, byte-identical for identical objects (sorted keys, fixed layout)."""
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    docs = [
        "---\n" + yaml.safe_dump(to_manifest_dict(o), sort_keys=True, default_flow_style=False, width=1000)
        for o in objs
    ]
    return comment + "".join(docs)


# ---- cluster -------------------------------------------------------------------------------------
def kube_api_client(kube_config: str | None = None) -> k8s.ApiClient:
    """An API client from `kube_config`, else the in-cluster service account, else ~/.kube/config."""
    from kubernetes import config as k8s_config

    if kube_config is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass  # a half-mounted service account: try a kubeconfig instead
    try:
        return k8s_config.new_client_from_config(config_file=kube_config)
    except (k8s_config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = kube_config or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise DeployError(
            f"no Kubernetes cluster configured: not running in a pod and no usable kubeconfig at {where} ({exc})"
        ) from exc


def _isvc_args(namespace: str) -> tuple[str, str, str, str]:
    return (KSERVE_GROUP, KSERVE_V1BETA1_VERSION, namespace, KSERVE_PLURAL_INFERENCESERVICE)


def apply_inference_service(
    isvc: V1beta1InferenceService,
    namespace: str | None = None,
    *,
    kube_config: str | None = None,
    api: Any = None,
    request_timeout_s: float = 30.0,
) -> str:
    """Create the InferenceService, or replace it (PUT with the current resourceVersion) if it exists.

    Replace rather than merge-patch so that fields dropped from the spec (a finished canary's
    canaryTrafficPercent) are dropped in the cluster too; this also drops annotations other
    controllers added, which is why `deploy()` and the CLI use `rollout.rollout_inference_service`
    (merge patch with explicit nulls, history, rollback) and this stays for plain one-shot applies.
    `api` is a CustomObjectsApi; without one, it is built from `kube_config` / in-cluster config.
    No cluster exists on the development machines, so the real API path is only exercised against
    a cluster; tests use a fake `api`.
    `namespace`, when given, overrides the object's own. Returns "created <ns>/<name>" or
    "replaced <ns>/<name>"; a missing or unreachable cluster raises DeployError.
    """
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    if api is None:
        api = k8s.CustomObjectsApi(kube_api_client(kube_config))
    body = to_manifest_dict(isvc)
    if namespace:
        body["metadata"]["namespace"] = namespace
    namespace, name = body["metadata"].get("namespace"), body["metadata"]["name"]
    if not namespace:
        raise ValueError(f"InferenceService {name} has no namespace")
    args = _isvc_args(namespace)
    try:
        for _attempt in range(3):
            try:
                current = api.get_namespaced_custom_object(*args, name, _request_timeout=request_timeout_s)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                api.create_namespaced_custom_object(*args, body, _request_timeout=request_timeout_s)
                return f"created {namespace}/{name}"
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            # A PUT replaces metadata too: keep KServe's finalizer, or deleting the object would skip its cleanup.
            if current["metadata"].get("finalizers"):
                body["metadata"]["finalizers"] = current["metadata"]["finalizers"]
            try:
                api.replace_namespaced_custom_object(*args, name, body, _request_timeout=request_timeout_s)
            except ApiException as exc:
                if exc.status == 409:  # changed between our read and write: read again
                    continue
                raise
            return f"replaced {namespace}/{name}"
    except ApiException as exc:
        raise DeployError(
            f"Kubernetes API refused InferenceService {namespace}/{name}: {exc.status} {exc.reason}: {exc.body}"
        ) from exc
    except (HTTPError, OSError) as exc:
        raise DeployError(f"Kubernetes API unreachable while applying {namespace}/{name}: {exc}") from exc
    raise DeployError(f"InferenceService {namespace}/{name} kept changing under us (409 three times)")


def wait_for_inference_service(
    name: str,
    namespace: str,
    api: Any,
    timeout_s: float = 600.0,
    poll_s: float = 5.0,
    canary_percent: int | None = None,
) -> str:
    """Poll until the controller reports Ready for the current generation; return status.url.

    "Ready" is `rollout.rollout_state`: the Ready condition for the generation we wrote
    (`observedGeneration`) and, where KServe reports Knative revisions, the newest revision ready
    with the traffic asked for (`canary_percent`, else all of it). Raises DeployError on timeout
    with the conditions that are not True, which is where KServe says why (image pull,
    storage-initializer, failing readiness probe).
    """
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    from components.deploy.rollout import rollout_state  # rollout.py imports this module

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            obj = api.get_namespaced_custom_object(*_isvc_args(namespace), name, _request_timeout=30)
        except (ApiException, HTTPError, OSError) as exc:
            raise DeployError(f"reading InferenceService {namespace}/{name} failed: {exc}") from exc
        done, why = rollout_state(obj, canary_percent)
        if done:
            return str((obj.get("status") or {}).get("url") or "")
        if time.monotonic() >= deadline:
            raise DeployError(f"InferenceService {namespace}/{name} not Ready after {timeout_s:.0f}s: {why}")
        time.sleep(poll_s)


def cluster_endpoint(name: str, namespace: str) -> str:
    """The predictor's in-cluster base URL; the `<isvc>-predictor` Service exists in both modes."""
    return f"http://{name}-predictor.{namespace}.svc.cluster.local"


# ---- local mode ----------------------------------------------------------------------------------
def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _log_tail(path: Path, max_chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-max_chars:]
    except OSError:
        return "(no log)"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def start_local_predictor(
    model_uri: str,
    model_name: str,
    state_dir: Path,
    store: StoreConfig | None = None,
    port: int | None = None,
    timeout_s: float = 180.0,
    threads: int | None = None,
    command: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Start `python -m serving` detached and wait for /v2/models/<name>/ready; return the record.

    Detached (its own session) so that it outlives the pipeline step that started it; pid, port,
    URL and log path go to `<state_dir>/predictor.json` for whoever talks to it or stops it.
    A predictor already recorded there is stopped first: one local endpoint, the newest model.
    The store reaches the child through the environment (StoreConfig.env()), never argv.
    `command` replaces `python -m serving` (the flags are appended); tests pass a fake server.
    `extra_args` are more `python -m serving` flags (e.g. `--reload-interval` to follow `champion`).
    """
    stop_local_predictor(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = state_dir / LOCAL_LOG_FILE
    prefix = list(command) if command is not None else [sys.executable, "-m", "serving"]
    argv = [*prefix, "--model", model_uri, "--model-name", model_name]
    argv += ["--http-port", str(port)]
    if threads:
        argv += ["--threads", str(threads)]
    argv += list(extra_args)
    env = {**os.environ, **(store.env() if store is not None else {})}
    env.setdefault(ENV_STATE_DIR, str(state_dir))
    with log_path.open("wb") as log_fh:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    info: dict[str, Any] = {
        "pid": proc.pid,
        "start_time": proc_start_time(proc.pid),
        "port": port,
        "url": url,
        "model_uri": model_uri,
        "model_name": model_name,
        "log": str(log_path),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record = state_dir / LOCAL_STATE_FILE
    _write_json(record, info)
    ready_url = f"{url}/v2/models/{model_name}/ready"
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            record.unlink(missing_ok=True)
            raise DeployError(
                f"local predictor exited with code {code} before it was ready; {log_path}:\n{_log_tail(log_path)}"
            )
        if _ready(ready_url):
            return info
        if time.monotonic() >= deadline:
            stop_local_predictor(state_dir, timeout_s=5)  # it never served: no requests to drain
            raise DeployError(
                f"local predictor not ready within {timeout_s:.0f}s at {ready_url}; {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.5)


def read_local_predictor(state_dir: Path) -> dict[str, Any]:
    """The record written by start_local_predictor ({pid, port, url, model_uri, model_name, log, ...})."""
    path = state_dir / LOCAL_STATE_FILE
    if not path.is_file():
        raise DeployError(f"no local predictor recorded in {path}")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def stop_local_predictor(state_dir: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM the predictor's process group (KServe drains in-flight requests), SIGKILL if it
    lingers, then remove the record. Returns whether a running predictor was stopped."""
    path = state_dir / LOCAL_STATE_FILE
    if not path.is_file():
        return False
    try:
        info = json.loads(path.read_text())
        pid, start_time = int(info["pid"]), info.get("start_time")
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        path.unlink(missing_ok=True)
        return False
    stopped = terminate(pid, start_time, timeout_s, signal_fn=send_signal_to_group)
    path.unlink(missing_ok=True)
    return stopped


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
    deployment_mode: str = "Standard",
    canary_traffic_percent: int | None = None,
    manifest_path: Path | None = None,
    kube_config: str | None = None,
    cluster_ready_timeout_s: float = 600.0,
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
        from components.deploy.rollout import rollout_inference_service  # it imports this module

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
    info = start_local_predictor(model_uri, model_name, state_dir, store, port, ready_timeout_s, threads, command)
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
) -> dict[str, Any]:
    """The deploy step's scalar parameters as `InferenceServiceSpec` fields (`deploy(spec_options=...)`).

    Pipeline parameters are plain scalars a person types into the Kubeflow UI, so "unset" is spelled
    "" or 0 and lists are comma-separated (`arch="arm64,amd64"`, `tolerations="arch=arm64:NoSchedule"`,
    kubectl's taint syntax). Everything is validated by `InferenceServiceSpec`, before any API call.
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
    }


# ---- committed manifests -------------------------------------------------------------------------
def example_model_uri(model_name: str = DEFAULT_MODEL_NAME, version: str = PLACEHOLDER_VERSION) -> str:
    return f"s3://models/{model_name}/{version}"


MANIFEST_FILE = "inferenceservice.yaml"
MANIFESTS_DIR = REPO_ROOT / "manifests"


def write_manifests(
    out_dir: Path = MANIFESTS_DIR,
    model_uri: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    image: str = DEFAULT_PREDICTOR_IMAGE,
) -> Path:
    """Write <out_dir>/inferenceservice.yaml: the predictor's ServiceAccount, then its InferenceService.

    The committed copy uses PLACEHOLDER_VERSION: KServe needs a concrete version and the
    repository cannot know one. The S3 Secret is deliberately not written (see manifests/README.md).
    """
    model_uri = model_uri or example_model_uri()
    spec = InferenceServiceSpec(
        name=isvc_name(DEFAULT_MODEL_NAME), namespace=namespace, storage_uri=model_uri, image=image
    )
    lines = [
        "Generated by `python -m components.deploy.deploy` from typed kserve/kubernetes SDK objects; do not edit.",
        f"STORAGE_URI: {model_uri}",
        f"Needs the Secret {DEFAULT_S3_SECRET} in namespace {namespace} first (manifests/README.md shows how).",
    ]
    if PLACEHOLDER_VERSION in model_uri:
        lines.append(
            f"{PLACEHOLDER_VERSION} is a placeholder: regenerate with --model-uri s3://models/<name>/<version> "
            "(a version from the registry) before applying."
        )
    text = render_yaml([build_service_account(namespace), build_inference_service(spec)], header="\n".join(lines))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST_FILE
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m components.deploy.deploy [--out DIR] [--model-uri URI]`: regenerate the manifests."""
    parser = argparse.ArgumentParser(prog="python -m components.deploy.deploy", description=write_manifests.__doc__)
    parser.add_argument("--out", "--write-manifests", dest="out", type=Path, default=MANIFESTS_DIR, metavar="DIR")
    parser.add_argument("--model-uri", default=None, help=f"default {example_model_uri()}")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    parser.add_argument("--image", default=DEFAULT_PREDICTOR_IMAGE)
    args = parser.parse_args(argv)
    print(write_manifests(args.out, args.model_uri, args.namespace, args.image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
