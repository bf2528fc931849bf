"""tests/crd_schema.py against the real CRDs: it must refuse what the API server would refuse or prune."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests import crd_schema as cs

PRUNED = "unknown field (pruned by the API server)"


def isvc() -> dict[str, Any]:
    """A small valid InferenceService (custom predictor container)."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "demo", "namespace": "tsr", "labels": {"a": "b"}, "annotations": {"x": "y"}},
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "registry.example/predictor:1.0",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2}},
                    }
                ],
            }
        },
    }


def rule(expr: Any) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "rules"},
        "spec": {"groups": [{"name": "g", "rules": [{"record": "job:up:sum", "expr": expr}]}]},
    }


def test_a_valid_object_passes() -> None:
    assert cs.crd_errors(isvc()) == []
    cs.validate(isvc())


def test_a_misspelt_field_is_reported_with_its_path() -> None:
    obj = isvc()
    obj["spec"]["predictor"]["minReplica"] = 1
    obj["spec"]["predictor"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert sorted(cs.crd_errors(obj)) == [
        f"InferenceService/demo: spec.predictor.containers[0].imagePullPolicyy: {PRUNED}",
        f"InferenceService/demo: spec.predictor.minReplica: {PRUNED}",
    ]
    with pytest.raises(cs.CrdValidationError, match=r"spec\.predictor\.minReplica: unknown field"):
        cs.validate(obj)


def test_a_wrong_type_is_reported() -> None:
    obj = isvc()
    obj["spec"]["predictor"]["minReplicas"] = "two"
    (error,) = cs.crd_errors(obj)
    assert error.startswith("InferenceService/demo: spec.predictor.minReplicas: 'two' is not of type 'integer'")


def test_an_enum_and_a_required_field_are_checked() -> None:
    obj = isvc()
    obj["spec"]["predictor"]["scaleMetric"] = "qps"
    del obj["spec"]["predictor"]["containers"][0]["name"]
    assert cs.crd_errors(obj) == [
        "InferenceService/demo: spec.predictor.containers[0]: 'name' is a required property",
        "InferenceService/demo: spec.predictor.scaleMetric: 'qps' is not one of "
        "['cpu', 'memory', 'concurrency', 'rps']",
    ]


def test_fields_under_preserve_unknown_fields_pass() -> None:
    """InferenceService status and AlertmanagerConfig child routes are x-kubernetes-preserve-unknown-fields."""
    obj = isvc()
    obj["status"] = {"anything": {"goes": [1, {"here": True}]}}
    assert cs.crd_errors(obj) == []
    amc: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": {"name": "amc"},
        "spec": {"route": {"receiver": "r", "routes": [{"notAField": 1, "matchers": "free"}]}, "receivers": []},
    }
    assert cs.crd_errors(amc) == []
    amc["spec"]["route"]["notAField"] = 1  # but not one level up
    assert cs.crd_errors(amc) == [f"AlertmanagerConfig/amc: spec.route.notAField: {PRUNED}"]


@pytest.mark.parametrize("quantity", ["500m", 2])
def test_an_int_or_string_field_accepts_both(quantity: Any) -> None:
    obj = isvc()
    obj["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] = quantity
    assert cs.crd_errors(obj) == []
    assert cs.crd_errors(rule(quantity)) == []  # PrometheusRule's expr is int-or-string too


@pytest.mark.parametrize("value", [True, 1.5, None, ["up"]])
def test_an_int_or_string_field_refuses_anything_else(value: Any) -> None:
    (error,) = cs.crd_errors(rule(value))
    assert error.startswith(f"PrometheusRule/rules: spec.groups[0].rules[0].expr: {value!r} is not valid under any")


def test_duplicate_keys_of_a_list_map_are_reported() -> None:
    obj = rule("up")
    obj["spec"]["groups"].append(copy.deepcopy(obj["spec"]["groups"][0]))
    (error,) = cs.crd_errors(obj)
    assert error == "PrometheusRule/rules: spec.groups: duplicate map entries [\"['g']\"] (x-kubernetes-list-type)"


def test_top_level_metadata_is_left_to_kubernetes_but_name_is_a_string() -> None:
    obj = isvc()
    obj["metadata"]["finalizers"] = ["x"]
    assert cs.crd_errors(obj) == []
    obj["metadata"]["name"] = 7
    assert cs.crd_errors(obj) == ["InferenceService/7: metadata.name: 7 is not of type 'string'"]


def test_nullable_admits_null_and_nothing_else_does() -> None:
    nullable = cs.to_json_schema({"type": "object", "properties": {"a": {"type": "string", "nullable": True}}})
    jsonschema.validate({"a": None}, nullable)
    strict = cs.to_json_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": None}, strict)


def test_an_unserved_version_is_refused() -> None:
    obj = isvc()
    obj["apiVersion"] = "serving.kserve.io/v1alpha9"
    with pytest.raises(cs.CrdValidationError, match="not served"):
        cs.crd_errors(obj)


def test_a_missing_crd_file_fails_the_test(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Like a missing helm or kustomize binary: a failure pointing at `make crds`, never a skip."""
    monkeypatch.setattr(cs, "CRD_DIR", tmp_path)
    monkeypatch.setattr(cs, "load_crd", cache(cs.load_crd.__wrapped__))  # uncached, then discarded
    monkeypatch.setattr(cs, "crd_validator", cache(cs.crd_validator.__wrapped__))
    with pytest.raises(pytest.fail.Exception, match="make crds"):
        cs.crd_errors(isvc())
