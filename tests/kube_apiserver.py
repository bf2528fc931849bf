"""A real Kubernetes API server for custom resources on loopback, for tests (not a test module).

`.ci/kube-crd-apiserver` (built by `make tools` into .tools/bin) is etcd embedded in an
apiextensions-apiserver: it serves CustomResourceDefinitions and the custom resources they define,
with the API server's own semantics (schema validation, pruning, merge patch, resourceVersion
conflicts, generation, the status subresource), over HTTPS on 127.0.0.1 with anonymous,
always-allowed access. It serves no core kinds (no Namespace, Secret, ...) and runs no admission
plugins, so namespaced custom resources need no Namespace object.

    with kube_apiserver(tmp_path, crds=[ISVC_CRD]) as server:
        CustomObjectsApi(server.api_client).create_namespaced_custom_object(...)

A missing or stale binary fails the test (`make tools`), like the other tools; it is not a skip.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from tests.crd_schema import CRD_DIR, CRD_FILES, read_crd_file
from tsr.core.config import REPO_ROOT
from tsr.core.processes import stop_child

BINARY = REPO_ROOT / ".tools" / "bin" / "kube-crd-apiserver"
SOURCE = REPO_ROOT / ".ci" / "kube-crd-apiserver"
ISVC_CRD = CRD_FILES[("serving.kserve.io", "InferenceService")]  # KServe's InferenceService CRD
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def find_binary() -> Path:
    """The built tool; its absence, or a build older than its source, fails the test."""
    if not BINARY.is_file():
        pytest.fail(f"kube-crd-apiserver not found at {BINARY}: run `make tools` (needs Go)")
    newest = max(p.stat().st_mtime for p in SOURCE.iterdir())
    if BINARY.stat().st_mtime < newest:
        pytest.fail(f"{BINARY} is older than {SOURCE}: rebuild it with `make tools`")
    return BINARY


@dataclass
class KubeApiServer:
    """One running server: its URL, a kubeconfig for it and a client built from that kubeconfig."""

    url: str
    kubeconfig: Path
    api_client: k8s.ApiClient
    process: subprocess.Popen[bytes]
    log_file: Path
    startup_s: float  # from exec to "ready"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit status (negative: killed by that signal)."""
        self.api_client.close()
        return stop_child(self.process, STOP_TIMEOUT_S)


def start_kube_apiserver(root: Path, port: int = 0) -> KubeApiServer:
    """Start the server with data under `root` (a fresh temp dir) and wait for its "ready <url>" line.
    The caller stops it (`KubeApiServer.stop`); `kube_apiserver` does that for you."""
    binary = find_binary()
    root.mkdir(parents=True, exist_ok=True)
    kubeconfig, stdout_file, log_file = root / "kubeconfig", root / "stdout", root / "server.log"
    started = time.monotonic()
    with stdout_file.open("wb") as out, log_file.open("wb") as err:
        process = subprocess.Popen(
            [str(binary), "--data-dir", str(root / "data"), "--kubeconfig-out", str(kubeconfig), "--port", str(port)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    url = None
    while url is None:
        for line in stdout_file.read_text().splitlines():
            if line.startswith("ready "):
                url = line.split(" ", 1)[1].strip()
        if url is not None:
            break
        if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
            stop_child(process, STOP_TIMEOUT_S)
            log = log_file.read_text(errors="replace")[-4000:]
            pytest.fail(f"kube-crd-apiserver did not get ready (exit status {process.returncode}):\n{log}")
        time.sleep(0.05)
    startup_s = time.monotonic() - started
    try:
        api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    except Exception:
        stop_child(process, STOP_TIMEOUT_S)
        raise
    return KubeApiServer(url, kubeconfig, api_client, process, log_file, startup_s)


@contextmanager
def kube_apiserver(root: Path, port: int = 0, crds: Iterable[str] = ()) -> Iterator[KubeApiServer]:
    """`start_kube_apiserver` with the CRDs of `crds` (file names in CRD_DIR) installed, stopped on exit:
    fits a (module-scoped) pytest fixture's `yield`."""
    server = start_kube_apiserver(root, port)
    try:
        for name in crds:
            install_crd(server.api_client, CRD_DIR / name)
        yield server
    finally:
        server.stop()


def install_crd(api_client: k8s.ApiClient, path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Create the CRD in `path` (a YAML file; kept if it exists already) and wait until it is Established,
    i.e. its custom resources are served. Returns the CRD as the server has it."""
    crd = read_crd_file(path)
    api = k8s.ApiextensionsV1Api(api_client)
    name = crd["metadata"]["name"]
    # Raw JSON (_preload_content=False): this CRD is ~1.5 MB and the typed models are slow to build.
    try:
        api.create_custom_resource_definition(body=crd, _preload_content=False)
    except ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + timeout
    while True:
        live: dict[str, Any] = json.loads(api.read_custom_resource_definition(name, _preload_content=False).data)
        conditions = {c["type"]: c for c in (live.get("status") or {}).get("conditions") or []}
        if conditions.get("Established", {}).get("status") == "True":
            return live
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not Established after {timeout}s: {list(conditions.values())}")
        time.sleep(0.05)
