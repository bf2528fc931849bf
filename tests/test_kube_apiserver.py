"""Smoke tests for the real custom-resource API server (tests/kube_apiserver.py, .ci/kube-crd-apiserver):
the semantics the KServe rollout code relies on, with KServe's InferenceService CRD (.tools/crds) and
InferenceServices built by the project's own builder. One server per module, shared by the tests; each
test works on its own InferenceService.
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from tests.kube_apiserver import ISVC_CRD, KubeApiServer, kube_apiserver, start_kube_apiserver
from tsr.kube.inference_service import InferenceServiceSpec, build_inference_service
from tsr.kube.render import to_manifest_dict

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
NAMESPACE = "tsr"
STORAGE_URI = "s3://models/gtsrb-classifier/20261123-140501-3fa2c1"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    with kube_apiserver(tmp_path_factory.mktemp("kube-apiserver"), crds=[ISVC_CRD]) as srv:
        yield srv


@pytest.fixture
def api(server: KubeApiServer) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(server.api_client)


def isvc(name: str, min_replicas: int = 1) -> Obj:
    spec = InferenceServiceSpec(name=name, namespace=NAMESPACE, storage_uri=STORAGE_URI, min_replicas=min_replicas)
    return to_manifest_dict(build_inference_service(spec))


def create(api: k8s.CustomObjectsApi, body: Obj, **kwargs: Any) -> Obj:
    created: Obj = api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body, **kwargs)
    return created


def read(api: k8s.CustomObjectsApi, name: str) -> Obj:
    obj: Obj = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    return obj


def patch(api: k8s.CustomObjectsApi, name: str, body: Obj) -> Obj:
    obj: Obj = api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name, body)
    return obj


def api_error(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


def test_create_and_read_back(api: k8s.CustomObjectsApi, server: KubeApiServer) -> None:
    body = isvc("create-read")
    created = create(api, body)
    live = read(api, "create-read")
    meta = live["metadata"]
    assert meta["generation"] == 1
    assert meta["resourceVersion"].isdigit() and meta["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert meta["uid"] and meta["creationTimestamp"]  # set by the server, not sent
    assert "uid" not in body["metadata"]
    # What the project builds survives the CRD's structural schema untouched: nothing pruned, nothing defaulted.
    assert live["spec"] == body["spec"]
    assert meta["labels"] == body["metadata"]["labels"] and meta["annotations"] == body["metadata"]["annotations"]
    # A second create of the same name is refused.
    assert api_error(lambda: create(api, body)).status == 409
    # No core API here: the namespace "tsr" was never created, and cannot be.
    assert api_error(lambda: k8s.CoreV1Api(server.api_client).read_namespace(NAMESPACE)).status == 404


def test_json_merge_patch(api: k8s.CustomObjectsApi, server: KubeApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    before = create(api, isvc("merge-patch", min_replicas=1))
    sent: list[tuple[str, str]] = []
    rest = server.api_client.rest_client
    original = rest.request

    def recording(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, (kwargs.get("headers") or {}).get("Content-Type", "")))
        return original(method, url, *args, **kwargs)

    monkeypatch.setattr(rest, "request", recording)
    label = "app.kubernetes.io/part-of"
    assert label in before["metadata"]["labels"]
    after = patch(
        api, "merge-patch", {"spec": {"predictor": {"minReplicas": 2}}, "metadata": {"labels": {label: None}}}
    )
    # The client sends a dict body to a custom object as a JSON merge patch (RFC 7386)...
    assert sent == [("PATCH", "application/merge-patch+json")]
    # ...and the server applies it as one: the one field changes, its siblings stay, null deletes.
    assert after["spec"]["predictor"]["minReplicas"] == 2
    assert {k: v for k, v in after["spec"]["predictor"].items() if k != "minReplicas"} == {
        k: v for k, v in before["spec"]["predictor"].items() if k != "minReplicas"
    }
    assert label not in after["metadata"]["labels"] and len(after["metadata"]["labels"]) == 3
    # A spec change bumps generation; a metadata-only change does not (but still gets a new resourceVersion).
    assert after["metadata"]["generation"] == 2
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    relabelled = patch(api, "merge-patch", {"metadata": {"labels": {label: "tsr-platform"}}})
    assert relabelled["metadata"]["generation"] == 2
    assert relabelled["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]


def test_stale_resource_version_conflicts(api: k8s.CustomObjectsApi) -> None:
    first = create(api, isvc("conflict"))
    stale = first["metadata"]["resourceVersion"]
    current = patch(
        api, "conflict", {"metadata": {"resourceVersion": stale}, "spec": {"predictor": {"minReplicas": 2}}}
    )
    assert current["metadata"]["resourceVersion"] != stale
    # A merge patch carrying the old resourceVersion (what rollout.py sends) is refused...
    exc = api_error(
        lambda: patch(
            api, "conflict", {"metadata": {"resourceVersion": stale}, "spec": {"predictor": {"minReplicas": 3}}}
        )
    )
    assert (exc.status, exc.reason) == (409, "Conflict")
    # ...and so is a PUT with it (what deploy.py's replace sends).
    body = copy.deepcopy(current)
    body["metadata"]["resourceVersion"] = stale
    body["spec"]["predictor"]["minReplicas"] = 3
    exc = api_error(lambda: api.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "conflict", body))
    assert exc.status == 409
    unchanged = read(api, "conflict")
    assert unchanged["spec"]["predictor"]["minReplicas"] == 2
    assert unchanged["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
    # With the current resourceVersion the same PUT goes through.
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    replaced = api.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "conflict", body)
    assert replaced["spec"]["predictor"]["minReplicas"] == 3 and replaced["metadata"]["generation"] == 3


def test_unknown_fields_pruned_or_refused_with_strict_validation(api: k8s.CustomObjectsApi) -> None:
    body = isvc("unknown-field")
    body["spec"]["predictor"]["bogusField"] = 7
    # Default (fieldValidation unset = Warn since 1.27): accepted, the field pruned, a Warning header says so.
    created, status, headers = api.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, NAMESPACE, PLURAL, body
    )
    assert status == 201
    assert (
        "bogusField" not in created["spec"]["predictor"]
        and "bogusField" not in read(api, "unknown-field")["spec"]["predictor"]
    )
    assert headers.get("Warning") == '299 - "unknown field \\"spec.predictor.bogusField\\""'
    # fieldValidation=Ignore (a query parameter, not a header): pruned silently.
    body["metadata"]["name"] = "unknown-field-ignore"
    _, _, headers = api.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, NAMESPACE, PLURAL, body, field_validation="Ignore"
    )
    assert "Warning" not in headers
    # fieldValidation=Strict (kubectl's default): refused with 400, nothing stored.
    body["metadata"]["name"] = "unknown-field-strict"
    exc = api_error(lambda: create(api, body, field_validation="Strict"))
    assert (exc.status, exc.reason) == (400, "Bad Request")
    assert 'strict decoding error: unknown field \\"spec.predictor.bogusField\\"' in exc.body
    assert api_error(lambda: read(api, "unknown-field-strict")).status == 404


def test_wrong_type_is_invalid(api: k8s.CustomObjectsApi) -> None:
    body = isvc("wrong-type")
    body["spec"]["predictor"]["minReplicas"] = "two"
    exc = api_error(lambda: create(api, body))
    assert (exc.status, exc.reason) == (422, "Unprocessable Entity")
    assert '"field":"spec.predictor.minReplicas"' in exc.body and "must be of type integer" in exc.body
    assert api_error(lambda: read(api, "wrong-type")).status == 404
    # A patch is validated as well: the merged object is checked against the schema.
    create(api, isvc("wrong-type"))
    exc = api_error(lambda: patch(api, "wrong-type", {"spec": {"predictor": {"maxReplicas": "three"}}}))
    assert exc.status == 422 and '"field":"spec.predictor.maxReplicas"' in exc.body
    assert read(api, "wrong-type")["spec"]["predictor"]["maxReplicas"] == 3


def test_status_subresource(api: k8s.CustomObjectsApi) -> None:
    before = create(api, isvc("status"))
    status = {
        "url": "http://status.tsr.example.com",
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    # The status endpoint writes status only: the spec in its body is ignored, generation stays.
    after = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, "status", {"status": status, "spec": {"predictor": {"minReplicas": 5}}}
    )
    assert after["status"] == status
    assert after["spec"]["predictor"]["minReplicas"] == 1
    assert after["metadata"]["generation"] == 1
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    # The main endpoint ignores status: a client cannot fake readiness through it.
    patched = patch(api, "status", {"status": {"url": "http://forged"}, "spec": {"predictor": {"minReplicas": 2}}})
    assert patched["status"] == status
    assert patched["metadata"]["generation"] == 2 and patched["spec"]["predictor"]["minReplicas"] == 2


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    server = start_kube_apiserver(tmp_path / "server")
    try:
        assert server.kubeconfig.is_file() and server.url.startswith("https://127.0.0.1:")
        assert k8s.ApiextensionsV1Api(server.api_client).list_custom_resource_definition().items == []
    finally:
        started = time.monotonic()
        code = server.stop()
    assert code == 0, server.log_tail()
    assert time.monotonic() - started < 10
    port = urlparse(server.url).port
    assert port is not None
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there any more
