"""Rollout of an InferenceService: create-or-patch, wait for Ready, roll back on failure, canary, promote.

`tsr.kube.inference_service` builds the object; this module decides how it reaches a cluster that already serves
an older version:

* Updates are JSON merge patches (RFC 7386) carrying the resourceVersion we read, so fields and
  annotations that other controllers own survive, and a concurrent writer makes us re-read (409)
  instead of being overwritten. Predictor fields this platform manages but the new spec leaves
  out (a finished canary's `canaryTrafficPercent`) are sent as `null`, which deletes them.
* Before patching, the live predictor spec is remembered. If the new version is not Ready in
  time (or KServe reports a terminal failure), the previous spec is re-applied and the
  DeployError says what failed and that it rolled back.
* History lives on the object itself, in `tsr-platform.io/*` annotations (current and previous
  model URI and version, the previous predictor spec, when it was deployed), so `rollback` works
  from any machine without a local state file.

Knative mode restores in two steps so that traffic never lands on the version being left:
first the previous predictor spec with `canaryTrafficPercent: 0` (KServe then pins all traffic to
the last rolled-out revision while the restored revision starts), then, once that revision is
Ready, `canaryTrafficPercent` is removed (100 % to it). Standard mode has no revisions: the
Deployment rolls back to the previous pod template, which is what re-applying the spec does.

The `*_command` functions at the end are what the `tsr deploy|promote|rollback` commands call:
plain arguments in, a `CommandResult` with a human-readable message out.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kserve import V1beta1InferenceService
from kubernetes import client as k8s

from tsr.core.registry import CHAMPION, DEFAULT_MODEL_NAME, Registry, RegistryError
from tsr.core.store import split_s3_uri
from tsr.kube.client import _isvc_args, cluster_endpoint, kube_api_client
from tsr.kube.inference_service import (
    ANNOTATION_DEPLOYMENT_MODE,
    ANNOTATION_PROMETHEUS,
    DEFAULT_NAMESPACE,
    DEFAULT_PREDICTOR_IMAGE,
    DEFAULT_SERVICE_ACCOUNT,
    KSERVE_CONTAINER,
    STORAGE_URI_ENV,
    DeployError,
    InferenceServiceSpec,
    _check_storage_uri,
    build_inference_service,
    isvc_name,
    parse_toleration,
)
from tsr.kube.render import to_manifest_dict
from tsr.kube.spec import READY_TIMEOUT_S

ANNOTATION_PREFIX = "tsr-platform.io"
ANNOTATION_MODEL_URI = f"{ANNOTATION_PREFIX}/model-uri"
ANNOTATION_MODEL_VERSION = f"{ANNOTATION_PREFIX}/model-version"
ANNOTATION_DEPLOYED_AT = f"{ANNOTATION_PREFIX}/deployed-at"
ANNOTATION_PREVIOUS_URI = f"{ANNOTATION_PREFIX}/previous-storage-uri"
ANNOTATION_PREVIOUS_VERSION = f"{ANNOTATION_PREFIX}/previous-model-version"
ANNOTATION_PREVIOUS_PREDICTOR = f"{ANNOTATION_PREFIX}/previous-predictor"  # compact JSON of the predictor spec
ANNOTATION_FAILED_URI = f"{ANNOTATION_PREFIX}/failed-storage-uri"  # the last version that was rolled back
ANNOTATION_ROLLED_BACK_AT = f"{ANNOTATION_PREFIX}/rolled-back-at"
ANNOTATION_PROMOTED_AT = f"{ANNOTATION_PREFIX}/promoted-at"
HISTORY_ANNOTATIONS = (
    ANNOTATION_MODEL_URI,
    ANNOTATION_MODEL_VERSION,
    ANNOTATION_DEPLOYED_AT,
    ANNOTATION_PREVIOUS_URI,
    ANNOTATION_PREVIOUS_VERSION,
    ANNOTATION_PREVIOUS_PREDICTOR,
)

# The predictor fields build_inference_service may set. A forward rollout deletes those the new
# spec leaves out; anything else in the live predictor (set by a webhook or a person) is kept.
MANAGED_PREDICTOR_FIELDS = (
    "containers",
    "serviceAccountName",
    "automountServiceAccountToken",
    "minReplicas",
    "maxReplicas",
    "canaryTrafficPercent",
    "scaleTarget",
    "scaleMetric",
    "nodeSelector",
    "affinity",
    "tolerations",
    "securityContext",
    "volumes",
)

# KServe's signs that waiting longer will not help: Knative gave up on the revision, or the
# model server failed to load / the spec is invalid (Standard mode's modelStatus).
TERMINAL_REASONS = ("RevisionFailed",)
TERMINAL_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
MAX_CONFLICT_RETRIES = 3


class RolloutFailed(DeployError):
    """The new version did not become Ready; `rolled_back` says whether the previous one was restored."""

    def __init__(self, message: str, rolled_back: bool = False, failure: str = "") -> None:
        super().__init__(message)
        self.rolled_back = rolled_back
        self.failure = failure


@dataclass(frozen=True)
class RolloutResult:
    """What one rollout, promote or rollback did, in a form both code and a person can read."""

    action: str  # created | patched | unchanged | promoted | rolled-back | nothing
    name: str
    namespace: str
    endpoint: str = ""
    model_uri: str = ""  # what the InferenceService serves (or is rolling out) now
    previous_uri: str = ""
    canary_percent: int | None = None
    message: str = ""


# ---- pure helpers ----------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def storage_uri_of(predictor: Mapping[str, Any]) -> str | None:
    """The model a predictor spec serves: our custom container's STORAGE_URI env, else KServe's
    built-in `model.storageUri` / `storageUri` forms (objects created by hand or another tool)."""
    for container in predictor.get("containers") or []:
        if container.get("name") == KSERVE_CONTAINER:
            for env in container.get("env") or []:
                if env.get("name") == STORAGE_URI_ENV:
                    return str(env.get("value"))
    model = predictor.get("model") or {}
    uri = model.get("storageUri") or predictor.get("storageUri")
    return str(uri) if uri else None


def version_of(uri: str | None) -> str:
    """`s3://models/<name>/<version>` -> `<version>` ("" for anything else)."""
    if not uri:
        return ""
    try:
        _bucket, key = split_s3_uri(uri)
    except ValueError:
        return ""
    parts = key.split("/")
    return parts[1] if len(parts) == 2 else ""


def with_storage_uri(predictor: Mapping[str, Any], uri: str) -> dict[str, Any]:
    """A copy of `predictor` serving `uri` instead (same image, resources, placement)."""
    result = copy.deepcopy(dict(predictor))
    for container in result.get("containers") or []:
        if container.get("name") == KSERVE_CONTAINER:
            for env in container.get("env") or []:
                if env.get("name") == STORAGE_URI_ENV:
                    env["value"] = uri
                    return result
    raise DeployError(f"predictor has no {KSERVE_CONTAINER} container with {STORAGE_URI_ENV}: cannot point it at {uri}")


def predictor_patch(
    desired: Mapping[str, Any], live: Mapping[str, Any], delete: Sequence[str] | None = MANAGED_PREDICTOR_FIELDS
) -> dict[str, Any]:
    """The merge patch that turns `live` into `desired` for the given fields.

    Lists (containers, tolerations) replace whole under a merge patch, maps merge key by key; a
    key in `live` but not in `desired` is set to null (deleted) when it is one of `delete`
    (None: every key, for restoring a remembered spec exactly).
    """
    patch: dict[str, Any] = dict(copy.deepcopy(dict(desired)))
    for key, value in live.items():
        if key in desired or value is None:
            continue
        if delete is None or key in delete:
            patch[key] = None
        continue
    # nested maps merge: clear stale keys inside them too (nodeSelector entries, affinity branches)
    for key in ("nodeSelector", "affinity", "securityContext"):
        old, new = live.get(key), desired.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            patch[key] = _null_missing(new, old)
    return patch


def _null_missing(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(copy.deepcopy(dict(new)))
    for key, value in old.items():
        if key not in new:
            out[key] = None
        elif isinstance(value, dict) and isinstance(new[key], dict):
            out[key] = _null_missing(new[key], value)
    return out


def conditions_summary(obj: Mapping[str, Any]) -> str:
    """Every condition that is not True, with reason and message, plus a model load failure;
    this is where KServe says why (image pull, storage-initializer, readiness probe, OOM)."""
    status = obj.get("status") or {}
    parts = []
    for c in status.get("conditions") or []:
        if c.get("status") != "True":
            text = f"{c.get('type')}={c.get('status')}"
            if c.get("reason"):
                text += f" ({c['reason']})"
            if c.get("message"):
                text += f": {c['message']}"
            parts.append(text)
    model_status = status.get("modelStatus") or {}
    failure = model_status.get("lastFailureInfo") or {}
    if failure:
        parts.append(
            f"model {model_status.get('transitionStatus', '')} "
            f"{failure.get('reason', '')}: {failure.get('message', '')}".strip()
        )
    return "; ".join(parts) or "no conditions reported yet"


def _terminal(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    if any(c.get("reason") in TERMINAL_REASONS and c.get("status") == "False" for c in status.get("conditions") or []):
        return True
    return (status.get("modelStatus") or {}).get("transitionStatus") in TERMINAL_TRANSITIONS


# Standard mode: KServe v0.20 (PropagateRawStatus) copies the predictor Deployment's Available condition into
# PredictorReady, and Ready with it, while the new ReplicaSet is still starting (Available stays True: the old
# pod serves); only a finished rollout carries the Progressing condition's reason, NewReplicaSetAvailable.
# Measured on a real node: without this check `tsr deploy` of a second version returned after 1 s, with the
# old version still serving and the new pod not yet Ready.
STANDARD_ROLLOUT_DONE_REASON = "NewReplicaSetAvailable"


def _standard_rollout_in_progress(status: Mapping[str, Any]) -> str:
    """Why a Standard-mode InferenceService whose Ready is True is still rolling out its Deployment, or ""."""
    if status.get("deploymentMode") not in ("Standard", "RawDeployment"):
        return ""
    for c in status.get("conditions") or []:
        if c.get("type") == "PredictorReady" and c.get("status") == "True":
            reason = c.get("reason") or ""
            if reason and reason != STANDARD_ROLLOUT_DONE_REASON:
                return f"predictor Deployment still rolling out ({reason}: {c.get('message') or 'new pods starting'})"
    return ""


def rollout_state(obj: Mapping[str, Any], canary_percent: int | None = None) -> tuple[bool, str]:
    """(done, why not) for the object's current generation.

    Ready must be True for the generation we wrote (`observedGeneration`), and where the status
    has Knative's per-revision view, the newest revision must be the ready one and carry the
    traffic we asked for (its canary share, or all of it): a Ready condition alone can still
    describe the previous revision while the new one starts.
    """
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return False, f"controller has not seen generation {generation} yet"
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if not ready:
        return False, conditions_summary(obj)
    rolling = _standard_rollout_in_progress(status)
    if rolling:
        return False, rolling
    predictor = (status.get("components") or {}).get("predictor") or {}
    latest_created, latest_ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if latest_created and latest_ready != latest_created:
        return False, f"revision {latest_created} not ready yet (latest ready: {latest_ready})"
    traffic = predictor.get("traffic")
    if latest_ready and traffic is not None:
        expected = 100 if canary_percent is None else canary_percent
        share = sum(int(t.get("percent") or 0) for t in traffic if t.get("revisionName") == latest_ready)
        if share != expected:
            return False, f"revision {latest_ready} has {share}% of traffic, expected {expected}%"
    return True, ""


# ---- API access --------------------------------------------------------------------------------------
def _api(api: Any, kube_config: str | None) -> Any:
    return api if api is not None else k8s.CustomObjectsApi(kube_api_client(kube_config))


def _call(what: str, fn: Callable[[], Any]) -> Any:
    """Run one API call, turning client errors into DeployError (409 passes through for retries)."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    except ApiException as exc:
        if exc.status == 409:
            raise
        raise DeployError(f"Kubernetes API refused {what}: {exc.status} {exc.reason}: {exc.body}") from exc
    except (HTTPError, OSError) as exc:
        raise DeployError(f"Kubernetes API unreachable during {what}: {exc}") from exc


def get_inference_service(
    name: str, namespace: str, api: Any, request_timeout_s: float = 30.0
) -> dict[str, Any] | None:
    """The live object, or None when it does not exist."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(
            *_isvc_args(namespace), name, _request_timeout=request_timeout_s
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise DeployError(f"reading InferenceService {namespace}/{name} failed: {exc.status} {exc.reason}") from exc
    except (HTTPError, OSError) as exc:
        raise DeployError(f"Kubernetes API unreachable while reading {namespace}/{name}: {exc}") from exc
    return obj


def _patch(name: str, namespace: str, api: Any, body: dict[str, Any], request_timeout_s: float = 30.0) -> Any:
    return _call(
        f"patching {namespace}/{name}",
        lambda: api.patch_namespaced_custom_object(
            *_isvc_args(namespace), name, body, _request_timeout=request_timeout_s
        ),
    )


def _patch_with_retry(
    name: str, namespace: str, api: Any, make_patch: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read, build the patch from what was read (with its resourceVersion), write; on 409 read again.

    Returns (the object as read, the object as written)."""
    from kubernetes.client.rest import ApiException

    for _attempt in range(MAX_CONFLICT_RETRIES):
        live = get_inference_service(name, namespace, api)
        if live is None:
            raise DeployError(f"InferenceService {namespace}/{name} does not exist")
        body = make_patch(live)
        body.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
        try:
            return live, _patch(name, namespace, api, body)
        except ApiException:  # 409: someone wrote in between
            continue
    raise DeployError(f"InferenceService {namespace}/{name} kept changing under us (409 {MAX_CONFLICT_RETRIES} times)")


def wait_for_rollout(
    name: str,
    namespace: str,
    api: Any,
    *,
    timeout_s: float = READY_TIMEOUT_S,
    poll_s: float = 5.0,
    canary_percent: int | None = None,
    fail_fast: bool = True,
) -> str:
    """Poll until `rollout_state` says done; return status.url (or the in-cluster URL).

    Raises RolloutFailed with the conditions on timeout, or at once when KServe reports a
    terminal failure (`fail_fast`): a revision Knative gave up on, a model that failed to load.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        obj = get_inference_service(name, namespace, api)
        if obj is None:
            raise RolloutFailed(f"InferenceService {namespace}/{name} disappeared while waiting for it")
        done, why = rollout_state(obj, canary_percent)
        if done:
            return str((obj.get("status") or {}).get("url") or cluster_endpoint(name, namespace))
        generation_seen = (obj.get("status") or {}).get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
        if fail_fast and generation_seen and _terminal(obj):
            raise RolloutFailed(f"InferenceService {namespace}/{name} failed: {why}", failure=why)
        if time.monotonic() >= deadline:
            failure = f"not Ready after {timeout_s:.0f}s: {why}"
            raise RolloutFailed(f"InferenceService {namespace}/{name} {failure}", failure=failure)
        time.sleep(poll_s)


# ---- rollout -----------------------------------------------------------------------------------------
def _history(live: Mapping[str, Any] | None, new_uri: str, now: str) -> dict[str, str]:
    """Annotations after moving to `new_uri`: the live version becomes `previous` (unless it is the same)."""
    annotations = {
        ANNOTATION_MODEL_URI: new_uri,
        ANNOTATION_MODEL_VERSION: version_of(new_uri),
        ANNOTATION_DEPLOYED_AT: now,
    }
    if live is None:
        return annotations
    live_predictor = (live.get("spec") or {}).get("predictor") or {}
    live_uri = storage_uri_of(live_predictor)
    if live_uri and live_uri != new_uri:
        annotations[ANNOTATION_PREVIOUS_URI] = live_uri
        annotations[ANNOTATION_PREVIOUS_VERSION] = version_of(live_uri)
        annotations[ANNOTATION_PREVIOUS_PREDICTOR] = json.dumps(live_predictor, sort_keys=True, separators=(",", ":"))
    return annotations


def _restore(
    name: str,
    namespace: str,
    api: Any,
    previous: Mapping[str, Any],
    annotations: Mapping[str, str | None],
    *,
    knative: bool,
    timeout_s: float,
    poll_s: float,
) -> tuple[bool, str]:
    """Re-apply a remembered predictor spec exactly; returns (Ready again, what happened).

    Knative: in with canaryTrafficPercent 0 (traffic stays on the last rolled-out revision), out
    once the restored revision is Ready. Standard: one patch; the Deployment rolls back.
    """
    target = dict(previous)
    final_canary = target.get("canaryTrafficPercent")
    if knative:
        target["canaryTrafficPercent"] = 0

    def make(live: dict[str, Any]) -> dict[str, Any]:
        live_predictor = (live.get("spec") or {}).get("predictor") or {}
        return {
            "metadata": {"annotations": dict(annotations)},
            "spec": {"predictor": predictor_patch(target, live_predictor, delete=None)},
        }

    _patch_with_retry(name, namespace, api, make)
    try:
        wait_for_rollout(
            name, namespace, api, timeout_s=timeout_s, poll_s=poll_s, canary_percent=0 if knative else None
        )
    except RolloutFailed as exc:
        held = " (traffic stays pinned to the last rolled-out revision: canaryTrafficPercent 0)" if knative else ""
        return False, f"the restored version is not Ready either{held}: {exc.failure or exc}"
    if knative:

        def release(_live: dict[str, Any]) -> dict[str, Any]:
            return {"spec": {"predictor": {"canaryTrafficPercent": final_canary}}}

        _patch_with_retry(name, namespace, api, release)
        try:
            wait_for_rollout(name, namespace, api, timeout_s=timeout_s, poll_s=poll_s, canary_percent=final_canary)
        except RolloutFailed as exc:
            return False, f"the restored revision is Ready but taking over traffic failed: {exc.failure or exc}"
    return True, "the restored version is Ready"


def rollout_inference_service(
    isvc: V1beta1InferenceService,
    *,
    api: Any = None,
    kube_config: str | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    poll_s: float = 5.0,
    rollback_on_failure: bool = True,
    fail_fast: bool = True,
    wait: bool = True,
) -> RolloutResult:
    """Create the InferenceService or merge-patch it to `isvc`, wait for it, roll back if it fails.

    `wait=False` only applies the object (no readiness check, hence no rollback either).

    Refuses to change `deploymentMode` in place (KServe does not migrate an existing object between
    Standard and Knative). A canary percentage on the very first version is dropped: there is no
    older revision to split traffic with. Raises RolloutFailed (a DeployError) naming the failing
    conditions and whether the previous version was restored.
    """
    api = _api(api, kube_config)
    desired = to_manifest_dict(isvc)
    meta, predictor = desired["metadata"], desired["spec"]["predictor"]
    name, namespace = meta["name"], meta["namespace"]
    new_uri = storage_uri_of(predictor) or ""
    mode = (meta.get("annotations") or {}).get(ANNOTATION_DEPLOYMENT_MODE, "Standard")
    knative = mode == "Knative"
    canary = predictor.get("canaryTrafficPercent")
    now = _now()

    live = get_inference_service(name, namespace, api)
    if live is None:
        if canary is not None:
            predictor.pop("canaryTrafficPercent")
            canary = None
        meta.setdefault("annotations", {}).update(_history(None, new_uri, now))
        _call(
            f"creating {namespace}/{name}",
            lambda: api.create_namespaced_custom_object(*_isvc_args(namespace), desired, _request_timeout=30),
        )
        if not wait:
            return RolloutResult(
                "created",
                name,
                namespace,
                cluster_endpoint(name, namespace),
                new_uri,
                message=f"created {namespace}/{name} (not waited for)",
            )
        try:
            endpoint = wait_for_rollout(name, namespace, api, timeout_s=timeout_s, poll_s=poll_s, fail_fast=fail_fast)
        except RolloutFailed as exc:
            raise RolloutFailed(
                f"{exc} -- this was the first version of {namespace}/{name}: nothing to roll back to; "
                "the InferenceService is left in place for inspection",
                failure=exc.failure,
            ) from exc
        return RolloutResult(
            "created", name, namespace, endpoint, new_uri, message=f"created {namespace}/{name} serving {new_uri}"
        )

    live_mode = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DEPLOYMENT_MODE, "Standard")
    live_mode = {"RawDeployment": "Standard", "Serverless": "Knative"}.get(live_mode, live_mode)
    if live_mode != mode:
        raise DeployError(
            f"InferenceService {namespace}/{name} runs in {live_mode} mode; KServe cannot switch it to {mode} "
            "in place: delete it first (or deploy under another name)"
        )

    remembered: dict[str, Any] = {}

    def make(current: dict[str, Any]) -> dict[str, Any]:
        live_predictor = (current.get("spec") or {}).get("predictor") or {}
        remembered.clear()
        remembered.update(copy.deepcopy(current))
        annotations: dict[str, str | None] = {**(meta.get("annotations") or {}), **_history(current, new_uri, now)}
        if ANNOTATION_PROMETHEUS not in annotations:  # scraping switched off: drop the old switch too
            annotations[ANNOTATION_PROMETHEUS] = None
        return {
            "metadata": {"labels": meta.get("labels") or {}, "annotations": annotations},
            "spec": {"predictor": predictor_patch(predictor, live_predictor)},
        }

    _before, written = _patch_with_retry(name, namespace, api, make)
    previous_predictor = (remembered.get("spec") or {}).get("predictor") or {}
    previous_uri = storage_uri_of(previous_predictor) or ""
    unchanged = written.get("metadata", {}).get("generation") == remembered.get("metadata", {}).get("generation")
    if not wait:
        return RolloutResult(
            "unchanged" if unchanged else "patched",
            name,
            namespace,
            cluster_endpoint(name, namespace),
            new_uri,
            previous_uri,
            canary,
            message=f"patched {namespace}/{name} to {new_uri} (not waited for)",
        )
    try:
        endpoint = wait_for_rollout(
            name, namespace, api, timeout_s=timeout_s, poll_s=poll_s, canary_percent=canary, fail_fast=fail_fast
        )
    except RolloutFailed as exc:
        if not rollback_on_failure:
            raise RolloutFailed(f"{exc} (rollback disabled: the failing version stays)", failure=exc.failure) from exc
        old_annotations = (remembered.get("metadata") or {}).get("annotations") or {}
        restored_annotations: dict[str, str | None] = {k: old_annotations.get(k) for k in HISTORY_ANNOTATIONS}
        restored_annotations[ANNOTATION_FAILED_URI] = new_uri
        restored_annotations[ANNOTATION_ROLLED_BACK_AT] = _now()
        _ok, how = _restore(
            name,
            namespace,
            api,
            previous_predictor,
            restored_annotations,
            knative=knative,
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
        raise RolloutFailed(
            f"rolling out {new_uri} to {namespace}/{name} failed: {exc.failure or exc}. "
            f"Rolled back to {previous_uri or 'the previous predictor spec'}; {how}",
            rolled_back=True,
            failure=exc.failure,
        ) from exc
    action = "unchanged" if unchanged else "patched"
    if canary is not None:
        message = (
            f"canary {new_uri} takes {canary}% of {namespace}/{name}'s traffic, {previous_uri} the rest; "
            "`promote` moves it to 100%"
        )
    else:
        message = f"{action} {namespace}/{name}: serving {new_uri}" + (
            f" (was {previous_uri})" if previous_uri != new_uri else ""
        )
    return RolloutResult(action, name, namespace, endpoint, new_uri, previous_uri, canary, message)


# ---- promote / rollback --------------------------------------------------------------------------------
def promote(
    name: str,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    api: Any = None,
    kube_config: str | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    poll_s: float = 5.0,
) -> RolloutResult:
    """Knative: remove canaryTrafficPercent so the canary revision takes all traffic, and wait for that.
    Standard: nothing to do (no canaries there; a new version serves everything once Ready)."""
    api = _api(api, kube_config)
    live = get_inference_service(name, namespace, api)
    if live is None:
        raise DeployError(f"InferenceService {namespace}/{name} does not exist")
    uri = storage_uri_of((live.get("spec") or {}).get("predictor") or {}) or ""
    mode = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DEPLOYMENT_MODE, "Standard")
    if mode not in ("Knative", "Serverless"):
        return RolloutResult(
            "nothing",
            name,
            namespace,
            model_uri=uri,
            message=f"{namespace}/{name} runs in {mode} mode, which has no canary: nothing to promote",
        )
    canary = ((live.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    if canary is None:
        return RolloutResult(
            "nothing",
            name,
            namespace,
            model_uri=uri,
            message=f"{namespace}/{name} has no canary in progress: {uri} already takes all traffic",
        )

    def make(_live: dict[str, Any]) -> dict[str, Any]:
        return {
            "metadata": {"annotations": {ANNOTATION_PROMOTED_AT: _now()}},
            "spec": {"predictor": {"canaryTrafficPercent": None}},
        }

    _patch_with_retry(name, namespace, api, make)
    endpoint = wait_for_rollout(name, namespace, api, timeout_s=timeout_s, poll_s=poll_s)
    return RolloutResult(
        "promoted",
        name,
        namespace,
        endpoint,
        uri,
        message=f"promoted {uri} in {namespace}/{name} from {canary}% to 100% of traffic",
    )


def rollback(
    name: str,
    namespace: str = DEFAULT_NAMESPACE,
    to_version: str | None = None,
    *,
    api: Any = None,
    kube_config: str | None = None,
    registry: Registry | None = None,
    move_champion: bool = False,
    timeout_s: float = READY_TIMEOUT_S,
    poll_s: float = 5.0,
) -> RolloutResult:
    """Serve the previous version again (from the object's annotations) or `to_version` of the same model.

    Without `to_version` the whole previous predictor spec is restored (image and resources too:
    a bad image is as likely a cause as a bad model); with it, only the model URI changes. The
    history swaps, so a second rollback goes forward again. With `move_champion` the registry's
    champion alias is pointed at the restored version (after it is Ready), so the next pipeline
    run compares against the model that actually serves.
    """
    api = _api(api, kube_config)
    if move_champion and registry is None:
        raise ValueError("move_champion needs the registry")
    live = get_inference_service(name, namespace, api)
    if live is None:
        raise DeployError(f"InferenceService {namespace}/{name} does not exist")
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    live_predictor = (live.get("spec") or {}).get("predictor") or {}
    current_uri = storage_uri_of(live_predictor) or ""
    if to_version is not None:
        bucket, key = split_s3_uri(current_uri or annotations.get(ANNOTATION_MODEL_URI, ""))
        model = key.split("/")[0]
        if registry is not None:
            try:
                to_version = registry.resolve(model, to_version)
            except RegistryError as exc:
                raise DeployError(f"cannot roll back {namespace}/{name} to {to_version!r}: {exc}") from exc
        target_uri = _check_storage_uri(f"s3://{bucket}/{model}/{to_version}")  # no alias without a registry
        target = with_storage_uri(live_predictor, target_uri)
        target.pop("canaryTrafficPercent", None)
    else:
        target_uri = annotations.get(ANNOTATION_PREVIOUS_URI, "")
        if not target_uri:
            raise DeployError(
                f"{namespace}/{name} records no previous version (annotation {ANNOTATION_PREVIOUS_URI}): "
                "name one with to_version"
            )
        raw = annotations.get(ANNOTATION_PREVIOUS_PREDICTOR)
        target = json.loads(raw) if raw else with_storage_uri(live_predictor, target_uri)
        if storage_uri_of(target) != target_uri:  # annotations edited by hand: trust the URI
            target = with_storage_uri(target, target_uri)
    if target_uri == current_uri and to_version is not None:
        return RolloutResult(
            "nothing",
            name,
            namespace,
            model_uri=current_uri,
            message=f"{namespace}/{name} already serves {current_uri}",
        )
    history: dict[str, str | None] = {
        ANNOTATION_MODEL_URI: target_uri,
        ANNOTATION_MODEL_VERSION: version_of(target_uri),
        ANNOTATION_DEPLOYED_AT: _now(),
        ANNOTATION_PREVIOUS_URI: current_uri,
        ANNOTATION_PREVIOUS_VERSION: version_of(current_uri),
        ANNOTATION_PREVIOUS_PREDICTOR: json.dumps(live_predictor, sort_keys=True, separators=(",", ":")),
        ANNOTATION_ROLLED_BACK_AT: _now(),
    }
    mode = annotations.get(ANNOTATION_DEPLOYMENT_MODE, "Standard")
    ok, how = _restore(
        name,
        namespace,
        api,
        target,
        history,
        knative=mode in ("Knative", "Serverless"),
        timeout_s=timeout_s,
        poll_s=poll_s,
    )
    if not ok:
        raise RolloutFailed(f"rolled {namespace}/{name} back to {target_uri}, but {how}", rolled_back=True)
    message = f"rolled {namespace}/{name} back from {current_uri} to {target_uri}"
    if move_champion:
        assert registry is not None
        model, version = split_s3_uri(target_uri)[1].split("/")
        try:
            registry.set_alias(model, version, CHAMPION)
        except RegistryError as exc:
            raise DeployError(f"{message}, but moving the champion alias failed: {exc}") from exc
        message += f"; champion alias of {model} now {version}"
    return RolloutResult(
        "rolled-back", name, namespace, cluster_endpoint(name, namespace), target_uri, current_uri, message=message
    )


# ---- what the CLI calls --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandResult:
    """The outcome of a `tsr deploy|promote|rollback` command: `ok`, a message for people, details for JSON."""

    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    invalid: bool = False  # refused before any API call: the arguments can never work (the CLI's exit code 2)


def _details(result: RolloutResult) -> dict[str, Any]:
    return {
        "action": result.action,
        "name": result.name,
        "namespace": result.namespace,
        "endpoint": result.endpoint,
        "model_uri": result.model_uri,
        "previous_uri": result.previous_uri,
        "canary_percent": result.canary_percent,
    }


def resolve_model_uri(model: str, model_name: str = DEFAULT_MODEL_NAME, registry: Registry | None = None) -> str:
    """`s3://bucket/<name>/<version>` as is; `champion`, `latest` or a version id through the registry."""
    if model.startswith("s3://"):
        return model
    if registry is None:
        raise ValueError(f"model {model!r} is not an s3:// version URI, and no registry was given to resolve it")
    try:
        return registry.uri(model_name, registry.resolve(model_name, model))
    except RegistryError as exc:
        raise DeployError(str(exc)) from exc


def deploy_command(
    model: str,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    image: str = DEFAULT_PREDICTOR_IMAGE,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    deployment_mode: str = InferenceServiceSpec.deployment_mode,
    canary_percent: int | None = None,
    min_replicas: int = InferenceServiceSpec.min_replicas,
    max_replicas: int = InferenceServiceSpec.max_replicas,
    scale_target: int | None = None,
    scale_metric: str | None = None,
    cpu_request: str = InferenceServiceSpec.cpu_request,
    cpu_limit: str = InferenceServiceSpec.cpu_limit,
    memory_request: str = InferenceServiceSpec.memory_request,
    memory_limit: str = InferenceServiceSpec.memory_limit,
    arch: Sequence[str] = (),
    arch_placement: str = InferenceServiceSpec.arch_placement,
    tolerations: Sequence[str] = (),
    timeout_s: float = READY_TIMEOUT_S,
    rollback_on_failure: bool = True,
    registry: Registry | None = None,
    kube_config: str | None = None,
    api: Any = None,
    poll_s: float = 5.0,
) -> CommandResult:
    """`tsr deploy`: resolve the model, validate everything, then roll out (with rollback on failure).

    `tolerations` are strings in kubectl taint syntax (`key=value:Effect`, `key:Effect`). Every
    invalid combination (a canary in Standard mode, a metric the mode cannot scale on) is refused
    before any API call. Failures return ok=False with the message instead of raising.
    """
    try:
        storage_uri = resolve_model_uri(model, model_name, registry)
    except (RegistryError, DeployError) as exc:  # no such version or alias: a runtime failure, not bad arguments
        return CommandResult(False, f"invalid deployment: {exc}")
    except ValueError as exc:
        return CommandResult(False, f"invalid deployment: {exc}", invalid=True)
    try:
        spec = InferenceServiceSpec(
            name=isvc_name(model_name),
            namespace=namespace,
            storage_uri=storage_uri,
            image=image,
            service_account=service_account,
            model_name=model_name,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            cpu_request=cpu_request,
            cpu_limit=cpu_limit,
            memory_request=memory_request,
            memory_limit=memory_limit,
            deployment_mode=deployment_mode,
            canary_traffic_percent=canary_percent,
            scale_target=scale_target,
            scale_metric=scale_metric,
            arch=tuple(arch),
            arch_placement=arch_placement,
            tolerations=tuple(parse_toleration(t) for t in tolerations),
        )
    except (ValueError, DeployError) as exc:
        return CommandResult(False, f"invalid deployment: {exc}", invalid=True)
    try:
        result = rollout_inference_service(
            build_inference_service(spec),
            api=api,
            kube_config=kube_config,
            timeout_s=timeout_s,
            poll_s=poll_s,
            rollback_on_failure=rollback_on_failure,
        )
    except RolloutFailed as exc:
        return CommandResult(False, str(exc), {"rolled_back": exc.rolled_back, "failure": exc.failure})
    except DeployError as exc:
        return CommandResult(False, str(exc))
    return CommandResult(True, result.message, _details(result))


def promote_command(
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    timeout_s: float = READY_TIMEOUT_S,
    kube_config: str | None = None,
    api: Any = None,
    poll_s: float = 5.0,
) -> CommandResult:
    """`tsr promote`: the canary of `model_name`'s InferenceService takes all traffic."""
    try:
        result = promote(
            isvc_name(model_name), namespace, api=api, kube_config=kube_config, timeout_s=timeout_s, poll_s=poll_s
        )
    except DeployError as exc:
        return CommandResult(False, str(exc))
    return CommandResult(True, result.message, _details(result))


def rollback_command(
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    to_version: str | None = None,
    move_champion: bool = False,
    registry: Registry | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    kube_config: str | None = None,
    api: Any = None,
    poll_s: float = 5.0,
) -> CommandResult:
    """`tsr rollback`: the previous (or a named) version serves again; optionally the champion follows."""
    try:
        result = rollback(
            isvc_name(model_name),
            namespace,
            to_version,
            api=api,
            kube_config=kube_config,
            registry=registry,
            move_champion=move_champion,
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
    except (DeployError, ValueError) as exc:
        return CommandResult(False, str(exc))
    return CommandResult(True, result.message, _details(result))
