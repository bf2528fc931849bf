"""The platform's InferenceService and the predictor's identity, built from typed kserve/kubernetes SDK objects.

Cluster objects are built only from the `kserve` and `kubernetes` SDK models, so what we render
is what the API server's schema expects. No credential ever appears in them: KServe's
storage-initializer finds the S3 Secret through the predictor's ServiceAccount and downloads
the version to /mnt/models before the predictor starts. The deploy step, `tsr deploy` and the
manifest generators all build through here.
"""

from __future__ import annotations

import re

from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec
from kserve.constants.constants import (
    KSERVE_GROUP,
    KSERVE_KIND_INFERENCESERVICE,
    KSERVE_V1BETA1,
)
from kubernetes import client as k8s

from tsr.core.config import ENV_STATE_DIR
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.core.signing import ENV_ALLOW_UNSIGNED, ENV_PUBLIC_KEY, ENV_REQUIRE_SIGNED
from tsr.kube.labels import PART_OF
from tsr.kube.placement import arch_placement_affinity, as_toleration
from tsr.kube.placement import parse_toleration as parse_toleration  # re-exported for tsr.kube.rollout

# The spec and its defaults live in tsr.kube.spec (no SDK imports); re-exported for the builders' callers.
from tsr.kube.spec import DEFAULT_HTTP_PORT as DEFAULT_HTTP_PORT
from tsr.kube.spec import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE
from tsr.kube.spec import DEFAULT_PREDICTOR_IMAGE as DEFAULT_PREDICTOR_IMAGE
from tsr.kube.spec import DEFAULT_SERVICE_ACCOUNT as DEFAULT_SERVICE_ACCOUNT
from tsr.kube.spec import DEPLOYMENT_MODES as DEPLOYMENT_MODES
from tsr.kube.spec import LEGACY_DEPLOYMENT_MODES as LEGACY_DEPLOYMENT_MODES
from tsr.kube.spec import SCALE_METRICS as SCALE_METRICS
from tsr.kube.spec import SIGNING_KEY_DIR as SIGNING_KEY_DIR
from tsr.kube.spec import SIGNING_KEY_PATH as SIGNING_KEY_PATH
from tsr.kube.spec import SIGNING_PUBLIC_CONFIG_MAP as SIGNING_PUBLIC_CONFIG_MAP
from tsr.kube.spec import SIGNING_PUBLIC_CONFIG_MAP_KEY as SIGNING_PUBLIC_CONFIG_MAP_KEY
from tsr.kube.spec import SIGNING_PUBLIC_KEY_DIR as SIGNING_PUBLIC_KEY_DIR
from tsr.kube.spec import SIGNING_PUBLIC_KEY_PATH as SIGNING_PUBLIC_KEY_PATH
from tsr.kube.spec import SIGNING_SECRET as SIGNING_SECRET
from tsr.kube.spec import SIGNING_SECRET_KEY as SIGNING_SECRET_KEY
from tsr.kube.spec import InferenceServiceSpec as InferenceServiceSpec
from tsr.kube.spec import _check_storage_uri as _check_storage_uri

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


PLACEHOLDER_VERSION = "REPLACE_WITH_VERSION"


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


# The predictor's startup probe (also in the Helm chart's template): 120 tries 5 s apart, up to 10 minutes from
# container start to the first answer of /v2/health/live (the arm64 image under qemu-user emulation answered after
# 40-102 s in tests/arm64: docs/images.md).
STARTUP_PERIOD_S = 5
STARTUP_FAILURES = 120


SIGNING_PUBLIC_VOLUME = "model-signing-public"  # the predictor's volume of the public-key ConfigMap


class DeployError(RuntimeError):
    """A deployment could not be carried out; the message says what to fix."""


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


def signing_env(allow_unsigned: bool = False) -> list[k8s.V1EnvVar]:
    """The predictor's verification settings: the mounted public key, every directory signed (KServe's
    /mnt/models), and the operator's opt-in for unsigned versions when given."""
    env = [
        k8s.V1EnvVar(name=ENV_PUBLIC_KEY, value=SIGNING_PUBLIC_KEY_PATH),
        k8s.V1EnvVar(name=ENV_REQUIRE_SIGNED, value="1"),
    ]
    if allow_unsigned:
        env.append(k8s.V1EnvVar(name=ENV_ALLOW_UNSIGNED, value="1"))
    return env


def signing_public_key_volume(config_map: str = SIGNING_PUBLIC_CONFIG_MAP) -> k8s.V1Volume:
    """The public-key ConfigMap as a volume with its one key as a file (SIGNING_PUBLIC_KEY_PATH once mounted).
    Not optional: without the ConfigMap or its key the pod does not start (a FailedMount event names it)."""
    return k8s.V1Volume(
        name=SIGNING_PUBLIC_VOLUME,
        config_map=k8s.V1ConfigMapVolumeSource(
            name=config_map,
            items=[k8s.V1KeyToPath(key=SIGNING_PUBLIC_CONFIG_MAP_KEY, path=SIGNING_PUBLIC_CONFIG_MAP_KEY)],
        ),
    )


def build_inference_service(spec: InferenceServiceSpec) -> V1beta1InferenceService:
    """The InferenceService for one registered version, from typed SDK models only.

    The custom container carries STORAGE_URI, which makes KServe inject its storage-initializer
    (credentials from the ServiceAccount's Secret) and mount the files at /mnt/models; the
    predictor then loads that directory and never needs the store itself. Before loading it verifies the
    version's signature with the public key of the ConfigMap `spec.signing_public_key_config_map` (mounted
    read-only; TSR_REQUIRE_SIGNED=1: an unsigned directory is refused unless `spec.allow_unsigned`).
    """
    annotations = {ANNOTATION_DEPLOYMENT_MODE: spec.deployment_mode}
    env = [
        k8s.V1EnvVar(name=STORAGE_URI_ENV, value=spec.storage_uri),
        # Everything the process writes goes to the /tmp emptyDir; the root filesystem is read-only.
        k8s.V1EnvVar(name="HOME", value="/tmp"),
        k8s.V1EnvVar(name=ENV_STATE_DIR, value="/tmp/tsr"),
        *signing_env(spec.allow_unsigned),
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
        # The startup probe holds the other two back until the server first answers: a cold start (a large
        # image's first `import torch`, a slow or busy node, arm64 under emulation) gets up to
        # STARTUP_PERIOD_S * STARTUP_FAILURES seconds instead of being killed by the liveness probe.
        startup_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/v2/health/live", port=spec.http_port),
            period_seconds=STARTUP_PERIOD_S,
            failure_threshold=STARTUP_FAILURES,
        ),
        liveness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/v2/health/live", port=spec.http_port),
            period_seconds=15,
            failure_threshold=4,
        ),
        security_context=restricted_container_security(),
        volume_mounts=[
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
            k8s.V1VolumeMount(name=SIGNING_PUBLIC_VOLUME, mount_path=SIGNING_PUBLIC_KEY_DIR, read_only=True),
        ],
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
        volumes=[
            k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=spec.tmp_size_limit)),
            signing_public_key_volume(spec.signing_public_key_config_map),
        ],
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
