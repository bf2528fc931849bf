"""arm64 pods on a real node, under emulation: the platform's arm64 placement picks the arm64-labelled node, and
what runs there is arm64 code.

Two nodes register with one control plane: the amd64 node of tests/node/conftest.py and an arm64 node
(`arm64_node`). The arm64 node's kubelet is an arm64 build (so it registers as `kubernetes.io/arch=arm64`, which the
kubelet sets from its own architecture and nothing else can change), containerd imports arm64 images for it
(`--platform linux/arm64`; the pause image too: pause.c cross-compiled), and the kubelet and every container run
through qemu-user, registered in the node's own binfmt_misc. containerd, its shim and runc are this machine's amd64
binaries: they set the containers up, what runs in them is arm64 code.

- `test_arm64_placement_runs_arm64_code`: pods placed by `tsr.kube.placement.arch_placement_affinity` land on the
  node of their architecture; the arm64 one's process is qemu-aarch64 running the arm64 binary, and it answers.
- `test_arm64_predictor_serves_on_the_arm64_node`: `tsr deploy --arch arm64` (deploy_command, Standard mode, the
  placement `serving_arch=arm64` gives the pipeline's deploy step) -> the real KServe controller -> the arm64
  storage-initializer downloads a signed version from MinIO -> the arm64 predictor image (torch for aarch64) runs on
  the arm64 node under PodSecurity `restricted` -> V1 and V2 requests with real GTSRB images get the amd64 model's
  classes and probabilities.

A summary (node, placement, times, answers, image sizes) goes to .state/cluster-e2e/arm64-node.json, pass or fail;
`make arm64-node` prints it.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from kubernetes import client as k8s

from components.ingest.ingest import IngestConfig, ingest
from tests.cluster_node import (
    HOST_ARCH,
    NETTEST_IMAGE,
    NODE_IMAGES_BY_ARCH,
    Node,
    image_dir,
)
from tests.cluster_plane import ControlPlane
from tests.e2e_summary import recorded
from tests.node.test_predictor_e2e import (
    MODEL,
    _ask,
    _check_restricted,
    _diagnose,
    _http_port,
    _import_serving_images,
    _prepare_namespace,
    _probabilities,
    _serves,
    _serving_pod,
    _trained,
    _use_storage_initializer,
    _wait,
)
from tsr.core.config import StoreConfig
from tsr.core.preprocessing import load_image_file
from tsr.core.registry import Registry
from tsr.core.signing import ensure_local_key_pair
from tsr.kube.labels import ARCH_LABEL
from tsr.kube.placement import arch_placement_affinity
from tsr.kube.rollout import deploy_command
from tsr.local.minio_server import LocalMinio

SUMMARY = "arm64-node.json"
NAMESPACE = "tsr-e2e-arm64"
# Emulation: the storage-initializer's and the predictor's Python start ~10x slower than natively.
READY_TIMEOUT_S = 1200.0
SAMPLES = 6
EM_AARCH64 = 183  # ELF e_machine


def _pod(name: str, arch: str, args: list[str]) -> dict[str, Any]:
    """A nettest pod placed only by the platform's architecture rule (no node name, no hostname selector)."""
    affinity = arch_placement_affinity([arch], "required")
    assert affinity is not None
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "affinity": k8s.ApiClient().sanitize_for_serialization(affinity),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": NETTEST_IMAGE, "imagePullPolicy": "Never", "args": args}],
        },
    }


def _emulated(n: Node, marker: str, timeout_s: float = 60) -> tuple[int, str, list[str]]:
    """The node's process whose command line holds `marker`: its pid, the executable the kernel runs (readlink of
    /proc/PID/exe, seen from the host) and its argv. Under binfmt_misc the executable is the interpreter."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in n.node_pids():
            try:
                argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
                exe = str(Path(f"/proc/{pid}/exe").readlink())
            except OSError:
                continue
            if any(marker in a for a in argv) and Path(exe).name != "nsenter":  # not the wrapper that started it
                return pid, exe, argv
        time.sleep(0.5)
    raise AssertionError(f"no process with {marker!r} among node {n.name}'s processes")


def _elf_machine(path: Path) -> int:
    """e_machine of an ELF file (183: aarch64, 62: x86-64)."""
    with path.open("rb") as fh:
        header = fh.read(20)
    assert header[:4] == b"\x7fELF", f"{path} is no ELF file"
    return int.from_bytes(header[18:20], "little")


def _in_container(pid: int, path: str) -> Path:
    """`path` as process `pid` sees it, read from the host through /proc/PID/root; symlinks (a venv's python ->
    /usr/bin/python3.11) followed inside that root, not the host's."""
    root = Path(f"/proc/{pid}/root")
    for _ in range(40):
        full = root / path.lstrip("/")
        if not full.is_symlink():
            return full
        target = os.readlink(full)
        path = target if target.startswith("/") else str(Path(path).parent / target)
    raise AssertionError(f"too many symlinks from {path} in process {pid}'s root")


def test_arm64_placement_runs_arm64_code(
    plane: ControlPlane, kube_node: Node, arm64_node: Node, namespace: str
) -> None:
    core = k8s.CoreV1Api(plane.api_client)
    labels = {n.name: core.read_node(n.name).metadata.labels[ARCH_LABEL] for n in (kube_node, arm64_node)}
    assert labels == {kube_node.name: "amd64", arm64_node.name: "arm64"}
    # the kubelet reports its own architecture: an arm64 build, itself under qemu
    assert core.read_node(arm64_node.name).status.node_info.architecture == "arm64"
    assert core.read_node(kube_node.name).status.node_info.architecture == HOST_ARCH
    _, kubelet_exe, kubelet_argv = _emulated(arm64_node, "--hostname-override=tsr-node-arm64")
    assert Path(kubelet_exe).name == "qemu-aarch64", (kubelet_exe, kubelet_argv)

    core.create_namespaced_pod(namespace, _pod("on-arm64", "arm64", ["serve", "8080", "arm64 nettest"]))
    core.create_namespaced_pod(namespace, _pod("on-amd64", "amd64", ["serve", "8080", "amd64 nettest"]))
    arm = arm64_node.wait_pod(namespace, "on-arm64", timeout_s=120)
    amd = kube_node.wait_pod(namespace, "on-amd64", timeout_s=120)
    assert arm.spec.node_name == arm64_node.name, arm.spec.node_name
    assert amd.spec.node_name == kube_node.name, amd.spec.node_name

    # the arm64 pod's process: qemu-aarch64 running the image's aarch64 binary; the amd64 one's runs natively
    _, exe, argv = _emulated(arm64_node, "arm64 nettest")
    assert Path(exe).name == "qemu-aarch64", (exe, argv)
    _, native, _ = _emulated(kube_node, "amd64 nettest")
    assert Path(native).name == "nettest", native
    assert _elf_machine(NODE_IMAGES_BY_ARCH["arm64"] / "bin" / "nettest") == EM_AARCH64
    port = arm64_node.forward_to_pod(arm.status.pod_ip, 8080)
    answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
    assert (answer.status_code, answer.text.strip()) == (200, "arm64 nettest")


def test_arm64_predictor_serves_on_the_arm64_node(
    plane: ControlPlane,
    kube_node: Node,
    arm64_node: Node,
    gtsrb_small: Path,
    minio_binary: Path,
    tmp_path: Path,
) -> None:
    sizes = json.loads((image_dir("arm64") / "sizes.json").read_text())
    summary: dict[str, Any] = {
        "node": arm64_node.name,
        "node_ready_s": round(arm64_node.startup_s["total"], 1),
        "images": {
            name: {"arch": i["arch"], "compressed_mb": i["compressed_mb"], "unpacked_mb": i["unpacked_mb"]}
            for name, i in sizes["images"].items()
        },
    }
    with recorded(SUMMARY, summary):
        _run(plane, kube_node, arm64_node, gtsrb_small, minio_binary, tmp_path, summary)


def _run(
    plane: ControlPlane,
    amd: Node,
    arm: Node,
    gtsrb_small: Path,
    minio_binary: Path,
    tmp_path: Path,
    summary: dict[str, Any],
) -> None:
    core = k8s.CoreV1Api(plane.api_client)
    custom = k8s.CustomObjectsApi(plane.api_client)
    predictor_ref, init_ref = _import_serving_images(arm, summary)

    minio = LocalMinio(root=tmp_path / "minio", binary=minio_binary)
    store: StoreConfig = minio.start()
    try:
        _with_store(plane, amd, arm, core, custom, store, gtsrb_small, tmp_path, predictor_ref, init_ref, summary)
    finally:
        minio.stop()


def _with_store(
    plane: ControlPlane,
    amd: Node,
    arm: Node,
    core: k8s.CoreV1Api,
    custom: k8s.CustomObjectsApi,
    store: StoreConfig,
    gtsrb_small: Path,
    tmp_path: Path,
    predictor_ref: str,
    init_ref: str,
    summary: dict[str, Any],
) -> None:
    # ---- a model trained here (amd64), signed and published to MinIO ------------------------------------------
    dataset = tmp_path / "dataset"
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=3), dataset)
    model_dir = _trained(dataset, tmp_path / "model", seed=0)
    registry = Registry.from_config(store)
    private_key, public_key = ensure_local_key_pair({"TSR_STATE_DIR": str(tmp_path / "keys")})
    version = registry.publish(MODEL, model_dir, {"e2e": "arm64"}, key=private_key)
    uri = registry.uri(MODEL, version)

    # held-out GTSRB images the model classifies correctly here, with its probabilities (amd64)
    test_dir = gtsrb_small / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    rows = [r.split(";") for r in (gtsrb_small / "gtsrb" / "GT-final_test.csv").read_text().splitlines()[1:]]
    paths, labels = [test_dir / r[0] for r in rows], [int(r[7]) for r in rows]
    probs = _probabilities(model_dir, torch.stack([load_image_file(p, 32) for p in paths]))
    samples = [
        {
            "file": path.name,
            "class_id": label,
            "b64": base64.b64encode(path.read_bytes()).decode(),
            "p0": float(probs[i, label]),
        }
        for i, (path, label) in enumerate(zip(paths, labels, strict=True))
        if int(probs[i].argmax()) == label
    ][:SAMPLES]
    assert len(samples) == SAMPLES, f"only {len(samples)} images the model classifies correctly"

    _use_storage_initializer(core, custom, init_ref)
    _prepare_namespace(plane, arm, core, store, public_key.read_text(), NAMESPACE)

    # ---- tsr deploy with the arm64 placement ---------------------------------------------------------------
    started = time.monotonic()
    result = deploy_command(
        version,
        model_name=MODEL,
        namespace=NAMESPACE,
        image=predictor_ref,
        arch=["arm64"],
        arch_placement="required",
        registry=registry,
        kube_config=str(plane.kubeconfig),
        timeout_s=READY_TIMEOUT_S,
        poll_s=2.0,
    )
    summary["isvc_ready_s"] = round(time.monotonic() - started, 1)
    assert result.ok, f"{result.message}\n{_diagnose(arm, core, NAMESPACE)}"
    pod = _wait("a Ready predictor pod", lambda: _serving_pod(core, uri, NAMESPACE))
    summary["placed_on"] = pod.spec.node_name
    placed = core.read_node(pod.spec.node_name)
    summary["node_arch_label"] = placed.metadata.labels[ARCH_LABEL]
    summary["kubelet_architecture"] = placed.status.node_info.architecture
    summary["other_node"] = {"name": amd.name, "arch_label": core.read_node(amd.name).metadata.labels[ARCH_LABEL]}
    assert pod.spec.node_name == arm.name, f"predictor on {pod.spec.node_name}, not on {arm.name}"
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert [(e.key, e.values) for t in terms for e in t.match_expressions] == [(ARCH_LABEL, ["arm64"])]
    _check_restricted(core, pod, NAMESPACE)

    # ---- the predictor's process is the arm64 Python under qemu -------------------------------------------
    # (binfmt_misc without flag P: argv[0] is the interpreter, argv[1] the arm64 program it runs)
    pid, exe, argv = _emulated(arm, "--model-name")
    program = _in_container(pid, argv[1])
    summary["predictor_process"] = {"exe": Path(exe).name, "program": argv[1], "elf_machine": _elf_machine(program)}
    assert Path(exe).name == "qemu-aarch64", (exe, argv)
    assert _elf_machine(program) == EM_AARCH64, (program, argv)
    port = arm.forward_to_pod(pod.status.pod_ip, _http_port(pod))
    started = time.monotonic()
    answer = _ask(port, samples)
    summary["requests_s"] = round(time.monotonic() - started, 1)
    v1_ok, v2_ok = _serves(answer, samples, "p0")
    summary.update(v1_correct=f"{v1_ok}/{SAMPLES}", v2_correct=f"{v2_ok}/{SAMPLES}")
    summary["max_probability_diff"] = max(
        abs(p["probability"] - s["p0"]) for p, s in zip(answer["v1"], samples, strict=True)
    )
    assert v1_ok == v2_ok == SAMPLES, answer
