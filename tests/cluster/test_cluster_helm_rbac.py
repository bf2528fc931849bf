"""The Helm chart, the kustomize overlays and the monitoring objects installed into the real API server, and
least privilege checked by the real RBAC authorizer (SubjectAccessReviews, as `kubectl auth can-i --as`).

Each release goes into a namespace labelled `pod-security.kubernetes.io/enforce=restricted` (the docs tell
operators to create it so), so every Pod the chart's Deployments and Jobs produce is admitted under
`restricted` by the real admission plugin, or the controller records the refusal, which the test reads.

No node runs here, so no Pod ever completes: helm runs with `--no-hooks` (its post-install hook Job, which
creates the buckets, would be waited for until helm's timeout), and the test creates that Job itself from
`helm template --show-only`, so its Pod still meets admission.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.cluster_plane import TOOLS_BIN, ControlPlane, ensure_namespace
from tests.helm.test_chart import CASES, CHART
from tsr.kube.inference_service import SIGNING_SECRET
from tsr.local.checkout import REPO_ROOT

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
INSTALLED_CASES = ("defaults", "knative-canary", "external-s3")
RELEASE = "tsr-platform"


def helm(cluster: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(TOOLS_BIN / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HOME": str(cluster.root), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(cluster.root / "helm-cache")},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
    return result


def restricted_namespace(cluster: ControlPlane, name: str) -> str:
    k8s.CoreV1Api(cluster.api_client).create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=dict(RESTRICTED)))
    )
    return name


def release_objects(cluster: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    manifest = helm(cluster, "get", "manifest", RELEASE, "-n", namespace).stdout
    return [d for d in yaml.safe_load_all(manifest) if d]


def create_hook_jobs(cluster: ControlPlane, namespace: str, values: list[str]) -> list[dict[str, Any]]:
    """The chart's hook Jobs, rendered for this release and created as helm would create them."""
    rendered = helm(
        cluster, "template", RELEASE, str(CHART), "-n", namespace, *values, "--show-only", "templates/buckets-job.yaml",
        check=False,
    )  # fmt: skip
    jobs = (
        [d for d in yaml.safe_load_all(rendered.stdout) if d and d.get("kind") == "Job"]
        if rendered.returncode == 0
        else []
    )
    for job in jobs:
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))
    return jobs


def pod_events(cluster: ControlPlane, namespace: str) -> list[str]:
    events = k8s.CoreV1Api(cluster.api_client).list_namespaced_event(namespace).items
    return [f"{e.involved_object.kind}/{e.involved_object.name}: {e.reason}: {e.message}" for e in events]


@pytest.mark.parametrize("case", INSTALLED_CASES)
def test_helm_install_upgrade_uninstall(cluster: ControlPlane, operator_crds: None, case: str) -> None:
    namespace = restricted_namespace(cluster, f"helm-{case}")
    helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, "--no-hooks", *CASES[case])
    hooks = create_hook_jobs(cluster, namespace, CASES[case])
    objects = release_objects(cluster, namespace) + hooks
    assert objects
    for obj in objects:  # every object exists in the server, as the server stored it
        kind, name = obj["kind"], obj["metadata"]["name"]
        ns_args = ["-n", obj["metadata"].get("namespace", namespace)]
        cluster.kubectl("get", kind, name, *ns_args, "-o", "name")
    # Workloads: the controllers created their Pods; PodSecurity (restricted) refused none of them.
    workloads = [o for o in objects if o["kind"] in ("Deployment", "Job")]
    core = k8s.CoreV1Api(cluster.api_client)
    if workloads:
        deadline = time.monotonic() + 60
        while not core.list_namespaced_pod(namespace).items and time.monotonic() < deadline:
            time.sleep(0.5)
        assert core.list_namespaced_pod(namespace).items, pod_events(cluster, namespace)
    refused = [e for e in pod_events(cluster, namespace) if "violates PodSecurity" in e]
    assert not refused, refused
    # Upgrade with changed values: the server holds the new revision.
    helm(
        cluster, "upgrade", RELEASE, str(CHART), "-n", namespace, "--no-hooks", *CASES[case],
        "--set", "commonLabels.tier=upgraded",
    )  # fmt: skip
    upgraded = release_objects(cluster, namespace)
    sa = next(o for o in upgraded if o["kind"] == "ServiceAccount")
    live = json.loads(
        cluster.kubectl("get", "serviceaccount", sa["metadata"]["name"], "-n", namespace, "-o", "json").stdout
    )
    assert live["metadata"]["labels"]["tier"] == "upgraded"
    # Uninstall leaves nothing of the release.
    helm(cluster, "uninstall", RELEASE, "-n", namespace, "--no-hooks", "--wait", "--timeout", "60s")
    for job in hooks:  # hook objects are not part of a release (helm deletes them after they succeed)
        cluster.kubectl("delete", "job", job["metadata"]["name"], "-n", namespace, "--cascade=foreground")
    left = cluster.kubectl(
        "get",
        "all,secrets,configmaps,serviceaccounts,roles,rolebindings,networkpolicies,inferenceservices",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "-o",
        "name",
    ).stdout.split()
    assert not left, left


def test_a_chart_pod_that_breaks_restricted_is_refused(cluster: ControlPlane, operator_crds: None) -> None:
    """The negative case of the test above: the same chart with root containers is refused by admission."""
    namespace = restricted_namespace(cluster, "helm-root")
    result = helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        *CASES["defaults"],
        "--set",
        "security.runAsUser=0",
        check=False,
    )
    if result.returncode != 0:  # the chart's own schema may refuse it first: that is a refusal too
        assert "runAsUser" in result.stderr
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        refused = [e for e in pod_events(cluster, namespace) if "violates PodSecurity" in e]
        if refused:
            break
        time.sleep(0.5)
    assert refused, pod_events(cluster, namespace)
    assert any("runAsUser=0" in e or "runAsNonRoot" in e for e in refused), refused


@pytest.mark.parametrize("overlay", ["standard", "knative", "arm64-preferred"])
def test_kustomize_overlays_apply_server_side(
    cluster: ControlPlane, operator_crds: None, overlay: str, tmp_path: Path
) -> None:
    # The overlays read the operator's env files; the committed examples stand in for them here.
    tree = tmp_path / "manifests"
    subprocess.run(["cp", "-r", str(REPO_ROOT / "manifests"), str(tree)], check=True)
    for example in tree.rglob("*.env.example"):
        example.with_suffix("").write_text(example.read_text())
    built = subprocess.run(
        [str(TOOLS_BIN / "kustomize"), "build", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Each overlay into a namespace of its own (KServe refuses to switch a live object from Standard to Knative).
    namespace = restricted_namespace(cluster, f"kustomize-{overlay}")
    docs = [d for d in yaml.safe_load_all(built) if d]
    for doc in docs:
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
    result = cluster.kubectl(
        "apply", "--server-side", "--field-manager=tsr-test", "-f", "-", input=yaml.safe_dump_all(docs)
    )
    assert "serverside-applied" in result.stdout


def test_monitoring_objects_apply(cluster: ControlPlane, operator_crds: None) -> None:
    built = subprocess.run(
        [str(TOOLS_BIN / "kustomize"), "build", str(REPO_ROOT / "manifests" / "monitoring")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for namespace in {d["metadata"].get("namespace") for d in yaml.safe_load_all(built) if d} - {None}:
        ensure_namespace(cluster.api_client, namespace, RESTRICTED)
    result = cluster.kubectl("apply", "--server-side", "-f", "-", input=built)
    assert "prometheusrule" in result.stdout and "podmonitor" in result.stdout


# ---- least privilege, by the real authorizer ----------------------------------------------------------------
def can_i(
    cluster: ControlPlane,
    user: str,
    verb: str,
    resource: str,
    namespace: str | None,
    group: str = "",
    subresource: str = "",
    name: str = "",
) -> bool:
    review = k8s.V1SubjectAccessReview(
        spec=k8s.V1SubjectAccessReviewSpec(
            user=user,
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace or 'default'}",
                "system:authenticated",
            ],
            resource_attributes=k8s.V1ResourceAttributes(
                verb=verb,
                resource=resource,
                group=group,
                namespace=namespace,
                subresource=subresource or None,
                name=name or None,
            ),
        )
    )
    return bool(k8s.AuthorizationV1Api(cluster.api_client).create_subject_access_review(review).status.allowed)


@pytest.fixture(scope="module")
def rbac_namespace(cluster: ControlPlane, operator_crds: None) -> str:
    namespace = restricted_namespace(cluster, "rbac")
    helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, "--no-hooks", *CASES["defaults"])
    return namespace


@pytest.mark.parametrize("verb", ["get", "list", "watch", "create", "update", "patch"])
def test_pipeline_runner_may_do_its_job(cluster: ControlPlane, rbac_namespace: str, verb: str) -> None:
    runner = f"system:serviceaccount:{rbac_namespace}:tsr-pipeline-runner"
    assert can_i(cluster, runner, verb, "inferenceservices", rbac_namespace, "serving.kserve.io")


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "group", "subresource"),
    [
        ("delete", "inferenceservices", "rbac", "serving.kserve.io", ""),
        ("create", "inferenceservices", "default", "serving.kserve.io", ""),  # another namespace
        ("get", "secrets", "rbac", "", ""),  # the Secret reaches the steps as env, through the kubelet
        ("get", "secrets", "kube-system", "", ""),
        ("create", "pods", "rbac", "", "exec"),
        ("create", "pods", "rbac", "", ""),
        ("create", "namespaces", None, "", ""),
        ("create", "clusterrolebindings", None, "rbac.authorization.k8s.io", ""),
        ("create", "rolebindings", "rbac", "rbac.authorization.k8s.io", ""),
        ("patch", "roles", "rbac", "rbac.authorization.k8s.io", ""),
        ("update", "inferenceservices", "rbac", "serving.kserve.io", "status"),
    ],
)
def test_pipeline_runner_may_do_nothing_else(
    cluster: ControlPlane,
    rbac_namespace: str,
    verb: str,
    resource: str,
    namespace: str | None,
    group: str,
    subresource: str,
) -> None:
    runner = f"system:serviceaccount:{rbac_namespace}:tsr-pipeline-runner"
    assert not can_i(cluster, runner, verb, resource, namespace, group, subresource)


@pytest.mark.parametrize("account", ["tsr-predictor", "tsr-pipeline-runner"])
@pytest.mark.parametrize("verb", ["get", "list", "watch"])
def test_no_service_account_of_the_chart_may_read_the_signing_key(
    cluster: ControlPlane, rbac_namespace: str, account: str, verb: str
) -> None:
    """The private key reaches the register step as a volume the kubelet mounts: no ServiceAccount of the chart,
    the predictor's least of all, may read the Secret through the API (docs/operator-guide.md section 6)."""
    user = f"system:serviceaccount:{rbac_namespace}:{account}"
    assert not can_i(cluster, user, verb, "secrets", rbac_namespace, name=SIGNING_SECRET)


def test_the_predictor_cannot_fetch_the_signing_key(cluster: ControlPlane, rbac_namespace: str) -> None:
    """The same by impersonation against a real Secret of that name: the admin reads it, the predictor's
    ServiceAccount gets 403."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SIGNING_SECRET, "namespace": rbac_namespace},
        "stringData": {"model-signing.key": "not a real key: the test reads it back"},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
    assert SIGNING_SECRET in cluster.kubectl("get", "secret", SIGNING_SECRET, "-n", rbac_namespace, "-o", "name").stdout
    refused = cluster.kubectl(
        "get", "secret", SIGNING_SECRET, "-n", rbac_namespace,
        f"--as=system:serviceaccount:{rbac_namespace}:tsr-predictor", check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr


def test_the_authorizer_is_not_a_pushover(cluster: ControlPlane, rbac_namespace: str) -> None:
    """The negative control: an identity with no binding is refused the runner's own rights, and one bound
    to cluster-admin gets everything, so the verdicts above come from our Role, not from a default."""
    stranger = f"system:serviceaccount:{rbac_namespace}:tsr-predictor"
    assert not can_i(cluster, stranger, "create", "inferenceservices", rbac_namespace, "serving.kserve.io")
    assert can_i(cluster, "system:kube-controller-manager", "get", "secrets", "kube-system")


@pytest.mark.parametrize(
    ("verb", "resource", "group", "subresource"),
    [
        ("create", "inferenceservices", "serving.kserve.io", ""),
        ("get", "secrets", "", ""),
        ("list", "pods", "", ""),
        ("create", "pods", "", "exec"),
        ("create", "rolebindings", "rbac.authorization.k8s.io", ""),
    ],
)
def test_retrain_receiver_has_no_kubernetes_rights(
    cluster: ControlPlane, operator_crds: None, verb: str, resource: str, group: str, subresource: str
) -> None:
    """The retrain receiver talks to the KFP API with a projected token, never to Kubernetes: its
    ServiceAccount (manifests/retrain, applied as an operator would) may do none of this."""
    built = subprocess.run(
        [str(TOOLS_BIN / "kustomize"), "build", str(REPO_ROOT / "manifests" / "retrain")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    namespace = account["metadata"]["namespace"]
    if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        restricted_namespace(cluster, namespace)
    cluster.kubectl("apply", "--server-side", "-f", "-", input=built)
    user = f"system:serviceaccount:{namespace}:{account['metadata']['name']}"
    assert not can_i(cluster, user, verb, resource, namespace, group, subresource)
