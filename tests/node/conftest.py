"""The node tier: the control plane of the cluster tier plus a real node (tests/cluster_node.py).

Everything under tests/node/ is marked `node` and runs only when asked for, by `-m node` (make cluster-e2e)
or by naming tests/node/ (or a file in it): a plain `pytest` (make test) deselects it, so `make test` needs
neither `make node-tools` nor the minute the node takes to start.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from tests.cluster_node import Node, node
from tests.cluster_plane import ControlPlane, control_plane, ensure_namespace
from tests.opt_in import mark_and_deselect

NODE_TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m selects by it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_and_deselect(config, items, "node", NODE_TESTS)


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with control_plane(tmp_path_factory.mktemp("plane")) as cp:
        yield cp
        cp.assert_running()


@pytest.fixture(scope="session")
def kube_node(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The session's node; containerd's unpacked layers on disk (the predictor image is gigabytes), removed after
    the node stops."""
    root = tmp_path_factory.mktemp("node")
    snapshots = root / "snapshots"
    try:
        with node(plane, root, snapshot_root=snapshots) as n:
            print(f"\nnode {n.name} up: {', '.join(f'{k} {v:.1f} s' for k, v in n.startup_s.items())}")
            yield n
            n.assert_running()
    finally:
        shutil.rmtree(snapshots, ignore_errors=True)


@pytest.fixture
def namespace(plane: ControlPlane, kube_node: Node) -> Iterator[str]:
    """A namespace of its own for one test, deleted after it."""
    name = f"node-{uuid.uuid4().hex[:8]}"
    ensure_namespace(plane.api_client, name)
    yield name
    k8s.CoreV1Api(plane.api_client).delete_namespace(name)
