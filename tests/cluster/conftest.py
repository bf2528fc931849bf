"""One real control plane (kube-apiserver, controller-manager, scheduler, KServe) for the whole cluster tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster_plane import ControlPlane, apply_crd_files, control_plane
from tests.crd_schema import CRD_DIR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/cluster/ is the cluster tier: `pytest -m cluster` runs it alone."""
    for item in items:
        if "/tests/cluster/" in str(item.path):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with control_plane(tmp_path_factory.mktemp("cluster")) as cp:
        yield cp
        cp.assert_running()


@pytest.fixture(scope="session")
def operator_crds(cluster: ControlPlane) -> None:
    """prometheus-operator's CRDs (PodMonitor, ServiceMonitor, PrometheusRule, AlertmanagerConfig) in the server."""
    apply_crd_files(cluster, sorted(CRD_DIR.glob("monitoring.coreos.com_*.yaml")))
