"""SDK objects to plain dicts and back, and the one YAML writer of every generated manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kserve.models
import yaml
from kubernetes import client as k8s


def to_manifest_dict(obj: Any) -> dict[str, Any]:
    """The API-server JSON form (camelCase keys, None fields dropped) of an SDK object."""
    data: dict[str, Any] = k8s.ApiClient().sanitize_for_serialization(obj)
    return data


def _model_class(name: str) -> type:
    """kserve's own models first, then the kubernetes client's (V1Container & co live there)."""
    found = getattr(kserve.models, name, None) or getattr(k8s, name, None)
    if found is None:
        raise TypeError(f"unknown SDK model {name!r}")
    return found  # type: ignore[no-any-return]


def _from_json(data: Any, type_name: str) -> Any:
    if data is None:
        return None
    if type_name.startswith("list["):
        return [_from_json(item, type_name[5:-1]) for item in data]
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {k: _from_json(v, value_type) for k, v in data.items()}
    if type_name in {"str", "int", "float", "bool", "object", "ResourceQuantity", "datetime", "date"}:
        return data
    cls = _model_class(type_name)
    kwargs = {
        attr: _from_json(data[json_key], cls.openapi_types[attr])  # type: ignore[attr-defined]
        for attr, json_key in cls.attribute_map.items()  # type: ignore[attr-defined]
        if json_key in data
    }
    return cls(**kwargs)


def from_manifest_dict(data: Mapping[str, Any], type_name: str = "V1beta1InferenceService") -> Any:
    """The inverse of to_manifest_dict for kserve + kubernetes models (kserve's ApiClient cannot
    deserialize the kubernetes types that its models embed)."""
    return _from_json(dict(data), type_name)


def render_yaml(objs: Sequence[Any], header: str = "") -> str:
    """Multi-document YAML, byte-identical for identical objects (sorted keys, fixed layout)."""
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    docs = [
        "---\n" + yaml.safe_dump(to_manifest_dict(o), sort_keys=True, default_flow_style=False, width=1000)
        for o in objs
    ]
    return comment + "".join(docs)
