"""The deploy step's InferenceService meets the real API server, PodSecurity admission and the KServe controller.

Nothing here is simulated: KServe's own webhooks default and validate the object, its controller writes the
Deployment, Service and HPA, the controller-manager turns the Deployment into a ReplicaSet and Pods, and
PodSecurity admission (`restricted`) decides whether those Pods may exist. No node runs here, so the Pods
stay Pending and the InferenceService never becomes Ready; the rollout test relies on exactly that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from components.deploy.deploy import deploy
from tests.cluster_plane import STOCK_STORAGE_CONTAINER, ControlPlane, api_error
from tsr.kube.inference_service import (
    ANNOTATION_S3_ENDPOINT,
    DeployError,
    InferenceServiceSpec,
    build_inference_service,
    build_s3_secret_and_service_account,
)
from tsr.kube.labels import ARCH_LABEL
from tsr.kube.render import to_manifest_dict
from tsr.kube.rollout import RolloutFailed, promote_command, rollout_inference_service

NAMESPACE = "tsr-serving"
URI = "s3://models/gtsrb-classifier/20260101T000000Z-abc123"
URI_2 = "s3://models/gtsrb-classifier/20260102T000000Z-def456"
IMAGE = "registry.example/tsr-predictor:test"
S3_ENDPOINT = "minio.tsr.svc:9000"


def wait_for(what: str, get: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    """Poll `get()` until it returns something truthy (an object the controllers write asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = get()
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not appear within {timeout_s:.0f}s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def serving_namespace(cluster: ControlPlane) -> str:
    """A namespace enforcing `restricted`, with the predictor's S3 Secret and ServiceAccount."""
    core = k8s.CoreV1Api(cluster.api_client)
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE, labels=labels)))
    secret, account = build_s3_secret_and_service_account(
        NAMESPACE, endpoint=S3_ENDPOINT, use_https=False, access_key="test-access", secret_key="test-secret-key"
    )
    core.create_namespaced_secret(NAMESPACE, secret)
    core.create_namespaced_service_account(NAMESPACE, account)
    return NAMESPACE


def spec(name: str, **overrides: Any) -> InferenceServiceSpec:
    fields: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "storage_uri": URI, "image": IMAGE}
    return InferenceServiceSpec(**{**fields, **overrides})


def test_the_control_plane_is_real(cluster: ControlPlane) -> None:
    version = k8s.VersionApi(cluster.api_client).get_code()
    assert version.git_version == "v1.37.2"
    assert cluster.kubectl("version", "-o", "json").returncode == 0
    # The controller-manager turns a Deployment into a ReplicaSet and that into a Pod (Pending: no node).
    apps, core = k8s.AppsV1Api(cluster.api_client), k8s.CoreV1Api(cluster.api_client)
    labels = {"app": "smoke"}
    container = k8s.V1Container(name="c", image="registry.example/smoke:1")
    template = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels), spec=k8s.V1PodSpec(containers=[container])
    )
    apps.create_namespaced_deployment(
        "default",
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name="smoke"),
            spec=k8s.V1DeploymentSpec(selector=k8s.V1LabelSelector(match_labels=labels), template=template),
        ),
    )
    pods = wait_for("the smoke Pod", lambda: core.list_namespaced_pod("default", label_selector="app=smoke").items)
    assert pods[0].status.phase == "Pending"


def test_pod_security_refuses_a_non_compliant_pod(cluster: ControlPlane, serving_namespace: str) -> None:
    core = k8s.CoreV1Api(cluster.api_client)
    container = k8s.V1Container(
        name="c",
        image=IMAGE,
        security_context=k8s.V1SecurityContext(
            run_as_user=0, allow_privilege_escalation=True, read_only_root_filesystem=False
        ),
    )
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="root-pod"), spec=k8s.V1PodSpec(containers=[container]))
    error = api_error(lambda: core.create_namespaced_pod(serving_namespace, pod))
    assert error.status == 403
    message = json.loads(error.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "allowPrivilegeEscalation != false" in message and "runAsUser=0" in message


def test_kserve_reconciles_the_deploy_steps_inference_service(cluster: ControlPlane, serving_namespace: str) -> None:
    """The object the deploy step renders passes KServe's webhooks and becomes a Deployment, Service and HPA
    whose Pods PodSecurity admits under `restricted`."""
    tolerations = ({"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"},)
    isvc = build_inference_service(
        spec(
            "gtsrb-classifier",
            arch=("amd64", "arm64"),
            tolerations=tolerations,
            min_replicas=1,
            max_replicas=4,
            scale_target=70,
        )
    )
    custom = k8s.CustomObjectsApi(cluster.api_client)
    custom.create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", to_manifest_dict(isvc)
    )
    apps, core = k8s.AppsV1Api(cluster.api_client), k8s.CoreV1Api(cluster.api_client)
    autoscaling = k8s.AutoscalingV2Api(cluster.api_client)
    deployment = wait_for(
        "the predictor Deployment", lambda: apps.read_namespaced_deployment("gtsrb-classifier-predictor", NAMESPACE)
    )
    pod_spec = deployment.spec.template.spec
    predictor = next(c for c in pod_spec.containers if c.name == "kserve-container")
    assert predictor.image == IMAGE
    assert "--model" in (predictor.args or []) or "--model" in (predictor.command or [])
    assert predictor.resources.requests == {"cpu": "500m", "memory": "1Gi"}
    assert deployment.spec.template.metadata.annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    terms = pod_spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert {e.key: e.values for e in terms[0].match_expressions} == {ARCH_LABEL: ["amd64", "arm64"]}
    assert any(t.key == "arch" and t.effect == "NoSchedule" for t in pod_spec.tolerations)
    assert pod_spec.service_account_name == "tsr-predictor"
    service = wait_for(
        "the predictor Service", lambda: core.read_namespaced_service("gtsrb-classifier-predictor", NAMESPACE)
    )
    assert service.spec.ports
    hpa = wait_for(
        "the predictor HPA",
        lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler("gtsrb-classifier-predictor", NAMESPACE),
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, 4)
    assert hpa.spec.metrics[0].resource.target.average_utilization == 70
    # Pods: created by the real ReplicaSet controller, admitted by PodSecurity (restricted), storage-initializer
    # injected by KServe's pod mutator with the S3 endpoint from the ServiceAccount's Secret.
    pods = wait_for(
        "predictor Pods",
        lambda: (
            core.list_namespaced_pod(
                NAMESPACE, label_selector="serving.kserve.io/inferenceservice=gtsrb-classifier"
            ).items
        ),
    )
    init = {c.name: c for c in pods[0].spec.init_containers or []}
    assert "storage-initializer" in init, [c.name for c in pods[0].spec.init_containers or []]
    storage = init["storage-initializer"]
    assert URI in (storage.args or [])
    env = {e.name: e for e in storage.env or []}
    assert env["S3_ENDPOINT"].value == S3_ENDPOINT
    assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == "tsr-predictor-s3"
    assert pods[0].status.phase == "Pending"  # no node here


def test_kserves_stock_storage_initializer_is_refused_under_restricted(
    cluster: ControlPlane, serving_namespace: str
) -> None:
    """Why the ClusterStorageContainer needs a securityContext (tests/cluster_plane.py): with KServe's container
    as shipped, the ReplicaSet controller's Pods are refused by PodSecurity admission, naming the init container."""
    body = to_manifest_dict(build_inference_service(spec("stock-init")))
    body["spec"]["predictor"]["storageContainerName"] = STOCK_STORAGE_CONTAINER
    custom = k8s.CustomObjectsApi(cluster.api_client)
    custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", body)
    core = k8s.CoreV1Api(cluster.api_client)

    def refusal() -> str:
        for event in core.list_namespaced_event(NAMESPACE).items:
            if event.reason == "FailedCreate" and "stock-init-predictor" in event.involved_object.name:
                return str(event.message)
        return ""

    message = wait_for("the ReplicaSet's FailedCreate event", refusal)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'container "storage-initializer" must set securityContext.allowPrivilegeEscalation=false' in message


def test_kserve_refuses_an_invalid_inference_service(cluster: ControlPlane, serving_namespace: str) -> None:
    """KServe's validating webhook really runs: two predictor implementations in one spec are refused."""
    body = to_manifest_dict(build_inference_service(spec("invalid-isvc")))
    body["spec"]["predictor"]["sklearn"] = {"storageUri": URI}
    custom = k8s.CustomObjectsApi(cluster.api_client)
    error = api_error(
        lambda: custom.create_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", body
        )
    )
    assert error.status in (400, 403, 422)
    assert "admission webhook" in error.body


def test_knative_only_settings_are_refused_before_the_api_call(cluster: ControlPlane, serving_namespace: str) -> None:
    with pytest.raises(ValueError, match="canary"):
        spec("canary-isvc", canary_traffic_percent=10)
    with pytest.raises(ValueError, match="scale_metric"):
        spec("rps-isvc", scale_metric="rps")


def test_rollout_without_pods_times_out_and_rolls_back(cluster: ControlPlane, serving_namespace: str) -> None:
    """The engine waits on the status the controller really writes: without a node nothing becomes Ready, so
    the first deploy times out, and a second version is rolled back to the first one's spec."""
    api = k8s.CustomObjectsApi(cluster.api_client)
    first = build_inference_service(spec("rollout-isvc"))
    with pytest.raises(RolloutFailed) as failed:
        rollout_inference_service(first, api=api, timeout_s=8, poll_s=1)
    assert "not Ready" in str(failed.value) or "Ready" in str(failed.value)
    live = api.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", "rollout-isvc"
    )
    conditions = {c["type"]: c["status"] for c in live["status"]["conditions"]}
    assert conditions.get("Ready") != "True"
    assert live["status"].get("observedGeneration") == live["metadata"]["generation"]  # the controller saw it
    second = build_inference_service(spec("rollout-isvc", storage_uri=URI_2))
    with pytest.raises(RolloutFailed):
        rollout_inference_service(second, api=api, timeout_s=8, poll_s=1)
    live = api.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", "rollout-isvc"
    )
    assert (
        live["spec"]["predictor"]["containers"][0]["env"]
        == to_manifest_dict(first)["spec"]["predictor"]["containers"][0]["env"]
    )


def test_the_deploy_step_in_cluster_mode(cluster: ControlPlane, serving_namespace: str) -> None:
    """The pipeline's deploy step, reaching the server through nothing but the kubeconfig."""
    with pytest.raises(DeployError):
        deploy(
            "cluster",
            URI,
            "step-classifier",
            namespace=NAMESPACE,
            predictor_image=IMAGE,
            kube_config=str(cluster.kubeconfig),
            cluster_ready_timeout_s=5,
        )
    live = k8s.CustomObjectsApi(cluster.api_client).get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", "step-classifier"
    )
    assert live["metadata"]["annotations"].get(ANNOTATION_S3_ENDPOINT) is None  # credentials stay in the Secret
    assert live["spec"]["predictor"]["serviceAccountName"] == "tsr-predictor"


def test_promote_against_the_real_controller(cluster: ControlPlane, serving_namespace: str) -> None:
    """`tsr promote` reads the live object the controller reconciled: Standard mode has no canary, so it reports
    that and changes nothing; a model with no InferenceService is an error naming it. Canary promotion itself
    needs Knative, which does not run here (docs/cluster.md)."""
    api = k8s.CustomObjectsApi(cluster.api_client)
    body = to_manifest_dict(build_inference_service(spec("promote-isvc")))
    api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", body)
    wait_for("the controller's status", lambda: api.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", "promote-isvc").get("status"))  # fmt: skip
    before = api.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", "promote-isvc"
    )
    result = promote_command("promote-isvc", namespace=NAMESPACE, kube_config=str(cluster.kubeconfig))
    assert result.ok, result.message
    assert "Standard mode, which has no canary" in result.message
    after = api.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", "promote-isvc"
    )
    assert after["metadata"]["generation"] == before["metadata"]["generation"], (
        "promote must not write in Standard mode"
    )
    missing = promote_command("no-such-model", namespace=NAMESPACE, kube_config=str(cluster.kubeconfig))
    assert not missing.ok and "does not exist" in missing.message
