"""Two steps of the compiled pipeline as real pods on the node: ingest, then train for one epoch.

The pipeline is compiled for the locally built component image (`make images-local`), and each step's pod runs
the IR's own command and arguments (`python3 -m kfp.dsl.executor_main --executor_input {{$}} --function_to_execute
...`) in that image, with the MinIO credentials from the Secret the IR's platform spec names as environment, under
PodSecurity `restricted`. KFP's driver and launcher are stand-ins (tests/kfp_pods.py, tests/kfp_launcher.py): they
pass artifacts through MinIO under KFP's layout. The outputs are checked in MinIO: the dataset (data card,
tensors, track split), the model (weights that load and predict), the metrics; the executor outputs' metadata.
This proves `target_image`, the executor shims and the image's `kfp_config.ini` work inside the real image.

The summary (times, what was checked) goes to .state/cluster-e2e/pipeline-steps.json; `make cluster-e2e` prints it
inside the one JSON line of the tier (`steps`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from kubernetes import client as k8s

from pipelines.compile import compile_pipeline
from tests.cluster_node import Node, check_room_for, local_image
from tests.cluster_plane import ControlPlane, ensure_namespace
from tests.e2e_summary import recorded
from tests.kfp_pods import Pipeline, download_dir, install, list_keys, read_object, run_step
from tsr.core.config import StoreConfig
from tsr.core.dataset import CARD_FILE, TRAIN_FILE, VAL_FILE, load_split, read_data_card
from tsr.core.models import CONFIG_FILE, WEIGHTS_FILE, load_model_dir
from tsr.core.preprocessing import to_model_input
from tsr.local.checkout import REPO_ROOT
from tsr.local.minio_server import LocalMinio
from tsr.local.upload import upload_tree

SUMMARY = "pipeline-steps.json"  # in tests/e2e_summary.py SUMMARIES
SHIPPED_IR = REPO_ROOT / "pipelines" / "compiled" / "tsr_training.yaml"
NAMESPACE = "tsr-steps"
BUCKET = "mlpipeline"  # KFP's default artifact bucket
RUN = "run-e2e"
TRACKS = 2  # per class: a small subset, so one epoch takes seconds


def _shipped_executors() -> dict[str, Any]:
    spec = next(yaml.safe_load_all(SHIPPED_IR.read_text()))
    executors: dict[str, Any] = spec["deploymentSpec"]["executors"]
    return executors


def test_ingest_then_train_as_pods(
    plane: ControlPlane, kube_node: Node, gtsrb_small: Path, minio_binary: Path, tmp_path: Path
) -> None:
    with recorded(SUMMARY, {}) as summary:
        _run(plane, kube_node, gtsrb_small, minio_binary, tmp_path, summary)


def _run(
    plane: ControlPlane, n: Node, gtsrb_small: Path, minio_binary: Path, tmp_path: Path, summary: dict[str, Any]
) -> None:
    archive, ref = local_image("tsr-components")
    check_room_for(n, ["tsr-components"])
    started = time.monotonic()
    n.import_image(archive, discard_layers=True, timeout=1200)
    summary["import_s"] = round(time.monotonic() - started, 1)
    assert ref in n.images()

    # the pipeline compiled for the local image: the same executors as the shipped IR but for the image
    pipeline = Pipeline.load(compile_pipeline(tmp_path / "ir.yaml", image=ref))
    shipped = _shipped_executors()
    for task in ("ingest-component", "train-component"):
        label, container, _ = pipeline.executor(task)
        expected = dict(shipped[label]["container"], image=ref)
        assert container == expected, f"{task}: the IR compiled here differs from {SHIPPED_IR.name}"

    minio = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
    store = minio.start()
    try:
        _with_store(plane, n, pipeline, store, gtsrb_small, tmp_path, summary)
    finally:
        minio.stop()


def _platform_secrets(pipeline: Pipeline, task: str, store: StoreConfig, endpoint: str) -> list[k8s.V1Secret]:
    """The Secrets the IR's platform spec names for `task`, filled with the store as pods reach it."""
    values = {
        "TSR_S3_ENDPOINT": endpoint,
        "TSR_S3_ACCESS_KEY": store.access_key,
        "TSR_S3_SECRET_KEY": store.secret_key,
        "TSR_S3_SECURE": "false",
    }
    secrets = []
    for entry in pipeline.executor(task)[2].get("secretAsEnv", []):
        data = {pair["secretKey"]: values[pair["envVar"]] for pair in entry["keyToEnv"]}
        secrets.append(k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=entry["secretName"]), string_data=data))
    assert secrets, f"{task}: the IR gives the step no Secret"
    return secrets


def _with_store(
    plane: ControlPlane,
    n: Node,
    pipeline: Pipeline,
    store: StoreConfig,
    gtsrb_small: Path,
    tmp_path: Path,
    summary: dict[str, Any],
) -> None:
    core = k8s.CoreV1Api(plane.api_client)
    ensure_namespace(
        plane.api_client,
        NAMESPACE,
        {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"},
    )
    node_ip, node_port = n.expose_host_port(int(store.endpoint.rsplit(":", 1)[1]))
    endpoint = f"{node_ip}:{node_port}"
    install(core, NAMESPACE, endpoint, store, BUCKET)
    for secret in _platform_secrets(pipeline, "ingest-component", store, endpoint):
        core.create_namespaced_secret(NAMESPACE, secret)

    # the raw data in MinIO, in GTSRB layout (a subset of the training archive's tracks)
    training = gtsrb_small / "gtsrb" / "GTSRB" / "Training"
    upload_tree(training, "s3://datasets/gtsrb-small/gtsrb/GTSRB/Training", store)

    def run(task: str, values: dict[str, Any], inputs: dict[str, dict[str, Any]]) -> Any:
        result = run_step(core, NAMESPACE, pipeline, task, values, inputs, store, BUCKET, RUN, n.container_log)
        summary[task.removesuffix("-component")] = {"phase": result.phase, "seconds": round(result.seconds, 1)}
        assert result.phase == "Succeeded", f"{task}: {result.phase}\n{result.log[-3000:]}"
        assert "launcher: running python3 -m kfp.dsl.executor_main" in result.log
        return result

    # -- ingest: s3:// source -> Dataset + Metrics artifacts
    ingest = run(
        "ingest-component",
        {"source": "s3://datasets/gtsrb-small", "max_groups_per_class": TRACKS, "val_fraction": 0.5, "seed": 3},
        {},
    )
    dataset_uri = ingest.outputs["dataset"]["uri"]
    assert {CARD_FILE, TRAIN_FILE, VAL_FILE} <= set(list_keys(store, dataset_uri)), list_keys(store, dataset_uri)
    dataset = download_dir(store, dataset_uri, tmp_path / "dataset")
    card = read_data_card(dataset)
    train_split, val_split = load_split(dataset / TRAIN_FILE), load_split(dataset / VAL_FILE)
    assert card["num_classes"] == 43 and card["layout"] == "gtsrb"
    # the step's own numbers, reported through the executor output's artifact metadata, match what it wrote
    metadata = ingest.outputs["dataset"]["metadata"]
    assert metadata["fingerprint"] == card["fingerprint"]["value"]
    assert (metadata["train"], metadata["val"]) == (len(train_split.labels), len(val_split.labels)), metadata
    assert not set(train_split.groups.tolist()) & set(val_split.groups.tolist()), "tracks split between train and val"
    stats = json.loads(read_object(store, ingest.outputs["stats"]["uri"]))
    assert stats["train"] == len(train_split.labels)
    summary["ingest"].update(train_images=len(train_split.labels), val_images=len(val_split.labels))

    # -- train: the Dataset artifact in (downloaded by the launcher), Model + Metrics out
    train = run(
        "train-component", {"epochs": 1, "batch_size": 64, "threads": 2}, {"dataset": ingest.outputs["dataset"]}
    )
    model_uri = train.outputs["model"]["uri"]
    keys = list_keys(store, model_uri)
    assert {CONFIG_FILE, WEIGHTS_FILE} <= set(keys), keys
    assert train.outputs["model"]["metadata"]["epochs"] == 1
    metrics = json.loads(read_object(store, train.outputs["metrics"]["uri"]))
    assert 0.0 <= metrics["final_val_accuracy"] <= 1.0 and "epoch01_val_accuracy" in metrics, metrics
    # the model the pod trained loads here and gives the validation accuracy the pod reported
    model, config = load_model_dir(download_dir(store, model_uri, tmp_path / "model"))
    with torch.no_grad():
        predicted = model(to_model_input(val_split.images, config.preprocess)).argmax(dim=1)
    accuracy = float((predicted == val_split.labels).float().mean())
    assert abs(accuracy - metrics["final_val_accuracy"]) < 1e-3, (accuracy, metrics["final_val_accuracy"])
    summary["train"].update(val_accuracy=round(accuracy, 4), model_files=len(keys))
    for result in (ingest, train):
        pod = core.read_namespaced_pod(result.pod, NAMESPACE)
        assert pod.spec.containers[0].security_context.read_only_root_filesystem is True
        core.delete_namespaced_pod(result.pod, NAMESPACE, grace_period_seconds=0)
    summary["ok"] = True
