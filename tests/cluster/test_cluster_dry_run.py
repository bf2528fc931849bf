"""Every custom resource that helm or kustomize renders, sent to the real control plane (tests/cluster_plane.py:
kube-apiserver with KServe's CRDs and admission webhooks, and prometheus-operator's CRDs) as a server-side
dry-run create with strict field validation: what `kubectl apply --dry-run=server --validate=strict` says
on such a cluster, CEL rules and KServe's defaulting/validating webhooks included. tests/crd_schema.py
checks the same objects offline; this is the server's own verdict.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from tests.cluster_plane import ControlPlane, ensure_namespace
from tests.crd_schema import has_crd
from tests.helm.test_chart import CASES, rendered
from tests.manifests.test_kustomize import build, copy_manifests
from tsr.kube import kustomize as kz

DRY_RUN_NAMESPACE = "dry-run"
PLURALS = {
    "InferenceService": "inferenceservices",
    "PodMonitor": "podmonitors",
    "ServiceMonitor": "servicemonitors",
    "PrometheusRule": "prometheusrules",
    "AlertmanagerConfig": "alertmanagerconfigs",
}


@pytest.fixture(scope="module")
def api(cluster: ControlPlane, operator_crds: None) -> Iterator[k8s.CustomObjectsApi]:
    yield k8s.CustomObjectsApi(cluster.api_client)


def all_custom_resources(tmp: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where it comes from, object) for every CR of the chart's value sets and the kustomize trees."""
    found = [(f"helm {case}", obj) for case in CASES for obj in rendered(case) if has_crd(obj)]
    root = copy_manifests(tmp / "manifests")
    trees = [root / kz.OVERLAYS_DIR / overlay for overlay in kz.OVERLAYS] + [root / "monitoring", root / kz.RETRAIN_DIR]
    for tree in trees:
        found += [(f"kustomize {tree.name}", obj) for obj in build(tree) if has_crd(obj)]
    return found


def dry_run_create(api: k8s.CustomObjectsApi, obj: dict[str, Any]) -> Any:
    group, _, version = obj["apiVersion"].rpartition("/")
    # A namespace of its own: the other cluster tests apply the same objects for real, and a dry-run create of
    # a name that exists answers 409 whatever the object says.
    namespace = DRY_RUN_NAMESPACE
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    ensure_namespace(api.api_client, namespace)
    return api.create_namespaced_custom_object(
        group, version, namespace, PLURALS[obj["kind"]], obj, dry_run="All", field_validation="Strict"
    )


def message(exc: ApiException) -> str:
    return str(json.loads(exc.body)["message"])


def test_every_rendered_custom_resource_is_accepted_by_the_server(api: k8s.CustomObjectsApi, tmp_path: Path) -> None:
    resources = all_custom_resources(tmp_path)
    kinds = {obj["kind"] for _, obj in resources}
    assert kinds == set(PLURALS), f"expected every kind at least once, got {sorted(kinds)}"
    refused = []
    for source, obj in resources:
        try:
            stored = dry_run_create(api, obj)
        except ApiException as exc:
            refused.append(f"{source} {obj['kind']}/{obj['metadata']['name']}: {exc.status} {exc.body}")
            continue
        assert stored["spec"] == obj["spec"], f"{source} {obj['kind']}: the server changed the spec"
    assert not refused, "\n".join(refused)


def test_the_server_refuses_what_strict_validation_and_cel_catch(api: k8s.CustomObjectsApi, tmp_path: Path) -> None:
    """The verdicts above can fail: a misspelt field, a wrong type, and the AlertmanagerConfig CRD's CEL rule."""
    resources = dict((obj["kind"], obj) for _, obj in all_custom_resources(tmp_path))
    isvc = copy.deepcopy(resources["InferenceService"])
    isvc["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(ApiException) as misspelt:
        dry_run_create(api, isvc)
    assert misspelt.value.status == 400 and 'unknown field "spec.predictor.minReplica"' in message(misspelt.value)

    rule = copy.deepcopy(resources["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    with pytest.raises(ApiException) as wrong_type:
        dry_run_create(api, rule)
    assert wrong_type.value.status == 422 and "spec.groups[0].rules[0].for" in message(wrong_type.value)

    config = copy.deepcopy(resources["AlertmanagerConfig"])
    config["spec"]["receivers"] = [
        {"name": "sns", "snsConfigs": [{"topicARN": "arn:aws:sns:eu-west-1:1:t", "sigv4": {"externalId": "x"}}]}
    ]
    config["spec"]["route"] = {"receiver": "sns"}
    with pytest.raises(ApiException) as cel:
        dry_run_create(api, config)
    assert cel.value.status == 422 and "externalId can only be used when roleArn is specified" in message(cel.value)
