"""A real node: the kubelet registers and becomes Ready, pods run under runc with their limits and PodSecurity
`restricted` settings really applied, and traffic flows between pods and the host's loopback services both ways
(tests/cluster_node.py). Pods are pinned to the session's node by its hostname label, so the scheduler still
places them."""

from __future__ import annotations

import http.server
import ipaddress
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from kubernetes import client as k8s

from tests.cluster_node import NETTEST_IMAGE, NODE_IMAGES, NODE_IP, Node, node
from tests.cluster_plane import TOOLS_BIN, ControlPlane, api_error, ensure_namespace
from tsr.core.config import StoreConfig
from tsr.core.processes import free_port, stop_child
from tsr.local.checkout import REPO_ROOT
from tsr.local.prometheus_server import LocalPrometheus, PrometheusConfig, find_prometheus_binary, sample_value

KUBE_VERSION = next(
    line.split()[2]
    for line in (REPO_ROOT / ".ci" / "kube" / "go.mod").read_text().splitlines()
    if line.startswith("require k8s.io/kubernetes ")
)
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod(n: Node, name: str, args: list[str], image: str = NETTEST_IMAGE, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": n.name},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "args": args, **container}],
        },
    }


def _create(plane: ControlPlane, namespace: str, pod: dict[str, Any]) -> None:
    k8s.CoreV1Api(plane.api_client).create_namespaced_pod(namespace, pod)


def _container_pid(n: Node, marker: str) -> int:
    """The host pid of the node's process whose command line holds `marker` (a container's main process)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in n.node_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in cmdline and Path(cmdline[0].decode(errors="replace")).name == "nettest":
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no process with {marker!r} among the node's processes")


def _cgroup_file(pid: int, controller: str, knob: str) -> str:
    """A cgroup v1 knob of the cgroup that process `pid` is in, read on the host."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return (Path("/sys/fs/cgroup") / controller / path.lstrip("/") / knob).read_text().strip()
    raise AssertionError(f"process {pid} is in no {controller} cgroup: {Path(f'/proc/{pid}/cgroup').read_text()}")


def _status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} in /proc/{pid}/status")


# ---- the node -------------------------------------------------------------------------------------------------
def test_node_is_ready_with_its_kubelet(plane: ControlPlane, kube_node: Node) -> None:
    got = k8s.CoreV1Api(plane.api_client).read_node(kube_node.name)
    ready = {c.type: c.status for c in got.status.conditions}
    assert ready["Ready"] == "True", got.status.conditions
    assert got.status.node_info.kubelet_version == KUBE_VERSION
    assert got.status.node_info.container_runtime_version == "containerd://2.4.2"
    assert kube_node.ip == NODE_IP  # the first node of the session
    assert {"type": "InternalIP", "address": NODE_IP} in [a.to_dict() for a in got.status.addresses]
    assert got.metadata.labels["kubernetes.io/hostname"] == kube_node.name
    # the node's own images are there, under the names the kubelet and the tests ask for
    pause = (NODE_IMAGES / "pause.ref").read_text().strip()
    assert {pause, NETTEST_IMAGE} <= set(kube_node.images())


def test_pause_pod_runs(plane: ControlPlane, kube_node: Node, namespace: str) -> None:
    pause = (NODE_IMAGES / "pause.ref").read_text().strip()
    pod = _pod(kube_node, "pause", [], image=pause)
    started = time.monotonic()
    _create(plane, namespace, pod)
    got = kube_node.wait_pod(namespace, "pause")
    print(f"\npause pod Ready in {time.monotonic() - started:.1f} s")
    assert got.status.phase == "Running"
    assert got.spec.node_name == kube_node.name  # placed there by the scheduler
    assert ipaddress.ip_address(got.status.pod_ip) in ipaddress.ip_network(kube_node.pod_cidr)  # the CNI bridge's
    status = got.status.container_statuses[0]
    assert status.ready and status.state.running is not None and status.restart_count == 0


def test_restricted_pod_runs_as_declared(plane: ControlPlane, kube_node: Node, namespace: str) -> None:
    """Under PodSecurity `restricted`: admitted, running, and really non-root, without capabilities, under the
    runtime's seccomp filter; a root pod is refused in the same namespace."""
    core = k8s.CoreV1Api(plane.api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    marker = f"restricted-{uuid.uuid4().hex[:8]}"
    pod = _pod(kube_node, "restricted", ["serve", "8080", marker], securityContext=RESTRICTED_CONTAINER)
    refused = _pod(kube_node, "rooted", ["sleep"])
    assert api_error(lambda: core.create_namespaced_pod(namespace, refused)).status == 403
    _create(plane, namespace, pod)
    kube_node.wait_pod(namespace, "restricted")
    pid = _container_pid(kube_node, marker)
    assert _status_field(pid, "Uid").split() == ["65534"] * 4
    assert _status_field(pid, "Gid").split() == ["65534"] * 4
    assert int(_status_field(pid, "CapEff"), 16) == 0
    assert _status_field(pid, "NoNewPrivs") == "1"
    assert _status_field(pid, "Seccomp") == "2"  # a filter (RuntimeDefault), not 0 (unconfined)
    # the root filesystem is read-only: the container's / is a read-only mount in its mount namespace
    root = next(line for line in Path(f"/proc/{pid}/mounts").read_text().splitlines() if line.split()[1] == "/")
    assert "ro" in root.split()[3].split(","), root


def test_limits_are_applied_to_the_container_cgroup(plane: ControlPlane, kube_node: Node, namespace: str) -> None:
    marker = f"limits-{uuid.uuid4().hex[:8]}"
    resources = {"limits": {"cpu": "250m", "memory": "64Mi"}, "requests": {"cpu": "100m", "memory": "32Mi"}}
    _create(plane, namespace, _pod(kube_node, "limits", ["serve", "8080", marker], resources=resources))
    kube_node.wait_pod(namespace, "limits")
    pid = _container_pid(kube_node, marker)
    assert int(_cgroup_file(pid, "memory", "memory.limit_in_bytes")) == 64 * 1024 * 1024
    period = int(_cgroup_file(pid, "cpu", "cpu.cfs_period_us"))
    assert int(_cgroup_file(pid, "cpu", "cpu.cfs_quota_us")) == period // 4  # 250m
    assert int(_cgroup_file(pid, "cpu", "cpu.shares")) == 102  # 100m of 1024
    # under the node's own cgroup root, in the Burstable QoS class
    cgroup = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in line)
    assert f"/{kube_node.cgroup_root}/kubepods/burstable/pod" in cgroup, cgroup


# ---- traffic ------------------------------------------------------------------------------------------------------
class _TokenHandler(http.server.BaseHTTPRequestHandler):
    token = ""
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        body = f"{self.token}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def host_service() -> Iterator[tuple[int, type[_TokenHandler]]]:
    """An HTTP server on the host's 127.0.0.1 answering a fresh token, recording the paths asked for."""
    handler = type("Handler", (_TokenHandler,), {"token": uuid.uuid4().hex, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_pod_reaches_a_host_loopback_service(
    plane: ControlPlane, kube_node: Node, namespace: str, host_service: tuple[int, type[_TokenHandler]]
) -> None:
    port, handler = host_service
    ip, node_port = kube_node.expose_host_port(port)
    assert ip == kube_node.ip
    _create(plane, namespace, _pod(kube_node, "client", ["get", ip, str(node_port), "/from-pod"]))
    got = _wait_finished(kube_node, plane, namespace, "client")
    log = kube_node.container_log(namespace, "client", "main")
    assert got.status.phase == "Succeeded", f"{got.status}\n{log}"
    assert handler.token in log
    assert handler.seen == ["/from-pod"]


def test_pod_reaches_minio_on_the_host(
    plane: ControlPlane, kube_node: Node, namespace: str, minio: StoreConfig
) -> None:
    """The real MinIO of the other tiers, on the host's loopback, answers a pod at the node IP (as the platform's
    storage-initializer and training steps would reach it)."""
    host, port = minio.endpoint.rsplit(":", 1)
    assert host in ("127.0.0.1", "localhost"), minio.endpoint
    ip, node_port = kube_node.expose_host_port(int(port))
    _create(plane, namespace, _pod(kube_node, "client", ["get", ip, str(node_port), "/minio/health/live"]))
    got = _wait_finished(kube_node, plane, namespace, "client")
    log = kube_node.container_log(namespace, "client", "main")
    assert got.status.phase == "Succeeded", f"{got.status}\n{log}"
    assert "Server: MinIO" in log or "MinIO" in log, log


def test_pod_cannot_reach_an_unexposed_host_port(plane: ControlPlane, kube_node: Node, namespace: str) -> None:
    """The negative of the above: without expose_host_port nothing on the node IP answers (the host's loopback
    is not the node's)."""
    _create(plane, namespace, _pod(kube_node, "client", ["get", kube_node.ip, str(free_port()), "/"]))
    got = _wait_finished(kube_node, plane, namespace, "client")
    assert got.status.phase == "Failed"
    assert "Connection refused" in kube_node.container_log(namespace, "client", "main")


def _wait_finished(n: Node, plane: ControlPlane, namespace: str, name: str, timeout_s: float = 60) -> k8s.V1Pod:
    core = k8s.CoreV1Api(plane.api_client)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase in ("Succeeded", "Failed"):
            return pod
        n.assert_running()
        time.sleep(0.3)
    raise AssertionError(f"pod {namespace}/{name} still {pod.status.phase} after {timeout_s:.0f}s: {pod.status}")


def test_host_reaches_a_pod_port_and_prometheus_scrapes_it(
    plane: ControlPlane, kube_node: Node, namespace: str, tmp_path: Path
) -> None:
    token = f'tsr_node_test_up{{token="{uuid.uuid4().hex[:8]}"}} 1'
    probe = {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}
    _create(plane, namespace, _pod(kube_node, "server", ["serve", "8080", token], readinessProbe=probe))
    started = time.monotonic()
    got = kube_node.wait_pod(namespace, "server")  # Ready: the kubelet's probe reached it too
    print(f"\nserver pod Ready in {time.monotonic() - started:.1f} s")
    port = kube_node.forward_to_pod(got.status.pod_ip, 8080)
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200 and response.text.strip() == token
    binary = find_prometheus_binary()
    if binary is None:
        pytest.fail("no `prometheus` binary: make prometheus")
    config = PrometheusConfig(root=tmp_path / "prom", targets=[f"127.0.0.1:{port}"], job_name="pod")
    with LocalPrometheus(config, binary) as prometheus:
        up = prometheus.wait_for('tsr_node_test_up{job="pod"}', lambda r: len(r) == 1, timeout_s=30)
    assert sample_value(up[0]) == 1
    assert up[0]["metric"]["token"] == re.search(r'token="(\w+)"', token).group(1)  # type: ignore[union-attr]


def test_kubectl_logs_exec_and_port_forward_reach_the_pod(plane: ControlPlane, kube_node: Node, namespace: str) -> None:
    """The API server reaches the kubelet through the control plane's egress proxy (into the node's network
    namespace, by address): kubectl logs, exec and port-forward work; nothing was refused on the way."""
    marker = f"streaming-{uuid.uuid4().hex[:8]}"
    _create(plane, namespace, _pod(kube_node, "server", ["serve", "8080", marker]))
    kube_node.wait_pod(namespace, "server")
    assert "nettest serving on :8080" in plane.kubectl("logs", "-n", namespace, "server").stdout
    exec_ = plane.kubectl("exec", "-n", namespace, "server", "--", "/nettest", "get", "127.0.0.1", "8080", "/x")
    assert marker in exec_.stdout
    local = free_port()
    forward = subprocess.Popen(
        [
            str(TOOLS_BIN / "kubectl"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "port-forward",
            "-n",
            namespace,
            "pod/server",
            f"{local}:8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert forward.stdout is not None
        assert "Forwarding from 127.0.0.1" in forward.stdout.readline().decode()
        assert marker in httpx.get(f"http://127.0.0.1:{local}/", timeout=10).text
    finally:
        stop_child(forward)
    assert plane.egress is not None and plane.egress.refused == []


# ---- stopping -----------------------------------------------------------------------------------------------------
def test_stopping_the_node_leaves_nothing_behind(plane: ControlPlane, kube_node: Node, tmp_path: Path) -> None:
    """A second node, with a running pod, stopped: none of its processes (kubelet, containerd, shims, the pod's
    containers, socat), cgroups or its Node object are left."""
    name = "tsr-node-stop"
    namespace = f"stop-{uuid.uuid4().hex[:8]}"
    ensure_namespace(plane.api_client, namespace)
    marker = f"stop-{uuid.uuid4().hex[:8]}"
    with node(plane, tmp_path / "node", name=name) as second:
        pod = _pod(second, "victim", ["serve", "8080", marker])
        _create(plane, namespace, pod)
        got = second.wait_pod(namespace, "victim")
        second.forward_to_pod(got.status.pod_ip, 8080)
        container = _container_pid(second, marker)
        pids = second.node_pids()
        hosts = [p.popen.pid for p in second.processes.values()]
        cgroups = [Path("/sys/fs/cgroup") / c / second.cgroup_root for c in ("memory", "cpu", "pids")]
        assert container in pids and len(pids) > 5
        assert all(c.is_dir() for c in cgroups)
    alive = [pid for pid in {*pids, *hosts} if Path(f"/proc/{pid}").exists() and _status_field(pid, "State")[0] != "Z"]
    assert not alive, alive
    assert not any(c.exists() for c in cgroups)
    assert second.node_pids() == []
    nodes = [n.metadata.name for n in k8s.CoreV1Api(plane.api_client).list_node().items]
    assert name not in nodes and kube_node.name in nodes
    k8s.CoreV1Api(plane.api_client).delete_namespace(namespace)
