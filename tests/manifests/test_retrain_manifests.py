"""manifests/retrain/: the retraining webhook receiver, built by the real kustomize and checked without a cluster.

What is checked: the kustomize build; every core/apps/networking object against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict); the AlertmanagerConfig against the fields its CRD defines; the pod's
lock-down (non-root, read-only root, no capabilities, only the KFP-audience token); the NetworkPolicy; that
the Alertmanager route, the receiver's flags and the alert rules agree; that the run parameters are valid
for the compiled pipeline; the real `tsr retrain-webhook` started with the Deployment's command line against a
fake KFP API; the plain alertmanager.yml snippet with amtool; and no credentials anywhere.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH, ServiceAccountTokenVolumeCredentials

from pipelines import retrain_manifests as rm
from pipelines.compile import COMPILED
from pipelines.retrain import RetrainPolicy
from pipelines.submit import PipelinePackage, validate_parameters
from tests import crd_schema
from tests.conftest import wait_until_ok
from tests.manifests.test_kustomize import K8S_GROUPS, K8S_VERSIONS, PART_OF, build, by_kind, kustomize, one
from tests.pipelines.kfp_fake import FakeKfp
from tests.test_no_secrets import find_secrets
from tsr.core.processes import free_port
from tsr.kube import kustomize as kz
from tsr.kube.inference_service import DEFAULT_NAMESPACE
from tsr.kube.labels import NAMESPACE_NAME_LABEL
from tsr.kube.monitoring.alerts import AlertConfig, alert_rules
from tsr.local import generate as gen
from tsr.local.checkout import REPO_ROOT

RETRAIN = REPO_ROOT / "manifests" / kz.RETRAIN_DIR
Docs = list[dict[str, Any]]

# The part of the AlertmanagerConfig CRD (monitoring.coreos.com/v1alpha1) that our object uses, transcribed
# from prometheus-operator's example/prometheus-operator-crd/monitoring.coreos.com_alertmanagerconfigs.yaml
# (operator 0.93.1). The API server prunes fields a structural schema does not define, so a field missing
# here would be dropped silently on a cluster: additionalProperties is false wherever the CRD lists fields.
_CRD_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_MATCHER = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "matchType": {"type": "string", "enum": ["!=", "=", "=~", "!~"]},
        "name": {"type": "string", "minLength": 1},
        "regex": {"type": "boolean"},
        "value": {"type": "string"},
    },
}
_RECEIVER_KINDS = [
    "discordConfigs",
    "emailConfigs",
    "msteamsConfigs",
    "msteamsv2Configs",
    "opsgenieConfigs",
    "pagerdutyConfigs",
    "pushoverConfigs",
    "rocketchatConfigs",
    "slackConfigs",
    "snsConfigs",
    "telegramConfigs",
    "victoropsConfigs",
    "webexConfigs",
    "wechatConfigs",
]
ALERTMANAGER_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": rm.ALERTMANAGER_CONFIG_API},
        "kind": {"const": "AlertmanagerConfig"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "inhibitRules": {"type": "array"},
                "muteTimeIntervals": {"type": "array"},
                "receivers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            **{kind: {"type": "array"} for kind in _RECEIVER_KINDS},
                            "webhookConfigs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "httpConfig": {"type": "object"},
                                        "maxAlerts": {"type": "integer", "minimum": 0},
                                        "sendResolved": {"type": "boolean"},
                                        "timeout": {"type": "string"},
                                        "url": {"type": "string"},
                                        "urlSecret": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                },
                "route": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "activeTimeIntervals": {"type": "array", "items": {"type": "string"}},
                        "continue": {"type": "boolean"},
                        "groupBy": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                        "groupInterval": {"type": "string", "minLength": 1, "pattern": _CRD_DURATION},
                        "groupWait": {"type": "string", "minLength": 1, "pattern": _CRD_DURATION},
                        "matchers": {"type": "array", "items": _MATCHER},
                        "muteTimeIntervals": {"type": "array", "items": {"type": "string"}},
                        "receiver": {"type": "string"},
                        "repeatInterval": {"type": "string", "minLength": 1, "pattern": _CRD_DURATION},
                        "routes": {"type": "array"},
                    },
                },
            },
        },
    },
}


# ---- helpers ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Docs:
    """`kustomize build manifests/retrain` of a copy (no operator file can leak in), once for the module."""
    root = tmp_path_factory.mktemp("retrain") / kz.RETRAIN_DIR
    shutil.copytree(RETRAIN, root)
    return build(root)


def committed(name: str) -> Any:
    docs = [d for d in yaml.safe_load_all((RETRAIN / name).read_text()) if d]
    return docs[0] if len(docs) == 1 else docs


def by_name(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, got {len(found)}"
    return found[0]


def pod_spec(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: Docs) -> dict[str, Any]:
    (only,) = pod_spec(docs)["containers"]
    c: dict[str, Any] = only
    return c


def flag_values(args: list[str]) -> dict[str, list[str | None]]:
    """flag -> its values, in order (None for a boolean flag)."""
    values: dict[str, list[str | None]] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            values.setdefault(arg, []).append(nxt)
    return values


def retrain_alert_names() -> set[str]:
    """The alerts that retrain: the receiver's policy, each one an alert rule of the predictor."""
    defined = {rule.name for rule in alert_rules(AlertConfig())}
    wanted = set(RetrainPolicy().alerts)
    assert wanted <= defined, f"the retrain policy names alerts that do not exist: {sorted(wanted - defined)}"
    return wanted


# ---- build ------------------------------------------------------------------------------------------------
def test_kustomize_builds_the_receiver_and_nothing_privileged(built: Docs) -> None:
    kinds = sorted(d["kind"] for d in built)
    assert kinds == sorted(
        ["AlertmanagerConfig", "ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
    )
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Secret", "Namespace"} & set(kinds)


def test_every_object_is_namespaced_and_labelled(built: Docs) -> None:
    for doc in built:
        meta = doc["metadata"]
        assert meta.get("namespace") == DEFAULT_NAMESPACE, (doc["kind"], meta["name"])
        assert meta.get("labels", {}).get(PART_OF[0]) == PART_OF[1], (doc["kind"], meta["name"])


def test_the_receiver_is_opt_in() -> None:
    """Neither the base nor any overlay pulls retrain/ in; its kustomization lists every object file except
    the plain Alertmanager snippet."""
    for path in (REPO_ROOT / "manifests").glob(f"{{{kz.BASE_DIR},{kz.OVERLAYS_DIR}}}/**/{kz.KUSTOMIZATION}"):
        assert kz.RETRAIN_DIR not in path.read_text(), path
    resources = committed(kz.KUSTOMIZATION)["resources"]
    yaml_files = sorted(p.name for p in RETRAIN.glob("*.yaml") if p.name != kz.KUSTOMIZATION)
    assert sorted([*resources, rm.RECEIVER_FILE]) == yaml_files


def test_hand_written_readme_is_left_alone(tmp_path: Path) -> None:
    readme = RETRAIN / rm.README
    assert readme.is_file() and f"{kz.RETRAIN_DIR}/{rm.README}" in kz.HAND_WRITTEN
    assert f"{kz.RETRAIN_DIR}/{rm.README}" not in gen.render_all()
    assert not readme.read_text().startswith(f"# {kz.HEADER}")


def test_set_image_reaches_the_deployment(tmp_path: Path) -> None:
    root = tmp_path / kz.RETRAIN_DIR
    shutil.copytree(RETRAIN, root)
    name = kz.split_image(rm.RetrainConfig().component_image)["name"]
    result = kustomize("edit", "set", "image", f"{name}=registry.example/tsr-components:9.9.9", cwd=root)
    assert result.returncode == 0, result.stderr
    assert container(build(root))["image"] == "registry.example/tsr-components:9.9.9"


def test_an_overlay_without_prometheus_operator_drops_the_alertmanager_config(tmp_path: Path) -> None:
    """What README.md tells clusters without prometheus-operator to do, built for real."""
    shutil.copytree(RETRAIN, tmp_path / kz.RETRAIN_DIR)
    overlay = tmp_path / "no-operator"
    overlay.mkdir()
    (overlay / kz.KUSTOMIZATION).write_text(
        yaml.safe_dump(
            {
                "apiVersion": kz.KUSTOMIZE_API_VERSION,
                "kind": "Kustomization",
                "resources": [f"../{kz.RETRAIN_DIR}"],
                "patches": [
                    {
                        "patch": yaml.safe_dump(
                            {
                                "$patch": "delete",
                                "apiVersion": rm.ALERTMANAGER_CONFIG_API,
                                "kind": "AlertmanagerConfig",
                                "metadata": {"name": rm.RETRAIN, "namespace": DEFAULT_NAMESPACE},
                            }
                        )
                    }
                ],
            }
        )
    )
    assert readme_mentions("$patch: delete")
    kinds = sorted(d["kind"] for d in build(overlay))
    assert "AlertmanagerConfig" not in kinds and "Deployment" in kinds


def test_an_overlay_changes_the_settings(tmp_path: Path) -> None:
    """README.md's settings overlay: a strategic-merge patch of the ConfigMap keeps the keys it does not name."""
    shutil.copytree(RETRAIN, tmp_path / kz.RETRAIN_DIR)
    overlay = tmp_path / "settings"
    overlay.mkdir()
    settings = {"kfp-namespace": "team-vision", "cooldown-s": "43200"}
    patch = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": rm.RETRAIN, "namespace": DEFAULT_NAMESPACE},
        "data": settings,
    }
    (overlay / kz.KUSTOMIZATION).write_text(
        yaml.safe_dump({"resources": [f"../{kz.RETRAIN_DIR}"], "patches": [{"patch": yaml.safe_dump(patch)}]})
    )
    assert readme_mentions("kfp-namespace: team-vision")
    data = by_name(build(overlay), "ConfigMap", rm.RETRAIN)["data"]
    assert data == {**committed("configmap.yaml")["data"], **settings}


def readme_mentions(text: str) -> bool:
    return text in (RETRAIN / rm.README).read_text()


# ---- schemas ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate(built: Docs, version: str) -> None:
    checked = 0
    for doc in built:
        if doc["apiVersion"] in K8S_GROUPS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc}")
            checked += 1
    assert checked == 6  # everything but the AlertmanagerConfig


def test_alertmanager_config_has_only_fields_the_crd_defines(built: Docs) -> None:
    amc = one(built, "AlertmanagerConfig")
    jsonschema.validate(amc, ALERTMANAGER_CONFIG_SCHEMA)
    receivers = [r["name"] for r in amc["spec"]["receivers"]]
    assert len(receivers) == len(set(receivers))  # x-kubernetes-list-map-keys: [name]
    assert amc["spec"]["route"]["receiver"] in receivers  # the operator refuses a dangling receiver


def test_the_crd_schema_catches_a_misspelt_field(built: Docs) -> None:
    """Guards the guard: the transcribed schema does refuse what the CRD would prune."""
    amc = json.loads(json.dumps(one(built, "AlertmanagerConfig")))
    amc["spec"]["route"]["group_wait"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(amc, ALERTMANAGER_CONFIG_SCHEMA)


# ---- pod security and identity ----------------------------------------------------------------------------
def test_pod_is_locked_down(built: Docs) -> None:
    pod = pod_spec(built)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    sc = container(built)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == rm.RUN_AS_USER
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc
    writable = [m for m in container(built)["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[writable[0]["name"]]
    assert all(set(v) <= {"name", "emptyDir", "projected"} for v in volumes.values()), "hostPath/secret volume"


def test_no_kubernetes_api_token_only_the_kfp_audience_token(built: Docs) -> None:
    account = one(built, "ServiceAccount")
    pod = pod_spec(built)
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    tokens = [
        (volume["name"], source["serviceAccountToken"])
        for volume in pod["volumes"]
        for source in volume.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in source
    ]
    assert len(tokens) == 1, tokens
    (volume_name, token) = tokens[0]
    assert token["audience"] == rm.KFP_AUDIENCE  # never the API server's audience
    assert token["expirationSeconds"] >= rm.MIN_TOKEN_EXPIRATION_S
    (mount,) = [m for m in container(built)["volumeMounts"] if m["name"] == volume_name]
    assert mount["readOnly"] is True
    token_file = posixpath.join(mount["mountPath"], token["path"])
    # Where kfp reads it: the variable the Deployment sets, and kfp's own default, are both that file.
    env = {e["name"]: e.get("value") for e in container(built)["env"]}
    assert env[KF_PIPELINES_SA_TOKEN_ENV] == token_file == KF_PIPELINES_SA_TOKEN_PATH


def test_kfp_credentials_read_the_mounted_token(built: Docs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What `KfpTarget(service_account_token=True)` builds reads the file the Deployment's variable names."""
    env = {e["name"]: e.get("value") for e in container(built)["env"]}
    monkeypatch.setenv(KF_PIPELINES_SA_TOKEN_ENV, env[KF_PIPELINES_SA_TOKEN_ENV])
    assert ServiceAccountTokenVolumeCredentials(path=None)._token_path == env[KF_PIPELINES_SA_TOKEN_ENV]
    local = tmp_path / "token"
    local.write_text("projected-token-stand-in")
    monkeypatch.setenv(KF_PIPELINES_SA_TOKEN_ENV, str(local))
    assert ServiceAccountTokenVolumeCredentials(path=None)._get_token() == "projected-token-stand-in"


def test_no_credentials_anywhere(built: Docs) -> None:
    for path in sorted(RETRAIN.iterdir()):
        assert not find_secrets(path.read_text()), path
    assert not find_secrets(yaml.safe_dump_all(built))
    c = container(built)
    assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in c["env"])
    assert "envFrom" not in c


# ---- network --------------------------------------------------------------------------------------------------
def test_network_policy_admits_only_the_port_from_the_monitoring_namespace(built: Docs) -> None:
    policy = one(built, "NetworkPolicy")["spec"]
    template_labels = one(built, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= template_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": rm.HTTP_PORT, "protocol": "TCP"}]
    monitoring = rm.RetrainConfig().monitoring_namespace
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: monitoring}}}]


def test_monitoring_namespace_is_configurable() -> None:
    files = rm.render_retrain(kz.KustomizeConfig(), rm.RetrainConfig(monitoring_namespace="observability"))
    policy = yaml.safe_load(files["networkpolicy.yaml"])
    selector = policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
    assert selector == {"matchLabels": {NAMESPACE_NAME_LABEL: "observability"}}


def test_service_reaches_the_container_port(built: Docs) -> None:
    service = one(built, "Service")["spec"]
    (port,) = service["ports"]
    (container_port,) = container(built)["ports"]
    assert port["targetPort"] == container_port["name"] and container_port["containerPort"] == rm.HTTP_PORT
    assert service["selector"].items() <= one(built, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(built)[probe]["httpGet"] == {"path": rm.HEALTH_PATH, "port": container_port["name"]}


# ---- Alertmanager route -> receiver -> alert rules ---------------------------------------------------------
def test_alertmanager_config_routes_exactly_the_retrain_alerts_to_the_service(built: Docs) -> None:
    spec = one(built, "AlertmanagerConfig")["spec"]
    (matcher,) = spec["route"]["matchers"]
    assert matcher["name"] == "alertname" and matcher["matchType"] == "=~"
    defined = {rule.name for rule in alert_rules(AlertConfig())}
    routed = {name for name in defined if re.fullmatch(matcher["value"], name)}  # Alertmanager anchors regexes
    assert routed == retrain_alert_names()
    assert len(routed) == 2
    assert set(matcher["value"].split("|")) == routed  # no name in the regex that no rule defines

    (receiver,) = spec["receivers"]
    (webhook,) = receiver["webhookConfigs"]
    service = one(built, "Service")
    (port,) = service["spec"]["ports"]
    expected = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port['port']}/alerts"
    assert webhook["url"] == expected == rm.webhook_url(DEFAULT_NAMESPACE)
    assert webhook["sendResolved"] is False
    assert spec["route"]["repeatInterval"] == "6h" and spec["route"]["groupBy"] == ["alertname"]


def test_the_receiver_acts_on_the_routed_alerts(built: Docs) -> None:
    """The Deployment passes the same alerts with --alert that the route sends (no alert routed and ignored)."""
    alerts = flag_values(container(built)["args"])["--alert"]
    assert set(alerts) == retrain_alert_names()


# ---- the Deployment's command line ----------------------------------------------------------------------------
def test_args_use_only_cli_flags_and_configmap_files(built: Docs) -> None:
    c = container(built)
    assert c["command"] == ["tsr", "retrain-webhook"]
    flags = flag_values(c["args"])
    assert set(flags) <= set(rm.RETRAIN_WEBHOOK_FLAGS), sorted(set(flags) - set(rm.RETRAIN_WEBHOOK_FLAGS))
    assert set(flags) == set(rm.RETRAIN_WEBHOOK_FLAGS)  # every listed flag is used: the list is not stale
    assert flags["--kfp-in-cluster"] == [None]
    assert flags["--host"] == ["0.0.0.0"] and flags["--port"] == [str(rm.HTTP_PORT)]

    # --params-file and --package are files of the mounted ConfigMaps.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    files = {}
    for volume in pod_spec(built)["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                for item in source["configMap"]["items"]:
                    path = posixpath.join(mounts[volume["name"]], item["path"])
                    files[path] = by_name(built, "ConfigMap", source["configMap"]["name"])["data"][item["key"]]
    assert files[flags["--params-file"][0]] == committed("configmap.yaml")["data"][rm.PARAMS_FILE]
    assert files[flags["--package"][0]] == COMPILED.read_text()


def test_every_variable_in_the_args_comes_from_the_configmap(built: Docs) -> None:
    c = container(built)
    env = {e["name"]: e for e in c["env"]}
    referenced = {m for arg in c["args"] for m in re.findall(r"\$\((\w+)\)", arg)}
    assert referenced == set(rm.SETTINGS_ENV.values())
    config = by_name(built, "ConfigMap", rm.RETRAIN)["data"]
    for name in referenced:
        ref = env[name]["valueFrom"]["configMapKeyRef"]  # an undefined $(VAR) would stay literal
        assert ref["name"] == rm.RETRAIN and ref["key"] in config
    policy = RetrainPolicy()
    assert float(config["cooldown-s"]) == policy.cooldown_s
    assert int(config["max-runs-per-day"]) == policy.max_runs_per_day


def test_params_are_valid_for_the_compiled_pipeline(built: Docs) -> None:
    params = json.loads(by_name(built, "ConfigMap", rm.RETRAIN)["data"][rm.PARAMS_FILE])
    assert validate_parameters(params, PipelinePackage.load(COMPILED).parameters) == params
    cfg = kz.KustomizeConfig()
    assert params["namespace"] == cfg.namespace and params["predictor_image"] == cfg.image
    assert params["deploy_mode"] == "cluster" and params["data_source"].startswith("s3://")


def test_pipeline_configmap_is_the_compiled_pipeline(built: Docs) -> None:
    data = by_name(built, "ConfigMap", rm.PIPELINE_CONFIGMAP)["data"]
    assert data == {rm.PIPELINE_FILE: COMPILED.read_text()}  # byte for byte: KFP versions it by sha256


def test_config_changes_roll_the_pod() -> None:
    def checksum(retrain: rm.RetrainConfig) -> str:
        deployment = yaml.safe_load(rm.render_retrain(kz.KustomizeConfig(), retrain)["deployment.yaml"])
        value: str = deployment["spec"]["template"]["metadata"]["annotations"][rm.CHECKSUM_ANNOTATION]
        return value

    base = checksum(rm.RetrainConfig())
    assert checksum(rm.RetrainConfig()) == base
    assert checksum(rm.RetrainConfig(policy=RetrainPolicy(cooldown_s=3600))) != base
    assert checksum(rm.RetrainConfig(data_source="s3://datasets/other")) != base


# ---- the receiver, run as the Deployment runs it ---------------------------------------------------------------
def test_the_deployment_command_starts_a_kfp_run(built: Docs, tmp_path: Path) -> None:
    """`tsr retrain-webhook` with the Deployment's command, args and environment ($(VAR) expanded from the
    ConfigMap as the kubelet does), the ConfigMap files at a stand-in for /etc/tsr-retrain and a stand-in
    for the projected token, against a fake KFP API: one alert starts one run, authenticated with that
    token, with params.json, the run service account and the pipeline from the ConfigMap."""
    c = container(built)
    config = dict(by_name(built, "ConfigMap", rm.RETRAIN)["data"])
    etc, token = tmp_path / "etc", tmp_path / "token"
    etc.mkdir()
    (etc / rm.PARAMS_FILE).write_text(config[rm.PARAMS_FILE])
    (etc / rm.PIPELINE_FILE).write_text(by_name(built, "ConfigMap", rm.PIPELINE_CONFIGMAP)["data"][rm.PIPELINE_FILE])
    token.write_text("projected-kfp-token-stand-in")
    port = free_port()
    with FakeKfp() as kfp:
        config["kfp-endpoint"] = kfp.url  # the operator's setting, pointed at the fake
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
        for e in c["env"]:
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            env[e["name"]] = config[ref["key"]] if ref else e["value"]
        env.update(HOME=str(tmp_path), TSR_STATE_DIR=str(tmp_path / "state"), **{KF_PIPELINES_SA_TOKEN_ENV: str(token)})
        args = [
            re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a).replace(rm.CONFIG_DIR, str(etc)) for a in c["args"]
        ]
        args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
        command = [shutil.which(c["command"][0], path=env["PATH"]) or c["command"][0], *c["command"][1:]]
        proc = subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_ok(proc, url + rm.HEALTH_PATH, "tsr retrain-webhook", 60)
            alert = {"status": "firing", "labels": {"alertname": sorted(retrain_alert_names())[0]}}
            answer = httpx.post(url + rm.ALERTS_PATH, json={"version": "4", "alerts": [alert]}, timeout=60)
            assert answer.status_code == 200 and answer.json()["outcome"] == "started", answer.text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    (run,) = [r for r in kfp.requests if r.method == "POST" and r.path.endswith("/runs")]
    assert run.headers["authorization"] == "Bearer projected-kfp-token-stand-in"
    assert run.json()["runtime_config"]["parameters"] == json.loads(config[rm.PARAMS_FILE])
    assert run.json()["service_account"] == config["run-service-account"]
    (upload,) = [r for r in kfp.requests if r.path.endswith("/pipelines/upload_version")]
    assert upload.uploaded_file()[1] == COMPILED.read_bytes()


# ---- the plain alertmanager.yml snippet ------------------------------------------------------------------------
def snippet_config() -> dict[str, Any]:
    """The snippet merged into a minimal alertmanager.yml whose root route has a default receiver."""
    snippet = committed(rm.RECEIVER_FILE)
    return {
        "route": {"receiver": "default", **snippet["route"]},
        "receivers": [{"name": "default"}, *snippet["receivers"]],
    }


def test_snippet_says_what_the_alertmanager_config_says(built: Docs) -> None:
    spec = one(built, "AlertmanagerConfig")["spec"]
    snippet = committed(rm.RECEIVER_FILE)
    (route,) = snippet["route"]["routes"]
    (matcher,) = spec["route"]["matchers"]
    assert route["matchers"] == [f'{matcher["name"]}{matcher["matchType"]}"{matcher["value"]}"']
    assert route["receiver"] == spec["route"]["receiver"]
    assert route["continue"] is True  # later routes (people) still get the alerts
    for camel, snake in (("groupBy", "group_by"), ("groupWait", "group_wait"), ("repeatInterval", "repeat_interval")):
        assert route[snake] == spec["route"][camel]
    assert route["group_interval"] == spec["route"]["groupInterval"]
    (receiver,) = snippet["receivers"]
    (webhook,) = receiver["webhook_configs"]
    (crd_webhook,) = spec["receivers"][0]["webhookConfigs"]
    assert webhook == {"url": crd_webhook["url"], "send_resolved": crd_webhook["sendResolved"]}


def amtool() -> str:
    """amtool from Debian's prometheus-alertmanager package; its absence is a failure, not a skip."""
    found = shutil.which("amtool")
    if not found:
        pytest.fail("amtool not found: apt-get install prometheus-alertmanager (make prometheus)")
    return found


def test_snippet_passes_amtool_and_routes_the_alerts(tmp_path: Path) -> None:
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(snippet_config()))
    checked = subprocess.run([amtool(), "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    routed = retrain_alert_names()
    for rule in alert_rules(AlertConfig()):
        expected = rm.RETRAIN if rule.name in routed else "default"
        result = subprocess.run(
            [amtool(), "config", "routes", "test", f"--config.file={config}", f"alertname={rule.name}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [expected], (rule.name, result.stdout)


# ---- configuration checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy": RetrainPolicy(alerts=("TSRNoSuchAlert",))}, "not defined"),
        ({"token_expiration_s": 60}, "token_expiration_s"),
        ({"kfp_endpoint": "ml-pipeline:8888"}, "kfp_endpoint"),
        ({"repeat_interval": "0"}, "repeat_interval"),
        ({"memory_limit": "lots"}, "memory_limit"),
    ],
)
def test_impossible_configs_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rm.RetrainConfig(**overrides)


def test_run_parameters_are_checked_when_rendering() -> None:
    """A parameter the compiled pipeline does not declare fails at generation, not at the first alert."""
    from pipelines.submit import ParameterError

    with pytest.raises(ParameterError):
        rm.render_retrain(kz.KustomizeConfig(), rm.RetrainConfig(deploy_mode=3))  # type: ignore[arg-type]


def test_alertmanager_config_validates_against_the_real_crd(built: Docs) -> None:
    """The AlertmanagerConfig against prometheus-operator's published CRD (make crds), not a transcription:
    types, enums, patterns, required fields, unique receiver names, and no field the API server would prune;
    a misspelt route field is caught."""
    amc = one(built, "AlertmanagerConfig")
    assert crd_schema.crd_errors(amc) == []
    misspelt = json.loads(json.dumps(amc))
    misspelt["spec"]["route"]["group_wait"] = "30s"
    misspelt["spec"]["route"]["groupInterval"] = "5 minutes"
    assert crd_schema.crd_errors(misspelt) == [
        f"AlertmanagerConfig/{rm.RETRAIN}: spec.route.groupInterval: '5 minutes' does not match '{_CRD_DURATION}'",
        f"AlertmanagerConfig/{rm.RETRAIN}: spec.route.group_wait: unknown field (pruned by the API server)",
    ]
