"""The predictor end to end through KServe on the real node: a model registered in a real MinIO on the host's
loopback, `tsr deploy` (deploy_command, Standard mode) -> the real KServe controller -> the locally built
storage-initializer downloads the version -> the locally built predictor image runs under PodSecurity
`restricted` (non-root, read-only root filesystem) and becomes Ready -> the InferenceService reports Ready and
the engine's wait returns on it -> V1 and V2 requests with real GTSRB images are answered with exactly the
local model's probabilities (each version signed with a key pair made for the run; the predictor verifies
/mnt/models with the public key of the namespace's ConfigMap) -> a real Prometheus scrapes the pod's /metrics
as the chart's PodMonitor says -> a second `tsr deploy` and `tsr rollback` change what the pod serves.

The images come from `make images-local` (docker-archives in $TSR_IMAGES_DIR, default .state/images); they are
imported into the node's containerd (on disk: the predictor image is ~6 GB unpacked). A summary of the run
(times, correctness, image sizes) goes to .state/cluster-e2e/predictor-e2e.json; `make cluster-e2e` prints it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from kubernetes import client as k8s

from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig, train, write_model
from tests.cluster_node import IMAGES_DIR, Node, check_room_for, local_image
from tests.cluster_plane import KSERVE_NAMESPACE, ControlPlane, ensure_namespace
from tests.e2e_summary import recorded
from tsr.core.config import StoreConfig
from tsr.core.dataset import TRAIN_FILE, VAL_FILE, load_split
from tsr.core.models import load_model_dir, probabilities
from tsr.core.preprocessing import load_image_file, to_model_input
from tsr.core.registry import DEFAULT_MODEL_NAME, Registry
from tsr.core.signing import ensure_local_key_pair
from tsr.kube.inference_service import (
    KSERVE_CONTAINER,
    SIGNING_PUBLIC_CONFIG_MAP,
    SIGNING_PUBLIC_CONFIG_MAP_KEY,
    build_s3_secret_and_service_account,
    isvc_name,
)
from tsr.kube.monitoring.scrape import ScrapeConfig
from tsr.kube.rollout import deploy_command, get_inference_service, rollback_command
from tsr.local.minio_server import LocalMinio
from tsr.local.prometheus_server import LocalPrometheus, PrometheusConfig, find_prometheus_binary, sample_value

SUMMARY = "predictor-e2e.json"  # in tests/e2e_summary.py SUMMARIES
NAMESPACE = "tsr-e2e"
MODEL = DEFAULT_MODEL_NAME
ISVC = isvc_name(MODEL)
READY_TIMEOUT_S = 600.0
SAMPLES = 6  # GTSRB images both trained versions classify correctly


def _wait(what: str, get: Callable[[], Any], timeout_s: float = 120.0, interval_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            value = get()
        except (httpx.TransportError, k8s.ApiException) as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:.0f}s: {last!r}")
        time.sleep(interval_s)


def _trained(dataset: Path, out: Path, seed: int) -> Path:
    tr, va = load_split(dataset / TRAIN_FILE), load_split(dataset / VAL_FILE)
    cfg = TrainConfig(epochs=3, width=8, threads=4, batch_size=64, lr=0.1, seed=seed)
    write_model(train(tr, va, [str(i) for i in range(43)], cfg, show_progress=False), out)
    return out


def _probabilities(model_dir: Path, images: torch.Tensor) -> torch.Tensor:
    model, config = load_model_dir(model_dir)
    with torch.no_grad():
        return probabilities(model(to_model_input(images, config.preprocess)), config)  # calibrated, as served


def _serving_pod(core: k8s.CoreV1Api, uri: str, namespace: str = NAMESPACE) -> k8s.V1Pod | None:
    """The Ready predictor pod (not terminating) whose storage URI is `uri`."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"serving.kserve.io/inferenceservice={ISVC}").items
    for pod in pods:
        if pod.metadata.deletion_timestamp is not None:
            continue
        # KServe rewrites the container's STORAGE_URI to /mnt/models; the init container's args keep the URI
        init = next((c for c in pod.spec.init_containers or [] if c.name == "storage-initializer"), None)
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if ready and init is not None and (init.args or [])[:1] == [uri]:
            return pod
    return None


def _ask(port: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """V1 and V2 predictions of the samples, from the predictor behind 127.0.0.1:`port`."""
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as http:
        v1 = http.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"b64": s["b64"]} for s in samples]})
        assert v1.status_code == 200, v1.text
        tensor = {"name": "image", "shape": [len(samples)], "datatype": "BYTES", "data": [s["b64"] for s in samples]}
        v2 = http.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
        assert v2.status_code == 200, v2.text
        meta = http.get(f"/v2/models/{MODEL}").json()
    outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    return {
        "v1": v1.json()["predictions"],
        "v2_class_id": outputs["class_id"],
        "v2_probability": outputs["probability"],
        "v2_model_version": v2.json().get("model_version"),
        "metadata": meta,
    }


def _serves(answer: dict[str, Any], samples: list[dict[str, Any]], which: str) -> tuple[int, int]:
    """How many V1 and V2 answers are the samples' true classes with the `which` model's probabilities."""
    v1 = sum(
        p["class_id"] == s["class_id"] and abs(p["probability"] - s[which]) < 1e-4
        for p, s in zip(answer["v1"], samples, strict=True)
    )
    v2 = sum(
        c == s["class_id"] and abs(p - s[which]) < 1e-4
        for c, p, s in zip(answer["v2_class_id"], answer["v2_probability"], samples, strict=True)
    )
    return v1, v2


def test_predictor_end_to_end(
    plane: ControlPlane,
    kube_node: Node,
    gtsrb_small: Path,
    minio_binary: Path,
    tmp_path: Path,
) -> None:
    summary: dict[str, Any] = {"node_ready": True, "node_ready_s": round(kube_node.startup_s["total"], 1)}
    sizes = json.loads((IMAGES_DIR / "sizes.json").read_text())
    summary["images"] = {
        name: {"compressed_mb": i["compressed_mb"], "unpacked_mb": i["unpacked_mb"]}
        for name, i in sizes["images"].items()
    }
    with recorded(SUMMARY, summary):
        _run(plane, kube_node, gtsrb_small, minio_binary, tmp_path, summary)


def _run(
    plane: ControlPlane,
    n: Node,
    gtsrb_small: Path,
    minio_binary: Path,
    tmp_path: Path,
    summary: dict[str, Any],
) -> None:
    core = k8s.CoreV1Api(plane.api_client)
    custom = k8s.CustomObjectsApi(plane.api_client)
    predictor_ref, init_ref = _import_serving_images(n, summary)

    # ---- two trained versions in a real MinIO, published by the registry ------------------------------------
    minio = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
    store: StoreConfig = minio.start()
    try:
        _with_store(plane, n, core, custom, store, gtsrb_small, tmp_path, predictor_ref, init_ref, summary)
    finally:
        minio.stop()


def _import_serving_images(n: Node, summary: dict[str, Any]) -> tuple[str, str]:
    """The predictor and storage-initializer images of the node's arch into its containerd (on disk), if the disk
    holds them; their references. The unpacked layers go to disk, the layer blobs pass through the node's tmpfs
    (RAM) and are discarded."""
    predictor_tar, predictor_ref = local_image("tsr-predictor", n.arch)
    init_tar, init_ref = local_image("tsr-storage-initializer", n.arch)
    check_room_for(n, ["tsr-predictor", "tsr-storage-initializer"])
    started = time.monotonic()
    for archive in (init_tar, predictor_tar):
        n.import_image(archive, discard_layers=True, timeout=1200)
    summary["import_s"] = round(time.monotonic() - started, 1)
    assert {predictor_ref, init_ref} <= set(n.images()), n.images()
    return predictor_ref, init_ref


def _with_store(
    plane: ControlPlane,
    n: Node,
    core: k8s.CoreV1Api,
    custom: k8s.CustomObjectsApi,
    store: StoreConfig,
    gtsrb_small: Path,
    tmp_path: Path,
    predictor_ref: str,
    init_ref: str,
    summary: dict[str, Any],
) -> None:
    started = time.monotonic()
    dataset = tmp_path / "dataset"
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=3), dataset)
    dirs = [_trained(dataset, tmp_path / f"model-{seed}", seed) for seed in (0, 1)]
    registry = Registry.from_config(store)
    # a fresh key pair for this run (what the operator makes, docs/operator-guide.md section 6): the versions are
    # signed with its private key as the register step signs, the predictor verifies with its public key
    private_key, public_key = ensure_local_key_pair({"TSR_STATE_DIR": str(tmp_path / "keys")})
    versions = []
    for i, model_dir in enumerate(dirs):
        versions.append(registry.publish(MODEL, model_dir, {"e2e": True, "seed": i}, key=private_key))
    uris = [registry.uri(MODEL, v) for v in versions]
    summary["train_publish_s"] = round(time.monotonic() - started, 1)

    # real GTSRB images (held-out tracks) that both versions classify correctly, with each one's probability
    test_dir = gtsrb_small / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    rows = [r.split(";") for r in (gtsrb_small / "gtsrb" / "GT-final_test.csv").read_text().splitlines()[1:]]
    paths = [test_dir / r[0] for r in rows]
    labels = [int(r[7]) for r in rows]
    images = torch.stack([load_image_file(p, 32) for p in paths])
    probs = [_probabilities(d, images) for d in dirs]
    samples = []
    for i, (path, label) in enumerate(zip(paths, labels, strict=True)):
        if all(int(p[i].argmax()) == label for p in probs):
            samples.append(
                {
                    "file": path.name,
                    "class_id": label,
                    "b64": base64.b64encode(path.read_bytes()).decode(),
                    "p0": float(probs[0][i, label]),
                    "p1": float(probs[1][i, label]),
                }
            )
        if len(samples) == SAMPLES:
            break
    assert len(samples) == SAMPLES, f"only {len(samples)} images both models classify correctly"
    assert any(abs(s["p0"] - s["p1"]) > 1e-3 for s in samples)  # the versions are told apart by their answers

    _use_storage_initializer(core, custom, init_ref)
    _prepare_namespace(plane, n, core, store, public_key.read_text(), NAMESPACE)

    # ---- tsr deploy: version 1 ------------------------------------------------------------------------------
    def deploy(version: str) -> float:
        started = time.monotonic()
        result = deploy_command(
            version,
            model_name=MODEL,
            namespace=NAMESPACE,
            image=predictor_ref,
            registry=registry,
            kube_config=str(plane.kubeconfig),
            timeout_s=READY_TIMEOUT_S,
            poll_s=1.0,
        )
        took = time.monotonic() - started
        assert result.ok, f"{result.message}\n{_diagnose(n, core)}"
        return took

    summary["isvc_ready_s"] = round(deploy(versions[0]), 1)
    live = get_inference_service(ISVC, NAMESPACE, custom)
    conditions = {c["type"]: c["status"] for c in live["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions  # the controller's status, which the engine waited on
    pod = _wait("a Ready predictor pod serving version 1", lambda: _serving_pod(core, uris[0]))
    _check_restricted(core, pod)
    init_log = n.container_log(NAMESPACE, pod.metadata.name, "storage-initializer")
    summary["storage_initializer_named_uri"] = uris[0] in init_log
    port = n.forward_to_pod(pod.status.pod_ip, _http_port(pod))
    answer = _ask(port, samples)
    v1_ok, v2_ok = _serves(answer, samples, "p0")
    summary.update(
        v1_correct=f"{v1_ok}/{SAMPLES}", v2_correct=f"{v2_ok}/{SAMPLES}", reported_version=answer["v2_model_version"]
    )
    assert v1_ok == v2_ok == SAMPLES, answer

    # ---- a real Prometheus scrapes /metrics as the chart's PodMonitor says ------------------------------------
    binary = find_prometheus_binary()
    if binary is None:
        pytest.fail("no `prometheus` binary: make prometheus")
    scrape = ScrapeConfig()
    job = pod.metadata.labels[scrape.job_label]
    assert scrape.path == "/metrics"
    prom = PrometheusConfig(root=tmp_path / "prom", targets=[f"127.0.0.1:{port}"], job_name=job)
    with LocalPrometheus(prom, binary) as prometheus:
        got = prometheus.wait_for(
            f'sum(tsr_predictions_total{{job="{job}"}})',
            lambda r: len(r) == 1 and sample_value(r[0]) >= 2 * SAMPLES,
            timeout_s=60,
        )
    summary["scraped"] = sample_value(got[0]) >= 2 * SAMPLES
    summary["scraped_predictions"] = sample_value(got[0])

    # ---- tsr deploy: version 2, then tsr rollback -------------------------------------------------------------
    summary["deploy2_s"] = round(deploy(versions[1]), 1)
    # the engine returned on the controller's status only once the new version's pod was Ready
    second = _ready_pod_answers(n, core, uris[1], samples, "p1", "deploy of version 2")
    summary["deploy2_ok"] = second == (SAMPLES, SAMPLES)
    assert summary["deploy2_ok"], second
    started = time.monotonic()
    result = rollback_command(
        MODEL,
        namespace=NAMESPACE,
        registry=registry,
        kube_config=str(plane.kubeconfig),
        timeout_s=READY_TIMEOUT_S,
        poll_s=1.0,
    )
    summary["rollback_s"] = round(time.monotonic() - started, 1)
    assert result.ok, f"{result.message}\n{_diagnose(n, core)}"
    back = _ready_pod_answers(n, core, uris[0], samples, "p0", "rollback to version 1")
    summary["rollback"] = back == (SAMPLES, SAMPLES)
    assert summary["rollback"], back


def _use_storage_initializer(core: k8s.CoreV1Api, custom: k8s.CustomObjectsApi, init_ref: str) -> None:
    """KServe's storage-initializer image set to the locally built one (ConfigMap and ClusterStorageContainer),
    its restricted securityContext kept."""
    config = core.read_namespaced_config_map("inferenceservice-config", KSERVE_NAMESPACE)
    storage = json.loads(config.data["storageInitializer"])
    storage["image"] = init_ref
    core.patch_namespaced_config_map(
        "inferenceservice-config", KSERVE_NAMESPACE, {"data": {"storageInitializer": json.dumps(storage)}}
    )
    custom.patch_cluster_custom_object(
        "serving.kserve.io",
        "v1alpha1",
        "clusterstoragecontainers",
        "default",
        {"spec": {"container": {"image": init_ref, "imagePullPolicy": "Never"}}},
    )
    csc = custom.get_cluster_custom_object("serving.kserve.io", "v1alpha1", "clusterstoragecontainers", "default")
    assert csc["spec"]["container"]["securityContext"]["runAsNonRoot"] is True


def _prepare_namespace(
    plane: ControlPlane, n: Node, core: k8s.CoreV1Api, store: StoreConfig, public_key: str, namespace: str
) -> None:
    """The namespace (PodSecurity restricted), the S3 Secret + ServiceAccount pointing at the MinIO exposed to
    the node's pods, and the ConfigMap with the public key the InferenceService mounts (TSR_REQUIRE_SIGNED=1)."""
    ensure_namespace(
        plane.api_client,
        namespace,
        {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"},
    )
    host_port = int(store.endpoint.rsplit(":", 1)[1])
    node_ip, node_port = n.expose_host_port(host_port)
    secret, account = build_s3_secret_and_service_account(
        namespace,
        endpoint=f"{node_ip}:{node_port}",
        use_https=False,
        access_key=store.access_key,
        secret_key=store.secret_key,
    )
    core.create_namespaced_secret(namespace, secret)
    core.create_namespaced_service_account(namespace, account)
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=SIGNING_PUBLIC_CONFIG_MAP),
            data={SIGNING_PUBLIC_CONFIG_MAP_KEY: public_key},
        ),
    )


def _ready_pod_answers(
    n: Node, core: k8s.CoreV1Api, uri: str, samples: list[dict[str, Any]], which: str, after: str
) -> tuple[int, int]:
    """The Ready pod of `uri` that must exist when `after` has returned: how many samples it answers (V1, V2) with
    the `which` model's classes and probabilities."""
    pod = _serving_pod(core, uri)
    assert pod is not None, f"{after} returned before a pod serving {uri} was Ready\n{_diagnose(n, core)}"
    port = n.forward_to_pod(pod.status.pod_ip, _http_port(pod))
    return _serves(_ask(port, samples), samples, which)


def _http_port(pod: k8s.V1Pod) -> int:
    container = next(c for c in pod.spec.containers if c.name == KSERVE_CONTAINER)
    return int(next(p.container_port for p in container.ports if p.name == ScrapeConfig().port))


def _check_restricted(core: k8s.CoreV1Api, pod: k8s.V1Pod, namespace: str = NAMESPACE) -> None:
    """The pod runs as the restricted namespace admitted it: non-root, read-only root fs, init container too."""
    labels = core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    predictor = next(c for c in pod.spec.containers if c.name == KSERVE_CONTAINER)
    assert predictor.security_context.read_only_root_filesystem is True
    assert pod.spec.security_context.run_as_non_root is True
    init = next(c for c in pod.spec.init_containers if c.name == "storage-initializer")
    assert init.security_context.allow_privilege_escalation is False


def _diagnose(n: Node, core: k8s.CoreV1Api, namespace: str = NAMESPACE) -> str:
    lines = []
    for pod in core.list_namespaced_pod(namespace).items:
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase} {pod.status.container_statuses}")
        lines.append(f"  init: {pod.status.init_container_statuses}")
        for c in ["storage-initializer", KSERVE_CONTAINER]:
            lines.append(f"  {c} log: {n.container_log(namespace, pod.metadata.name, c)[-1500:]}")
    for event in core.list_namespaced_event(namespace).items[-20:]:
        lines.append(f"event {event.involved_object.name}: {event.reason}: {event.message}")
    return "\n".join(lines)
