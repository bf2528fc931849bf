"""The Helm chart helm/tsr-platform, checked with the real tools (no cluster needed).

- `helm lint` (also --strict) for several value sets; values.schema.json refuses bad types and unknown keys;
  contradictory values stop `helm template` with a message.
- Every rendered object of a core/apps/batch/rbac/networking/policy API group is validated strictly against
  the Kubernetes 1.30 OpenAPI schema (kubernetes-validate).
- The InferenceService round-trips through the kserve SDK models and equals, field by field, what
  tsr/kube/inference_service.py builds for the same inputs; the Secrets and the predictor's ServiceAccount
  equal deploy.py's builders; the monitoring objects equal the generated manifests/monitoring ones.
- Security of every workload, credentials only in Secrets, least-privilege RBAC, NetworkPolicies.
- Golden files: `helm template` output for three value sets (explicit test credentials) equals
  tests/helm/golden/*.yaml; regenerate them with `TSR_UPDATE_GOLDEN=1 pytest tests/helm`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipelines.training_pipeline import S3_SECRET, S3_SECRET_ENV
from tests import crd_schema
from tsr.core.config import DATA_BUCKET, DEFAULT_BUCKET
from tsr.core.signing import ENV_ALLOW_UNSIGNED, ENV_PUBLIC_KEY, ENV_REQUIRE_SIGNED
from tsr.kube import kustomize as kz
from tsr.kube.inference_service import (
    SIGNING_PUBLIC_CONFIG_MAP,
    SIGNING_PUBLIC_KEY_DIR,
    SIGNING_PUBLIC_KEY_PATH,
    SIGNING_SECRET,
    InferenceServiceSpec,
    build_inference_service,
    build_s3_secret,
    build_service_account,
)
from tsr.kube.render import from_manifest_dict, to_manifest_dict
from tsr.local.checkout import REPO_ROOT

CHART = REPO_ROOT / "helm" / "tsr-platform"
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
GOLDEN = Path(__file__).parent / "golden"
MONITORING = REPO_ROOT / "manifests" / "monitoring"
UPDATE_GOLDEN = os.environ.get("TSR_UPDATE_GOLDEN") == "1"

KUBE_VERSION = "1.30.0"
RELEASE = "tsr-platform"
NAMESPACE = "tsr"
ACCESS_KEY = "test-access-key-0001"
SECRET_KEY = "test-secret-key-0123456789abcdefghijklmn"
STORAGE_URI = "s3://models/gtsrb-classifier/20260101T000000Z-abc123"


def sets(*assignments: str) -> list[str]:
    """`--set a=b --set c=d ...` for helm."""
    return [arg for assignment in assignments for arg in ("--set", assignment)]


CREDENTIALS = sets(f"s3.accessKey={ACCESS_KEY}", f"s3.secretKey={SECRET_KEY}")
ISVC_ON = sets("inferenceService.enabled=true", f"model.storageUri={STORAGE_URI}")
TOLERATIONS = '[{"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}]'
# API groups of the built-in kinds validated against the Kubernetes OpenAPI schema ("" is core/v1).
K8S_GROUPS = {"", "apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io", "policy"}
DEPLOYER_VERBS = ["get", "list", "watch", "create", "update", "patch"]
PINNED_TAG = re.compile(r"^[^:@\s]+(:[0-9]+)?/[^:@\s]+:RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")

# The value sets rendered: name -> helm arguments (test credentials keep the output deterministic).
CASES: dict[str, list[str]] = {
    "defaults": [*CREDENTIALS],
    "standard": [
        *CREDENTIALS,
        *ISVC_ON,
        *sets("inferenceService.scaleTarget=70", "inferenceService.scaleMetric=cpu", "arch.prefer=amd64"),
    ],
    "external-s3": [
        *ISVC_ON,
        *sets(
            "minio.enabled=false",
            "s3.endpoint=s3.eu-west-1.amazonaws.com",
            "s3.secure=true",
            "s3.region=eu-west-1",
            "s3.existingSecret.pipeline=ext-pipeline-s3",
            "s3.existingSecret.predictor=ext-predictor-s3",
        ),
    ],
    "knative-canary": [
        *CREDENTIALS,
        *ISVC_ON,
        *sets(
            "inferenceService.deploymentMode=Knative",
            "inferenceService.canaryTrafficPercent=10",
            "inferenceService.minReplicas=0",
            "inferenceService.scaleTarget=4",
            "inferenceService.scaleMetric=concurrency",
        ),
    ],
    "arm64-required": [
        *CREDENTIALS,
        *ISVC_ON,
        *sets("arch.require=arm64", "inferenceService.resources.limits.cpu=1500m"),
        *sets("monitoring.scrape.kind=ServiceMonitor"),
        *("--set-json", f"inferenceService.tolerations={TOLERATIONS}"),
    ],
    "unsigned-opt-in": [
        *CREDENTIALS,
        *ISVC_ON,
        *sets("signing.allowUnsigned=true", "signing.publicKeyConfigMap=team-a-model-key"),
    ],
    "monitoring-off": [
        *CREDENTIALS,
        *ISVC_ON,
        *sets(
            "monitoring.scrape.enabled=false",
            "monitoring.prometheusRule.enabled=false",
            "monitoring.dashboard.enabled=false",
        ),
    ],
}
GOLDEN_CASES = ["defaults", "knative-canary", "external-s3"]


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (PyYAML keeps the last one silently, the API server may not)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key_node, deep=deep) for key_node, _ in node.value]
        duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
        if duplicates:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicates}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_all(text: str) -> list[dict[str, Any]]:
    """The non-empty documents of helm output, duplicate keys refused."""
    return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]


# ---- running helm ----------------------------------------------------------------------------------
def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the project's helm binary; fail (not skip) when it has not been built."""
    if not HELM.is_file():
        pytest.fail(f"helm not found at {HELM}: run make tools")
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def template_text(args: list[str], chart: Path = CHART) -> str:
    """`helm template` output for one value set, in namespace NAMESPACE, for Kubernetes KUBE_VERSION."""
    return helm("template", RELEASE, str(chart), "-n", NAMESPACE, "--kube-version", KUBE_VERSION, *args).stdout


@cache
def rendered(case: str) -> tuple[dict[str, Any], ...]:
    """The objects of one case (parsed once per session)."""
    return tuple(load_all(template_text(CASES[case])))


def objects(case: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered(case) if o["kind"] == kind]


def one(case: str, kind: str) -> dict[str, Any]:
    found = objects(case, kind)
    assert len(found) == 1, f"{case}: expected one {kind}, found {len(found)}"
    return found[0]


def values_of(case: str) -> dict[str, Any]:
    """The chart's effective values for a case, as `helm template` sees them (defaults + --set)."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    args = CASES[case]
    for flag, assignment in zip(args[::2], args[1::2], strict=True):
        path, raw = assignment.split("=", 1)
        value: Any = json.loads(raw) if flag == "--set-json" else yaml.safe_load(raw)
        node = values
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return values


def pod_specs(case: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload: Deployments, Jobs and the InferenceService predictor."""
    for obj in rendered(case):
        if obj["kind"] in {"Deployment", "Job"}:
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]
        elif obj["kind"] == "InferenceService":
            yield obj["metadata"]["name"], obj["spec"]["predictor"]


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def generated(name: str) -> dict[str, Any]:
    """The one object of a generated manifests/monitoring file."""
    docs = [d for d in yaml.safe_load_all((MONITORING / name).read_text()) if d]
    assert len(docs) == 1
    return docs[0]  # type: ignore[no-any-return]


# ---- lint and schema -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["defaults", "standard", "external-s3", "knative-canary"])
def test_helm_lint_strict(case: str) -> None:
    """The chart lints cleanly (warnings are errors with --strict) for several value sets."""
    proc = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *CASES[case])
    assert "0 chart(s) failed" in proc.stdout


def test_chart_metadata() -> None:
    """Chart.yaml: apiVersion v2, version/appVersion 0.1.0, a kubeVersion constraint that admits 1.29+."""
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (meta["apiVersion"], meta["name"], meta["version"], meta["appVersion"]) == (
        "v2",
        "tsr-platform",
        "0.1.0",
        "0.1.0",
    )
    assert meta["kubeVersion"] == ">=1.29.0-0"
    refused = helm("template", RELEASE, str(CHART), "--kube-version", "1.28.0", check=False)
    assert refused.returncode != 0 and "kubeVersion" in refused.stderr


def test_helm_lint_plain_defaults() -> None:
    """Plain `helm lint` of the chart as shipped (no values at all)."""
    helm("lint", str(CHART), "--kube-version", KUBE_VERSION)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "minio.apiPort=abc"], "/minio/apiPort"),
        (["--set", "inferenceService.minReplicas=-1"], "/inferenceService/minReplicas"),
        (["--set", "inferenceService.deploymentMode=Serverless"], "/inferenceService/deploymentMode"),
        (["--set", "arch.require=s390"], "/arch/require"),
        (["--set", "minio.image.tag=latest"], "/minio/image/tag"),
        (["--set", "model.storageUri=/local/path"], "/model/storageUri"),
        (["--set", "unknownKey=1"], "additional properties 'unknownKey' not allowed"),
        (["--set", "minio.unknown=1"], "additional properties 'unknown' not allowed"),
        (["--set", "signing.publicKeyConfigMap=Model_Key"], "/signing/publicKeyConfigMap"),
        (["--set", "signing.allowUnsigned=maybe"], "/signing/allowUnsigned"),
    ],
)
def test_schema_refuses_bad_values(args: list[str], message: str) -> None:
    """values.schema.json is enforced by helm: wrong types, enums, patterns and unknown keys fail lint."""
    proc = helm("lint", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "inferenceService.enabled=true"], "needs model.storageUri"),
        ([*ISVC_ON[:2], "--set", "model.storageUri=s3://models/gtsrb-classifier/champion"], "concrete version"),
        ([*ISVC_ON, "--set", "inferenceService.canaryTrafficPercent=10"], "needs deploymentMode Knative"),
        ([*ISVC_ON, "--set", "inferenceService.minReplicas=0"], "only Knative scales to zero"),
        ([*ISVC_ON, "--set", "inferenceService.scaleMetric=rps"], "not used by Standard mode"),
        (["--set", "minio.enabled=false"], "needs s3.endpoint"),
        (["--set", "minio.enabled=false", "--set", "s3.endpoint=s3.example.com"], "needs credentials"),
        (["--set", "s3.existingSecret.pipeline=x"], "set both s3.existingSecret"),
        (["--set", "s3.accessKey=x"], "set both s3.accessKey"),
        (["--set", "arch.prefer=amd64", "--set", "arch.require=arm64"], "contradicts"),
    ],
)
def test_template_refuses_contradictions(args: list[str], message: str) -> None:
    """What the schema cannot express stops the render with a message naming the values to fix."""
    proc = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


FREE_FORM = {"resources", "nodeSelector", "labels", "commonLabels"}  # maps of the user's choosing


def _value_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every key path of values.yaml, not descending into free-form maps (labels, resources, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            if key not in FREE_FORM:
                yield from _value_paths(value, path)


def test_schema_covers_every_value() -> None:
    """values.schema.json is draft-07, closed at the top, and types every key values.yaml has."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_paths(values):
        node = schema
        for key in path.split("."):
            assert key in node.get("properties", {}), f"values.schema.json has no entry for {path}"
            node = node["properties"][key]
        assert "type" in node, f"values.schema.json gives no type for {path}"


def test_every_value_is_documented() -> None:
    """A comment line directly above every key of values.yaml (inside resources blocks: above the block)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    free_form_indent: int | None = None
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if not match:
            continue
        indent = len(match.group(1))
        if free_form_indent is not None and indent > free_form_indent:
            continue
        free_form_indent = indent if match.group(2) in {"resources", "nodeSelector", "labels"} else None
        previous = lines[number - 1].strip() if number else ""
        assert previous.startswith("#"), f"values.yaml:{number + 1} {line.strip()!r} has no comment above it"


def test_readme_lists_every_value() -> None:
    """helm/README.md's values table has a row for every value (sections excepted)."""
    readme = (REPO_ROOT / "helm" / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_paths(values):
        node = values
        for key in path.split("."):
            node = node[key]
        if isinstance(node, dict) and node and path.rpartition(".")[2] not in FREE_FORM:
            continue  # a section: its keys have the rows
        assert f"| `{path}` |" in readme, f"helm/README.md has no row for {path}"


def test_values_hold_no_credentials() -> None:
    """values.yaml ships empty credentials (generated at install) and no well-known default password."""
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    assert values["s3"]["accessKey"] == "" and values["s3"]["secretKey"] == ""
    assert values["s3"]["existingSecret"] == {"pipeline": "", "predictor": ""}
    for word in ("minioadmin", "minio123", "changeme", "password:", "AKIA"):
        assert word not in text, word


# ---- Kubernetes schema -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_objects_valid_against_kubernetes_schema(case: str) -> None:
    """Every built-in object validates strictly (no unknown fields) against Kubernetes 1.30's OpenAPI schema."""
    validated = 0
    for obj in rendered(case):
        group = obj["apiVersion"].rpartition("/")[0]
        if group in K8S_GROUPS:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            validated += 1
        else:
            assert group in {"serving.kserve.io", "monitoring.coreos.com"}, obj["apiVersion"]
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tsr-platform"
    assert validated >= 6


def test_kind_inventory() -> None:
    """What each case installs: MinIO only when enabled, the InferenceService only when enabled."""
    kinds = {case: sorted(o["kind"] for o in rendered(case)) for case in CASES}
    assert kinds["defaults"] == sorted(
        [
            *("ConfigMap", "Deployment", "Job", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim"),
            *("PodMonitor", "PrometheusRule", "Role", "RoleBinding", "Secret", "Secret", "Service"),
            *("ServiceAccount", "ServiceAccount"),
        ]
    )
    assert "InferenceService" in kinds["standard"]
    assert not {"Deployment", "Secret", "Service", "PersistentVolumeClaim"} & set(kinds["external-s3"])
    assert kinds["external-s3"].count("NetworkPolicy") == 1  # the predictor's; no MinIO here
    assert not {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"} & set(kinds["monitoring-off"])
    assert "ServiceMonitor" in kinds["arm64-required"] and "PodMonitor" not in kinds["arm64-required"]


# ---- the InferenceService against deploy.py ------------------------------------------------------
def spec_for(case: str) -> InferenceServiceSpec:
    """The InferenceServiceSpec deploy.py would get for the same inputs as the chart's values."""
    values = values_of(case)
    isvc, arch = values["inferenceService"], values["arch"]
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    resources = isvc["resources"]
    placement = "required" if arch["require"] else "preferred"
    return InferenceServiceSpec(
        name=isvc["name"],
        namespace=NAMESPACE,
        storage_uri=values["model"]["storageUri"],
        image=f"{isvc['image']['repository']}:{isvc['image']['tag'] or chart_meta['appVersion']}",
        service_account=values["serviceAccounts"]["predictor"]["name"],
        model_name=values["model"]["name"],
        min_replicas=isvc["minReplicas"],
        max_replicas=isvc["maxReplicas"],
        cpu_request=str(resources["requests"]["cpu"]),
        cpu_limit=str(resources["limits"]["cpu"]),
        memory_request=str(resources["requests"]["memory"]),
        memory_limit=str(resources["limits"]["memory"]),
        deployment_mode=isvc["deploymentMode"],
        canary_traffic_percent=isvc["canaryTrafficPercent"],
        node_selector=dict(isvc["nodeSelector"]),
        enable_prometheus_scraping=isvc["prometheusScraping"],
        http_port=isvc["httpPort"],
        torch_threads=isvc["threads"],
        tmp_size_limit=isvc["tmpSizeLimit"],
        scale_target=isvc["scaleTarget"],
        scale_metric=isvc["scaleMetric"],
        arch=tuple(a for a in (arch["require"] or arch["prefer"],) if a),
        arch_placement=placement,
        tolerations=tuple(isvc["tolerations"]),
        signing_public_key_config_map=values["signing"]["publicKeyConfigMap"],
        allow_unsigned=values["signing"]["allowUnsigned"],
    )


# Security-context fields compared apart: the chart runs every container as the images' user (10001).
UID_FIELDS = {"runAsUser", "runAsGroup", "fsGroup"}


def _without(data: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


@pytest.mark.parametrize("case", [c for c in CASES if "inferenceService.enabled=true" in CASES[c]])
def test_inference_service_matches_deploy_builder(case: str) -> None:
    """The chart's InferenceService is a valid kserve SDK object and has the shape deploy.py builds."""
    chart_isvc = one(case, "InferenceService")
    sdk_obj = from_manifest_dict(chart_isvc)
    assert to_manifest_dict(sdk_obj) == chart_isvc, "fields the kserve SDK model does not know"
    expected = to_manifest_dict(build_inference_service(spec_for(case)))

    assert chart_isvc["apiVersion"] == expected["apiVersion"] and chart_isvc["kind"] == expected["kind"]
    assert chart_isvc["metadata"]["name"] == expected["metadata"]["name"]
    assert chart_isvc["metadata"]["annotations"] == expected["metadata"]["annotations"]
    assert expected["metadata"]["labels"].items() <= chart_isvc["metadata"]["labels"].items()

    got, want = chart_isvc["spec"]["predictor"], expected["spec"]["predictor"]
    pod_keys = set(want) | set(got)
    for key in sorted(pod_keys - {"containers", "securityContext"}):
        assert got.get(key) == want.get(key), f"predictor.{key}"
    assert _without(got["securityContext"], UID_FIELDS) == _without(want["securityContext"], UID_FIELDS)
    (container,), (want_container,) = got["containers"], want["containers"]
    for key in sorted((set(container) | set(want_container)) - {"securityContext"}):
        assert container.get(key) == want_container.get(key), f"container.{key}"
    assert _without(container["securityContext"], UID_FIELDS) == _without(want_container["securityContext"], UID_FIELDS)


def test_inference_service_details() -> None:
    """Spot checks of the values that differ per case: canary, arch placement, tolerations, threads."""
    knative = one("knative-canary", "InferenceService")
    assert knative["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert knative["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert knative["spec"]["predictor"]["minReplicas"] == 0
    arm = one("arm64-required", "InferenceService")["spec"]["predictor"]
    terms = arm["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]
    assert arm["tolerations"][0]["value"] == "arm64"
    assert arm["containers"][0]["args"][-2:] == ["--threads", "1"]  # 1500m CPU limit -> 1 thread
    preferred = one("standard", "InferenceService")["spec"]["predictor"]["affinity"]["nodeAffinity"]
    assert list(preferred) == ["preferredDuringSchedulingIgnoredDuringExecution"]
    for case in ("standard", "knative-canary", "arm64-required"):
        assert one(case, "InferenceService")["spec"]["predictor"]["serviceAccountName"] == "tsr-predictor"
    assert not objects("defaults", "InferenceService")


def test_predictor_verifies_signatures() -> None:
    """The predictor mounts the public-key ConfigMap read-only and requires signed versions; unsigned ones
    only with signing.allowUnsigned. The private key is never in the chart: no Secret of that name, no
    volume of a Secret in the predictor."""
    for case, config_map, opt_in in (
        ("standard", SIGNING_PUBLIC_CONFIG_MAP, False),
        ("unsigned-opt-in", "team-a-model-key", True),
    ):
        predictor = one(case, "InferenceService")["spec"]["predictor"]
        (container,) = predictor["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env[ENV_PUBLIC_KEY] == SIGNING_PUBLIC_KEY_PATH and env[ENV_REQUIRE_SIGNED] == "1"
        assert (env.get(ENV_ALLOW_UNSIGNED) == "1") is opt_in, case
        volume = next(v for v in predictor["volumes"] if "configMap" in v)
        assert volume["configMap"]["name"] == config_map
        assert volume["configMap"]["items"] == [{"key": "model-signing.pub", "path": "model-signing.pub"}]
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount == {"name": volume["name"], "mountPath": SIGNING_PUBLIC_KEY_DIR, "readOnly": True}
        assert not any("secret" in v for v in predictor["volumes"]), case
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for case in CASES:
        assert not [o for o in rendered(case) if o["metadata"]["name"] == SIGNING_SECRET], case


# ---- Secrets and service accounts ------------------------------------------------------------------
@pytest.mark.parametrize("case", ["defaults", "standard"])
def test_secrets_match_pipeline_and_deploy(case: str) -> None:
    """The pipeline's Secret has the keys S3_SECRET_ENV maps; the predictor's equals deploy.build_s3_secret."""
    values = values_of(case)
    secrets = {s["metadata"]["name"]: s for s in objects(case, "Secret")}
    pipeline = decoded(secrets[S3_SECRET])
    assert set(pipeline) == set(S3_SECRET_ENV)
    endpoint = f"{RELEASE}-minio.{NAMESPACE}.svc.cluster.local:9000"
    assert pipeline == {"endpoint": endpoint, "accesskey": ACCESS_KEY, "secretkey": SECRET_KEY, "secure": "false"}

    expected = to_manifest_dict(
        build_s3_secret(NAMESPACE, "tsr-predictor-s3", endpoint, False, ACCESS_KEY, SECRET_KEY, values["s3"]["region"])
    )
    predictor = secrets["tsr-predictor-s3"]
    assert predictor["metadata"]["annotations"] == expected["metadata"]["annotations"]
    assert decoded(predictor) == expected["stringData"]
    assert predictor["type"] == expected["type"]

    sa = {s["metadata"]["name"]: s for s in objects(case, "ServiceAccount")}
    want_sa = to_manifest_dict(build_service_account(NAMESPACE))
    assert sa["tsr-predictor"]["secrets"] == want_sa["secrets"]
    assert sa["tsr-predictor"]["automountServiceAccountToken"] is want_sa["automountServiceAccountToken"] is False
    assert sa["tsr-pipeline-runner"]["automountServiceAccountToken"] is True


def test_external_s3_uses_existing_secrets() -> None:
    """With existing Secrets nothing holds credentials; workloads and the ServiceAccount point at them."""
    case = "external-s3"
    assert not objects(case, "Secret")
    (sa,) = [s for s in objects(case, "ServiceAccount") if s["metadata"]["name"] == "tsr-predictor"]
    assert sa["secrets"] == [{"name": "ext-predictor-s3"}]
    job = one(case, "Job")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in job["env"] if "valueFrom" in e}
    assert refs == {"ext-pipeline-s3"}


def test_external_s3_with_explicit_credentials() -> None:
    """External S3 + credentials from --set: the Secrets carry the endpoint, HTTPS, region and verify flag."""
    args = ["--set", "minio.enabled=false", "--set", "s3.endpoint=s3.example.com:443", "--set", "s3.secure=true"]
    docs = load_all(template_text([*args, *CREDENTIALS]))
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert decoded(secrets[S3_SECRET])["endpoint"] == "s3.example.com:443"
    assert decoded(secrets[S3_SECRET])["secure"] == "true"
    expected = to_manifest_dict(
        build_s3_secret(NAMESPACE, "x", "s3.example.com:443", True, ACCESS_KEY, SECRET_KEY, "us-east-1", True)
    )
    assert secrets["tsr-predictor-s3"]["metadata"]["annotations"] == expected["metadata"]["annotations"]
    assert not [d for d in docs if d["kind"] in {"Deployment", "PersistentVolumeClaim"}]


def test_generated_credentials_are_random_and_shared() -> None:
    """Without credentials, each render generates new random ones (no cluster for `lookup` here), and the
    two Secrets of one render share them; NOTES and README say so."""
    renders = []
    for _ in range(2):
        docs = [d for d in load_all(template_text([])) if d["kind"] == "Secret"]
        secrets = {d["metadata"]["name"]: decoded(d) for d in docs}
        pipeline, predictor = secrets[S3_SECRET], secrets["tsr-predictor-s3"]
        assert re.fullmatch(r"[A-Za-z0-9]{20}", pipeline["accesskey"])
        assert re.fullmatch(r"[A-Za-z0-9]{40}", pipeline["secretkey"])
        assert predictor == {"AWS_ACCESS_KEY_ID": pipeline["accesskey"], "AWS_SECRET_ACCESS_KEY": pipeline["secretkey"]}
        renders.append(pipeline["secretkey"])
    assert renders[0] != renders[1]
    template = (CHART / "templates" / "s3-secrets.yaml").read_text()
    assert 'lookup "v1" "Secret"' in template


# ---- security --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_workloads_are_locked_down(case: str) -> None:
    """Every pod: non-root, RuntimeDefault seccomp; every container: read-only root, no privilege
    escalation, all capabilities dropped, a non-zero UID; images pinned to an exact tag."""
    specs = list(pod_specs(case))
    assert specs
    for name, pod in specs:
        pod_sc = pod["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod_sc["runAsUser"] != 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert not container["image"].endswith(":latest") and ":" in container["image"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: no writable /tmp"
            assert "resources" in container and container["resources"]["limits"], name


def test_minio_images_are_exact_releases() -> None:
    """MinIO and mc run exact RELEASE tags, never a moving one."""
    deployment = one("defaults", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    job = one("defaults", "Job")["spec"]["template"]["spec"]["containers"][0]
    for image in (deployment["image"], job["image"]):
        assert PINNED_TAG.match(image), image
    assert deployment["image"].startswith("quay.io/minio/minio:")
    assert job["image"].startswith("quay.io/minio/mc:")


@pytest.mark.parametrize("case", list(CASES))
def test_credentials_only_in_secrets(case: str) -> None:
    """The test credentials appear in Secret objects only: not in ConfigMaps, env values or annotations."""
    for obj in rendered(case):
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj)
        assert ACCESS_KEY not in text and SECRET_KEY not in text, f"{obj['kind']} {obj['metadata']['name']}"
        b64 = [base64.b64encode(v.encode()).decode() for v in (ACCESS_KEY, SECRET_KEY)]
        assert not any(v in text for v in b64)
    for cm in objects(case, "ConfigMap"):
        assert not re.search(r"(?i)(secret_?key|password|AWS_SECRET)", " ".join(cm.get("data", {})))


# ---- RBAC and network ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_rbac_is_namespaced_least_privilege(case: str) -> None:
    """One namespaced Role: the deploy verbs on inferenceservices, nothing else; the same identity and
    rules as the kustomize base (tsr/kube/kustomize.py), so both install paths agree."""
    kinds = {o["kind"] for o in rendered(case)}
    assert not {"ClusterRole", "ClusterRoleBinding"} & kinds
    role, binding = one(case, "Role"), one(case, "RoleBinding")
    assert role["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": DEPLOYER_VERBS},
    ]
    assert list(kz.DEPLOYER_VERBS) == DEPLOYER_VERBS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": kz.PIPELINE_RUNNER, "namespace": NAMESPACE}]


def test_rbac_off() -> None:
    """serviceAccounts.pipelineRunner.create=false drops the runner's ServiceAccount, Role and RoleBinding."""
    docs = load_all(template_text([*CREDENTIALS, "--set", "serviceAccounts.pipelineRunner.create=false"]))
    assert not [d for d in docs if d["kind"] in {"Role", "RoleBinding"}]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"] == ["tsr-predictor"]


def test_network_policies() -> None:
    """Predictor: its port only, from the namespace and the monitoring namespace (+ ingressFrom); MinIO: from
    the namespace's pods only, on its two ports."""
    policies = {p["metadata"]["name"]: p["spec"] for p in objects("defaults", "NetworkPolicy")}
    predictor, minio = policies[f"{RELEASE}-predictor"], policies[f"{RELEASE}-minio"]
    assert predictor["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "tsr-predictor"
    assert predictor["policyTypes"] == ["Ingress"]
    (rule,) = predictor["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert rule["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    (minio_rule,) = minio["ingress"]
    assert minio_rule["from"] == [{"podSelector": {}}]
    assert [p["port"] for p in minio_rule["ports"]] == [9000, 9001]
    minio_pod = one("defaults", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert minio["podSelector"]["matchLabels"].items() <= minio_pod.items()
    # The predictor's pods carry deploy.py's labels (KServe copies them): the policy selects them.
    isvc_labels = one("standard", "InferenceService")["metadata"]["labels"]
    assert predictor["podSelector"]["matchLabels"].items() <= isvc_labels.items()

    extra = '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"istio-system"}}}]'
    docs = load_all(template_text([*CREDENTIALS, "--set-json", f"networkPolicy.ingressFrom={extra}"]))
    (custom,) = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-predictor" and d["kind"] == "NetworkPolicy"]
    assert custom["spec"]["ingress"][0]["from"][-1] == json.loads(extra)[0]
    knative_ports = {p["port"] for p in objects("knative-canary", "NetworkPolicy")[0]["spec"]["ingress"][0]["ports"]}
    assert knative_ports == {8080, 8012, 9090, 9091}


# ---- buckets Job -----------------------------------------------------------------------------------
def test_bucket_job_is_an_idempotent_hook() -> None:
    """A post-install/upgrade hook that creates the registry and data buckets with --ignore-existing."""
    job = one("defaults", "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][-1]
    assert "mc $insecure mb --ignore-existing" in script
    env = {e["name"]: e for e in container["env"]}
    assert env["BUCKETS"]["value"].split() == [DEFAULT_BUCKET, DATA_BUCKET]
    assert {env[k]["valueFrom"]["secretKeyRef"]["key"] for k in ("S3_ACCESS_KEY", "S3_SECRET_KEY")} == {
        "accesskey",
        "secretkey",
    }
    assert env["MC_CONFIG_DIR"]["value"].startswith("/tmp/")
    minio_env = {
        e["name"]: e for e in one("defaults", "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert minio_env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {"name": S3_SECRET, "key": "accesskey"}


# ---- monitoring ------------------------------------------------------------------------------------
def test_monitoring_files_equal_generated() -> None:
    """files/ holds byte-identical copies of the generated rules and dashboard (regenerate: cp them again)."""
    for name in ("tsr-rules.yaml", "grafana-dashboard.json"):
        copy, source = CHART / "files" / name, MONITORING / name
        assert copy.read_bytes() == source.read_bytes(), (
            f"cp {source.relative_to(REPO_ROOT)} {copy.relative_to(REPO_ROOT)}"
        )


def test_monitoring_objects_equal_generated() -> None:
    """PodMonitor, ServiceMonitor, PrometheusRule and dashboard equal manifests/monitoring's (same namespace)."""
    pod_monitor = one("defaults", "PodMonitor")
    assert pod_monitor["spec"] == generated("podmonitor.yaml")["spec"]
    service_monitor = one("arm64-required", "ServiceMonitor")
    assert service_monitor["spec"] == generated("servicemonitor.yaml")["spec"]
    rule = one("defaults", "PrometheusRule")
    assert rule["spec"]["groups"] == generated("prometheusrule.yaml")["spec"]["groups"]
    rules_file = yaml.safe_load((MONITORING / "tsr-rules.yaml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]
    dashboard = one("defaults", "ConfigMap")
    want = generated("grafana-dashboard-configmap.yaml")
    assert json.loads(dashboard["data"]["grafana-dashboard.json"]) == json.loads(want["data"]["grafana-dashboard.json"])
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    knative = one("knative-canary", "PodMonitor")["spec"]
    assert knative["podMetricsEndpoints"][0]["port"] == "user-port"  # Knative renames the container port
    assert _without(knative, {"podMetricsEndpoints"}) == _without(pod_monitor["spec"], {"podMetricsEndpoints"})
    # The monitors select the InferenceService's labels, which KServe copies onto the predictor pods.
    isvc_labels = one("standard", "InferenceService")["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= isvc_labels.items()


# ---- NOTES and golden files ------------------------------------------------------------------------
def test_notes_render(tmp_path: Path) -> None:
    """NOTES.txt renders (through a copy of the chart that wraps it in a template) and explains access."""
    chart = tmp_path / "tsr-platform"
    shutil.copytree(CHART, chart)
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_test.tpl").write_text('{{- define "notes.test" }}' + notes + "{{- end }}\n")
    (chart / "templates" / "notes_test.yaml").write_text('notes: {{ include "notes.test" . | toJson }}\n')
    for case, needles in (
        ("defaults", ["get secret tsr-s3-credentials", "port-forward svc/", 'service_account="tsr-pipeline-runner"']),
        ("standard", ["port-forward svc/gtsrb-classifier-predictor 8080:80", "/v1/models/gtsrb-classifier:predict"]),
        ("knative-canary", ["get revisions -l serving.kserve.io/inferenceservice=gtsrb-classifier", ":predict"]),
    ):
        out = template_text([*CASES[case], "-s", "templates/notes_test.yaml"], chart=chart)
        text = yaml.safe_load(out)["notes"]
        for needle in needles:
            assert needle in text, (case, needle)


def without_dashboard_json(text: str) -> str:
    """The rendered YAML with the dashboard JSON (test_monitoring_objects_equal_generated's subject)
    replaced by one line, so the golden files stay readable."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if skipping and (line.startswith("    ") or not line.strip()):
            continue
        skipping = False
        out.append(line)
        if line.rstrip().endswith("grafana-dashboard.json: |-"):
            out.append("    <files/grafana-dashboard.json>\n")
            skipping = True
    return "".join(out)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden(case: str) -> None:
    """`helm template` output equals tests/helm/golden/<case>.yaml (TSR_UPDATE_GOLDEN=1 rewrites it); the
    dashboard JSON is left out of the files (it is compared with the generated one above)."""
    text = without_dashboard_json(template_text(CASES[case]))
    path = GOLDEN / f"{case}.yaml"
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run TSR_UPDATE_GOLDEN=1 pytest tests/helm"
    assert text == path.read_text(), f"{path.name} differs from helm template; TSR_UPDATE_GOLDEN=1 regenerates it"


@pytest.mark.parametrize("case", list(CASES))
def test_custom_resources_validate_against_the_real_crds(case: str) -> None:
    """Every InferenceService, PodMonitor/ServiceMonitor and PrometheusRule satisfies the published CRD
    (KServe, prometheus-operator; make crds): types, enums, required fields, and no field the API server
    would prune. The kinds each case must render come from its values, so the test cannot pass empty."""
    values = values_of(case)
    monitoring = values["monitoring"]
    expected = {
        "InferenceService": values["inferenceService"]["enabled"],
        monitoring["scrape"]["kind"]: monitoring["scrape"]["enabled"],
        "PrometheusRule": monitoring["prometheusRule"]["enabled"],
    }
    custom = [o for o in rendered(case) if crd_schema.has_crd(o)]
    assert sorted(o["kind"] for o in custom) == sorted(kind for kind, on in expected.items() if on)
    errors = [e for o in custom for e in crd_schema.crd_errors(o)]
    assert not errors, f"{case}: rendered objects the CRDs refuse or prune:\n" + "\n".join(errors)
