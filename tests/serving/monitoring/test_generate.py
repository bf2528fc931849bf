"""`python -m tsr.kube.monitoring` reproduces the committed manifests/monitoring byte for byte, the
Kubernetes objects are well-formed, and the Pod/ServiceMonitor select what deploy.py's InferenceService
becomes once KServe has made its pods and Service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.kube.inference_service import (
    DEFAULT_NAMESPACE,
    PROMETHEUS_PORT_ENV,
    InferenceServiceSpec,
    build_inference_service,
    example_model_uri,
    isvc_name,
)
from tsr.kube.labels import ISVC_POD_LABEL
from tsr.kube.monitoring.alerts import AlertConfig
from tsr.kube.monitoring.generate import HEADER, render_all, write_all
from tsr.kube.monitoring.scrape import ScrapeConfig, pod_monitor, service_monitor
from tsr.local.checkout import REPO_ROOT

MONITORING = REPO_ROOT / "manifests" / "monitoring"
HAND_WRITTEN = {"README.md"}
K8S_KINDS = {
    "prometheusrule.yaml": "PrometheusRule",
    "podmonitor.yaml": "PodMonitor",
    "servicemonitor.yaml": "ServiceMonitor",
    "grafana-dashboard-configmap.yaml": "ConfigMap",
}


def _committed() -> dict[str, bytes]:
    return {
        p.relative_to(MONITORING).as_posix(): p.read_bytes()
        for p in sorted(MONITORING.rglob("*"))
        if p.is_file() and p.relative_to(MONITORING).as_posix() not in HAND_WRITTEN
    }


def _docs(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MONITORING / rel).read_text()) if d is not None]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels + matchExpressions) against a label set."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@pytest.fixture(scope="module")
def isvc() -> Any:
    """deploy.py's committed-manifest InferenceService (the one `manifests/inferenceservice.yaml` holds)."""
    spec = InferenceServiceSpec(
        name=isvc_name(DEFAULT_MODEL_NAME), namespace=DEFAULT_NAMESPACE, storage_uri=example_model_uri()
    )
    return build_inference_service(spec)


def _kserve_labels(isvc: Any) -> dict[str, str]:
    """What KServe puts on the predictor's pods and Service: the InferenceService's labels plus its own."""
    return {**isvc.metadata.labels, ISVC_POD_LABEL: isvc.metadata.name, "component": "predictor"}


def test_cli_regenerates_the_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "monitoring"
    result = subprocess.run(
        [sys.executable, "-m", "tsr.kube.monitoring", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    generated = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    committed = _committed()
    assert sorted(generated) == sorted(committed), "stale or missing files: run `python -m tsr.kube.monitoring`"
    stale = [rel for rel in generated if generated[rel] != committed[rel]]
    assert not stale, f"committed files differ from the generator: {stale}; run `python -m tsr.kube.monitoring`"


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    assert render_all() == render_all()
    write_all(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"tsr-rules.yaml", "kustomization.yaml", "tests"}


def test_yaml_files_carry_the_header() -> None:
    for rel, text in render_all().items():
        if rel.endswith(".yaml"):
            assert text.startswith(f"# {HEADER}\n"), rel
        else:
            json.loads(text)


def test_kubernetes_objects_are_well_formed() -> None:
    for rel, kind in K8S_KINDS.items():
        (obj,) = _docs(rel)
        assert obj["kind"] == kind, rel
        assert obj["apiVersion"] == ("v1" if kind == "ConfigMap" else "monitoring.coreos.com/v1"), rel
        meta = obj["metadata"]
        assert meta["name"] and meta["namespace"] == DEFAULT_NAMESPACE, rel
        assert meta["labels"]["app.kubernetes.io/part-of"] == "tsr-platform", rel
        assert obj.get("spec") or obj.get("data"), rel


def test_kustomization_lists_the_objects_but_not_rules_file_or_tests() -> None:
    (kust,) = _docs("kustomization.yaml")
    assert kust["kind"] == "Kustomization" and kust["namespace"] == DEFAULT_NAMESPACE
    resources = kust["resources"]
    assert all((MONITORING / r).is_file() for r in resources)
    # The ServiceMonitor is the alternative to the PodMonitor: both would scrape every pod twice.
    assert set(resources) == set(K8S_KINDS) - {"servicemonitor.yaml"}
    assert "tsr-rules.yaml" not in resources and not any(r.startswith("tests/") for r in resources)


def test_dashboard_configmap_wraps_the_dashboard() -> None:
    (cm,) = _docs("grafana-dashboard-configmap.yaml")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"grafana-dashboard.json": (MONITORING / "grafana-dashboard.json").read_text()}


@pytest.mark.parametrize("rel", ["podmonitor.yaml", "servicemonitor.yaml"])
def test_monitors_select_the_deployed_predictor(rel: str, isvc: Any) -> None:
    (monitor,) = _docs(rel)
    spec = monitor["spec"]
    pod_labels = _kserve_labels(isvc)
    assert _matches(spec["selector"], pod_labels)
    assert not _matches(spec["selector"], dict(isvc.metadata.labels)), "must need KServe's own label too"
    assert not _matches(spec["selector"], {**pod_labels, "app.kubernetes.io/name": "something-else"})
    assert spec["namespaceSelector"]["matchNames"] == [isvc.metadata.namespace]
    # The job label comes from a pod/service label whose value is the alerts' job.
    assert pod_labels[spec["jobLabel"]] == AlertConfig().job


@pytest.mark.parametrize("rel", ["podmonitor.yaml", "servicemonitor.yaml"])
def test_monitors_scrape_the_predictor_port(rel: str, isvc: Any) -> None:
    (monitor,) = _docs(rel)
    endpoints = monitor["spec"].get("podMetricsEndpoints") or monitor["spec"]["endpoints"]
    (endpoint,) = endpoints
    (container,) = isvc.spec.predictor.containers
    # KServe (Standard mode) names the Service port after the container's first port, so one name serves both.
    port = container.ports[0]
    assert endpoint["port"] == port.name and endpoint["path"] == "/metrics"
    env = {e.name: e.value for e in container.env}
    assert env[PROMETHEUS_PORT_ENV] == str(port.container_port)


def test_scrape_config_changes_follow() -> None:
    cfg = ScrapeConfig(namespace="ml", port="user-port")
    assert pod_monitor(cfg)["spec"]["podMetricsEndpoints"][0]["port"] == "user-port"
    assert service_monitor(cfg)["metadata"]["namespace"] == "ml"
    assert pod_monitor(cfg)["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
