"""A real node (kubelet + containerd + runc + CNI) for the control plane of tests/cluster_plane.py, for tests.

The node lives in its own user, mount, pid, net and UTS namespaces (`unshare`), with uids/gids 0-65535
mapped to themselves, so that the kubelet's host-wide settings (sysctls, OOM scores) stay inside and its
pods' networks never touch the host's:

- inside: tmpfs over /var/lib, /var/log and /run (the kubelet hard-codes /var/lib/kubelet and /var/log/pods),
  a bridge `tsr0` holding the node IP (10.213.k.2: the kubelet refuses a loopback one), the CNI `bridge` +
  `host-local` plugins (Debian's, /usr/lib/cni) giving pods 10.214.k.0/24, containerd with runc (cgroup v1 here;
  crun refuses hybrid mode) and the kubelet (`KubeletInUserNamespace`, `failCgroupV1: false`, cgroupfs);
- the API server on the host's 127.0.0.1 is reached through a unix socket: socat on the host forwards it,
  socat in the node's network namespace listens on 127.0.0.1:6443 (the kubelet's server) and on
  10.0.0.1:443 (the `kubernetes` Service's ClusterIP, so in-cluster clients in pods reach it without kube-proxy);
- the node's pods live in their own cgroup root (/sys/fs/cgroup/<controller>/<name>), made here and removed
  on exit.

The yielded `Node` imports image archives into the node's containerd (`ctr -n k8s.io images import`), exposes
a host loopback port to pods (`expose_host_port`: node IP:port -> unix socket -> host 127.0.0.1:port) and a
pod's port to the host (`forward_to_pod`: host 127.0.0.1:port -> unix socket -> pod IP:port), both with socat.

    with control_plane(tmp_path / "cp") as cp, node(cp, tmp_path / "node") as n:
        n.import_image(NODE_IMAGES / "nettest.tar")

The API server reaches the kubelet and pods (`kubectl logs/exec/port-forward`, the proxy subresources) through
the control plane's egress proxy (tests/cluster_plane.py `EgressProxy`), which the node gives a route into its
network namespace (`NetnsDialer`). Not there: kube-proxy (ClusterIP Services do not route; reach pods by pod
IP), cluster DNS, hostPort/NodePort. On exit the namespaces' init process is killed, which
kills every process in the pid namespace; the exit then checks that no process of the node's namespaces is left.
A missing tool fails the test (`make node-tools`); it is not a skip.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from tests.cluster_plane import TOOLS_BIN, ControlPlane, Process, die_with_parent, write_kubeconfig
from tsr.core.processes import free_port, stop_child
from tsr.local.checkout import REPO_ROOT

NODE_DIR = REPO_ROOT / ".tools" / "node"
NODE_IMAGES = NODE_DIR / "images"  # built by make node-tools (.ci/node/images.sh): pause.tar, nettest.tar, pause.ref
# The node's own images per architecture: an arm64 node's are cross-compiled (make arm64-node).
NODE_IMAGES_BY_ARCH = {"amd64": NODE_IMAGES, "arm64": NODE_DIR / "images-arm64"}
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]  # this machine's: containerd's, runc's
# The kubelet labels its Node `kubernetes.io/arch` with its own GOARCH and puts the label back on every status
# update (--node-labels cannot change it): an arm64 node's kubelet is built for arm64 (make arm64-node) and runs
# under qemu-user like its containers.
FOREIGN_KUBELET = {"arm64": TOOLS_BIN / "linux-arm64" / "kubelet"}
# Foreign ELF binaries run through qemu-user: the binfmt_misc registration line of .ci/images/foreign-arch.sh
# (`--binfmt ARCH`), registered here in the node's user namespace (kernel >= 6.7) so that every container of the
# node inherits it. Flag F: the kernel opens the interpreter at registration, so containers need no qemu inside.
FOREIGN_ARCH_SH = REPO_ROOT / ".ci" / "images" / "foreign-arch.sh"
NETTEST_IMAGE = "tsr.local/nettest:1"  # .ci/node/nettest.c: serve / get / cat / sleep
NODE_BINARIES = ("kubelet", "containerd", "ctr", "containerd-shim-runc-v2")
SYSTEM_TOOLS = ("runc", "socat", "unshare", "nsenter", "ip", "mount")
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
# Node k of a test process gets 10.213.k.2/24 and its pods 10.214.k.0/24 (the egress proxy routes by address).
NODE_IP = "10.213.0.2"  # the first node's
NODE_PREFIX = 24
_node_numbers = itertools.count()
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of cluster_plane.SERVICE_CIDR
API_PORT_IN_NODE = 6443
# Image archives from `make images-local` (docker-archives + sizes.json), or built elsewhere: TSR_IMAGES_DIR.
IMAGES_DIR = Path(os.environ.get("TSR_IMAGES_DIR", REPO_ROOT / ".state" / "images"))
ID_MAP = "0 0 65536\n"  # uids/gids 0-65535 mapped to themselves
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0

# PID 1 of the node's namespaces: wait for the id maps, mount the tmpfs's, make the bridge, then reap orphans
# (containerd's shims are reparented to it) until it is killed. SIGTERM is ignored by a pid namespace's init
# without a handler, so the fixture stops it with SIGKILL (and the kernel then kills the whole namespace).
INIT = r"""
import os, subprocess, sys, time
while not open("/proc/self/uid_map").read().strip():
    time.sleep(0.01)
for d in ("/var/lib", "/var/log", "/run"):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", d], check=True)
ip, prefix, service_ip, ready, binfmt = sys.argv[1:6]
if binfmt:  # a foreign-arch node: its interpreter, registered in this user namespace's own binfmt_misc
    subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], check=True)
    open("/proc/sys/fs/binfmt_misc/register", "w").write(binfmt)
for cmd in (
    ["ip", "link", "set", "lo", "up"],
    ["ip", "addr", "add", service_ip + "/32", "dev", "lo"],
    ["ip", "link", "add", "tsr0", "type", "bridge"],
    ["ip", "addr", "add", ip + "/" + prefix, "dev", "tsr0"],
    ["ip", "link", "set", "tsr0", "up"],
):
    subprocess.run(cmd, check=True)
open(ready, "w").write(str(os.getpid()))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""


def find_node_tools(arch: str = HOST_ARCH) -> dict[str, Path]:
    """The node's binaries and images for a node of `arch`; a missing one fails the test, naming what to run."""
    found = {name: TOOLS_BIN / name for name in NODE_BINARIES}
    missing = [name for name, path in found.items() if not path.is_file()]
    for name in SYSTEM_TOOLS:
        path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if path is None:
            missing.append(name)
        else:
            found[name] = Path(path)
    missing += [f"{CNI_BIN}/{p}" for p in ("bridge", "host-local", "loopback") if not (CNI_BIN / p).is_file()]
    images = NODE_IMAGES_BY_ARCH[arch]
    missing += [str(p) for p in (images / "pause.ref", images / "pause.tar") if not p.is_file()]
    if arch != HOST_ARCH:
        found["kubelet"] = FOREIGN_KUBELET[arch]
        if not found["kubelet"].is_file():
            missing.append(str(found["kubelet"]))
    if missing:
        target = "make node-tools" if arch == HOST_ARCH else "make arm64-node"
        pytest.fail(f"node tools missing: {', '.join(missing)}: run `{target}` (needs Go, gcc, apt)")
    return found


def _binfmt_registration(arch: str) -> str:
    """foreign-arch.sh's binfmt_misc registration line for `arch`; a missing interpreter fails the test in its line."""
    result = subprocess.run([str(FOREIGN_ARCH_SH), "--binfmt", arch], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(result.stderr.strip())
    return result.stdout


def _ns_inode(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of process `pid`."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            return False
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


@dataclass
class Node:
    """A running node: its name and IP, its namespaces' init process, its processes and timings."""

    name: str
    ip: str
    root: Path
    plane: ControlPlane
    init_pid: int
    namespaces: dict[str, str]  # kind -> "user:[4026...]" of the node's namespaces
    tools: dict[str, Path]
    sock_dir: Path
    cgroup_root: str
    pod_cidr: str
    arch: str = HOST_ARCH  # what its containers run: an arm64 node runs them through qemu-user
    processes: dict[str, Process] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)

    # ---- commands inside -----------------------------------------------------------------------------------
    def nsenter(self, *argv: str, net_only: bool = False) -> list[str]:
        """`argv` run in the node's namespaces (only its network namespace with `net_only`)."""
        spaces = ["--net"] if net_only else ["--user", "--mount", "--net", "--pid", "--uts"]
        return [str(self.tools["nsenter"]), f"--target={self.init_pid}", *spaces, "--", *argv]

    def run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node (its namespaces, the node's PATH); fail on a non-zero exit with `check`."""
        result = subprocess.run(
            self.nsenter(*argv), capture_output=True, text=True, timeout=timeout, env=_node_env(), check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"in node: {' '.join(argv)} failed ({result.returncode}): {result.stderr}")
        return result

    def ctr(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """containerd's ctr in the node, in the namespace the kubelet uses (k8s.io)."""
        address = "/run/containerd/containerd.sock"
        return self.run(
            str(self.tools["ctr"]), "--address", address, "-n", "k8s.io", *args, timeout=timeout, check=check
        )

    def import_image(self, archive: Path, discard_layers: bool = False, timeout: float = 300) -> list[str]:
        """Import a docker- or OCI-archive into the node's containerd (the namespace the kubelet uses); the
        image references it brought. `discard_layers`: once unpacked, the layer blobs leave the content store
        (a big image then takes its unpacked size once on disk, not twice)."""
        before = set(self.images())
        extra = ["--discard-unpacked-layers"] if discard_layers else []
        if self.arch != HOST_ARCH:  # ctr unpacks the build machine's platform unless told
            extra += ["--platform", f"linux/{self.arch}"]
        self.ctr("images", "import", "--local", *extra, str(archive.resolve()), timeout=timeout)
        return sorted(set(self.images()) - before) or self.images()

    def images(self) -> list[str]:
        return [line for line in self.ctr("images", "ls", "-q").stdout.split() if not line.startswith("sha256:")]

    # ---- traffic between host and pods ---------------------------------------------------------------------
    def _socat(self, name: str, argv: list[str]) -> Process:
        return _start(self, name, argv)

    def expose_host_port(self, port: int, node_port: int | None = None) -> tuple[str, int]:
        """Make the host's 127.0.0.1:`port` reachable from pods at (node IP, `node_port` or `port`)."""
        node_port = node_port or port
        sock = self.sock_dir / f"host-{port}-{len(self.processes)}.sock"
        self._socat(
            f"socat-host-{port}",
            [str(self.tools["socat"]), f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:127.0.0.1:{port}"],
        )
        inside = self._socat(
            f"socat-node-{node_port}",
            self.nsenter(
                str(self.tools["socat"]),
                f"TCP-LISTEN:{node_port},bind={self.ip},fork,reuseaddr",
                f"UNIX-CONNECT:{sock}",
                net_only=True,
            ),
        )
        self._wait(
            f"{self.ip}:{node_port} in the node", lambda: sock.exists() and _listening(inside.popen.pid, node_port)
        )
        return self.ip, node_port

    def forward_to_pod(self, pod_ip: str, port: int) -> int:
        """A port on the host's 127.0.0.1 that forwards to `pod_ip`:`port` (inside the node); its number."""
        host_port = free_port()
        sock = self.sock_dir / f"pod-{host_port}.sock"
        self._socat(
            f"socat-pod-{pod_ip}-{port}",
            self.nsenter(
                str(self.tools["socat"]), f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:{pod_ip}:{port}", net_only=True
            ),
        )
        outside = self._socat(
            f"socat-host-{host_port}",
            [str(self.tools["socat"]), f"TCP-LISTEN:{host_port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
        )
        self._wait(
            f"127.0.0.1:{host_port} -> {pod_ip}:{port}",
            lambda: sock.exists() and _listening(outside.popen.pid, host_port),
        )
        return host_port

    # ---- pods ----------------------------------------------------------------------------------------------
    def wait_pod(self, namespace: str, name: str, ready: bool = True, timeout_s: float = 120) -> k8s.V1Pod:
        """Wait until the pod is Ready (or, without `ready`, Running); the pod. A pod that failed fails the test."""
        core = k8s.CoreV1Api(self.plane.api_client)
        holder: dict[str, k8s.V1Pod] = {}

        def check() -> bool:
            pod = holder["pod"] = core.read_namespaced_pod(name, namespace)
            if pod.status.phase in ("Failed", "Succeeded"):
                raise AssertionError(f"pod {namespace}/{name} ended: {pod.status}")
            if not ready:
                return bool(pod.status.phase == "Running")
            return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

        self._wait(f"pod {namespace}/{name}", check, timeout_s, lambda: str(holder.get("pod") and holder["pod"].status))
        return holder["pod"]

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's log as the kubelet keeps it (/var/log/pods in the node), read without the API server."""
        base = Path(f"/proc/{self.init_pid}/root/var/log/pods")
        found = sorted(base.glob(f"{namespace}_{pod}_*/{container}/*.log"))
        lines = [line.split(" ", 3)[-1] for f in found for line in f.read_text(errors="replace").splitlines()]
        return "\n".join(lines)

    def node_pids(self) -> list[int]:
        """Host pids of the processes in the node's user, pid or network namespace (containers included)."""
        return _pids_in(self.namespaces)

    # ---- state ---------------------------------------------------------------------------------------------
    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}):\n{p.log_tail()}" for p in self.processes.values())

    def assert_running(self) -> None:
        dead = {name: p.popen.poll() for name, p in self.processes.items() if p.popen.poll() is not None}
        assert not dead, f"node processes exited: {dead}\n{self.logs()}"

    def _wait(
        self,
        what: str,
        check: Callable[[], Any],
        timeout_s: float = START_TIMEOUT_S,
        detail: Callable[[], str] | None = None,
    ) -> float:
        started = time.monotonic()
        error: Exception | None = None
        while True:
            try:
                if check():
                    return time.monotonic() - started
            except AssertionError:
                raise
            except Exception as exc:  # not there yet (connection refused, 404, ...)
                error = exc
            self.assert_running()
            if time.monotonic() - started > timeout_s:
                extra = detail() if detail else repr(error)
                raise AssertionError(f"{what} not ready within {timeout_s:.0f}s: {extra}\n{self.logs()}")
            time.sleep(0.2)


def _node_env() -> dict[str, str]:
    return {"PATH": f"{TOOLS_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


_LIBC = ctypes.CDLL(None, use_errno=True)


def _popen(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_node_env(),
            preexec_fn=die_with_parent,
        )


def _start(node: Node, name: str, argv: list[str]) -> Process:
    """A process of the node (stopped by the fixture's exit, after the namespaces are gone)."""
    if name in node.processes:  # the same forward asked for twice: both run, both are stopped
        name = f"{name}-{len(node.processes)}"
    log = node.root / f"{name}.log"
    process = Process(name, _popen(argv, log), log)
    node.processes[name] = process
    return process


def _pids_in(namespaces: dict[str, str]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for kind, inode in namespaces.items():
            try:
                if os.readlink(entry / "ns" / kind) == inode:
                    found.append(int(entry.name))
                    break
            except OSError:
                break  # gone meanwhile
    return found


class NetnsDialer:
    """TCP connections opened from inside a network namespace: a thread of this process joins it (setns affects
    only the calling thread) and makes the sockets there; connecting and the traffic then work from any thread.
    The control plane's egress proxy uses it to reach the kubelet and pods (kubectl logs/exec/port-forward)."""

    def __init__(self, pid: int) -> None:
        self._requests: queue.Queue[tuple[list[Any], threading.Event] | None] = queue.Queue()
        self._ready = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(f"/proc/{pid}/ns/net",), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if _LIBC.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                self._error = OSError(ctypes.get_errno(), f"setns {path}")
        finally:
            os.close(fd)
            self._ready.set()
        while self._error is None and (request := self._requests.get()) is not None:
            box, done = request
            try:
                box.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            except OSError as exc:
                box.append(exc)
            done.set()

    def dial(self, host: str, port: int) -> socket.socket:
        box: list[Any] = []
        done = threading.Event()
        self._requests.put((box, done))
        if not done.wait(10):
            raise OSError(f"no socket from the node's network namespace for {host}:{port}")
        if isinstance(box[0], OSError):
            raise box[0]
        sock: socket.socket = box[0]
        sock.settimeout(10)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(5)


# ---- configuration files -------------------------------------------------------------------------------------
def containerd_config(root: Path, pause_ref: str, snapshot_root: Path | None = None) -> str:
    """containerd's config; everything on the node's tmpfs, but the unpacked layers (the overlayfs snapshots)
    in `snapshot_root` when given: on disk, images of gigabytes fit, and the content store's copy of their
    layers stays in RAM only until it is unpacked (import with `discard_layers`), never on the disk too."""
    cni = root / "cni"
    overlay = (
        f"\n[plugins.'io.containerd.snapshotter.v1.overlayfs']\n  root_path = \"{snapshot_root}\"\n"
        if snapshot_root is not None
        else ""
    )
    return f"""version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.runtime']
  # without it runc fails in the user namespace: "can't get final child's PID from pipe: EOF"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "{shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin")}"
  SystemdCgroup = false

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{CNI_BIN}"]
  conf_dir = "{cni}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{pause_ref}"
{overlay}"""


def cni_config(pod_cidr: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "tsr-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]},
            }
        ],
    }


def kubelet_config(ca_file: Path, cgroup_root: str, node_ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # these machines have cgroup v1 (hybrid); 1.35+ refuses it unless told
        "featureGates": {"KubeletInUserNamespace": True},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_root}",  # the node's own, so that two nodes never share kubepods
        "failSwapOn": False,
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "address": node_ip,
        "healthzBindAddress": "127.0.0.1",
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # loose eviction: a test machine's disk and memory are not the node's to guard
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "registerNode": True,
    }


# ---- cgroups ---------------------------------------------------------------------------------------------------
CGROUP_FS = Path("/sys/fs/cgroup")


def _cgroup_mounts() -> list[Path]:
    """The cgroup hierarchies mounted under /sys/fs/cgroup (v1 controllers, name=systemd, the v2 `unified`)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0]
        point = Path(left.split()[4])
        if (fstype in ("cgroup", "cgroup2") and point.parent == CGROUP_FS) or (
            point == CGROUP_FS and fstype == "cgroup2"
        ):
            mounts.append(point)
    return mounts


def make_cgroup_root(name: str) -> list[Path]:
    """/sys/fs/cgroup/<hierarchy>/<name> in every hierarchy (the kubelet refuses a cgroupRoot that does not
    exist); cpuset's needs its parent's cpus and mems before a task can join."""
    made = []
    for mount in _cgroup_mounts():
        path = mount / name
        path.mkdir(exist_ok=True)
        made.append(path)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((mount / knob).read_text())
    return made


STALE_ROOT = re.compile(r"^tsr-.+-p(\d+)-[0-9a-f]{8}$")


def remove_stale_cgroup_roots() -> None:
    """Remove the cgroup roots of nodes whose test process is gone (killed with SIGKILL: its node's processes
    died with it, by PR_SET_PDEATHSIG, but nobody removed the directories). Empty trees only."""
    for mount in _cgroup_mounts():
        for path in mount.glob("tsr-*"):
            match = STALE_ROOT.match(path.name)
            if match and not Path(f"/proc/{match.group(1)}").exists():
                remove_cgroup_tree(path, timeout_s=0)


def remove_cgroup_tree(path: Path, timeout_s: float = 10.0) -> list[str]:
    """rmdir the tree bottom-up; the directories that could not be removed (a task still in them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = []
        for directory in [*sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), path]:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                left.append(f"{directory}: {exc.strerror}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# ---- the fixture body ----------------------------------------------------------------------------------------
@contextmanager
def node(
    plane: ControlPlane,
    root: Path,
    name: str = "tsr-node",
    snapshot_root: Path | None = None,
    arch: str = HOST_ARCH,
) -> Iterator[Node]:
    """Start a node (namespaces, containerd, the kubelet) that registers with `plane`; yield once it is Ready
    and the pause image is imported; stop everything on exit and check that nothing of it is left.

    `snapshot_root`: a host directory for containerd's unpacked layers instead of the node's tmpfs (for images
    of gigabytes); the caller removes it after the exit.

    `arch="arm64"`: an arm64 node under emulation. Its kubelet is an arm64 build and its containers (the pause
    container too) are arm64 images, all run through qemu-user, registered in the node's own binfmt_misc: the
    Node registers as `kubernetes.io/arch=arm64` (status.nodeInfo.architecture arm64), so arm64 placement
    selects it. containerd, its shim and runc stay this machine's (amd64) binaries: they start the containers,
    whose processes then run arm64 code."""
    if arch not in NODE_IMAGES_BY_ARCH:
        raise ValueError(f"node arch {arch!r}: one of {sorted(NODE_IMAGES_BY_ARCH)}")
    tools = find_node_tools(arch)
    if plane.ca is None:
        pytest.fail("the control plane has no CA to issue the kubelet's certificate with (tests/cluster_plane.py)")
    root.mkdir(parents=True, exist_ok=True)
    node_images = NODE_IMAGES_BY_ARCH[arch]
    pause_ref = (node_images / "pause.ref").read_text().strip()
    binfmt = _binfmt_registration(arch) if arch != HOST_ARCH else ""
    sock_dir = Path(tempfile.mkdtemp(prefix="tsr-node-", dir="/tmp"))  # unix socket paths must stay short
    remove_stale_cgroup_roots()
    cgroup_root = f"tsr-{name}-p{os.getpid()}-{uuid.uuid4().hex[:8]}"  # the owner's pid: see remove_stale_...
    number = next(_node_numbers) % 250
    ip, pod_cidr = f"10.213.{number}.2", f"10.214.{number}.0/24"
    (root / "cni").mkdir(exist_ok=True)
    (root / "cni" / "10-tsr-pods.conflist").write_text(json.dumps(cni_config(pod_cidr), indent=2))
    (root / "containerd.toml").write_text(containerd_config(root, pause_ref, snapshot_root))
    if snapshot_root is not None:
        snapshot_root.mkdir(parents=True, exist_ok=True)
    kubelet = kubelet_config(plane.ca_file, cgroup_root, ip)
    (root / "kubelet.yaml").write_text(yaml.safe_dump(kubelet, sort_keys=False))
    certs = root / "pki"
    certs.mkdir(exist_ok=True)
    kubeconfig = write_kubeconfig(
        root / "kubelet.kubeconfig",
        f"https://127.0.0.1:{API_PORT_IN_NODE}",
        plane.ca_file,
        *plane.ca.issue(certs, "kubelet", f"system:node:{name}", ("system:nodes",)),
        "kubelet",
    )
    api_port = int(plane.url.rsplit(":", 1)[1])
    ready_file = root / "init.ready"
    state: dict[str, Any] = {}
    try:
        started = time.monotonic()
        state["cgroups"] = make_cgroup_root(cgroup_root)
        log = root / "init.log"
        unshare = state["unshare"] = _popen(
            [
                str(tools["unshare"]),
                "--user",
                "--mount",
                "--pid",
                "--net",
                "--uts",
                "--fork",
                "--mount-proc",
                "--kill-child=SIGKILL",
                "--",
                sys.executable,
                "-c",
                INIT,
                ip,
                str(NODE_PREFIX),
                KUBERNETES_SERVICE_IP,
                str(ready_file),
                binfmt,
            ],
            log,
        )
        me = _ns_inode(os.getpid(), "user")
        deadline = time.monotonic() + 10
        while _ns_inode(unshare.pid, "user") == me:
            if unshare.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"unshare did not make the namespaces: {log.read_text()}")
            time.sleep(0.01)
        Path(f"/proc/{unshare.pid}/uid_map").write_text(ID_MAP)
        Path(f"/proc/{unshare.pid}/gid_map").write_text(ID_MAP)
        while not ready_file.exists():
            if unshare.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the node's init did not start: {log.read_text()}")
            time.sleep(0.02)
        init_pid = _child_of(unshare.pid)
        namespaces = {kind: _ns_inode(init_pid, kind) for kind in ("user", "pid", "net")}
        n = state["node"] = Node(
            name, ip, root, plane, init_pid, namespaces, tools, sock_dir, cgroup_root, pod_cidr, arch
        )
        n.processes["init"] = Process("init", unshare, log)
        if plane.egress is not None:  # the API server reaches the kubelet and the pods by their addresses
            dialer = state["dialer"] = NetnsDialer(init_pid)
            state["routes"] = [plane.egress.add_route(net, dialer.dial) for net in (f"{ip}/32", pod_cidr)]
        n.run("hostname", name)
        # the API server: host 127.0.0.1:<port> <- unix socket <- node 127.0.0.1:6443 and 10.0.0.1:443
        api_sock = sock_dir / "api.sock"
        _start(
            n,
            "socat-api-host",
            [str(tools["socat"]), f"UNIX-LISTEN:{api_sock},fork,unlink-early", f"TCP:127.0.0.1:{api_port}"],
        )
        for bind, port in (("127.0.0.1", API_PORT_IN_NODE), (KUBERNETES_SERVICE_IP, 443)):
            inside = _start(
                n,
                f"socat-api-node-{port}",
                n.nsenter(
                    str(tools["socat"]),
                    f"TCP-LISTEN:{port},bind={bind},fork,reuseaddr",
                    f"UNIX-CONNECT:{api_sock}",
                    net_only=True,
                ),
            )
            n._wait(f"API server at {bind}:{port} in the node", functools.partial(_listening, inside.popen.pid, port))
        _start(n, "containerd", n.nsenter(str(tools["containerd"]), "--config", str(root / "containerd.toml")))
        n.startup_s["containerd"] = n._wait(
            "containerd", lambda: n.ctr("version", timeout=10, check=False).returncode == 0
        )
        for archive in sorted(node_images.glob("*.tar")):
            n.import_image(archive)
        n.ctr("images", "label", pause_ref, "io.cri-containerd.pinned=pinned")
        n.startup_s["images"] = time.monotonic() - started
        _start(
            n,
            "kubelet",
            n.nsenter(
                str(tools["kubelet"]),
                f"--config={root / 'kubelet.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--node-ip={ip}",
                f"--hostname-override={name}",
                "--v=2",
            ),
        )
        state["registered"] = True
        core = k8s.CoreV1Api(plane.api_client)
        n.startup_s["node Ready"] = n._wait(
            f"node {name} Ready",
            lambda: any(c.type == "Ready" and c.status == "True" for c in core.read_node(name).status.conditions or []),
        )
        n.startup_s["total"] = time.monotonic() - started
        yield n
    finally:
        teardown(state, plane, name, sock_dir)


def teardown(state: dict[str, Any], plane: ControlPlane, name: str, sock_dir: Path) -> None:
    """Kill the namespaces' init (the kernel then kills every process of the pid namespace, containers too: the
    kubelet would ignore SIGTERM there), stop the host-side processes (socat, nsenter), check that no process
    of the node's namespaces is left, remove its cgroups and its Node object. Every step runs; the first
    error is raised at the end."""
    errors: list[BaseException] = []

    def step(call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except BaseException as exc:
            errors.append(exc)

    n: Node | None = state.get("node")
    unshare: subprocess.Popen[bytes] | None = state.get("unshare")
    if n is not None:
        step(os.kill, n.init_pid, signal.SIGKILL)
    if unshare is not None:
        if unshare.poll() is None:
            step(unshare.kill)
        step(unshare.wait, STOP_TIMEOUT_S)
    for remove_route in state.get("routes", []):
        step(remove_route)
    if "dialer" in state:
        step(state["dialer"].close)
    if n is not None:
        for process in reversed(list(n.processes.values())):
            step(stop_child, process.popen, STOP_TIMEOUT_S)
        step(_check_gone, n)
    if "cgroups" in state:
        step(_remove_cgroups, state["cgroups"])
    if state.get("registered"):
        step(_delete_node, plane, name)
    shutil.rmtree(sock_dir, ignore_errors=True)
    if errors:
        raise errors[0]


def _child_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise AssertionError(f"unshare {pid} has children {children}, expected the node's init alone")
    return int(children[0])


def _check_gone(n: Node) -> None:
    """Every process of the node's namespaces is gone (after the socats and nsenters were stopped too)."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (left := n.node_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        described = {pid: _cmdline(pid) for pid in left}
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"processes of node {n.name} outlived it (killed now): {described}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _remove_cgroups(paths: list[Path]) -> None:
    left = [entry for path in paths for entry in remove_cgroup_tree(path)]
    if left:
        raise AssertionError(f"cgroups of the node could not be removed (tasks left?): {left}")


def _delete_node(plane: ControlPlane, name: str) -> None:
    try:
        k8s.CoreV1Api(plane.api_client).delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def image_dir(arch: str = HOST_ARCH) -> Path:
    """Where `make images-local` left the archives and sizes.json for `arch` (a foreign arch: a folder of its own)."""
    return IMAGES_DIR if arch == HOST_ARCH else IMAGES_DIR / arch


def local_image(name: str, arch: str = HOST_ARCH) -> tuple[Path, str]:
    """The docker-archive of an image `make images-local` built for `arch` and its reference (from sizes.json)."""
    folder = image_dir(arch)
    sizes = folder / "sizes.json"
    found = sorted(folder.glob(f"{name}-*-{arch}.tar"))
    if not sizes.is_file() or not found:
        build = "make images-local" + ("" if arch == HOST_ARCH else f" PLATFORMS=linux/{arch}")
        pytest.fail(f"no {name} archive in {folder}: run `{build}` (or set TSR_IMAGES_DIR)")
    return found[-1], json.loads(sizes.read_text())["images"][name]["ref"]


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def check_room_for(n: Node, names: list[str]) -> None:
    """Fail in one line unless the disk holds the images (of the node's arch) unpacked and memory the largest
    archive's layers (the import passes them through the node's tmpfs)."""
    sizes = json.loads((image_dir(n.arch) / "sizes.json").read_text())["images"]
    need = sum(sizes[name]["unpacked_bytes"] for name in names) + (2 << 30)
    free = shutil.disk_usage(n.root).free
    if free < need:
        pytest.fail(f"{free / 1e9:.1f} GB free under {n.root}, the unpacked images need {need / 1e9:.1f} GB")
    largest = max(local_image(name, n.arch)[0].stat().st_size for name in names)
    available = _mem_available()
    if available < largest + (4 << 30):
        pytest.fail(f"{available / 1e9:.1f} GB of memory available, the import passes the layers through RAM")
