"""`manifests/retrain/`: the cluster objects that run the retraining webhook receiver (`tsr retrain-webhook`).

Alertmanager sends the drift and low-confidence alerts to the receiver, which starts a run of the compiled
pipeline on the KFP backend (pipelines/retrain.py). This module renders, from typed `kubernetes.client` objects,
everything that takes: a ServiceAccount with no Kubernetes API token, two ConfigMaps (run parameters and
policy; the compiled pipeline), the Deployment, its Service and NetworkPolicy, and the Alertmanager side in
both forms Alertmanager is configured in (a prometheus-operator `AlertmanagerConfig`, and a plain
`alertmanager.yml` snippet for clusters without the operator).

Opt-in and separate from the base (`kubectl apply -k manifests/retrain`): automatic retraining needs a KFP
backend and an Alertmanager, which not every cluster running the predictor has.

Why the pieces look as they do:
- The only credential is the pod's projected service-account token with KFP's audience
  (`pipelines.kubeflow.org`), mounted where kfp's `ServiceAccountTokenVolumeCredentials` reads it; the
  Kubernetes API token is not mounted, and there is no Role: the receiver talks to the KFP API only.
- The compiled pipeline travels in a ConfigMap: the component image does not contain
  `pipelines/compiled/` (.dockerignore), and this pins the pipeline the cluster retrains with to the
  committed one.
- Operator settings (endpoint, profile namespace, run service account, cooldown, daily cap) live in the
  ConfigMap and reach the command line through `$(VAR)` expansion, so one ConfigMap patch changes them;
  a checksum of the generated ConfigMaps on the pod template rolls the pod when they are regenerated.
- The alerts routed to the receiver and the alerts the receiver acts on come from one place
  (`pipelines.retrain.RetrainPolicy`) and must exist in `tsr.kube.monitoring.alerts`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
from kfp.client.client import KF_PIPELINES_ENDPOINT_ENV
from kubernetes import client as k8s

from components.factory import DEFAULT_COMPONENT_IMAGE
from pipelines.compile import COMPILED
from pipelines.retrain import RetrainPolicy
from pipelines.submit import PipelinePackage, validate_parameters
from tsr.core.config import ENV_STATE_DIR
from tsr.kube.inference_service import RUN_AS_USER, restricted_container_security, restricted_pod_security
from tsr.kube.kustomize import HEADER, KUSTOMIZATION, KUSTOMIZE_API_VERSION, KustomizeConfig, split_image
from tsr.kube.labels import NAMESPACE_NAME_LABEL, OS_LABEL, PART_OF
from tsr.kube.monitoring.alerts import AlertConfig, alert_rules
from tsr.kube.render import dump_documents

RETRAIN = "tsr-retrain"  # ServiceAccount, ConfigMap, AlertmanagerConfig and its receiver
WEBHOOK = "tsr-retrain-webhook"  # Deployment, Service, NetworkPolicy
PIPELINE_CONFIGMAP = "tsr-retrain-pipeline"
CONTAINER = "retrain-webhook"
HTTP_PORT = 8080
PORT_NAME = "http"
ALERTS_PATH = "/alerts"  # pipelines.retrain.create_app: Alertmanager's webhook_config url
HEALTH_PATH = "/healthz"

CONFIG_DIR = "/etc/tsr-retrain"
PARAMS_FILE = "params.json"
PIPELINE_FILE = COMPILED.name
# Where kfp.Client(credentials=ServiceAccountTokenVolumeCredentials(path=None)) reads the token: the
# KF_PIPELINES_SA_TOKEN_PATH variable, else the same default path; both are set to this file.
KFP_AUDIENCE = "pipelines.kubeflow.org"
KFP_TOKEN_DIR, KFP_TOKEN_FILE = posixpath.split(KF_PIPELINES_SA_TOKEN_PATH)
MIN_TOKEN_EXPIRATION_S = 600  # the API server refuses shorter projected tokens
CHECKSUM_ANNOTATION = "checksum/config"

# ConfigMap keys (operator settings) -> the variables the container's args expand with $(NAME).
SETTINGS_ENV = {
    "kfp-endpoint": KF_PIPELINES_ENDPOINT_ENV,  # kfp.Client reads it too when no host is given
    "kfp-namespace": "TSR_RETRAIN_KFP_NAMESPACE",
    "run-service-account": "TSR_RETRAIN_SERVICE_ACCOUNT",
    "cooldown-s": "TSR_RETRAIN_COOLDOWN_S",
    "max-runs-per-day": "TSR_RETRAIN_MAX_RUNS_PER_DAY",
}
# Every flag of `tsr retrain-webhook` that the Deployment passes; tests/tsr/test_cli.py checks the CLI
# accepts each one, tests/manifests/test_retrain_manifests.py that the Deployment uses only these.
RETRAIN_WEBHOOK_FLAGS = (
    "--host",
    "--port",
    "--params-file",
    "--package",
    "--kfp-in-cluster",
    "--kfp-host",
    "--namespace",
    "--service-account",
    "--cooldown-s",
    "--max-runs-per-day",
    "--alert",
)

ALERTMANAGER_CONFIG_API = "monitoring.coreos.com/v1alpha1"
RECEIVER_FILE = "alertmanager-receiver.yaml"  # plain alertmanager.yml snippet, not a kustomize resource
README = "README.md"  # hand-written; the generator never writes it
# The duration syntax of Alertmanager and of the AlertmanagerConfig CRD (its `pattern`).
_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def _positive_duration(value: str, what: str) -> str:
    if not value or value == "0" or not _DURATION.match(value):
        raise ValueError(f"{what} must be a positive Alertmanager duration such as 5m or 6h, got {value!r}")
    return value


@dataclass(frozen=True)
class WebhookRoute:
    """One Alertmanager route to one webhook receiver, rendered in both configuration syntaxes.

    The same values become the `spec` of a prometheus-operator AlertmanagerConfig (camelCase) and the
    `route`/`receivers` of a plain alertmanager.yml (snake_case), so the two cannot drift apart.
    """

    receiver: str
    alerts: tuple[str, ...]
    url: str
    group_by: tuple[str, ...] = ("alertname",)
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "6h"
    send_resolved: bool = False  # a resolved alert starts nothing

    def __post_init__(self) -> None:
        if not self.alerts or not all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", a) for a in self.alerts):
            raise ValueError(f"alerts must be alert names, got {self.alerts!r}")
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.url):
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
        _positive_duration(self.group_interval, "group_interval")
        _positive_duration(self.repeat_interval, "repeat_interval")
        if not _DURATION.match(self.group_wait):
            raise ValueError(f"group_wait must be an Alertmanager duration, got {self.group_wait!r}")

    @property
    def alertname_regex(self) -> str:
        """Alertmanager anchors regex matchers, so this matches exactly these names."""
        return "|".join(sorted(self.alerts))

    def crd_spec(self) -> dict[str, Any]:
        """`spec` of an AlertmanagerConfig (monitoring.coreos.com/v1alpha1)."""
        return {
            "route": {
                "receiver": self.receiver,
                "matchers": [{"name": "alertname", "value": self.alertname_regex, "matchType": "=~"}],
                "groupBy": list(self.group_by),
                "groupWait": self.group_wait,
                "groupInterval": self.group_interval,
                "repeatInterval": self.repeat_interval,
            },
            "receivers": [
                {"name": self.receiver, "webhookConfigs": [{"url": self.url, "sendResolved": self.send_resolved}]}
            ],
        }

    def alertmanager_yml(self) -> dict[str, Any]:
        """The same route (as a child of your root route) and receiver in alertmanager.yml syntax.

        `continue: true` keeps the alerts flowing to the routes after this one (your team's), as the
        operator does for every AlertmanagerConfig route.
        """
        return {
            "route": {
                "routes": [
                    {
                        "receiver": self.receiver,
                        "matchers": [f'alertname=~"{self.alertname_regex}"'],
                        "group_by": list(self.group_by),
                        "group_wait": self.group_wait,
                        "group_interval": self.group_interval,
                        "repeat_interval": self.repeat_interval,
                        "continue": True,
                    }
                ]
            },
            "receivers": [
                {"name": self.receiver, "webhook_configs": [{"url": self.url, "send_resolved": self.send_resolved}]}
            ],
        }


@dataclass(frozen=True)
class RetrainConfig:
    """Everything `manifests/retrain/` is rendered with; the defaults are what is committed.

    - `data_source`: what a retraining run trains on (the pipeline's `data_source`; a placeholder bucket
      here, set your own). Namespace and predictor image of the run come from the KustomizeConfig.
    - `kfp_endpoint`: the KFP API as seen from the pod (Kubeflow's documented in-cluster address);
      `kfp_namespace`: the KFP profile namespace where runs live (multi-user; single-user ignores it).
    - `run_service_account`: the service account the run's steps use (the Helm chart's runner, which may
      deploy InferenceServices); empty: the KFP profile's default.
    - `policy`: which alerts retrain, the cooldown and the daily cap (pipelines.retrain's defaults).
    - `monitoring_namespace`: where Alertmanager and Prometheus run; the only source the NetworkPolicy admits.
    - `repeat_interval`: how often Alertmanager repeats a still-firing group; equal to the cooldown, so
      each repeat may start at most one run.
    """

    component_image: str = DEFAULT_COMPONENT_IMAGE
    data_source: str = "s3://datasets/gtsrb"
    deploy_mode: str = "cluster"
    kfp_endpoint: str = "http://ml-pipeline-ui.kubeflow"
    kfp_namespace: str = "kubeflow"
    run_service_account: str = "tsr-pipeline-runner"
    policy: RetrainPolicy = field(default_factory=RetrainPolicy)
    monitoring_namespace: str = "monitoring"
    alertmanager_config_labels: Mapping[str, str] = field(default_factory=dict)
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "6h"
    token_expiration_s: int = 3600
    cpu_request: str = "50m"
    memory_request: str = "256Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "512Mi"
    tmp_size_limit: str = "64Mi"
    pipeline_package: Path = COMPILED

    def __post_init__(self) -> None:
        known = {rule.name for rule in alert_rules(AlertConfig())}
        missing = sorted(set(self.policy.alerts) - known)
        if missing:
            raise ValueError(f"alerts {missing} are not defined in tsr/kube/monitoring/alerts.py ({sorted(known)})")
        if self.token_expiration_s < MIN_TOKEN_EXPIRATION_S:
            raise ValueError(f"token_expiration_s must be >= {MIN_TOKEN_EXPIRATION_S}, got {self.token_expiration_s}")
        if not re.fullmatch(r"https?://\S+", self.kfp_endpoint):
            raise ValueError(f"kfp_endpoint must be an http(s) URL, got {self.kfp_endpoint!r}")
        for name in ("cpu_request", "memory_request", "cpu_limit", "memory_limit", "tmp_size_limit"):
            if not _QUANTITY.match(getattr(self, name)):
                raise ValueError(f"{name} is not a Kubernetes quantity: {getattr(self, name)!r}")
        self.route("default")  # durations and alert names, checked by WebhookRoute

    def route(self, namespace: str) -> WebhookRoute:
        return WebhookRoute(
            receiver=RETRAIN,
            alerts=self.policy.alerts,
            url=webhook_url(namespace),
            group_wait=self.group_wait,
            group_interval=self.group_interval,
            repeat_interval=self.repeat_interval,
        )


def webhook_url(namespace: str) -> str:
    """The receiver's URL as Alertmanager (another namespace) reaches it through the Service."""
    return f"http://{WEBHOOK}.{namespace}.svc:{HTTP_PORT}{ALERTS_PATH}"


def _labels(component: str) -> dict[str, str]:
    return {**PART_OF, "app.kubernetes.io/name": WEBHOOK, "app.kubernetes.io/component": component}


def selector_labels() -> dict[str, str]:
    """What the Deployment, Service and NetworkPolicy select the receiver's pods by."""
    return {"app.kubernetes.io/name": WEBHOOK, "app.kubernetes.io/component": "retrain"}


def _meta(name: str, namespace: str, component: str = "retrain") -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(name=name, namespace=namespace, labels=_labels(component))


# ---- objects -----------------------------------------------------------------------------------------
def run_parameters(cfg: KustomizeConfig, retrain: RetrainConfig) -> dict[str, Any]:
    """The pipeline parameters of every retraining run, checked against the compiled package's inputs."""
    params = {
        "data_source": retrain.data_source,
        "namespace": cfg.namespace,
        "deploy_mode": retrain.deploy_mode,
        "predictor_image": cfg.image,
    }
    return validate_parameters(params, PipelinePackage.load(retrain.pipeline_package).parameters)


def settings(retrain: RetrainConfig) -> dict[str, str]:
    """The operator settings of the ConfigMap (strings: they become environment variables)."""
    values = {
        "kfp-endpoint": retrain.kfp_endpoint,
        "kfp-namespace": retrain.kfp_namespace,
        "run-service-account": retrain.run_service_account,
        "cooldown-s": f"{retrain.policy.cooldown_s:g}",
        "max-runs-per-day": str(retrain.policy.max_runs_per_day),
    }
    if set(values) != set(SETTINGS_ENV):
        raise RuntimeError(f"settings drifted from SETTINGS_ENV: {sorted(values)} != {sorted(SETTINGS_ENV)}")
    return values


def build_config_maps(cfg: KustomizeConfig, retrain: RetrainConfig) -> tuple[k8s.V1ConfigMap, k8s.V1ConfigMap]:
    """`tsr-retrain` (run parameters + settings) and `tsr-retrain-pipeline` (the compiled pipeline)."""
    params = json.dumps(run_parameters(cfg, retrain), indent=2, sort_keys=True) + "\n"
    config = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=_meta(RETRAIN, cfg.namespace),
        data={PARAMS_FILE: params, **settings(retrain)},
    )
    pipeline = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=_meta(PIPELINE_CONFIGMAP, cfg.namespace),
        data={PIPELINE_FILE: retrain.pipeline_package.read_text()},
    )
    return config, pipeline


def build_service_account(namespace: str) -> k8s.V1ServiceAccount:
    """The receiver's identity. No API token is mounted from it: the pod only calls the KFP API, with a
    projected token whose audience the Kubernetes API server does not accept."""
    return k8s.V1ServiceAccount(
        api_version="v1",
        kind="ServiceAccount",
        metadata=_meta(RETRAIN, namespace),
        automount_service_account_token=False,
    )


def webhook_args(retrain: RetrainConfig) -> list[str]:
    """The `tsr retrain-webhook` flags; settings come from the ConfigMap as $(VAR) references."""

    def ref(key: str) -> str:
        return f"$({SETTINGS_ENV[key]})"

    args = [
        "--host",
        "0.0.0.0",
        "--port",
        str(HTTP_PORT),
        "--params-file",
        posixpath.join(CONFIG_DIR, PARAMS_FILE),
        "--package",
        posixpath.join(CONFIG_DIR, PIPELINE_FILE),
        "--kfp-in-cluster",
        "--kfp-host",
        ref("kfp-endpoint"),
        "--namespace",
        ref("kfp-namespace"),
        "--service-account",
        ref("run-service-account"),
        "--cooldown-s",
        ref("cooldown-s"),
        "--max-runs-per-day",
        ref("max-runs-per-day"),
    ]
    for alert in retrain.policy.alerts:
        args += ["--alert", alert]
    return args


def config_checksum(config_maps: Sequence[k8s.V1ConfigMap]) -> str:
    """sha256 of the ConfigMaps' data: a change to the generated config changes the pod template."""
    data = [{"name": c.metadata.name, "data": c.data} for c in config_maps]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def build_deployment(namespace: str, retrain: RetrainConfig, checksum: str) -> k8s.V1Deployment:
    """One receiver pod, locked down: non-root, read-only root, no capabilities, no API token.

    Recreate, not a rolling update: the cooldown and daily cap are kept in the process, so two pods at
    once could each start a run for the same alert.
    """
    env = [
        # Everything the process writes goes to the /tmp emptyDir; the root filesystem is read-only.
        k8s.V1EnvVar(name="HOME", value="/tmp"),
        k8s.V1EnvVar(name=ENV_STATE_DIR, value="/tmp/tsr"),
        k8s.V1EnvVar(name=KF_PIPELINES_SA_TOKEN_ENV, value=posixpath.join(KFP_TOKEN_DIR, KFP_TOKEN_FILE)),
        *(
            k8s.V1EnvVar(
                name=var,
                value_from=k8s.V1EnvVarSource(config_map_key_ref=k8s.V1ConfigMapKeySelector(name=RETRAIN, key=key)),
            )
            for key, var in SETTINGS_ENV.items()
        ),
    ]
    probe = k8s.V1HTTPGetAction(path=HEALTH_PATH, port=PORT_NAME)
    container = k8s.V1Container(
        name=CONTAINER,
        image=retrain.component_image,
        image_pull_policy="IfNotPresent",
        command=["tsr", "retrain-webhook"],
        args=webhook_args(retrain),
        env=env,
        ports=[k8s.V1ContainerPort(container_port=HTTP_PORT, name=PORT_NAME, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": retrain.cpu_request, "memory": retrain.memory_request},
            limits={"cpu": retrain.cpu_limit, "memory": retrain.memory_limit},
        ),
        startup_probe=k8s.V1Probe(http_get=probe, period_seconds=2, failure_threshold=30),
        readiness_probe=k8s.V1Probe(http_get=probe, period_seconds=10, failure_threshold=3),
        liveness_probe=k8s.V1Probe(http_get=probe, period_seconds=20, failure_threshold=3, timeout_seconds=5),
        security_context=restricted_container_security(seccomp_profile=True),
        volume_mounts=[
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
            k8s.V1VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
            k8s.V1VolumeMount(name="kfp-token", mount_path=KFP_TOKEN_DIR, read_only=True),
        ],
    )
    volumes = [
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=retrain.tmp_size_limit)),
        k8s.V1Volume(
            name="config",
            projected=k8s.V1ProjectedVolumeSource(
                sources=[
                    k8s.V1VolumeProjection(
                        config_map=k8s.V1ConfigMapProjection(
                            name=name, items=[k8s.V1KeyToPath(key=key, path=key)], optional=False
                        )
                    )
                    for name, key in ((RETRAIN, PARAMS_FILE), (PIPELINE_CONFIGMAP, PIPELINE_FILE))
                ]
            ),
        ),
        k8s.V1Volume(
            name="kfp-token",
            projected=k8s.V1ProjectedVolumeSource(
                sources=[
                    k8s.V1VolumeProjection(
                        service_account_token=k8s.V1ServiceAccountTokenProjection(
                            audience=KFP_AUDIENCE, expiration_seconds=retrain.token_expiration_s, path=KFP_TOKEN_FILE
                        )
                    )
                ]
            ),
        ),
    ]
    pod = k8s.V1PodSpec(
        service_account_name=RETRAIN,
        automount_service_account_token=False,
        enable_service_links=False,  # no Docker-link variables of every Service in the namespace
        containers=[container],
        volumes=volumes,
        node_selector={OS_LABEL: "linux"},
        security_context=restricted_pod_security(),  # fs_group: the projected token stays readable
    )
    return k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=_meta(WEBHOOK, namespace),
        spec=k8s.V1DeploymentSpec(
            replicas=1,
            revision_history_limit=3,
            strategy=k8s.V1DeploymentStrategy(type="Recreate"),
            selector=k8s.V1LabelSelector(match_labels=selector_labels()),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(
                    labels={**_labels("retrain"), **selector_labels()},
                    annotations={CHECKSUM_ANNOTATION: checksum},
                ),
                spec=pod,
            ),
        ),
    )


def build_service(namespace: str) -> k8s.V1Service:
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=_meta(WEBHOOK, namespace),
        spec=k8s.V1ServiceSpec(
            type="ClusterIP",
            selector=selector_labels(),
            ports=[k8s.V1ServicePort(name=PORT_NAME, port=HTTP_PORT, target_port=PORT_NAME, protocol="TCP")],
        ),
    )


def build_network_policy(namespace: str, monitoring_namespace: str) -> k8s.V1NetworkPolicy:
    """Ingress to the receiver on its HTTP port from the monitoring namespace only: Alertmanager posts
    alerts there, Prometheus scrapes /metrics there. Egress stays open (the KFP endpoint is configurable)."""
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=_meta(WEBHOOK, namespace),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels=selector_labels()),
            policy_types=["Ingress"],
            ingress=[
                k8s.V1NetworkPolicyIngressRule(
                    _from=[
                        k8s.V1NetworkPolicyPeer(
                            namespace_selector=k8s.V1LabelSelector(
                                match_labels={NAMESPACE_NAME_LABEL: monitoring_namespace}
                            )
                        )
                    ],
                    ports=[k8s.V1NetworkPolicyPort(port=HTTP_PORT, protocol="TCP")],
                )
            ],
        ),
    )


def build_alertmanager_config(namespace: str, retrain: RetrainConfig) -> dict[str, Any]:
    """The prometheus-operator AlertmanagerConfig (no Python model exists for the CRD: a dict from
    WebhookRoute, shape-checked against the CRD's schema in the tests)."""
    return {
        "apiVersion": ALERTMANAGER_CONFIG_API,
        "kind": "AlertmanagerConfig",
        "metadata": {
            "name": RETRAIN,
            "namespace": namespace,
            "labels": {**_labels("alerting"), **retrain.alertmanager_config_labels},
        },
        "spec": retrain.route(namespace).crd_spec(),
    }


# ---- rendering ---------------------------------------------------------------------------------------
def _documents(objs: Sequence[Any], *header: str) -> str:
    """YAML documents (typed objects or dicts) under the generator's header; sorted keys, no wrapping,
    multi-line strings (params.json, the compiled pipeline) as `|` blocks, readable in review."""
    return dump_documents(objs, [HEADER, *header])


def _ordered(data: Mapping[str, Any], *header: str) -> str:
    """One document, keys in the order given, no `---` (kustomization.yaml, alertmanager.yml snippets)."""
    return dump_documents([data], [HEADER, *header], separators=False, sort_keys=False)


def render_retrain(cfg: KustomizeConfig, retrain: RetrainConfig | None = None) -> dict[str, str]:
    """`retrain/`: file name -> text. README.md is hand-written and left alone."""
    retrain = retrain or RetrainConfig()
    ns = cfg.namespace
    config, pipeline = build_config_maps(cfg, retrain)
    route = retrain.route(ns)
    files = {
        "serviceaccount.yaml": _documents(
            [build_service_account(ns)],
            "The receiver's identity: no Kubernetes API token, no Role. The pod gets a projected token",
            f"with the KFP audience ({KFP_AUDIENCE}) instead; see README.md for KFP multi-user access.",
        ),
        "configmap.yaml": _documents(
            [config],
            f"{PARAMS_FILE}: the pipeline parameters of every retraining run (checked against the compiled",
            "pipeline's inputs); the other keys are the receiver's settings (args via $(VAR) expansion).",
            "Change them in your own overlay, then: kubectl -n <ns> rollout restart deployment/" + WEBHOOK,
        ),
        "pipeline-configmap.yaml": _documents(
            [pipeline],
            f"The compiled pipeline (pipelines/compiled/{COMPILED.name}) the receiver submits;",
            "regenerated with `make manifests` after `make compile`.",
        ),
        "deployment.yaml": _documents(
            [build_deployment(ns, retrain, config_checksum([config, pipeline]))],
            f"tsr retrain-webhook: POST /alerts (Alertmanager), GET /healthz, GET /metrics on port {HTTP_PORT}.",
            f"Non-root ({RUN_AS_USER}), read-only root filesystem, no capabilities, no Kubernetes API token.",
        ),
        "service.yaml": _documents([build_service(ns)], f"Alertmanager's webhook URL: {route.url}"),
        "networkpolicy.yaml": _documents(
            [build_network_policy(ns, retrain.monitoring_namespace)],
            f"Ingress on TCP {HTTP_PORT} from the namespace {retrain.monitoring_namespace!r} only "
            "(Alertmanager, Prometheus).",
        ),
        "alertmanagerconfig.yaml": _documents(
            [build_alertmanager_config(ns, retrain)],
            "prometheus-operator: routes " + ", ".join(route.alerts) + " to the receiver.",
            f"The operator adds a namespace={ns} matcher: the alerts must carry that label (README.md).",
        ),
    }
    files[RECEIVER_FILE] = _ordered(
        route.alertmanager_yml(),
        "For an Alertmanager configured by hand (no prometheus-operator); NOT a kustomize resource.",
        "Merge into alertmanager.yml: the route goes first under your root route's `routes:`, the",
        "receiver into `receivers:`. Check the result with `amtool check-config alertmanager.yml`.",
    )
    resources = [name for name in files if name != RECEIVER_FILE]
    kustomization = {
        "apiVersion": KUSTOMIZE_API_VERSION,
        "kind": "Kustomization",
        "namespace": ns,
        "labels": [{"pairs": dict(PART_OF), "includeSelectors": False}],
        "resources": resources,
        "images": [split_image(retrain.component_image)],
    }
    files[KUSTOMIZATION] = _ordered(
        kustomization,
        "Opt-in: kubectl apply -k manifests/retrain (needs a KFP backend; the AlertmanagerConfig needs",
        f"prometheus-operator's CRDs, otherwise use {RECEIVER_FILE}). See README.md.",
    )
    return files
