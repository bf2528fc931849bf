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


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (a dashboard's JSON, a compiled pipeline, params.json in a
    ConfigMap) as `|` blocks, readable in review, and every other string as PyYAML would."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def comment(header: str | Sequence[str]) -> str:
    """`# line` per line of `header` (a string or its lines); an empty line becomes a bare `#`."""
    lines = header.splitlines() if isinstance(header, str) else header
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def _plain(doc: Any) -> Any:
    """Plain data (mappings, lists) as is, an SDK object (kserve/kubernetes model) in its manifest form."""
    if isinstance(doc, Mapping):
        return dict(doc)
    if isinstance(doc, list | tuple):
        return list(doc)
    return to_manifest_dict(doc)


def dump_documents(
    docs: Sequence[Any],
    header: str | Sequence[str] = (),
    *,
    separators: bool = True,
    sort_keys: bool = True,
) -> str:
    """The one YAML writer of every generated file: documents under a `# header` comment.

    Each document is plain data or an SDK object (`to_manifest_dict`). The layout is fixed (block
    style, no line wrapping, multi-line strings as `|` blocks, UTF-8 text as is), so identical input
    gives identical bytes. `separators=False` leaves out the `---` lines (kustomization.yaml: `kustomize
    edit` has choked on them); `sort_keys=False` keeps the keys in the order given (kustomization files
    and patches read better with apiVersion/kind first, and code builds them in a fixed order).
    """
    body = "".join(
        ("---\n" if separators else "")
        + yaml.dump(
            _plain(doc),
            Dumper=_Dumper,
            sort_keys=sort_keys,
            default_flow_style=False,
            width=1000,
            allow_unicode=True,
        )
        for doc in docs
    )
    return comment(header) + body


def render_yaml(objs: Sequence[Any], header: str | Sequence[str] = "") -> str:
    """Multi-document YAML of SDK objects, byte-identical for identical objects (sorted keys, fixed layout)."""
    return dump_documents(objs, header)
