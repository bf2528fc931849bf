"""Scrape objects for prometheus-operator clusters, and the dashboard as a Grafana-sidecar ConfigMap.

What they select follows what KServe does with our InferenceService (tsr/kube/inference_service.py):
KServe copies the InferenceService's labels onto the predictor's Deployment, pods and (Standard mode)
Service, and adds `serving.kserve.io/inferenceservice: <name>` and `component: predictor`. The
predictor serves /metrics on its HTTP port (8080), which deploy.py names `http1`; in Standard mode the
Service's first port takes that name (port 80 -> targetPort 8080). Knative renames the container
port to `user-port`, so Knative deployments set `ScrapeConfig(port="user-port")`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tsr.kube.labels import ISVC_POD_LABEL, PART_OF

DASHBOARD_FILE = "grafana-dashboard.json"


def _predictor_labels() -> dict[str, str]:
    """The labels deploy.py's `_labels()` puts on every InferenceService, minus the per-instance one."""
    return {**PART_OF, "app.kubernetes.io/name": "tsr-predictor", "app.kubernetes.io/component": "predictor"}


@dataclass(frozen=True)
class ScrapeConfig:
    """Where the monitoring objects live and how they find the predictor.

    `job_label` makes Prometheus take the job name from that pod/service label, so the series carry
    job="tsr-predictor" like the local Prometheus' scrape job, and the alerts need no second selector.
    """

    name: str = "tsr-predictor"
    namespace: str = "tsr"
    match_labels: Mapping[str, str] = field(default_factory=_predictor_labels)
    port: str = "http1"
    path: str = "/metrics"
    interval: str = "15s"
    scrape_timeout: str = "10s"
    job_label: str = "app.kubernetes.io/name"

    def labels(self, component: str) -> dict[str, str]:
        """Labels for the objects we create (not for selecting the predictor)."""
        return {**PART_OF, "app.kubernetes.io/name": self.name, "app.kubernetes.io/component": component}

    def selector(self) -> dict[str, Any]:
        """Our labels, and only objects KServe made for an InferenceService (not, say, a local test pod)."""
        return {
            "matchLabels": dict(sorted(self.match_labels.items())),
            "matchExpressions": [{"key": ISVC_POD_LABEL, "operator": "Exists"}],
        }

    def endpoint(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "path": self.path,
            "interval": self.interval,
            "scrapeTimeout": self.scrape_timeout,
            "scheme": "http",
        }


def _metadata(cfg: ScrapeConfig, component: str, name: str | None = None) -> dict[str, Any]:
    return {"name": name or cfg.name, "namespace": cfg.namespace, "labels": cfg.labels(component)}


def pod_monitor(cfg: ScrapeConfig | None = None) -> dict[str, Any]:
    """Scrapes every predictor pod directly: works without a Service and sees pods that are not ready."""
    cfg = cfg or ScrapeConfig()
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(cfg, "monitoring"),
        "spec": {
            "jobLabel": cfg.job_label,
            "namespaceSelector": {"matchNames": [cfg.namespace]},
            "podTargetLabels": [ISVC_POD_LABEL],
            "selector": cfg.selector(),
            "podMetricsEndpoints": [cfg.endpoint()],
        },
    }


def service_monitor(cfg: ScrapeConfig | None = None) -> dict[str, Any]:
    """Scrapes the endpoints of the `<isvc>-predictor` Service (Standard mode), i.e. only ready pods."""
    cfg = cfg or ScrapeConfig()
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(cfg, "monitoring"),
        "spec": {
            "jobLabel": cfg.job_label,
            "namespaceSelector": {"matchNames": [cfg.namespace]},
            "targetLabels": [ISVC_POD_LABEL],
            "selector": cfg.selector(),
            "endpoints": [cfg.endpoint()],
        },
    }


def dashboard_configmap(dashboard_json: str, cfg: ScrapeConfig | None = None) -> dict[str, Any]:
    """The dashboard for Grafana's sidecar, which loads ConfigMaps labelled `grafana_dashboard: "1"`."""
    cfg = cfg or ScrapeConfig()
    metadata = _metadata(cfg, "dashboard", name=f"{cfg.name}-dashboard")
    metadata["labels"]["grafana_dashboard"] = "1"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {DASHBOARD_FILE: dashboard_json}}
