"""Where pods may run: tolerations and architecture affinity, one type and one set of rules for every pod.

The pipeline's steps (`pipelines.training_pipeline.Placement`), the InferenceService
(`tsr.kube.inference_service.InferenceServiceSpec`), the kustomize arm64 overlay and every command line
that takes a toleration go through here, so a toleration accepted in one place is accepted everywhere.

Tolerations are written in kubectl's taint syntax (`key=value:Effect`, `key=value`, `key:Effect`, `key`)
and always name a taint key: Kubernetes reads an empty key with operator Exists as "tolerate every
taint" (with an effect: every taint of that effect, node-not-ready evictions included), which this
platform does not offer.

The kubernetes SDK is imported only where an SDK object is built: the rules (and `tsr.kube.spec`, which
uses them) load without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from tsr.kube.labels import ARCH_LABEL

if TYPE_CHECKING:
    from kubernetes import client as k8s

TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
TolerationOperator = Literal["Equal", "Exists"]
TOLERATION_EFFECTS: tuple[str, ...] = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_OPERATORS: tuple[str, ...] = ("Equal", "Exists")
# V1Toleration's fields as the API server (and a manifest) spells them.
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")

# required: only nodes of those architectures; preferred: those first, the others still allowed.
ARCH_PLACEMENTS = ("required", "preferred")
PREFERRED_WEIGHT = 100  # weight of a preferred node-affinity term (1..100): the strongest preference
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class Toleration:
    """A pod toleration, validated on creation; `parse` reads kubectl's taint syntax so a taint can be
    copied as is, `from_mapping` reads V1Toleration fields (a manifest, a Helm value)."""

    key: str
    value: str = ""
    effect: TaintEffect | None = None
    operator: TolerationOperator = "Equal"
    toleration_seconds: int | None = None  # NoExecute only: how long the pod stays after the taint appears

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError(
                f"toleration {self}: needs a taint key (an empty key tolerates every taint, which is not offered)"
            )
        if self.operator not in TOLERATION_OPERATORS:
            raise ValueError(
                f"toleration {self}: operator must be one of {TOLERATION_OPERATORS}, got {self.operator!r}"
            )
        if self.operator == "Exists" and self.value:
            raise ValueError(f"toleration {self}: operator Exists takes no value")
        if self.effect is not None and self.effect not in TOLERATION_EFFECTS:
            raise ValueError(f"toleration {self}: effect must be one of {TOLERATION_EFFECTS}, got {self.effect!r}")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(f"toleration {self}: tolerationSeconds only applies to effect NoExecute")

    def __str__(self) -> str:
        """kubectl's taint syntax (what `parse` reads back)."""
        text = f"{self.key}={self.value}" if self.operator == "Equal" else self.key
        return f"{text}:{self.effect}" if self.effect else text

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """`key=value:Effect`, `key=value` (any effect), `key:Effect` or `key` (any value: operator Exists)."""
        spec, _, effect = text.strip().partition(":")
        key, has_value, value = spec.partition("=")
        return cls(
            key=key.strip(),
            value=value.strip(),
            effect=cast(TaintEffect | None, effect.strip() or None),  # checked by __post_init__
            operator="Equal" if has_value else "Exists",
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Toleration:
        """From V1Toleration's fields (`key`, `operator` (default Equal), `value`, `effect`, `tolerationSeconds`)."""
        unknown = set(data) - set(TOLERATION_FIELDS)
        if unknown:
            raise ValueError(f"toleration {dict(data)}: unknown fields {sorted(unknown)}")
        return cls(
            key=data.get("key") or "",
            value=data.get("value") or "",
            effect=data.get("effect") or None,
            operator=data.get("operator") or "Equal",
            toleration_seconds=data.get("tolerationSeconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest form (V1Toleration's JSON fields); unset fields are left out."""
        data: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.value:
            data["value"] = self.value
        if self.effect:
            data["effect"] = self.effect
        if self.toleration_seconds is not None:
            data["tolerationSeconds"] = self.toleration_seconds
        return data

    def to_k8s(self) -> k8s.V1Toleration:
        from kubernetes import client as k8s

        return k8s.V1Toleration(
            key=self.key,
            operator=self.operator,
            value=self.value or None,
            effect=self.effect,
            toleration_seconds=self.toleration_seconds,
        )


def as_toleration(toleration: Toleration | Mapping[str, Any]) -> Toleration:
    """A Toleration as is, V1Toleration fields (a dict) validated into one."""
    return toleration if isinstance(toleration, Toleration) else Toleration.from_mapping(toleration)


def parse_toleration(text: str) -> dict[str, Any]:
    """kubectl's taint syntax as V1Toleration fields (the manifest form), for the command lines.

    `dedicated=ml:NoSchedule` tolerates that taint exactly; `gpu:NoSchedule` tolerates any value of
    key `gpu` with that effect (operator Exists); `spot` any taint with key `spot`. The rules are
    Toleration's: a bad effect or an empty key is refused here, before any object is built.
    """
    return Toleration.parse(text).to_dict()


# ---- architecture -----------------------------------------------------------------------------------
def check_arch(value: str) -> str:
    """A `kubernetes.io/arch` value (amd64, arm64, ...): a non-empty label value."""
    if not value or not _LABEL_VALUE.match(value):
        raise ValueError(f"arch {value!r} is not a label value (amd64, arm64, ...)")
    return value


def check_arch_placement(placement: str) -> str:
    if placement not in ARCH_PLACEMENTS:
        raise ValueError(f"arch_placement must be one of {ARCH_PLACEMENTS}, got {placement!r}")
    return placement


def arch_expression(values: Sequence[str]) -> dict[str, Any]:
    """The node-selector requirement `kubernetes.io/arch In values` (kfp-kubernetes takes it as a dict)."""
    return {"key": ARCH_LABEL, "operator": "In", "values": list(values)}


def _arch_term(values: Sequence[str]) -> k8s.V1NodeSelectorTerm:
    from kubernetes import client as k8s

    return k8s.V1NodeSelectorTerm(match_expressions=[k8s.V1NodeSelectorRequirement(**arch_expression(values))])


def arch_affinity(
    required: Sequence[str] = (), preferred: Sequence[str] = (), weight: int = PREFERRED_WEIGHT
) -> k8s.V1Affinity:
    """Node affinity on kubernetes.io/arch: only nodes of `required` (if given), of those `preferred` first.

    Affinity, not a nodeSelector, because it takes several values (a multi-arch image) and can be a
    preference that still lets pods land elsewhere.
    """
    if not required and not preferred:
        raise ValueError("an arch affinity needs required or preferred architectures")
    from kubernetes import client as k8s

    return k8s.V1Affinity(
        node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=(
                k8s.V1NodeSelector(node_selector_terms=[_arch_term(required)]) if required else None
            ),
            preferred_during_scheduling_ignored_during_execution=(
                [k8s.V1PreferredSchedulingTerm(weight=weight, preference=_arch_term(preferred))] if preferred else None
            ),
        )
    )


def arch_placement_affinity(arch: Sequence[str], placement: str = "required") -> k8s.V1Affinity | None:
    """`arch` as a requirement (`required`) or as a preference that leaves other nodes allowed
    (`preferred`); None when `arch` is empty (any node)."""
    if check_arch_placement(placement) == "required":
        return arch_affinity(required=arch) if arch else None
    return arch_affinity(preferred=arch) if arch else None
