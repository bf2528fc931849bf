"""Deploy: typed InferenceService objects, deterministic YAML, the committed manifests, local predictor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kserve import V1beta1InferenceService

from components.deploy import deploy as d
from serving import process as sproc
from tests.conftest import make_model_dir
from tsr.core.config import StoreConfig
from tsr.kube import inference_service as isvcs
from tsr.kube import render as render
from tsr.local import generate as gen
from tsr.local.checkout import REPO_ROOT

URI = "s3://models/gtsrb-classifier/20261123-140501-3fa2c1"


def spec(**overrides: Any) -> isvcs.InferenceServiceSpec:
    values: dict[str, Any] = {"name": "gtsrb-classifier", "namespace": "tsr", "storage_uri": URI, **overrides}
    return isvcs.InferenceServiceSpec(**values)


def manifest(**overrides: Any) -> dict[str, Any]:
    return render.to_manifest_dict(isvcs.build_inference_service(spec(**overrides)))


# ---- the InferenceService --------------------------------------------------------------------------
def test_round_trips_through_the_sdk_models() -> None:
    isvc = isvcs.build_inference_service(spec(canary_traffic_percent=10, deployment_mode="Knative"))
    data = render.to_manifest_dict(isvc)
    back = render.from_manifest_dict(data)
    assert isinstance(back, V1beta1InferenceService)
    assert back == isvc
    assert render.to_manifest_dict(back) == data
    # and through YAML text, as kubectl would read it
    assert render.from_manifest_dict(yaml.safe_load(render.render_yaml([isvc]))) == isvc


def test_required_fields_and_annotations() -> None:
    m = manifest()
    assert m["apiVersion"] == "serving.kserve.io/v1beta1" and m["kind"] == "InferenceService"
    assert m["metadata"]["name"] == "gtsrb-classifier" and m["metadata"]["namespace"] == "tsr"
    annotations = m["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    predictor = m["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "tsr-predictor"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert "canaryTrafficPercent" not in predictor
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == isvcs.DEFAULT_PREDICTOR_IMAGE
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"] == URI
    args = container["args"]
    assert args[args.index("--model") + 1] == "/mnt/models"
    assert args[args.index("--model-name") + 1] == "gtsrb-classifier"
    assert args[args.index("--http-port") + 1] == "8080"
    assert args[args.index("--threads") + 1] == "2"  # from the 2-CPU limit
    assert container["ports"] == [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/gtsrb-classifier/ready"


def test_a_slow_start_is_given_time_before_liveness_counts() -> None:
    """The startup probe gates liveness: a cold start of ten minutes at most (the arm64 image under emulation
    answered after 40-102 s) is not killed, and liveness has no initial delay to guess."""
    (container,) = manifest()["spec"]["predictor"]["containers"]
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"] == liveness["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    assert "initialDelaySeconds" not in liveness
    assert liveness["periodSeconds"] * liveness["failureThreshold"] == 60


def test_security_context_is_non_root_and_locked_down() -> None:
    predictor = manifest()["spec"]["predictor"]
    sc = predictor["containers"][0]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001  # the images' USER
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert predictor["automountServiceAccountToken"] is False
    # a read-only root still needs a writable /tmp
    assert {"mountPath": "/tmp", "name": "tmp"} in predictor["containers"][0]["volumeMounts"]


def test_predictor_verifies_signed_versions_with_the_public_key() -> None:
    """The predictor gets the public key from the ConfigMap, mounted read-only, and refuses unsigned
    directories (TSR_REQUIRE_SIGNED: KServe's /mnt/models); unsigned versions only on the operator's opt-in."""
    predictor = manifest()["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TSR_SIGNING_PUBLIC_KEY"] == "/etc/tsr/signing-public/model-signing.pub"
    assert env["TSR_REQUIRE_SIGNED"] == "1"
    assert "TSR_ALLOW_UNSIGNED" not in env
    assert {"name": "model-signing-public", "mountPath": "/etc/tsr/signing-public", "readOnly": True} in container[
        "volumeMounts"
    ]
    volume = next(v for v in predictor["volumes"] if v["name"] == "model-signing-public")
    assert volume == {
        "name": "model-signing-public",
        "configMap": {
            "name": "tsr-model-signing-public",
            "items": [{"key": "model-signing.pub", "path": "model-signing.pub"}],
        },
    }
    assert not any("secret" in v for v in predictor["volumes"])  # the private key never reaches the predictor
    opted_in = manifest(allow_unsigned=True, signing_public_key_config_map="team-a-key")["spec"]["predictor"]
    env = {e["name"]: e["value"] for e in opted_in["containers"][0]["env"]}
    assert env["TSR_ALLOW_UNSIGNED"] == "1" and env["TSR_REQUIRE_SIGNED"] == "1"
    assert next(v for v in opted_in["volumes"] if "configMap" in v)["configMap"]["name"] == "team-a-key"


def test_the_public_key_is_where_the_predictor_reads_it() -> None:
    """The env the InferenceService sets, read by the predictor's own Trust.from_env: the mounted key,
    every directory signed, and the opt-in only when asked for."""
    from tsr.core.signing import Trust

    for allow in (False, True):
        container = manifest(allow_unsigned=allow)["spec"]["predictor"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        trust = Trust.from_env(env)
        assert str(trust.public_key) == "/etc/tsr/signing-public/model-signing.pub"
        assert trust.require_signed_dirs is True and trust.allow_unsigned is allow


def test_canary_and_node_selector_rendered_when_set() -> None:
    m = manifest(
        deployment_mode="Knative",
        canary_traffic_percent=20,
        node_selector={"kubernetes.io/arch": "arm64"},
        min_replicas=0,
    )
    assert m["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert m["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert m["spec"]["predictor"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert m["spec"]["predictor"]["minReplicas"] == 0
    plain = manifest(node_selector={}, enable_prometheus_scraping=False)
    assert "nodeSelector" not in plain["spec"]["predictor"]
    assert "serving.kserve.io/enable-prometheus-scraping" not in plain["metadata"]["annotations"]


def test_legacy_mode_names_are_mapped() -> None:
    assert spec(deployment_mode="RawDeployment").deployment_mode == "Standard"
    assert spec(deployment_mode="Serverless").deployment_mode == "Knative"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"storage_uri": "s3://models/gtsrb-classifier/champion"}, "concrete version"),
        ({"storage_uri": "s3://models/gtsrb-classifier"}, "must look like"),
        ({"storage_uri": "/tmp/model"}, "not an s3:// URI"),
        ({"canary_traffic_percent": 10}, "Knative"),
        ({"deployment_mode": "Knative", "canary_traffic_percent": 101}, "0..100"),
        ({"deployment_mode": "Magic"}, "deployment_mode"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"min_replicas": 4}, "min_replicas"),
        ({"name": "Bad_Name"}, "DNS-1035"),
        ({"signing_public_key_config_map": "Bad_Key"}, "signing_public_key_config_map"),
        ({"cpu_limit": "two"}, "quantity"),
    ],
)
def test_invalid_specs_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**overrides)


def test_isvc_name_is_a_short_dns_label() -> None:
    assert isvcs.isvc_name("gtsrb-classifier") == "gtsrb-classifier"
    assert isvcs.isvc_name("gtsrb_v2.small") == "gtsrb-v2-small"
    assert isvcs.isvc_name("7up") == "m-7up"
    assert len(isvcs.isvc_name("a" * 63)) <= 47


# ---- the S3 Secret -----------------------------------------------------------------------------------
def test_s3_secret_in_kserve_layout() -> None:
    secret = isvcs.build_s3_secret(
        "tsr", "tsr-predictor-s3", "http://minio.tsr.svc:9000", False, "AKIA-TEST-ONLY", "not-a-real-secret"
    )
    s = render.to_manifest_dict(secret)
    assert (s["kind"], s["metadata"]["name"], s["metadata"]["namespace"]) == ("Secret", "tsr-predictor-s3", "tsr")
    assert s["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "minio.tsr.svc:9000",
        "serving.kserve.io/s3-usehttps": "0",
    }
    assert s["stringData"] == {"AWS_ACCESS_KEY_ID": "AKIA-TEST-ONLY", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    https = render.to_manifest_dict(
        isvcs.build_s3_secret("tsr", "x", "minio.example.com", True, "a", "b", region="eu-west-1")
    )
    assert https["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "1"
    assert https["metadata"]["annotations"]["serving.kserve.io/s3-region"] == "eu-west-1"
    with pytest.raises(ValueError, match="required"):
        isvcs.build_s3_secret("tsr", "x", "minio:9000", False, "", "x")
    with pytest.raises(ValueError, match="contradicts"):
        isvcs.build_s3_secret("tsr", "x", "https://minio:9000", False, "a", "b")
    with pytest.raises(ValueError, match="host"):
        isvcs.build_s3_secret("tsr", "x", "minio:9000/path", False, "a", "b")


def test_service_account_references_the_secret() -> None:
    secret, sa = isvcs.build_s3_secret_and_service_account(
        "tsr", endpoint="minio:9000", use_https=False, access_key="a", secret_key="b"
    )
    a = render.to_manifest_dict(sa)
    assert a["kind"] == "ServiceAccount" and a["metadata"]["name"] == "tsr-predictor"
    assert a["secrets"] == [{"name": secret.metadata.name}]
    assert render.to_manifest_dict(isvcs.build_service_account("ml", "sa", "creds"))["secrets"] == [{"name": "creds"}]
    assert "stringData" not in a and "data" not in a


def test_no_credentials_in_rendered_yaml(tmp_path: Path) -> None:
    store = StoreConfig(
        kind="s3", endpoint="127.0.0.1:9", access_key="tsr-accesskey1", secret_key="fake-secret-value-xyz"
    )
    result = d.deploy("manifest", URI, store=store, manifest_path=tmp_path / "isvc.yaml")
    text = (tmp_path / "isvc.yaml").read_text()
    assert text == result.manifest and "kind: InferenceService" in text
    for needle in (store.access_key, store.secret_key, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "kind: Secret"):
        assert needle not in text
    committed = "".join(p.read_text() for p in sorted((REPO_ROOT / "manifests").glob("*.yaml")))
    assert "kind: Secret" not in committed and "stringData" not in committed and "AWS_" not in committed


# ---- YAML ---------------------------------------------------------------------------------------------
def test_render_yaml_is_deterministic() -> None:
    a = render.render_yaml([isvcs.build_service_account("tsr"), isvcs.build_inference_service(spec())], header="x")
    b = render.render_yaml([isvcs.build_service_account("tsr"), isvcs.build_inference_service(spec())], header="x")
    assert a == b
    # annotation/selector insertion order must not leak into the text
    one = render.render_yaml([isvcs.build_inference_service(spec(node_selector={"a": "1", "b": "2"}))])
    two = render.render_yaml([isvcs.build_inference_service(spec(node_selector={"b": "2", "a": "1"}))])
    assert one == two
    docs = list(yaml.safe_load_all(a))
    assert [doc["kind"] for doc in docs] == ["ServiceAccount", "InferenceService"]


def test_committed_manifests_equal_a_fresh_render(tmp_path: Path) -> None:
    written = gen.write_manifests(tmp_path)
    committed = REPO_ROOT / "manifests" / gen.MANIFEST_FILE
    assert committed.is_file(), f"{committed} missing: run `python -m tsr.local.generate`"
    assert committed.read_bytes() == written.read_bytes(), f"{committed} is stale: run `python -m tsr.local.generate`"
    sa, isvc = yaml.safe_load_all(committed.read_text())
    assert sa["kind"] == "ServiceAccount" and isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["serviceAccountName"] == sa["metadata"]["name"]
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"] == f"s3://models/gtsrb-classifier/{isvcs.PLACEHOLDER_VERSION}"
    # the placeholder is the only thing a real deploy changes
    real = gen.write_manifests(tmp_path / "real", model_uri=URI).read_text()
    body = "".join(line for line in real.splitlines(keepends=True) if not line.startswith("#"))
    assert body.count(URI) == 1 and isvcs.PLACEHOLDER_VERSION not in real


# ---- modes without a process ------------------------------------------------------------------------
def test_none_and_manifest_modes(tmp_path: Path) -> None:
    none = d.deploy("none", URI, manifest_path=tmp_path / "none.yaml")
    assert none.endpoint == "" and none.manifest == ""
    assert (tmp_path / "none.yaml").read_text().startswith("#")
    result = d.deploy("manifest", URI, "gtsrb-classifier", namespace="serving", predictor_image="reg.example/p:1")
    doc = yaml.safe_load(result.manifest)
    assert doc["metadata"]["namespace"] == "serving"
    assert doc["spec"]["predictor"]["containers"][0]["image"] == "reg.example/p:1"
    assert result.endpoint == "" and result.name == "gtsrb-classifier"
    with pytest.raises(ValueError, match="deploy mode"):
        d.deploy("helm", URI)


# ---- the KFP step's serving parameters --------------------------------------------------------------
# (Their defaults against InferenceServiceSpec's: tests/test_defaults.py.)
def _options(**changes: Any) -> dict[str, Any]:
    """`pipeline_serving_options` of the deploy step's defaults, with `changes`."""
    import inspect

    from components.deploy.component import deploy_component

    step = inspect.signature(deploy_component).parameters
    names = inspect.signature(d.pipeline_serving_options).parameters
    return d.pipeline_serving_options(**{name: step[name].default for name in names} | changes)


def test_pipeline_serving_options_translate_the_ui_conventions() -> None:
    options = _options(
        arch=" arm64, amd64 ,",
        arch_placement="preferred",
        tolerations="arch=arm64:NoSchedule,gpu:NoExecute",
        scale_metric="concurrency",
        scale_target=4,
        min_replicas=0,
    )
    assert options["arch"] == ("arm64", "amd64")
    assert options["tolerations"] == (
        {"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Exists", "effect": "NoExecute"},
    )
    m = manifest(deployment_mode="Knative", canary_traffic_percent=10, **options)
    predictor = m["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) == (0, "concurrency", 4)
    term = predictor["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["preference"]["matchExpressions"] == [
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64", "amd64"]}
    ]
    assert predictor["tolerations"][0] == {"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scale_target": -1}, "scale_target"),
        ({"scale_metric": "concurrency"}, "scale_metric"),  # Standard mode's HPA does not scale on it
        ({"arch": "arm 64"}, "arch"),
        ({"arch_placement": "maybe"}, "arch_placement"),
        ({"tolerations": "a=b:Sometimes"}, "effect"),
        ({"memory_limit": "2 GB"}, "memory_limit"),
    ],
)
def test_pipeline_serving_options_refuse_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**_options(**changes))


def _run_deploy_step_alone(tmp_path: Path, **arguments: Any) -> Any:
    """The KFP deploy step by itself in kfp.local's SubprocessRunner, as a pipeline run would start it."""
    from kfp import local

    from components.deploy.component import deploy_component
    from components.factory import DEFAULT_COMPONENT_IMAGE, kfp_component

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        return kfp_component(deploy_component, DEFAULT_COMPONENT_IMAGE)(model_uri=URI, mode="manifest", **arguments)


def test_step_renders_the_serving_parameters_under_kfp_local(tmp_path: Path) -> None:
    task = _run_deploy_step_alone(
        tmp_path,
        namespace="serving",
        deployment_mode="Knative",
        canary_traffic_percent=10,
        min_replicas=0,
        max_replicas=5,
        scale_metric="rps",
        scale_target=50,
        arch="arm64",
        tolerations="arch=arm64:NoSchedule",
        cpu_limit="1",
        service_account="my-predictor",
        allow_unsigned=True,
    )
    doc = yaml.safe_load(Path(task.outputs["manifest"].path).read_text())
    assert task.outputs["Output"] == ""  # manifest mode serves nothing
    assert render.to_manifest_dict(render.from_manifest_dict(doc)) == doc  # a valid kserve object
    predictor = doc["spec"]["predictor"]
    assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert (predictor["canaryTrafficPercent"], predictor["minReplicas"], predictor["maxReplicas"]) == (10, 0, 5)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("rps", 50)
    assert predictor["serviceAccountName"] == "my-predictor"
    required = predictor["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["arm64"]
    assert predictor["tolerations"] == [{"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}]
    assert predictor["containers"][0]["resources"]["limits"]["cpu"] == "1"
    env = {e["name"]: e["value"] for e in predictor["containers"][0]["env"]}
    assert env["TSR_ALLOW_UNSIGNED"] == "1" and env["TSR_REQUIRE_SIGNED"] == "1"


def test_pipeline_serving_options_keep_unsigned_versions_out_by_default() -> None:
    assert _options()["allow_unsigned"] is False
    env = manifest(**_options())["spec"]["predictor"]["containers"][0]["env"]
    assert "TSR_ALLOW_UNSIGNED" not in {e["name"] for e in env}
    assert _options(allow_unsigned=True)["allow_unsigned"] is True


def test_step_refuses_a_canary_in_standard_mode_under_kfp_local(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A value KServe would not act on fails the step with the field named, before any API call."""
    with pytest.raises(RuntimeError, match="deploy-component"):
        _run_deploy_step_alone(tmp_path, canary_traffic_percent=10)
    out, err = capfd.readouterr()
    assert "canary_traffic_percent needs deployment_mode 'Knative'" in out + err


def test_cluster_mode_without_a_cluster_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(isvcs.DeployError, match="no Kubernetes cluster configured"):
        d.deploy("cluster", URI, kube_config=str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(isvcs.DeployError, match="registry version"):
        d.deploy("cluster", str(tmp_path))


# ---- local mode: process management with a fake predictor ------------------------------------------
FAKE_SERVER = """
import argparse, http.server, os, signal, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--model-name")
parser.add_argument("--http-port", type=int)
parser.add_argument("--threads", type=int, default=0)
args = parser.parse_args()
print("endpoint from env:", os.environ.get("TSR_S3_ENDPOINT"), flush=True)
if "missing" in args.model:
    print(f"model {args.model}: no such directory", flush=True)
    sys.exit(2)
if "stubborn" in args.model:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    print("ignoring SIGTERM", flush=True)
if "never-ready" in args.model or "stubborn" in args.model:
    while True:
        time.sleep(1)


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == f"/v2/models/{args.model_name}/ready"
        self.send_response(200 if ok else 404)
        self.end_headers()

    def log_message(self, *a):
        pass


http.server.HTTPServer(("127.0.0.1", args.http_port), Ready).serve_forever()
"""


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_predictor.py"
    script.write_text(FAKE_SERVER)
    return [sys.executable, str(script)]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state_dir = tmp_path / "state"
    try:
        yield state_dir
    finally:
        sproc.stop_local_predictor(state_dir, timeout_s=2)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_local_start_read_stop(tmp_path: Path, state: Path, fake: list[str]) -> None:
    store = StoreConfig(
        kind="s3", endpoint="127.0.0.1:9", access_key="tsr-accesskey1", secret_key="fake-secret-value-xyz"
    )
    result = d.deploy(
        "local", URI, "gtsrb-classifier", state_dir=state, store=store, command=fake, manifest_path=tmp_path / "m.yaml"
    )
    info = sproc.read_local_predictor(state)
    assert result.mode == "local" and result.endpoint == info["url"] == f"http://127.0.0.1:{info['port']}"
    assert {"pid", "port", "url", "model_uri", "log"} <= info.keys() and info["model_uri"] == URI
    assert "kind: InferenceService" in (tmp_path / "m.yaml").read_text()  # the artifact exists in local mode too
    pid = int(info["pid"])
    assert os.getpgid(pid) == pid  # its own session: outlives the step that started it
    with urllib.request.urlopen(f"{result.endpoint}/v2/models/gtsrb-classifier/ready", timeout=5) as resp:
        assert resp.status == 200
    # the store travels through the environment, never the command line
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert store.secret_key not in cmdline and store.access_key not in cmdline
    assert "endpoint from env: 127.0.0.1:9" in Path(info["log"]).read_text()
    assert sproc.stop_local_predictor(state) is True
    assert not _pid_running(pid)
    assert not (state / sproc.LOCAL_STATE_FILE).exists()
    assert sproc.stop_local_predictor(state) is False  # idempotent, no error
    with pytest.raises(sproc.PredictorProcessError, match="no local predictor"):
        sproc.read_local_predictor(state)


def test_local_start_replaces_a_running_predictor(state: Path, fake: list[str]) -> None:
    first = sproc.start_local_predictor(URI, "gtsrb-classifier", state, command=fake)
    second = sproc.start_local_predictor(URI, "gtsrb-classifier", state, command=fake)
    assert not _pid_running(int(first["pid"])) and _pid_running(int(second["pid"]))
    assert sproc.read_local_predictor(state)["pid"] == second["pid"]


def test_local_early_exit_raises_with_the_log(tmp_path: Path, state: Path, fake: list[str]) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 2.*no such directory"):
        sproc.start_local_predictor(str(tmp_path / "missing-model"), "gtsrb-classifier", state, command=fake)
    assert not (state / sproc.LOCAL_STATE_FILE).exists()


def test_local_timeout_stops_the_process(tmp_path: Path, state: Path, fake: list[str]) -> None:
    with pytest.raises(sproc.PredictorProcessError, match="not ready within"):
        sproc.start_local_predictor(str(tmp_path / "never-ready"), "gtsrb-classifier", state, timeout_s=1, command=fake)
    assert not (state / sproc.LOCAL_STATE_FILE).exists()


def test_stop_falls_back_to_sigkill(state: Path, fake: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    real_signal = sproc.send_signal_to_group

    def recording(pid: int, sig: signal.Signals) -> None:
        sent.append(sig)
        real_signal(pid, sig)

    monkeypatch.setattr(sproc, "send_signal_to_group", recording)
    proc = subprocess.Popen(
        [*fake, "--model", "stubborn", "--model-name", "m"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    while "ignoring SIGTERM" not in proc.stdout.readline():  # the handler is in place
        pass
    state.mkdir(parents=True)
    (state / sproc.LOCAL_STATE_FILE).write_text(json.dumps({"pid": proc.pid, "start_time": None}))
    assert sproc.stop_local_predictor(state, timeout_s=0.5) is True
    assert sent == [signal.SIGTERM, signal.SIGKILL]
    assert not _pid_running(proc.pid)  # stop_local_predictor reaped it (it is our child here)
    proc.stdout.close()
    assert not (state / sproc.LOCAL_STATE_FILE).exists()


def test_local_mode_needs_a_state_dir() -> None:
    with pytest.raises(ValueError, match="state directory"):
        d.deploy("local", URI)


@pytest.mark.slow
def test_local_mode_with_the_real_predictor(tmp_path: Path, state: Path) -> None:
    """`python -m serving` itself; slow because it imports torch (the pipeline tests cover it too)."""
    model_dir = make_model_dir(tmp_path / "model")
    result = d.deploy("local", str(model_dir), "gtsrb-classifier", state_dir=state, threads=1)
    with urllib.request.urlopen(f"{result.endpoint}/v2/models/gtsrb-classifier/ready", timeout=5) as resp:
        assert resp.status == 200
    pid = int(sproc.read_local_predictor(state)["pid"])
    assert sproc.stop_local_predictor(state) is True and not _pid_running(pid)
