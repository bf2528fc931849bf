"""An in-memory Kubernetes API for InferenceServices plus a small KServe controller simulator.

No API server or KServe controller can run on the development machines, so rollout logic is
tested against this stand-in. What it imitates, and only that:

* the API server: objects stored per namespace/name, `metadata.generation` bumped on spec
  changes only, `resourceVersion` bumped on every write, a stale `resourceVersion` in a write
  answered with 409, a missing object with 404, JSON merge patch (RFC 7386) semantics;
* the KServe controller: after `lag` reads, `status.observedGeneration` catches up and the
  conditions say what the scenario for the served STORAGE_URI says (`ready`, `never-ready`,
  `failed` with a message); in Knative mode each change of the predictor template makes a
  revision, and traffic follows KServe's canary rules (the last rolled-out revision keeps
  100 - canaryTrafficPercent, a revision that is not ready never gets traffic).

Every body written through it must round-trip through the kserve SDK model
(`from_manifest_dict` -> `to_manifest_dict`), so nothing the real API would reject by schema
can pass here. The merge-patch and storage-URI code is written again here on purpose rather than
imported from `rollout.py`, so that the code under test is not its own judge.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.rest import ApiException

from tsr.kube import render as render

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


@dataclass(frozen=True)
class Outcome:
    """What the simulated controller reports for pods serving one model URI."""

    kind: str = "ready"  # ready | never-ready | failed
    message: str = ""


READY = Outcome()
NEVER_READY = Outcome("never-ready")


def failed(message: str) -> Outcome:
    return Outcome("failed", message)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def assert_round_trips(body: dict[str, Any]) -> None:
    """The body, as the SDK model sees it, is the body: no unknown field, no wrong shape."""
    plain = drop_nulls({k: v for k, v in body.items() if k != "status"})
    back = render.to_manifest_dict(render.from_manifest_dict(plain))
    assert back == plain, f"body does not round-trip through V1beta1InferenceService:\n{plain}\n!=\n{back}"


def served_uri(obj: dict[str, Any]) -> str:
    predictor = obj["spec"]["predictor"]
    for container in predictor.get("containers") or []:
        for env in container.get("env") or []:
            if env["name"] == "STORAGE_URI":
                return str(env["value"])
    raise AssertionError("no STORAGE_URI in the predictor")


@dataclass
class Revision:
    name: str
    template: dict[str, Any]
    ready: bool


@dataclass
class _State:
    revisions: list[Revision] = field(default_factory=list)
    rolled_out: str | None = None
    traffic: list[dict[str, Any]] = field(default_factory=list)
    reads_until_reconcile: int = 0


class FakeKServe:
    """CustomObjectsApi's InferenceService calls against an in-memory store and controller."""

    def __init__(self, outcomes: dict[str, Outcome] | None = None, lag: int = 1, conflicts: int = 0) -> None:
        self.outcomes = dict(outcomes or {})
        self.lag = lag  # reads before the controller has caught up with a write
        self.conflicts = conflicts  # the next N patches answer 409 (someone else wrote in between)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.state: dict[tuple[str, str], _State] = {}
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []  # (verb, name, body)
        self._versions = itertools.count(100)

    # ---- helpers for tests ------------------------------------------------------------------------
    def live(self, name: str, namespace: str = "tsr") -> dict[str, Any]:
        return copy.deepcopy(self.objects[(namespace, name)])

    def writes(self) -> list[tuple[str, dict[str, Any]]]:
        return [(verb, body) for verb, _name, body in self.calls if verb != "get" and body is not None]

    def traffic(self, name: str, namespace: str = "tsr") -> dict[str, int]:
        return {t["revisionName"]: t["percent"] for t in self.state[(namespace, name)].traffic}

    # ---- the API ------------------------------------------------------------------------------------
    def _check(self, group: str, version: str, plural: str) -> None:
        assert (group, version, plural) == (GROUP, VERSION, PLURAL)

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **_: Any
    ) -> dict[str, Any]:
        self._check(group, version, plural)
        self.calls.append(("get", name, None))
        key = (namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        state = self.state[key]
        if state.reads_until_reconcile > 0:
            state.reads_until_reconcile -= 1
        else:
            self._reconcile(key)
        return copy.deepcopy(self.objects[key])

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self._check(group, version, plural)
        assert_round_trips(body)
        assert body["apiVersion"] == f"{GROUP}/{VERSION}" and body["kind"] == "InferenceService"
        name = body["metadata"]["name"]
        assert body["metadata"]["namespace"] == namespace
        self.calls.append(("create", name, copy.deepcopy(body)))
        key = (namespace, name)
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=1, resourceVersion=str(next(self._versions)), uid=f"uid-{name}")
        obj["metadata"].setdefault("finalizers", ["inferenceservice.finalizers"])  # what KServe adds
        obj["status"] = {}
        self.objects[key] = obj
        self.state[key] = _State(reads_until_reconcile=self.lag)
        return copy.deepcopy(obj)

    def replace_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self._check(group, version, plural)
        assert_round_trips(body)
        self.calls.append(("replace", name, copy.deepcopy(body)))
        return self._write(namespace, name, body, replace=True)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self._check(group, version, plural)
        assert_round_trips(body)
        self.calls.append(("patch", name, copy.deepcopy(body)))
        if self.conflicts:
            self.conflicts -= 1
            raise ApiException(status=409, reason="Conflict")
        return self._write(namespace, name, body, replace=False)

    def _write(self, namespace: str, name: str, body: dict[str, Any], replace: bool) -> dict[str, Any]:
        key = (namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        current = self.objects[key]
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        if replace:
            new = copy.deepcopy(body)
            new["status"] = current.get("status", {})
        else:
            new = merge_patch(current, body)
        for server_field in ("generation", "uid", "finalizers"):
            if server_field in current["metadata"] and (replace or server_field != "finalizers"):
                new["metadata"][server_field] = current["metadata"][server_field]
        if new["spec"] != current["spec"]:
            new["metadata"]["generation"] = current["metadata"]["generation"] + 1
            self.state[key].reads_until_reconcile = self.lag
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        assert_round_trips(new)  # the stored object is a valid InferenceService too
        self.objects[key] = new
        return copy.deepcopy(new)

    # ---- the controller ---------------------------------------------------------------------------
    def _reconcile(self, key: tuple[str, str]) -> None:
        obj, state = self.objects[key], self.state[key]
        namespace, name = key
        predictor = obj["spec"]["predictor"]
        outcome = self.outcomes.get(served_uri(obj), READY)
        mode = obj["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Standard")
        status: dict[str, Any] = {"observedGeneration": obj["metadata"]["generation"], "deploymentMode": mode}
        ready = outcome.kind == "ready"
        if mode == "Knative":
            template = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
            if not state.revisions or state.revisions[-1].template != template:
                state.revisions.append(Revision(f"{name}-predictor-{len(state.revisions) + 1:05d}", template, ready))
            latest = state.revisions[-1]
            latest_ready = next((r.name for r in reversed(state.revisions) if r.ready), None)
            canary = predictor.get("canaryTrafficPercent")
            if latest.ready:  # a revision that is not ready never gets traffic: the old route stays
                if canary is None or state.rolled_out in (None, latest.name):
                    state.traffic = [{"revisionName": latest.name, "percent": 100, "latestRevision": True}]
                    state.rolled_out = latest.name
                else:
                    state.traffic = [
                        {"revisionName": state.rolled_out, "percent": 100 - canary, "tag": "prev"},
                        {"revisionName": latest.name, "percent": canary, "tag": "latest"},
                    ]
            component: dict[str, Any] = {
                "latestCreatedRevision": latest.name,
                "traffic": copy.deepcopy(state.traffic),
            }
            if latest_ready:
                component["latestReadyRevision"] = latest_ready
            if state.rolled_out:
                component["latestRolledoutRevision"] = state.rolled_out
            status["components"] = {"predictor": component}
        if ready:
            conditions = [
                {"type": "PredictorReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ]
            status["url"] = f"http://{name}.{namespace}.example.com"
        elif outcome.kind == "failed":
            reason = "RevisionFailed" if mode == "Knative" else "PredictorNotReady"
            conditions = [
                {"type": "PredictorReady", "status": "False", "reason": reason, "message": outcome.message},
                {"type": "Ready", "status": "False", "reason": reason, "message": outcome.message},
            ]
            if mode != "Knative":
                status["modelStatus"] = {
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {"reason": "ModelLoadFailed", "message": outcome.message},
                }
        else:
            conditions = [
                {"type": "PredictorReady", "status": "Unknown", "reason": "Deploying"},
                {"type": "Ready", "status": "Unknown", "reason": "Deploying"},
            ]
        status["conditions"] = conditions
        obj["status"] = status
