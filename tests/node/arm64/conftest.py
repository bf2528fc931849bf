"""The arm64 node (`make arm64-node`): a second node, labelled `kubernetes.io/arch=arm64`, whose containers are
arm64 images run under qemu-user (tests/cluster_node.py `node(..., arch="arm64")`), beside the amd64 node of
tests/node/conftest.py.

These tests are marked `node` (by tests/node/conftest.py) and `arm64`; they need the arm64 images (`make
images-local PLATFORMS=linux/arm64`, tens of minutes under emulation), so `make cluster-e2e` leaves them out
(`-m "node and not arm64"`) and a plain `pytest` deselects them with the rest of the node tier.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_node import Node, node
from tests.cluster_plane import ControlPlane
from tests.opt_in import mark_and_deselect

ARM64_NODE_TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m selects by it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_and_deselect(config, items, "arm64", ARM64_NODE_TESTS)


@pytest.fixture(scope="session")
def arm64_node(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The session's arm64 node; containerd's unpacked layers on disk, removed after the node stops."""
    root = tmp_path_factory.mktemp("node-arm64")
    snapshots = root / "snapshots"
    try:
        with node(plane, root, name="tsr-node-arm64", snapshot_root=snapshots, arch="arm64") as n:
            print(f"\nnode {n.name} (arm64) up: {', '.join(f'{k} {v:.1f} s' for k, v in n.startup_s.items())}")
            yield n
            n.assert_running()
    finally:
        shutil.rmtree(snapshots, ignore_errors=True)
