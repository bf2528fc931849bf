"""Validate custom resources against the real CRD schemas (fetched by `make crds` into .tools/crds).

Without an API server, plain JSON Schema misses what the server does with a structural CRD schema, so this
module adds it: `nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
`x-kubernetes-embedded-resource`, list-type map/set uniqueness, and above all pruning: a field the schema does
not list is dropped silently by the API server (and refused by `kubectl --validate=strict`), so every such
field is an error here. Not checked: CEL rules (`x-kubernetes-validations`) and `format`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tsr.local.checkout import REPO_ROOT

CRD_DIR = REPO_ROOT / ".tools" / "crds"
# (API group, kind) -> the CRD file that `make crds` copies from the pinned kserve / prometheus-operator modules.
CRD_FILES: dict[tuple[str, str], str] = {
    ("serving.kserve.io", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
    ("monitoring.coreos.com", "AlertmanagerConfig"): "monitoring.coreos.com_alertmanagerconfigs.yaml",
}
# metadata is validated by the API server itself, not by the CRD: only the name and namespace types here.
METADATA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
    "x-kubernetes-preserve-unknown-fields": True,
}


class _CrdLoader(yaml.CSafeLoader):
    """YAML 1.1's `=` (the "value" tag, e.g. in an enum of matcher operators) is just a string to the API server."""


def _plain_string(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


_CrdLoader.add_constructor("tag:yaml.org,2002:value", _plain_string)


class CrdValidationError(AssertionError):
    """An object the API server would refuse, or change by pruning."""


def group_kind(obj: dict[str, Any]) -> tuple[str, str]:
    return str(obj.get("apiVersion", "")).rpartition("/")[0], str(obj.get("kind", ""))


def has_crd(obj: dict[str, Any]) -> bool:
    """Whether the object is of a kind validated here."""
    return group_kind(obj) in CRD_FILES


@cache
def load_crd(group: str, kind: str) -> dict[str, Any]:
    """The CRD document (parsed once); a missing file fails the test like a missing helm binary does."""
    path: Path = CRD_DIR / CRD_FILES[(group, kind)]
    crd = read_crd_file(path)
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind, path
    return crd


def read_crd_file(path: Path) -> dict[str, Any]:
    """One CRD YAML file as fetched by `make crds`; a missing file fails the test like a missing helm binary."""
    if not path.is_file():
        pytest.fail(f"CRD {path} not found: run `make crds` (part of make tools)")
    crd = yaml.load(path.read_text(), Loader=_CrdLoader)  # a SafeLoader: no arbitrary objects
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return crd


@cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.Draft202012Validator:
    """A validator for the served version's openAPIV3Schema, translated to plain JSON Schema."""
    served = {v["name"]: v for v in load_crd(group, kind)["spec"]["versions"] if v.get("served")}
    if version not in served:
        raise CrdValidationError(f"{group}/{version} {kind} is not served by its CRD (served: {sorted(served)})")
    schema = to_json_schema(served[version]["schema"]["openAPIV3Schema"])
    schema.setdefault("properties", {})["metadata"] = METADATA
    return jsonschema.Draft202012Validator(schema)


def to_json_schema(node: Any) -> Any:
    """The Kubernetes OpenAPI extensions as JSON Schema (the x- keys stay for the pruning walk)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    literal = {"enum", "default", "example", "required", "properties"}
    out = {k: v if k in literal else to_json_schema(v) for k, v in node.items()}
    if "properties" in node:  # property names are not schemas: translate their values only
        out["properties"] = {name: to_json_schema(sub) for name, sub in node["properties"].items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


def _where(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "<root>"


def pruned_fields(value: Any, schema: dict[str, Any], path: list[str | int]) -> list[str]:
    """Paths of fields the API server would drop: not in `properties`, and no additionalProperties or
    x-kubernetes-preserve-unknown-fields to keep them. Also duplicate keys of list-type map/set lists."""
    found: list[str] = []
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        embedded = {"apiVersion", "kind", "metadata"} if schema.get("x-kubernetes-embedded-resource") else set()
        for key, sub in value.items():
            if key in props:
                found += pruned_fields(sub, props[key], [*path, key])
            elif isinstance(extra, dict):
                found += pruned_fields(sub, extra, [*path, key])
            elif not keep and key not in embedded:
                found.append(f"{_where([*path, key])}: unknown field (pruned by the API server)")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += pruned_fields(item, schema["items"], [*path, i])
        list_type, keys = schema.get("x-kubernetes-list-type"), schema.get("x-kubernetes-list-map-keys", [])
        if list_type in {"map", "set"}:
            seen = [repr([i.get(k) for k in keys] if list_type == "map" and isinstance(i, dict) else i) for i in value]
            dupes = sorted({s for s in seen if seen.count(s) > 1})
            if dupes:
                found.append(f"{_where(path)}: duplicate {list_type} entries {dupes} (x-kubernetes-list-type)")
    return found


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """Every problem of one object, each naming kind/name and the field path; [] when the CRD accepts it."""
    group, kind = group_kind(obj)
    if (group, kind) not in CRD_FILES:
        raise CrdValidationError(f"no CRD known for {obj.get('apiVersion')} {kind}")
    name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
    validator = crd_validator(group, kind, str(obj.get("apiVersion", "")).rpartition("/")[2])
    errors = [
        f"{name}: {_where(list(e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    ]
    return errors + [f"{name}: {msg}" for msg in pruned_fields(obj, validator.schema, [])]


def validate(obj: dict[str, Any]) -> None:
    """Raise CrdValidationError listing every problem of the object."""
    errors = crd_errors(obj)
    if errors:
        raise CrdValidationError("\n".join(errors))
