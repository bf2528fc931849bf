"""The rollout's success paths against a real kube-apiserver (tests/cluster_plane.py) serving KServe's own
InferenceService CRD, with a stand-in for the controller's status.

What is real here: the API server (storage, authentication, admission, the CRD's schema validation and
pruning, JSON merge patch, resourceVersion conflicts, generations, the status subresource) and the
kubeconfig the CLI and the pipeline step load. What is not: readiness. Without a node no predictor Pod
runs, so the real KServe controller never reports Ready (test_cluster_kserve.py checks the engine times out
and rolls back on exactly that); to exercise "Ready", this module's control plane runs WITHOUT KServe's
manager and `Controller` below writes `status` (observedGeneration, the Ready condition, url) through the
status subresource for each new generation, Ready or not depending on the model version. Standard mode only
(Knative's revisions and traffic split are the in-memory simulator's job).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from tests.cluster_plane import ControlPlane, apply_crd_files, control_plane
from tests.crd_schema import CRD_DIR, CRD_FILES
from tsr.kube import inference_service as isvcs
from tsr.kube import render as render
from tsr.kube import rollout as r

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
NS = "tsr"
V1 = "s3://models/gtsrb-classifier/20261101-120000-aaaaaa"
V2 = "s3://models/gtsrb-classifier/20261115-120000-bbbbbb"
BROKEN = "s3://models/gtsrb-classifier/20261120-120000-cccccc"  # the controller never gets it Ready


class Controller(threading.Thread):
    """Stand-in for KServe's controller: every new generation gets a status, Ready unless its model is BROKEN."""

    def __init__(self, api: k8s.CustomObjectsApi) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.stopped = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            items = self.api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
            for obj in items:
                generation = obj["metadata"]["generation"]
                if (obj.get("status") or {}).get("observedGeneration") == generation:
                    continue
                ready = r.storage_uri_of(obj["spec"]["predictor"]) != BROKEN
                condition = {"type": "Ready", "status": "True" if ready else "False"}
                if not ready:
                    condition |= {"reason": "MinimumReplicasUnavailable", "message": "0/1 replicas available"}
                status = {
                    "observedGeneration": generation,
                    "conditions": [{**condition, "lastTransitionTime": "2026-11-23T00:00:00Z"}],
                    "url": f"http://{obj['metadata']['name']}.{NS}.example.com",
                }
                try:
                    self.api.patch_namespaced_custom_object_status(
                        GROUP, VERSION, NS, PLURAL, obj["metadata"]["name"], {"status": status}
                    )
                except ApiException as exc:  # a status the CRD refuses is a bug in this stand-in
                    if exc.status != 409:
                        self.errors.append(f"{exc.status}: {exc.body}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own without KServe's manager (which would write the real, never-Ready status)."""
    with control_plane(tmp_path_factory.mktemp("plane"), kserve=False) as cp:
        apply_crd_files(cp, [CRD_DIR / CRD_FILES[("serving.kserve.io", "InferenceService")]])
        k8s.CoreV1Api(cp.api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NS)))
        yield cp


@pytest.fixture
def api(server: ControlPlane) -> Iterator[k8s.CustomObjectsApi]:
    objects = k8s.CustomObjectsApi(server.api_client)
    controller = Controller(objects)
    controller.start()
    yield objects
    controller.stopped.set()
    controller.join(timeout=5)
    assert not controller.errors, controller.errors
    for obj in objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]:
        objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj["metadata"]["name"])


def isvc(uri: str, name: str, **overrides: Any) -> Any:
    return isvcs.build_inference_service(
        isvcs.InferenceServiceSpec(name=name, namespace=NS, storage_uri=uri, **overrides)
    )


def live(api: k8s.CustomObjectsApi, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    return obj


FAST: dict[str, Any] = {"timeout_s": 15.0, "poll_s": 0.1}


def test_create_then_patch_removes_what_the_new_spec_leaves_out(api: k8s.CustomObjectsApi) -> None:
    first = r.rollout_inference_service(
        isvc(V1, "placed", arch=("arm64",), tolerations=(isvcs.parse_toleration("arch=arm64:NoSchedule"),)),
        api=api,
        **FAST,
    )
    assert first.action == "created" and first.endpoint == f"http://placed.{NS}.example.com"
    obj = live(api, "placed")
    assert obj["metadata"]["generation"] == 1
    assert obj["spec"]["predictor"]["tolerations"] and obj["spec"]["predictor"]["affinity"]
    # The stored spec is exactly what the project built: the real CRD pruned nothing.
    built = render.to_manifest_dict(
        isvc(V1, "placed", arch=("arm64",), tolerations=(isvcs.parse_toleration("arch=arm64:NoSchedule"),))
    )
    assert obj["spec"] == built["spec"]

    second = r.rollout_inference_service(isvc(V2, "placed", min_replicas=2), api=api, **FAST)
    assert second.action == "patched"
    obj = live(api, "placed")
    predictor = obj["spec"]["predictor"]
    assert r.storage_uri_of(predictor) == V2 and predictor["minReplicas"] == 2
    assert "affinity" not in predictor and "tolerations" not in predictor, "merge patch nulls what the new spec drops"
    assert obj["metadata"]["generation"] == 2 and obj["status"]["observedGeneration"] == 2
    assert obj["metadata"]["annotations"][r.ANNOTATION_PREVIOUS_URI] == V1


def test_a_version_that_never_gets_ready_is_rolled_back(api: k8s.CustomObjectsApi) -> None:
    r.rollout_inference_service(isvc(V1, "rollback"), api=api, **FAST)
    with pytest.raises(r.RolloutFailed) as failure:
        r.rollout_inference_service(isvc(BROKEN, "rollback", cpu_limit="1"), api=api, timeout_s=2.0, poll_s=0.1)
    assert failure.value.rolled_back
    assert "MinimumReplicasUnavailable" in str(failure.value)
    obj = live(api, "rollback")
    assert r.storage_uri_of(obj["spec"]["predictor"]) == V1
    assert obj["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] == "2", "the old spec, exactly"
    assert obj["metadata"]["annotations"][r.ANNOTATION_FAILED_URI] == BROKEN
    assert obj["metadata"]["generation"] == 3  # created, the failed patch, the restore
    ready, _ = r.rollout_state(obj)
    deadline = time.monotonic() + 10
    while not ready and time.monotonic() < deadline:  # the controller reports the restored generation
        time.sleep(0.1)
        ready, _ = r.rollout_state(live(api, "rollback"))
    assert ready


def test_a_concurrent_writer_is_retried_not_overwritten(api: k8s.CustomObjectsApi) -> None:
    """Someone else (a person's kubectl label, another controller) writes between our read and our patch:
    the server answers 409 to our stale resourceVersion, and the rollout re-reads and patches again."""
    r.rollout_inference_service(isvc(V1, "busy"), api=api, **FAST)
    real_patch = api.patch_namespaced_custom_object
    interfered: list[bool] = []

    answers: list[int] = []

    def patch_after_someone_else(*args: Any, **kwargs: Any) -> Any:
        if not interfered:
            interfered.append(True)
            real_patch(GROUP, VERSION, NS, PLURAL, "busy", {"metadata": {"labels": {"team": "signs"}}})
        try:
            result = real_patch(*args, **kwargs)
        except ApiException as exc:
            answers.append(exc.status)
            raise
        answers.append(200)
        return result

    api.patch_namespaced_custom_object = patch_after_someone_else  # type: ignore[method-assign]
    try:
        r.rollout_inference_service(isvc(V2, "busy"), api=api, **FAST)
    finally:
        api.patch_namespaced_custom_object = real_patch  # type: ignore[method-assign]
    obj = live(api, "busy")
    assert answers == [409, 200], "our stale write is refused by the server, then retried on a fresh read"
    assert interfered and r.storage_uri_of(obj["spec"]["predictor"]) == V2
    assert obj["metadata"]["labels"]["team"] == "signs", "the other writer's change is kept"


def test_the_cli_and_the_pipeline_step_reach_it_through_a_kubeconfig(
    api: k8s.CustomObjectsApi, server: ControlPlane, tmp_path: Path
) -> None:
    """`tsr deploy` / `tsr rollback` and the KFP deploy step (cluster mode, under kfp.local) load the kubeconfig
    like they would a real cluster's; nothing is handed to them but the file."""
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig), "TSR_STATE_DIR": str(tmp_path / "state")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    tsr = str(Path(sys.executable).parent / "tsr")
    deployed = subprocess.run(
        [tsr, "deploy", V1, "--model-name", "cli-model", "--arch", "arm64", "--timeout", "30"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert r.storage_uri_of(live(api, "cli-model")["spec"]["predictor"]) == V1

    script = f"""
import warnings
from kfp import local
from components.deploy.component import deploy_component
from components.factory import kfp_component
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(tmp_path / "root")!r}, raise_on_error=True)
warnings.filterwarnings("ignore")
task = kfp_component(deploy_component, "unused")(model_uri={V2!r}, model_name="cli-model", ready_timeout_s=30.0)
print("ENDPOINT", task.outputs["Output"])
"""
    step = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert step.returncode == 0, step.stdout[-3000:] + step.stderr[-3000:]
    assert f"ENDPOINT http://cli-model.{NS}.example.com" in step.stdout
    obj = live(api, "cli-model")
    assert r.storage_uri_of(obj["spec"]["predictor"]) == V2 and "affinity" not in obj["spec"]["predictor"]
    manifest = yaml.safe_load(next((tmp_path / "root").rglob("manifest")).read_text())
    assert r.storage_uri_of(manifest["spec"]["predictor"]) == V2

    rolled = subprocess.run(
        [tsr, "rollback", "cli-model", "--timeout", "30"], env=env, capture_output=True, text=True, timeout=120
    )
    assert rolled.returncode == 0, rolled.stderr
    assert r.storage_uri_of(live(api, "cli-model")["spec"]["predictor"]) == V1
