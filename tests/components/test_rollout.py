"""Rollout against the in-memory KServe simulator (tests/components/fake_kube.py): create then
merge-patch, canary and promote, rollback on failure and on request, Standard vs Knative."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.deploy import deploy as d
from tests.components.fake_kube import NEVER_READY, FakeKServe, assert_round_trips, failed
from tsr.core.config import StoreConfig
from tsr.core.registry import Registry
from tsr.kube import inference_service as isvcs
from tsr.kube import render as render
from tsr.kube import rollout as r

NAME, NS = "gtsrb-classifier", "tsr"
V1 = "s3://models/gtsrb-classifier/20261101-120000-aaaaaa"
V2 = "s3://models/gtsrb-classifier/20261115-120000-bbbbbb"
FAST: dict[str, Any] = {"timeout_s": 2.0, "poll_s": 0.0}


def isvc(uri: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {"name": NAME, "namespace": NS, "storage_uri": uri, **overrides}
    return isvcs.build_inference_service(isvcs.InferenceServiceSpec(**values))


def predictor_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["predictor"])


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


# ---- the spec: scaling, placement, tolerations -------------------------------------------------------
def test_scaling_arch_and_tolerations_render_and_round_trip() -> None:
    obj = isvc(
        V1,
        deployment_mode="Knative",
        min_replicas=0,
        max_replicas=5,
        scale_target=8,
        scale_metric="concurrency",
        arch=("arm64", "amd64"),
        arch_placement="preferred",
        tolerations=(
            isvcs.parse_toleration("kubernetes.io/arch=arm64:NoSchedule"),
            isvcs.parse_toleration("spot:NoExecute"),
        ),
    )
    data = render.to_manifest_dict(obj)
    assert_round_trips(data)
    p = data["spec"]["predictor"]
    assert (p["minReplicas"], p["maxReplicas"], p["scaleTarget"], p["scaleMetric"]) == (0, 5, 8, "concurrency")
    preferred = p["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [
        {
            "weight": 100,
            "preference": {
                "matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64", "amd64"]}]
            },
        }
    ]
    assert p["tolerations"] == [
        {"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
    ]
    required = render.to_manifest_dict(isvc(V1, arch="arm64", scale_metric="cpu", scale_target=70))["spec"]["predictor"]
    terms = required["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]
    assert (required["scaleMetric"], required["scaleTarget"]) == ("cpu", 70)
    plain = render.to_manifest_dict(isvc(V1))["spec"][
        "predictor"
    ]  # defaults add nothing: committed manifests unchanged
    assert not {"affinity", "tolerations", "scaleTarget", "scaleMetric"} & plain.keys()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scale_metric": "concurrency"}, "not used by Standard"),
        ({"deployment_mode": "Knative", "scale_metric": "cpu"}, "not used by Knative"),
        ({"scale_target": 0}, "scale_target"),
        ({"arch": ("arm64",), "node_selector": {"kubernetes.io/arch": "arm64"}}, "not both"),
        ({"arch": ("arm 64",)}, "label value"),
        ({"arch": ("arm64",), "arch_placement": "maybe"}, "arch_placement"),
        ({"tolerations": ({"key": "a", "effect": "Sometimes"},)}, "effect"),
        ({"tolerations": ({"key": "a", "operator": "Exists", "value": "x"},)}, "takes no value"),
        ({"tolerations": ({"key": "a", "tolerationSeconds": 5},)}, "NoExecute"),
        ({"tolerations": ({"key": "a", "colour": "red"},)}, "unknown fields"),
    ],
)
def test_invalid_scaling_and_placement_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        isvc(V1, **overrides)


def test_parse_toleration() -> None:
    assert isvcs.parse_toleration("dedicated=ml:NoSchedule") == {
        "key": "dedicated",
        "operator": "Equal",
        "value": "ml",
        "effect": "NoSchedule",
    }
    assert isvcs.parse_toleration("gpu") == {"key": "gpu", "operator": "Exists"}
    with pytest.raises(ValueError, match="taint key"):
        isvcs.parse_toleration(":NoExecute")


# ---- pure rollout helpers ------------------------------------------------------------------------------
def test_rollout_state_needs_generation_revision_and_traffic() -> None:
    ready = [{"type": "Ready", "status": "True"}]
    base: dict[str, Any] = {"metadata": {"generation": 3}, "status": {"observedGeneration": 3, "conditions": ready}}
    assert r.rollout_state(base) == (True, "")
    stale = {**base, "status": {**base["status"], "observedGeneration": 2}}
    assert r.rollout_state(stale)[1] == "controller has not seen generation 3 yet"
    old_revision = {"latestCreatedRevision": "x-00002", "latestReadyRevision": "x-00001", "traffic": []}
    starting = {**base, "status": {**base["status"], "components": {"predictor": old_revision}}}
    assert "x-00002 not ready" in r.rollout_state(starting)[1]
    split = {
        "latestCreatedRevision": "x-00002",
        "latestReadyRevision": "x-00002",
        "traffic": [{"revisionName": "x-00001", "percent": 90}, {"revisionName": "x-00002", "percent": 10}],
    }
    canary = {**base, "status": {**base["status"], "components": {"predictor": split}}}
    assert r.rollout_state(canary, canary_percent=10) == (True, "")
    assert "expected 100%" in r.rollout_state(canary)[1]


def test_rollout_state_waits_for_the_new_replicaset_in_standard_mode() -> None:
    """KServe's status while the Deployment rolls out (measured on a real node, tests/node): Ready and
    PredictorReady True from the Deployment's Available condition; done only with NewReplicaSetAvailable."""

    def obj(reason: str, mode: str = "Standard") -> dict[str, Any]:
        conditions = [
            {"type": "PredictorReady", "status": "True", "reason": reason, "message": "m"},
            {"type": "Ready", "status": "True"},
        ]
        status = {"observedGeneration": 2, "deploymentMode": mode, "conditions": conditions}
        return {"metadata": {"generation": 2}, "status": status}

    done, why = r.rollout_state(obj("MinimumReplicasAvailable"))
    assert not done and "still rolling out (MinimumReplicasAvailable" in why
    assert r.rollout_state(obj("NewReplicaSetAvailable")) == (True, "")
    assert r.rollout_state(obj("MinimumReplicasAvailable", mode="Serverless")) == (True, "")


def test_predictor_patch_deletes_only_managed_fields() -> None:
    live = {"minReplicas": 1, "canaryTrafficPercent": 10, "timeout": 60, "nodeSelector": {"a": "1", "b": "2"}}
    desired = {"minReplicas": 2, "nodeSelector": {"a": "1"}}
    patch = r.predictor_patch(desired, live)
    assert patch == {"minReplicas": 2, "canaryTrafficPercent": None, "nodeSelector": {"a": "1", "b": None}}
    assert r.predictor_patch(desired, live, delete=None)["timeout"] is None  # exact restore


# ---- create, then merge-patch ----------------------------------------------------------------------------
def test_create_then_merge_patch_keeps_foreign_fields() -> None:
    api = FakeKServe()
    first = r.rollout_inference_service(isvc(V1), api=api, **FAST)
    assert first.action == "created" and first.model_uri == V1
    assert first.endpoint == f"http://{NAME}.{NS}.example.com"
    (verb, body), *_ = api.writes()
    assert verb == "create" and "canaryTrafficPercent" not in body["spec"]["predictor"]
    created = api.live(NAME)
    assert annotations_of(created)[r.ANNOTATION_MODEL_URI] == V1
    assert annotations_of(created)[r.ANNOTATION_MODEL_VERSION] == "20261101-120000-aaaaaa"
    assert r.ANNOTATION_PREVIOUS_URI not in annotations_of(created)
    v1_predictor = predictor_of(created)

    # someone else's annotation and predictor field, and KServe's finalizer, must survive the update
    obj = api.objects[(NS, NAME)]
    obj["metadata"]["annotations"]["example.com/owner"] = "team-a"
    obj["spec"]["predictor"]["timeout"] = 60

    second = r.rollout_inference_service(isvc(V2, min_replicas=2, max_replicas=4), api=api, **FAST)
    assert second.action == "patched" and (second.model_uri, second.previous_uri) == (V2, V1)
    verb, patch = api.writes()[-1]
    assert verb == "patch" and patch["metadata"]["resourceVersion"]  # optimistic concurrency
    live = api.live(NAME)
    assert r.storage_uri_of(predictor_of(live)) == V2
    assert (live["spec"]["predictor"]["minReplicas"], live["spec"]["predictor"]["maxReplicas"]) == (2, 4)
    assert live["spec"]["predictor"]["timeout"] == 60
    assert annotations_of(live)["example.com/owner"] == "team-a"
    assert live["metadata"]["finalizers"] == ["inferenceservice.finalizers"]
    assert live["metadata"]["generation"] == 2
    history = annotations_of(live)
    assert (history[r.ANNOTATION_MODEL_URI], history[r.ANNOTATION_PREVIOUS_URI]) == (V2, V1)
    assert history[r.ANNOTATION_PREVIOUS_VERSION] == "20261101-120000-aaaaaa"
    assert json.loads(history[r.ANNOTATION_PREVIOUS_PREDICTOR]) == {**v1_predictor, "timeout": 60}
    assert history[r.ANNOTATION_DEPLOYED_AT].endswith("+00:00")

    again = r.rollout_inference_service(isvc(V2, min_replicas=2, max_replicas=4), api=api, **FAST)
    assert again.action == "unchanged" and api.live(NAME)["metadata"]["generation"] == 2
    assert annotations_of(api.live(NAME))[r.ANNOTATION_PREVIOUS_URI] == V1  # a redeploy keeps the history


def test_conflict_is_retried_with_a_fresh_read() -> None:
    api = FakeKServe()
    r.rollout_inference_service(isvc(V1), api=api, **FAST)
    api.conflicts = 1
    assert r.rollout_inference_service(isvc(V2), api=api, **FAST).action == "patched"
    patches = [body for verb, body in api.writes() if verb == "patch"]
    assert len(patches) == 2  # the refused one and the retry
    assert r.storage_uri_of(predictor_of(api.live(NAME))) == V2


def test_deploy_cluster_mode_rolls_out_through_the_api() -> None:
    api = FakeKServe(lag=0)  # deploy() polls every 5 s: let the controller answer at once
    result = d.deploy("cluster", V1, api=api, cluster_ready_timeout_s=2, spec_options={"scale_metric": "cpu"})
    assert result.action == f"created {NS}/{NAME}" and result.endpoint == f"http://{NAME}.{NS}.example.com"
    assert api.live(NAME)["spec"]["predictor"]["scaleMetric"] == "cpu"
    result = d.deploy("cluster", V2, api=api, cluster_ready_timeout_s=0)  # no wait: applied only
    assert result.action == f"patched {NS}/{NAME}"
    assert r.storage_uri_of(predictor_of(api.live(NAME))) == V2


# ---- canary and promote (Knative) ---------------------------------------------------------------------------
def test_knative_canary_then_promote() -> None:
    api = FakeKServe()
    first = r.rollout_inference_service(isvc(V1, deployment_mode="Knative", canary_traffic_percent=10), api=api, **FAST)
    assert first.canary_percent is None  # the first version has nothing to split with
    assert "canaryTrafficPercent" not in predictor_of(api.live(NAME))
    assert api.traffic(NAME) == {f"{NAME}-predictor-00001": 100}

    canary = r.rollout_inference_service(
        isvc(V2, deployment_mode="Knative", canary_traffic_percent=20), api=api, **FAST
    )
    assert canary.canary_percent == 20 and "promote" in canary.message
    assert predictor_of(api.live(NAME))["canaryTrafficPercent"] == 20
    assert api.traffic(NAME) == {f"{NAME}-predictor-00001": 80, f"{NAME}-predictor-00002": 20}

    promoted = r.promote(NAME, NS, api=api, **FAST)
    assert promoted.action == "promoted" and "20% to 100%" in promoted.message
    live = api.live(NAME)
    assert "canaryTrafficPercent" not in predictor_of(live)
    assert r.ANNOTATION_PROMOTED_AT in annotations_of(live)
    assert api.traffic(NAME) == {f"{NAME}-predictor-00002": 100}
    assert r.promote(NAME, NS, api=api, **FAST).action == "nothing"


def test_promote_in_standard_mode_is_a_no_op() -> None:
    api = FakeKServe()
    r.rollout_inference_service(isvc(V1), api=api, **FAST)
    writes = len(api.writes())
    result = r.promote(NAME, NS, api=api, **FAST)
    assert result.action == "nothing" and "Standard mode" in result.message
    assert len(api.writes()) == writes


def test_switching_deployment_mode_in_place_is_refused() -> None:
    api = FakeKServe()
    r.rollout_inference_service(isvc(V1), api=api, **FAST)
    with pytest.raises(isvcs.DeployError, match="cannot switch it to Knative"):
        r.rollout_inference_service(isvc(V2, deployment_mode="Knative"), api=api, **FAST)
    assert r.storage_uri_of(predictor_of(api.live(NAME))) == V1


# ---- rollback on failure --------------------------------------------------------------------------------------
def test_failed_version_is_rolled_back_in_standard_mode() -> None:
    api = FakeKServe({V2: failed("checksum mismatch for model.safetensors")})
    r.rollout_inference_service(isvc(V1), api=api, **FAST)
    before = api.live(NAME)
    with pytest.raises(r.RolloutFailed) as info:
        r.rollout_inference_service(isvc(V2, cpu_limit="4"), api=api, **FAST)
    message = str(info.value)
    assert info.value.rolled_back
    assert "checksum mismatch for model.safetensors" in message and "Ready=False" in message
    assert f"Rolled back to {V1}" in message and "Ready" in message
    after = api.live(NAME)
    assert predictor_of(after) == predictor_of(before)  # the whole previous predictor spec, cpu limit included
    history = annotations_of(after)
    assert history[r.ANNOTATION_MODEL_URI] == V1 and history[r.ANNOTATION_FAILED_URI] == V2
    assert r.ANNOTATION_PREVIOUS_URI not in history  # as before the failed attempt
    assert [verb for verb, _ in api.writes()] == ["create", "patch", "patch"]


def test_never_ready_version_times_out_and_is_rolled_back() -> None:
    api = FakeKServe({V2: NEVER_READY})
    r.rollout_inference_service(isvc(V1), api=api, **FAST)
    before = predictor_of(api.live(NAME))
    with pytest.raises(r.RolloutFailed, match=r"not Ready after 0s: .*Deploying.*Rolled back"):
        r.rollout_inference_service(isvc(V2), api=api, timeout_s=0.05, poll_s=0.0)
    assert predictor_of(api.live(NAME)) == before


def test_failed_knative_canary_is_rolled_back_without_moving_traffic() -> None:
    api = FakeKServe({V2: failed('Revision "gtsrb-classifier-predictor-00002" failed: ImagePullBackOff')})
    r.rollout_inference_service(isvc(V1, deployment_mode="Knative"), api=api, **FAST)
    before = predictor_of(api.live(NAME))
    with pytest.raises(r.RolloutFailed, match=r"(?s)RevisionFailed.*ImagePullBackOff.*Rolled back"):
        r.rollout_inference_service(isvc(V2, deployment_mode="Knative", canary_traffic_percent=10), api=api, **FAST)
    assert predictor_of(api.live(NAME)) == before
    canaries = [body["spec"]["predictor"].get("canaryTrafficPercent", "-") for verb, body in api.writes()[1:]]
    assert canaries == [10, 0, None]  # the canary, the pinned restore, the release
    # the failed revision never had traffic; the restored one (same spec as 00001) has it all now
    assert api.traffic(NAME) == {f"{NAME}-predictor-00003": 100}


def test_first_version_failure_has_nothing_to_roll_back_to() -> None:
    api = FakeKServe({V1: failed("no such bucket")})
    with pytest.raises(r.RolloutFailed, match="nothing to roll back to") as info:
        r.rollout_inference_service(isvc(V1), api=api, **FAST)
    assert not info.value.rolled_back


def test_rollback_on_failure_can_be_disabled() -> None:
    api = FakeKServe({V2: failed("OOMKilled")})
    r.rollout_inference_service(isvc(V1), api=api, **FAST)
    with pytest.raises(r.RolloutFailed, match="rollback disabled"):
        r.rollout_inference_service(isvc(V2), api=api, rollback_on_failure=False, **FAST)
    assert r.storage_uri_of(predictor_of(api.live(NAME))) == V2


# ---- commands: validation before any API call ---------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        {"canary_percent": 10},  # Standard mode has no canaries
        {"deployment_mode": "Knative", "canary_percent": 150},
        {"scale_metric": "rps"},
        {"min_replicas": 0},
        {"arch": ["arm64"], "arch_placement": "sometimes"},
        {"tolerations": ["dedicated=ml:Never"]},
    ],
)
def test_invalid_commands_make_no_api_call(overrides: dict[str, Any]) -> None:
    api = FakeKServe()
    result = r.deploy_command(V1, api=api, **overrides)
    assert not result.ok and result.invalid and result.message.startswith("invalid deployment")
    assert api.calls == []


def test_alias_without_registry_is_refused_before_any_api_call() -> None:
    api = FakeKServe()
    result = r.deploy_command("champion", api=api)
    assert not result.ok and "no registry" in result.message and api.calls == []


def test_commands_report_instead_of_raising() -> None:
    api = FakeKServe({V2: failed("CrashLoopBackOff")})
    ok = r.deploy_command(V1, api=api, poll_s=0.0, timeout_s=2)
    assert ok.ok and ok.details["action"] == "created" and ok.details["model_uri"] == V1
    bad = r.deploy_command(V2, api=api, poll_s=0.0, timeout_s=2)
    assert not bad.ok and bad.details["rolled_back"] and "CrashLoopBackOff" in bad.message
    assert r.promote_command(api=api).message.endswith("nothing to promote")
    missing = r.rollback_command("other-model", api=api)
    assert not missing.ok and "does not exist" in missing.message
    no_history = r.rollback_command(api=api)  # V2 was rolled back: V1 has no predecessor
    assert not no_history.ok and "records no previous version" in no_history.message


# ---- rollback on request, with the registry -------------------------------------------------------------------
def _publish(registry: Registry, tmp_path: Path, tag: str) -> str:
    model_dir = tmp_path / tag
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(tag.encode())
    return registry.publish(NAME, model_dir, {"tag": tag}, version=f"20261123-00000{tag}-abcdef")


def test_rollback_restores_previous_version_and_champion(minio: StoreConfig, tmp_path: Path) -> None:
    registry = Registry.from_config(minio)
    v1, v2 = _publish(registry, tmp_path, "1"), _publish(registry, tmp_path, "2")
    uri1, uri2 = registry.uri(NAME, v1), registry.uri(NAME, v2)
    registry.set_alias(NAME, v2)
    api = FakeKServe()
    for uri in (uri1, uri2):
        assert r.deploy_command(uri, api=api, poll_s=0.0, timeout_s=2).ok
    v1_predictor = json.loads(annotations_of(api.live(NAME))[r.ANNOTATION_PREVIOUS_PREDICTOR])
    v2_predictor = predictor_of(api.live(NAME))

    result = r.rollback_command(NAME, move_champion=True, registry=registry, api=api, poll_s=0.0, timeout_s=2)
    assert result.ok, result.message
    assert (result.details["model_uri"], result.details["previous_uri"]) == (uri1, uri2)
    assert f"champion alias of {NAME} now {v1}" in result.message
    live = api.live(NAME)
    assert predictor_of(live) == v1_predictor
    assert (
        annotations_of(live)[r.ANNOTATION_PREVIOUS_URI] == uri2
        and r.ANNOTATION_ROLLED_BACK_AT in live["metadata"]["annotations"]
    )
    assert registry.get_alias(NAME) == v1

    # history swapped: rolling back again goes forward to v2; the champion stays unless asked
    assert r.rollback_command(NAME, registry=registry, api=api, poll_s=0.0, timeout_s=2).ok
    assert predictor_of(api.live(NAME)) == v2_predictor
    assert registry.get_alias(NAME) == v1

    # an explicit version, resolved through the registry (aliases too)
    named = r.rollback_command(NAME, to_version="champion", registry=registry, api=api, poll_s=0.0, timeout_s=2)
    assert named.ok and r.storage_uri_of(predictor_of(api.live(NAME))) == uri1
    unknown = r.rollback_command(NAME, to_version="20200101-000000-000000", registry=registry, api=api)
    assert not unknown.ok and "not a complete version" in unknown.message

    # `tsr deploy champion`: the alias is resolved to a concrete version before it reaches the cluster
    registry.set_alias(NAME, v2)
    assert r.deploy_command("champion", registry=registry, api=api, poll_s=0.0, timeout_s=2).ok
    assert r.storage_uri_of(predictor_of(api.live(NAME))) == uri2


def test_rollback_knative_pins_traffic_then_releases_it() -> None:
    api = FakeKServe()
    for uri in (V1, V2):
        r.rollout_inference_service(isvc(uri, deployment_mode="Knative"), api=api, **FAST)
    result = r.rollback(NAME, NS, api=api, **FAST)
    assert result.model_uri == V1 and result.previous_uri == V2
    canaries = [body["spec"]["predictor"].get("canaryTrafficPercent", "-") for verb, body in api.writes()[-2:]]
    assert canaries == [0, None]
    assert "canaryTrafficPercent" not in predictor_of(api.live(NAME))
    assert api.traffic(NAME) == {f"{NAME}-predictor-00003": 100}


def test_rollback_to_version_without_registry_changes_only_the_uri() -> None:
    api = FakeKServe()
    r.rollout_inference_service(isvc(V2, cpu_limit="4"), api=api, **FAST)
    result = r.rollback(NAME, NS, to_version="20261101-120000-aaaaaa", api=api, **FAST)
    assert result.model_uri == V1
    live = predictor_of(api.live(NAME))
    assert r.storage_uri_of(live) == V1 and live["containers"][0]["resources"]["limits"]["cpu"] == "4"
    with pytest.raises(ValueError, match="concrete version"):  # an alias needs the registry to resolve it
        r.rollback(NAME, NS, to_version="champion", api=api)
    with pytest.raises(ValueError, match="needs the registry"):
        r.rollback(NAME, NS, api=api, move_champion=True)
