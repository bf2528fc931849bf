"""The InferenceService's typed spec, `InferenceServiceSpec`: the one place the predictor's deployment defaults
(image, replicas, resources, deployment mode, placement) are written.

`tsr deploy`, `tsr.kube.rollout.deploy_command`, the deploy step's logic and the pipeline function's serving
parameters take their defaults from here. The deploy step's KFP signature and the Helm chart's values must stay
literal; tests/test_defaults.py holds them to these.

Neither the kserve nor the kubernetes SDK is imported here (the objects are built in
`tsr.kube.inference_service`), so the `tsr` command line can read these defaults when it starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.config import ServeConfig
from tsr.core.registry import CHAMPION, DEFAULT_MODEL_NAME, check_name
from tsr.core.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME
from tsr.core.store import split_s3_uri
from tsr.kube.labels import ARCH_LABEL, OS_LABEL
from tsr.kube.placement import Toleration, as_toleration, check_arch, check_arch_placement

DEFAULT_NAMESPACE = "tsr"


DEFAULT_PREDICTOR_IMAGE = "ghcr.io/tsr-platform/tsr-predictor:0.1.0"


DEFAULT_SERVICE_ACCOUNT = "tsr-predictor"


DEFAULT_HTTP_PORT = ServeConfig.http_port  # the predictor's own default port


# Signed model versions (tsr.core.signing) in a cluster: the register step signs with the private key of the
# Secret SIGNING_SECRET; every reader (the evaluate step, the predictor) verifies with the public key of the
# ConfigMap SIGNING_PUBLIC_CONFIG_MAP. Each is mounted read-only as a directory whose file is named by its key
# (docs/operator-guide.md "Model signing keys" creates both), and $TSR_SIGNING_KEY / $TSR_SIGNING_PUBLIC_KEY
# name the file.
SIGNING_SECRET = "tsr-model-signing"


SIGNING_PUBLIC_CONFIG_MAP = "tsr-model-signing-public"


SIGNING_SECRET_KEY = PRIVATE_KEY_NAME  # the Secret's key: the private key's PEM (PKCS#8 or SEC1)


SIGNING_PUBLIC_CONFIG_MAP_KEY = PUBLIC_KEY_NAME  # the ConfigMap's key: the public key's PEM (SubjectPublicKeyInfo)


SIGNING_KEY_DIR = "/etc/tsr/signing"  # the Secret's mount (register step)


SIGNING_PUBLIC_KEY_DIR = "/etc/tsr/signing-public"  # the ConfigMap's mount (evaluate step, predictor)


SIGNING_KEY_PATH = f"{SIGNING_KEY_DIR}/{SIGNING_SECRET_KEY}"


SIGNING_PUBLIC_KEY_PATH = f"{SIGNING_PUBLIC_KEY_DIR}/{SIGNING_PUBLIC_CONFIG_MAP_KEY}"


# How long a rollout (deploy, promote, rollback) waits for the InferenceService to become Ready.
READY_TIMEOUT_S = 600.0


# KServe >= 0.15 names its modes Standard (Deployment + Service + HPA) and Knative (serverless,
# revisions, canaries); the controller still accepts the old names and maps them. The Python SDK
# (0.21) carries no constants for these: the values are the controller's (pkg/constants/constants.go:
# Standard, Knative, LegacyRawDeployment="RawDeployment", LegacyServerless="Serverless").
DEPLOYMENT_MODES = ("Standard", "Knative")


LEGACY_DEPLOYMENT_MODES = {"RawDeployment": "Standard", "Serverless": "Knative"}


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


# Which metrics KServe's autoscalers understand per mode: Knative's KPA scales on requests in flight or
# per second; Standard mode's HPA on resource utilisation (percent of the request).
SCALE_METRICS = {"Knative": ("concurrency", "rps"), "Standard": ("cpu", "memory")}


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
    # The ConfigMap holding the public key the predictor verifies every version with (TSR_REQUIRE_SIGNED=1).
    signing_public_key_config_map: str = SIGNING_PUBLIC_CONFIG_MAP
    # The operator's opt-in (TSR_ALLOW_UNSIGNED=1): serve unsigned versions too, with a warning at every load.
    allow_unsigned: bool = False

    def __post_init__(self) -> None:
        self.deployment_mode = LEGACY_DEPLOYMENT_MODES.get(self.deployment_mode, self.deployment_mode)
        if self.deployment_mode not in DEPLOYMENT_MODES:
            raise ValueError(f"deployment_mode must be one of {DEPLOYMENT_MODES}, got {self.deployment_mode!r}")
        if len(self.name) > 63 or not _DNS1035.match(self.name):
            raise ValueError(f"name {self.name!r} must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter)")
        for what, value in (
            ("namespace", self.namespace),
            ("service_account", self.service_account),
            ("signing_public_key_config_map", self.signing_public_key_config_map),
        ):
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
