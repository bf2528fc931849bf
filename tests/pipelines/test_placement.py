"""Per-step placement lands in the compiled IR: node selectors, affinity, tolerations, resources, retries, caching.

Reads what the KFP backend reads: the pipeline spec (tasks' retryPolicy/cachingOptions, executors' resources)
and the `platforms.kubernetes` deployment spec (nodeSelector, nodeAffinity, tolerations, secretAsEnv).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler

from pipelines.compile import compile_pipeline, placement_from_options
from pipelines.training_pipeline import (
    S3_SECRET,
    S3_SECRET_ENV,
    STEPS,
    Placement,
    StepResources,
    build_pipeline,
)
from tsr.kube.inference_service import InferenceServiceSpec, example_model_uri
from tsr.kube.placement import Toleration, parse_toleration
from tsr.kube.render import to_manifest_dict

STORE_STEPS = ("ingest", "evaluate", "register", "deploy")  # the steps that talk to MinIO


class Compiled:
    """The two YAML documents of a compiled package, indexed by step name."""

    def __init__(self, path: Path) -> None:
        docs = list(yaml.safe_load_all(path.read_text()))
        self.spec: dict[str, Any] = docs[0]
        self.platform: dict[str, Any] = docs[1] if len(docs) > 1 else {}
        root = self.spec["root"]["dag"]["tasks"]
        inner = self.spec["components"]["comp-condition-1"]["dag"]["tasks"]
        self.tasks = {step: {**root, **inner}[f"{step}-component"] for step in STEPS}

    def executor(self, step: str) -> dict[str, Any]:
        return self.spec["deploymentSpec"]["executors"][f"exec-{step}-component"]["container"]

    def k8s(self, step: str) -> dict[str, Any]:
        executors = self.platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
        return executors.get("executors", {}).get(f"exec-{step}-component", {})


def compiled(tmp_path: Path, placement: Placement | None = None) -> Compiled:
    return Compiled(compile_pipeline(tmp_path / "p.yaml", placement=placement))


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compiled(tmp_path_factory.mktemp("default"))


def test_every_step_runs_on_linux_and_train_has_no_arch_constraint_by_default(default: Compiled) -> None:
    for step in STEPS:
        assert default.k8s(step)["nodeSelector"] == {"labels": {"kubernetes.io/os": "linux"}}, step
        assert "nodeAffinity" not in default.k8s(step), step
        assert "tolerations" not in default.k8s(step), step


def test_requests_and_limits_per_step(default: Compiled) -> None:
    expected = Placement().steps
    for step in STEPS:
        resources = default.executor(step)["resources"]
        want = expected[step]
        assert resources["resourceCpuRequest"] == want.cpu_request, step
        assert resources["resourceMemoryRequest"] == want.memory_request, step
        assert resources["resourceMemoryLimit"] == want.memory_limit, step
        assert "resourceCpuLimit" not in resources, f"{step}: CPU limits only throttle; off by default"
    assert default.executor("train")["resources"]["resourceMemoryLimit"] == "8Gi"


def test_retries_only_on_idempotent_steps(default: Compiled) -> None:
    retried = {step: task["retryPolicy"] for step, task in default.tasks.items() if "retryPolicy" in task}
    assert set(retried) == {"ingest", "register", "deploy"}, "train and evaluate must not be retried"
    for policy in retried.values():
        assert policy["maxRetryCount"] >= 1
        assert policy["backoffDuration"] == "30s" and policy["backoffFactor"] == 2.0
        assert policy["backoffMaxDuration"] == "1800s"


def test_caching_ingest_and_train_only(default: Compiled) -> None:
    cached = {step for step, task in default.tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"ingest", "train"}
    for step in ("evaluate", "register", "deploy"):
        assert default.tasks[step]["cachingOptions"] == {}, f"{step}: enableCache false is the proto default"


def test_store_credentials_come_only_from_the_secret(default: Compiled) -> None:
    for step in STORE_STEPS:
        (secret,) = default.k8s(step)["secretAsEnv"]
        assert secret["secretName"] == S3_SECRET
        assert {kv["secretKey"]: kv["envVar"] for kv in secret["keyToEnv"]} == S3_SECRET_ENV
    assert "secretAsEnv" not in default.k8s("train"), "train never touches the store"
    credential = re.compile(r"secret|access|password|token|credential", re.IGNORECASE)
    components = [default.spec["root"], *default.spec["components"].values()]
    for component in components:
        for name in component.get("inputDefinitions", {}).get("parameters", {}):
            assert not credential.search(name), f"credential-like parameter {name!r}"
    for step in STEPS:
        env_names = {e["name"] for e in default.executor(step).get("env", [])}
        assert not env_names & set(S3_SECRET_ENV.values()), f"{step}: store env must come from the Secret"


def test_arm64_training(tmp_path: Path) -> None:
    ir = compiled(tmp_path, Placement.arm64_training())
    train = ir.k8s("train")
    assert train["nodeAffinity"] == [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}
    ], "required (no weight) by default"
    assert train["tolerations"] == [{"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}]
    assert train["nodeSelector"] == {"labels": {"kubernetes.io/os": "linux"}}
    for step in set(STEPS) - {"train"}:
        assert "nodeAffinity" not in ir.k8s(step) and "tolerations" not in ir.k8s(step), step
    assert placement_from_options("arm64", False, ["arch=arm64:NoSchedule"]) == Placement.arm64_training()


def test_preferred_arch_is_a_weighted_affinity(tmp_path: Path) -> None:
    ir = compiled(tmp_path, Placement(train_arch="amd64", train_arch_required=False))
    (term,) = ir.k8s("train")["nodeAffinity"]
    assert term["weight"] == 100 and term["matchExpressions"][0]["values"] == ["amd64"]


def test_global_tolerations_custom_resources_and_selectors(tmp_path: Path) -> None:
    placement = (
        Placement(os="", tolerations=(Toleration.parse("dedicated:NoSchedule"),))
        .with_step("train", cpu_limit="8", memory_limit="16Gi", retries=1, node_selector={"pool": "training"})
        .with_step("evaluate", cache=True)
    )
    ir = compiled(tmp_path, placement)
    for step in STEPS:
        assert ir.k8s(step)["tolerations"] == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
        expected_selector = {"labels": {"pool": "training"}} if step == "train" else None
        assert ir.k8s(step).get("nodeSelector") == expected_selector, step
    resources = ir.executor("train")["resources"]
    assert resources["resourceCpuLimit"] == "8" and resources["resourceMemoryLimit"] == "16Gi"
    assert ir.tasks["train"]["retryPolicy"]["maxRetryCount"] == 1
    assert ir.tasks["evaluate"]["cachingOptions"] == {"enableCache": True}


def test_local_placement_carries_no_kubernetes_config(tmp_path: Path) -> None:
    """What kfp.local gets: no platform spec, no retries (no backoff sleeps), same caching flags."""
    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(
        build_pipeline(use_k8s_secret=False, placement=Placement.local(), packaging="lightweight"), str(out)
    )
    ir = Compiled(out)
    assert not ir.platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors")
    for step in STEPS:
        assert "retryPolicy" not in ir.tasks[step] and "resources" not in ir.executor(step), step
    cached = {step for step, task in ir.tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"ingest", "train"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("arch=arm64:NoSchedule", Toleration("arch", "arm64", "NoSchedule", "Equal")),
        ("gpu:NoExecute", Toleration("gpu", "", "NoExecute", "Exists")),
        ("team=ml", Toleration("team", "ml", None, "Equal")),
        ("spot", Toleration("spot", "", None, "Exists")),
    ],
)
def test_toleration_parse(text: str, expected: Toleration) -> None:
    assert Toleration.parse(text) == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda: Toleration.parse("arch=arm64:NoScheduleX"),
        lambda: Toleration.parse(":NoSchedule"),
        lambda: Placement(steps={"trian": StepResources()}),
        lambda: Placement(train_arch="arm 64"),
        lambda: StepResources(retries=-1),
    ],
)
def test_invalid_placement_is_refused(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(
    "text", ["arch=arm64:NoSchedule", "gpu:NoExecute", "team=ml", "spot", "kubernetes.io/arch=arm64:PreferNoSchedule"]
)
def test_toleration_round_trips_through_kubectl_syntax_and_manifest_form(text: str) -> None:
    toleration = Toleration.parse(text)
    assert str(toleration) == text and Toleration.parse(str(toleration)) == toleration
    assert Toleration.from_mapping(toleration.to_dict()) == toleration
    assert to_manifest_dict(toleration.to_k8s()) == toleration.to_dict() == parse_toleration(text)


def test_an_empty_taint_key_is_refused_by_pipeline_and_serving_alike() -> None:
    """Kubernetes reads an empty key with operator Exists as "tolerate every taint" (of that effect): not
    offered, whether it comes as kubectl syntax, as V1Toleration fields or inside an InferenceServiceSpec."""
    for make in (
        lambda: Toleration.parse(":NoExecute"),
        lambda: parse_toleration(":NoExecute"),
        lambda: Toleration.from_mapping({"operator": "Exists", "effect": "NoExecute"}),
        lambda: InferenceServiceSpec(
            name="m", namespace="tsr", storage_uri=example_model_uri(), tolerations=({"operator": "Exists"},)
        ),
    ):
        with pytest.raises(ValueError, match="taint key"):
            make()


def test_toleration_seconds_only_with_no_execute_and_in_the_ir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NoExecute"):
        Toleration("spot", effect="NoSchedule", operator="Exists", toleration_seconds=60)
    evict_late = Toleration("spot", effect="NoExecute", operator="Exists", toleration_seconds=60)
    ir = compiled(tmp_path, Placement().with_step("train", tolerations=(evict_late,)))
    assert ir.k8s("train")["tolerations"] == [
        {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": "60"}
    ]
