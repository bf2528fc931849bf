"""The platform's InferenceService and the predictor's identity, built from typed kserve/kubernetes SDK objects.

Cluster objects are built only from the `kserve` and `kubernetes` SDK models, so what we render
is what the API server's schema expects. No credential ever appears in them: KServe's
storage-initializer finds the S3 Secret through the predictor's ServiceAccount and downloads
the version to /mnt/models before the predictor starts. The deploy step, `tsr deploy` and the
manifest generators all build through here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec
from kserve.constants.constants import (
    KSERVE_GROUP,
    KSERVE_KIND_INFERENCESERVICE,
    KSERVE_V1BETA1,
)
from kubernetes import client as k8s

from tsr.core.config import ENV_STATE_DIR
from tsr.core.registry import CHAMPION, DEFAULT_MODEL_NAME, check_name
from tsr.core.store import split_s3_uri
from tsr.kube.labels import ARCH_LABEL, OS_LABEL, PART_OF
from tsr.kube.placement import (
    Toleration,
    arch_placement_affinity,
    as_toleration,
    check_arch,
    check_arch_placement,
)
from tsr.kube.placement import parse_toleration as parse_toleration  # re-exported for tsr.kube.rollout

DEFAULT_NAMESPACE = "tsr"


DEFAULT_PREDICTOR_IMAGE = "ghcr.io/tsr-platform/tsr-predictor:0.1.0"


DEFAULT_SERVICE_ACCOUNT = "tsr-predictor"


# KServe's layout (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY + s3-* annotations), which differs from
# the pipeline steps' `tsr-s3-credentials` Secret (endpoint / accesskey / secretkey / secure keys).
DEFAULT_S3_SECRET = "tsr-predictor-s3"
# The pipeline steps' Secret: its keys become the store's environment variables in each step.
PIPELINE_S3_SECRET = "tsr-s3-credentials"
PIPELINE_S3_SECRET_ENV = {
    "endpoint": "TSR_S3_ENDPOINT",
    "accesskey": "TSR_S3_ACCESS_KEY",
    "secretkey": "TSR_S3_SECRET_KEY",
    "secure": "TSR_S3_SECURE",
}


DEFAULT_HTTP_PORT = 8080


PLACEHOLDER_VERSION = "REPLACE_WITH_VERSION"


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


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


# Which metrics KServe's autoscalers understand per mode: Knative's KPA scales on requests in flight or
# per second; Standard mode's HPA on resource utilisation (percent of the request).
SCALE_METRICS = {"Knative": ("concurrency", "rps"), "Standard": ("cpu", "memory")}


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
    node_selector: dict[str, str] = field(default_factory=lambda: {OS_LABEL: "linux"})
    enable_prometheus_scraping: bool = True
    http_port: int = DEFAULT_HTTP_PORT
    torch_threads: int | None = None  # None: derived from cpu_limit
    tmp_size_limit: str = "512Mi"  # the writable /tmp under a read-only root filesystem
    scale_target: int | None = None  # autoscaler target for scale_metric (KServe's own default when None)
    scale_metric: str | None = None  # Knative: concurrency | rps; Standard: cpu | memory (SCALE_METRICS)
    arch: tuple[str, ...] = ()  # kubernetes.io/arch values the image runs on (amd64, arm64, ...); () = any
    arch_placement: str = "required"  # required: only those nodes; preferred: those first, others allowed
    # Toleration objects, or dicts of V1Toleration fields (key, operator, value, effect, tolerationSeconds)
    tolerations: tuple[Toleration | Mapping[str, Any], ...] = ()

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
        an arch constraint stated twice, a toleration against tsr.kube.placement's rules."""
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
            check_arch(value)
        check_arch_placement(self.arch_placement)
        if self.arch and ARCH_LABEL in self.node_selector:
            raise ValueError(f"give the architecture either as arch or as node_selector[{ARCH_LABEL!r}], not both")
        self.tolerations = tuple(as_toleration(t) for t in self.tolerations)

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
        **PART_OF,
        "app.kubernetes.io/name": "tsr-predictor",
        "app.kubernetes.io/component": "predictor",
        "app.kubernetes.io/instance": spec.name,
    }


def _tolerations(spec: InferenceServiceSpec) -> list[k8s.V1Toleration] | None:
    return [as_toleration(t).to_k8s() for t in spec.tolerations] or None


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
        affinity=arch_placement_affinity(spec.arch, spec.arch_placement),
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
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=dict(PART_OF)),
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
        metadata=k8s.V1ObjectMeta(name=secret_name, namespace=namespace, labels=dict(PART_OF), annotations=annotations),
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


def example_model_uri(model_name: str = DEFAULT_MODEL_NAME, version: str = PLACEHOLDER_VERSION) -> str:
    return f"s3://models/{model_name}/{version}"
