"""The committed Grafana dashboard is valid JSON with unique panel ids and sane layout, every target has
an expr that promtool parses, names only exported metrics, selects `$model` and rates over
`$__rate_interval`, and the alert thresholds it draws are AlertConfig's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsr.kube.monitoring.alerts import AlertConfig
from tsr.kube.monitoring.dashboard import DashboardConfig, build_dashboard, dashboard_exprs
from tsr.kube.monitoring.generate import known_metric_names, metric_names
from tsr.local.checkout import REPO_ROOT

DASHBOARD = REPO_ROOT / "manifests" / "monitoring" / "grafana-dashboard.json"
# What Grafana substitutes before a query reaches Prometheus (enough to parse and to run).
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$model": ".*"}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _targets(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in _panels(board) for t in p["targets"]]


def _substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def test_structure_and_variables(board: dict[str, Any]) -> None:
    assert board == build_dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["datasource"]["uid"] == "${datasource}"
    assert model["query"]["query"] == model["definition"] == "label_values(tsr_model_info, model)"


def test_panel_ids_unique_and_layout_fits(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_target_has_an_expr_on_the_datasource_variable(board: dict[str, Any]) -> None:
    for panel in _panels(board):
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_required_panels(board: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for t in _targets(board))
    for needle in (
        "tsr_request_duration_seconds_count",  # request rate
        "histogram_quantile(0.99, sum by (le) (rate(tsr_request_duration_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(request_predict_seconds_bucket",
        "sum by (reason) (rate(tsr_requests_rejected_total",
        "sum by (class_name) (increase(tsr_predictions_total",
        "tsr_prediction_confidence_sum",
        "tsr_prediction_confidence_bucket",
        "tsr_inference_batch_size",
        "tsr_input_drift_psi",
        "tsr_input_channel_mean",
        "tsr_input_reference_channel_mean",
        "tsr_model_info",
    ):
        assert needle in exprs, needle
    assert {p["type"] for p in _panels(board)} >= {"timeseries", "heatmap", "table", "stat", "bargauge"}


def test_selectors_and_rate_windows(board: dict[str, Any]) -> None:
    for target in _targets(board):
        expr = target["expr"]
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window in {"$__rate_interval", "$__range"}, expr
        for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr):
            if name.startswith("tsr_"):
                assert 'model=~"$model"' in matchers, expr
            elif name.startswith("request_"):
                assert 'model_name=~"$model"' in matchers, expr  # KServe's label


def test_every_metric_is_exported(board: dict[str, Any]) -> None:
    known = known_metric_names()
    for expr in dashboard_exprs(dashboard=board):
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"{expr}: unknown {names - known}"


def test_promtool_parses_every_expr(board: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH: install Debian's prometheus package (make prometheus)")
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": _substitute(e)}
        for i, e in enumerate(dashboard_exprs(dashboard=board))
    ]
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}\n{result.stderr}"


def test_threshold_lines_follow_alert_config(board: dict[str, Any]) -> None:
    def steps(b: dict[str, Any], title: str) -> list[Any]:
        (panel,) = [p for p in b["panels"] if p["title"] == title]
        return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]

    default = AlertConfig()
    assert default.drift_psi in steps(board, "Drift PSI")
    assert default.latency_p99_seconds in steps(board, "End-to-end latency")
    assert default.min_confidence in steps(board, "Confidence")
    other = build_dashboard(DashboardConfig(alerts=AlertConfig(drift_psi=0.4)))
    assert 0.4 in steps(other, "Drift PSI") and default.drift_psi not in steps(other, "Drift PSI")
