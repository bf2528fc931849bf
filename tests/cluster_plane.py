"""A real Kubernetes control plane and the real KServe controller on loopback, for tests (not a test module).

What runs (all built or installed by `make cluster-tools`, all bound to 127.0.0.1 apart from KServe's
webhook server, whose address controller-runtime does not let us set):

- etcd (Debian's etcd-server) with its data in the run's directory;
- kube-apiserver with a fresh CA and certificates per run, service-account keys, `--authorization-mode=Node,RBAC`
  and its default admission plugins (PodSecurity, ServiceAccount, the admission webhooks, ResourceQuota, ...);
- kube-controller-manager (`*,-nodeipam`: Deployments really become ReplicaSets and Pods, service-account
  tokens are issued) and kube-scheduler; there is no node, so Pods stay Pending, unless tests/cluster_node.py
  adds one (the API server's way to nodes and pods is `EgressProxy`: routes only to what a node registered);
- KServe's manager with its CRDs, its `inferenceservice-config` (Standard mode, no ingress) and its webhook
  configurations pointed at its webhook server on https://127.0.0.1:<port> with the run's CA.

The test client and the controllers authenticate with client certificates signed by the run's CA: the
client as `system:masters`, the controller-manager and scheduler as their usual users (their RBAC roles
are bootstrapped by the API server), KServe's manager as `system:masters` too (its own RBAC is not what the
tests are about). Service accounts get real tokens, so `SubjectAccessReview`s and impersonation check the
real authorizer.

    with control_plane(tmp_path) as cp:
        k8s.CoreV1Api(cp.api_client).list_namespace()

A missing tool fails the test (`make cluster-tools`), like the other tools; it is not a skip. Everything
started is stopped again, also when a test fails.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import datetime
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from tests.crd_schema import read_crd_file
from tsr.core.processes import free_port, stop_child
from tsr.local.checkout import REPO_ROOT

TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
KSERVE_DIR = REPO_ROOT / ".tools" / "kserve"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kserve-manager")
KSERVE_NAMESPACE = "kserve"
# KServe's own image name for the storage-initializer (it cannot be pulled here; no Pod runs in this tier).
STORAGE_INITIALIZER_IMAGE = "kserve/storage-initializer:v0.20.0"
SERVICE_CIDR = "10.0.0.0/24"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


def find_tools() -> dict[str, Path]:
    """The built binaries and etcd; a missing one fails the test, naming what to run."""
    found = {name: TOOLS_BIN / name for name in BINARIES}
    missing = [name for name, path in found.items() if not path.is_file()]
    etcd = shutil.which("etcd")
    if etcd is None:
        missing.append("etcd (Debian's etcd-server)")
    if not (KSERVE_DIR / "crds").is_dir():
        missing.append(f"{KSERVE_DIR}/crds")
    if missing:
        pytest.fail(f"cluster tools missing: {', '.join(missing)}: run `make cluster-tools` (needs Go)")
    found["etcd"] = Path(str(etcd))
    return found


# ---- certificates --------------------------------------------------------------------------------------------
def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class CertificateAuthority:
    """A CA made for one run; `issue` signs serving and client certificates with it."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> CertificateAuthority:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tsr-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, directory: Path, name: str, common_name: str, groups: tuple[str, ...] = (), hosts: tuple[str, ...] = ()
    ) -> tuple[Path, Path]:
        """Write <name>.crt/<name>.key: a client certificate (CN = user, O = groups) or, with `hosts`, a
        serving certificate for those IPs and DNS names."""
        key = _key()
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        usage = [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
        if hosts:
            usage.append(x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)
            alt: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        crt, key_file = directory / f"{name}.crt", directory / f"{name}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        key_file.chmod(0o600)
        return crt, key_file


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tsr-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "tsr-test", "context": {"cluster": "tsr-test", "user": user}}],
        "current-context": "tsr-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- processes -----------------------------------------------------------------------------------------------
@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@dataclass
class ControlPlane:
    """A running control plane: its URL, an admin kubeconfig and client, its CA, and its processes."""

    url: str
    root: Path
    kubeconfig: Path
    ca_file: Path
    api_client: k8s.ApiClient
    processes: dict[str, Process] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    ca: CertificateAuthority | None = None  # the run's CA, to issue more certificates (a node's kubelet)
    egress: EgressProxy | None = None  # the API server's way to nodes and pods (tests/cluster_node.py adds routes)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real kubectl against this control plane (admin)."""
        result = subprocess.run(
            [str(TOOLS_BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}):\n{p.log_tail()}" for p in self.processes.values())

    def assert_running(self) -> None:
        dead = {name: p.popen.poll() for name, p in self.processes.items() if p.popen.poll() is not None}
        assert not dead, f"control-plane processes exited: {dead}\n{self.logs()}"


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child of a fork must not import (threads run)


def die_with_parent() -> None:
    """In a child before exec (`preexec_fn`): SIGKILL when the process that started it dies, however it dies
    (a test run or `make cluster-up` killed with SIGKILL leaves no server behind)."""
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start(
    stack: ExitStack, cp: ControlPlane, name: str, argv: list[str], env: dict[str, str] | None = None
) -> Process:
    log = cp.root / f"{name}.log"
    with log.open("wb") as fh:
        popen = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent
        )
    process = Process(name, popen, log)
    cp.processes[name] = process
    stack.callback(stop_child, popen, STOP_TIMEOUT_S)
    return process


def _wait(what: str, check: Any, cp: ControlPlane, timeout_s: float = START_TIMEOUT_S) -> float:
    """Poll `check()` until it is truthy; the seconds it took. A process exiting meanwhile fails at once."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:
            pass
        cp.assert_running()
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} not ready within {timeout_s:.0f}s\n{cp.logs()}")
        time.sleep(0.2)


def _https_ok(url: str, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=context, timeout=2) as resp:
        return bool(resp.status == 200)


# ---- KServe --------------------------------------------------------------------------------------------------
def kserve_config_map() -> dict[str, Any]:
    """KServe's own inferenceservice-config with Standard as the default mode and no ingress objects."""
    docs = [d for d in yaml.safe_load_all((KSERVE_DIR / "inferenceservice-config.yaml").read_text()) if d]
    config = next(d for d in docs if d.get("kind") == "ConfigMap")
    data = config["data"]
    deploy = json.loads(data.get("deploy", "{}"))
    deploy["defaultDeploymentMode"] = "Standard"
    data["deploy"] = json.dumps(deploy)
    ingress = json.loads(data["ingress"])
    ingress["disableIngressCreation"] = True
    data["ingress"] = json.dumps(ingress)
    data.pop("_example", None)
    config["metadata"] = {"name": "inferenceservice-config", "namespace": KSERVE_NAMESPACE}
    return dict(config)


def kserve_webhooks(port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """KServe's webhook configurations, each pointed at https://127.0.0.1:<port><path> with the run's CA."""
    import base64

    bundle = base64.b64encode(ca_pem).decode()
    docs = [d for d in yaml.safe_load_all((KSERVE_DIR / "webhooks.yaml").read_text()) if d]
    for doc in docs:
        doc["metadata"].pop("creationTimestamp", None)
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            hook["admissionReviewVersions"] = ["v1", "v1beta1"]
    return docs


# KServe v0.20 injects its storage-initializer without a securityContext, which PodSecurity `restricted`
# refuses (measured: "allowPrivilegeEscalation != false", "unrestricted capabilities"), so a cluster whose
# model namespaces enforce `restricted` needs this in its ClusterStorageContainer (KServe merges the
# container spec into the init container); docs/cluster.md shows the operator's patch.
RESTRICTED_INIT_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
STOCK_STORAGE_CONTAINER = "kserve-stock"  # KServe's default as shipped, selectable by name for negative tests


def kserve_storage_containers() -> list[dict[str, Any]]:
    """KServe's default ClusterStorageContainer (the storage-initializer for s3:// and the other URI schemes)
    with the image its kustomization sets: as `default` with the restricted securityContext above, and as
    shipped under STOCK_STORAGE_CONTAINER."""
    stock = dict(yaml.safe_load((KSERVE_DIR / "storage-container.yaml").read_text()))
    stock["spec"]["container"]["image"] = STORAGE_INITIALIZER_IMAGE
    restricted = copy.deepcopy(stock)
    restricted["spec"]["container"]["securityContext"] = RESTRICTED_INIT_SECURITY
    stock["metadata"] = {"name": STOCK_STORAGE_CONTAINER}
    return [restricted, stock]


def _apply(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(docs))


# ---- the API server's way to nodes and pods -------------------------------------------------------------------
Dialer = Callable[[str, int], socket.socket]


class EgressProxy:
    """The API server's `cluster` egress (EgressSelectorConfiguration: HTTP CONNECT over a unix socket): what
    the API server opens to nodes, pods and Services (kubectl logs/exec/port-forward, the proxy subresources)
    arrives here, and goes on only through a route a node registered (`add_route`, with a dialer that opens
    the connection inside that node's network namespace). Anything else is refused (502), so the API server
    never opens a connection off the machine, not even a DNS lookup of a node's name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: list[tuple[ipaddress.IPv4Network, Dialer]] = []
        self.refused: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self._thread = threading.Thread(target=self._serve, name="egress-proxy", daemon=True)
        self._thread.start()

    def add_route(self, network: str, dial: Dialer) -> Callable[[], None]:
        """Send CONNECTs to addresses in `network` through `dial`; the function that removes the route."""
        route = (ipaddress.IPv4Network(network), dial)
        self.routes.append(route)
        return lambda: self.routes.remove(route) if route in self.routes else None

    def close(self) -> None:
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target = head.split(b" ", 2)[:2]
            host, _, port = target.decode().rpartition(":")
            dial = next((d for net, d in self.routes if method == b"CONNECT" and _in(host, net)), None)
            if dial is None:
                self.refused.append(target.decode(errors="replace"))
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            upstream = dial(host, int(port))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(conn, upstream)
        except OSError:
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()


def _in(host: str, network: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False  # a name: never resolved here


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join()


def egress_config(path: Path, socket_path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apiserver.k8s.io/v1beta1",
                "kind": "EgressSelectorConfiguration",
                "egressSelections": [
                    {
                        "name": "cluster",
                        "connection": {
                            "proxyProtocol": "HTTPConnect",
                            "transport": {"uds": {"udsName": str(socket_path)}},
                        },
                    }
                ],
            }
        )
    )
    return path


# ---- the fixture body ----------------------------------------------------------------------------------------
@contextmanager
def control_plane(root: Path, kserve: bool = True) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and (with `kserve`) KServe's
    manager under `root`; yield when all are ready; stop everything on exit."""
    tools = find_tools()
    root.mkdir(parents=True, exist_ok=True)
    certs = root / "pki"
    certs.mkdir()
    ca = CertificateAuthority.create()
    ca_file = certs / "ca.crt"
    ca_file.write_bytes(ca.pem())
    api_port, etcd_port, etcd_peer = free_port(), free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    serving = ca.issue(
        certs,
        "apiserver",
        "kube-apiserver",
        hosts=("127.0.0.1", "10.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
    )
    sa_key = _key()
    (certs / "sa.key").write_bytes(_pem_key(sa_key))
    (certs / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    admin = write_kubeconfig(
        root / "admin.kubeconfig", url, ca_file, *ca.issue(certs, "admin", "tsr-admin", ("system:masters",)), "admin"
    )
    cm_config = write_kubeconfig(
        root / "controller-manager.kubeconfig",
        url,
        ca_file,
        *ca.issue(certs, "controller-manager", "system:kube-controller-manager"),
        "controller-manager",
    )
    sched_config = write_kubeconfig(
        root / "scheduler.kubeconfig", url, ca_file, *ca.issue(certs, "scheduler", "system:kube-scheduler"), "scheduler"
    )
    # the API server's client certificate for the kubelets (logs, exec, port-forward), authorized as an admin
    kubelet_client = ca.issue(certs, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
    with ExitStack() as stack:
        egress_dir = Path(tempfile.mkdtemp(prefix="tsr-egress-", dir="/tmp"))  # unix socket paths must stay short
        stack.callback(shutil.rmtree, egress_dir, True)
        egress = EgressProxy(egress_dir / "egress.sock")
        stack.callback(egress.close)
        cp = ControlPlane(url, root, admin, ca_file, k8s.ApiClient(), ca=ca, egress=egress)  # client: once it is up
        started = time.monotonic()
        _start(
            stack,
            cp,
            "etcd",
            [
                str(tools["etcd"]),
                "--name",
                "tsr",
                "--data-dir",
                str(root / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"tsr=http://127.0.0.1:{etcd_peer}",
                "--listen-metrics-urls",
                "",
            ],
        )
        _start(
            stack,
            cp,
            "kube-apiserver",
            [
                str(tools["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={ca_file}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=false",
                f"--cert-dir={certs}",
                # to nodes and pods only through the egress proxy, by address (never a DNS lookup of a node name)
                f"--egress-selector-config-file={egress_config(root / 'egress.yaml', egress.path)}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
            ],
        )
        cp.startup_s["kube-apiserver"] = _wait("kube-apiserver", lambda: _https_ok(f"{url}/readyz", ca_file), cp)
        cp.api_client = k8s_config.new_client_from_config(config_file=str(admin))
        stack.callback(cp.api_client.close)
        _start(
            stack,
            cp,
            "kube-controller-manager",
            [
                str(tools["kube-controller-manager"]),
                f"--kubeconfig={cm_config}",
                f"--authentication-kubeconfig={cm_config}",
                f"--authorization-kubeconfig={cm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                f"--service-account-private-key-file={certs / 'sa.key'}",
                f"--root-ca-file={ca_file}",
                "--use-service-account-credentials=true",
                "--controllers=*,-nodeipam",
            ],
        )
        _start(
            stack,
            cp,
            "kube-scheduler",
            [
                str(tools["kube-scheduler"]),
                f"--kubeconfig={sched_config}",
                f"--authentication-kubeconfig={sched_config}",
                f"--authorization-kubeconfig={sched_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ],
        )
        core = k8s.CoreV1Api(cp.api_client)
        # The token controller of the controller-manager gives every namespace its default ServiceAccount.
        _wait("kube-controller-manager", lambda: core.read_namespaced_service_account("default", "default"), cp)
        if kserve:
            _start_kserve(stack, cp, ca, tools)
        cp.startup_s["total"] = time.monotonic() - started
        yield cp


def _start_kserve(stack: ExitStack, cp: ControlPlane, ca: CertificateAuthority, tools: dict[str, Path]) -> None:
    crds = [d for f in sorted((KSERVE_DIR / "crds").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    _apply(
        cp,
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KSERVE_NAMESPACE}}, *crds, kserve_config_map()],
    )
    wait_established(cp, [crd["metadata"]["name"] for crd in crds])
    _apply(cp, kserve_storage_containers())
    port = free_port()
    tmp = cp.root / "kserve-tmp"
    cert_dir = tmp / "k8s-webhook-server" / "serving-certs"  # controller-runtime's default, under $TMPDIR
    cert_dir.mkdir(parents=True)
    crt, key = ca.issue(cert_dir, "webhook", "kserve-webhook", hosts=("127.0.0.1",))
    crt.rename(cert_dir / "tls.crt")
    key.rename(cert_dir / "tls.key")
    probe = free_port()
    _start(
        stack,
        cp,
        "kserve-manager",
        [
            str(tools["kserve-manager"]),
            f"--webhook-port={port}",
            f"--metrics-addr=127.0.0.1:{free_port()}",
            f"--health-probe-addr=127.0.0.1:{probe}",
            "--leader-elect=false",
        ],
        env={
            "KUBECONFIG": str(cp.kubeconfig),
            "POD_NAMESPACE": KSERVE_NAMESPACE,
            "TMPDIR": str(tmp),
            "PATH": "/usr/bin:/bin",
        },
    )
    cp.startup_s["kserve-manager"] = _wait("KServe webhook server", lambda: _webhook_listening(port), cp)
    _apply(cp, kserve_webhooks(port, ca.pem()))


def _webhook_listening(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def ensure_namespace(api_client: k8s.ApiClient, name: str, labels: dict[str, str] | None = None) -> None:
    """Create the namespace unless it exists (a real server refuses objects in a namespace that does not)."""
    try:
        k8s.CoreV1Api(api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels)))
    except ApiException as exc:
        if exc.status != 409:
            raise


def wait_established(cp: ControlPlane, names: list[str]) -> None:
    """Wait until each CRD is Established (its resources are served)."""
    extensions = k8s.ApiextensionsV1Api(cp.api_client)
    for name in names:
        _wait(
            f"CRD {name}",
            lambda n=name: any(
                c.type == "Established" and c.status == "True"
                for c in (extensions.read_custom_resource_definition(n).status.conditions or [])
            ),
            cp,
        )


def apply_crd_files(cp: ControlPlane, paths: list[Path]) -> None:
    """Server-side apply of CRD files, then wait until they are served."""
    docs = [read_crd_file(path) for path in paths]  # one CRD a file; the reader knows YAML's `=` tag
    _apply(cp, docs)
    wait_established(cp, [d["metadata"]["name"] for d in docs])


def api_error(call: Any) -> ApiException:
    """The ApiException `call()` raises (the test fails if it raises none)."""
    try:
        call()
    except ApiException as exc:
        return exc
    raise AssertionError("the API server accepted what it should have refused")
