"""The predictor's Grafana dashboard, built as plain JSON (schemaVersion 39) from Python.

Built here rather than exported from a Grafana UI so that panels, thresholds and metric names are
reviewed like code: thresholds come from `AlertConfig` (a panel's red line is the alert's threshold),
and every expr is checked against the exported metrics by `tsr.kube.monitoring.generate`.
Selectors use `model=~"$model"` (KServe's own histograms: `model_name=~"$model"`) and rate windows
`$__rate_interval`, so the dashboard works with any scrape interval and any selection of models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tsr.kube.monitoring.alerts import DEFAULT_JOB, AlertConfig

SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
MODEL_QUERY = "label_values(tsr_model_info, model)"
M = 'model=~"$model"'
KM = 'model_name=~"$model"'
RI = "$__rate_interval"


@dataclass(frozen=True)
class DashboardConfig:
    """Identity of the dashboard and the alert thresholds it draws as lines."""

    title: str = "TSR predictor"
    uid: str = "tsr-predictor"
    job: str = DEFAULT_JOB
    refresh: str = "30s"
    time_from: str = "now-6h"
    alerts: AlertConfig = field(default_factory=AlertConfig)


@dataclass(frozen=True)
class Target:
    """One query of a panel; `instant` + `table` for tables and bar gauges."""

    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"

    def to_dict(self, ref_id: str) -> dict[str, Any]:
        return {
            "datasource": DS,
            "editorMode": "code",
            "expr": self.expr,
            "format": self.fmt,
            "instant": self.instant,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "refId": ref_id,
        }


@dataclass(frozen=True)
class Panel:
    """A panel before layout: Grafana type, title, targets, unit and whatever else the type wants."""

    kind: str
    title: str
    targets: tuple[Target, ...]
    description: str = ""
    unit: str = "short"
    width: int = 12
    height: int = 8
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)
    show_thresholds: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[dict[str, Any], ...] = ()
    transformations: tuple[dict[str, Any], ...] = ()
    custom: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        custom = dict(self.custom)
        if self.show_thresholds:
            custom["thresholdsStyle"] = {"mode": "dashed"}
        return {
            "datasource": DS,
            "description": self.description,
            "fieldConfig": {
                "defaults": {
                    "custom": custom,
                    "unit": self.unit,
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [{"color": c, "value": v} for c, v in self.thresholds],
                    },
                },
                "overrides": list(self.overrides),
            },
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "id": panel_id,
            "options": self.options,
            "targets": [t.to_dict(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
            "title": self.title,
            "transformations": list(self.transformations),
            "type": self.kind,
        }


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _quantiles(
    metric: str, selector: str, qs: Sequence[float] = (0.5, 0.9, 0.99), what: str = ""
) -> tuple[Target, ...]:
    """histogram_quantile targets of one histogram, legends "p50", "p99 <what>"."""
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{RI}])))",
            f"p{round(q * 100)} {what}".rstrip(),
        )
        for q in qs
    )


def _mean(metric: str, selector: str, by: str = "") -> str:
    """rate(_sum) / rate(_count): the mean observation over the rate window."""
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({metric}_sum{{{selector}}}[{RI}])) / {agg}(rate({metric}_count{{{selector}}}[{RI}]))"


def _timeseries_legend() -> dict[str, Any]:
    return {
        "legend": {"calcs": ["mean", "max"], "displayMode": "table", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _stat_options() -> dict[str, Any]:
    return {
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
    }


def _rows(cfg: DashboardConfig) -> tuple[Row, ...]:
    a = cfg.alerts
    ts = _timeseries_legend()
    return (
        Row(
            "Model",
            (
                Panel(
                    "table",
                    "Served model",
                    (Target(f"tsr_model_info{{{M}}}", instant=True, fmt="table"),),
                    "tsr_model_info: registry version, architecture and torch version per replica.",
                    width=12,
                    height=6,
                    options={"showHeader": True},
                    transformations=(
                        {
                            "id": "organize",
                            "options": {
                                "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
                                "indexByName": {"model": 0, "version": 1, "arch": 2, "torch_version": 3},
                            },
                        },
                    ),
                ),
                Panel(
                    "stat",
                    "Targets up",
                    (Target(f'sum(up{{job="{cfg.job}"}})', "up"), Target(f'count(up{{job="{cfg.job}"}})', "total")),
                    f"Scrape targets of job {cfg.job} that answer / all targets (TSRPredictorDown).",
                    width=4,
                    height=6,
                    options=_stat_options(),
                ),
                Panel(
                    "stat",
                    "Model age",
                    (Target(f"time() - max by (model) (tsr_model_loaded_timestamp_seconds{{{M}}})", "{{model}}"),),
                    "Time since the served model was (re)loaded.",
                    unit="s",
                    width=4,
                    height=6,
                    options=_stat_options(),
                ),
                Panel(
                    "stat",
                    "Reloads in range",
                    (Target(f"sum by (result) (increase(tsr_model_reloads_total{{{M}}}[$__range]))", "{{result}}"),),
                    "Champion reload attempts by result (TSRModelReloadFailed on any failure).",
                    width=4,
                    height=6,
                    options=_stat_options(),
                ),
            ),
        ),
        Row(
            "Traffic",
            (
                Panel(
                    "timeseries",
                    "Request rate by status code",
                    (
                        Target(
                            f"sum by (code) (rate(tsr_request_duration_seconds_count{{{M}}}[{RI}]))",
                            "{{code}}",
                        ),
                    ),
                    "Inference requests per second, by HTTP status (5xx: TSRHighErrorRate).",
                    unit="reqps",
                    options=ts,
                    custom={"stacking": {"group": "A", "mode": "normal"}, "fillOpacity": 20},
                ),
                Panel(
                    "timeseries",
                    "Rejections by reason",
                    (
                        Target(
                            f"sum by (reason) (rate(tsr_requests_rejected_total{{{M}}}[{RI}]))",
                            "{{reason}}",
                        ),
                        Target(
                            f"sum(rate(tsr_requests_rejected_total{{{M}}}[{RI}])) / "
                            f"sum(rate(tsr_request_duration_seconds_count{{{M}}}[{RI}]))",
                            "share of all requests",
                        ),
                    ),
                    f"Requests refused as client mistakes; TSRHighRejectionRate above {a.rejection_ratio:.0%} of "
                    "all requests (right axis).",
                    unit="reqps",
                    options=ts,
                    overrides=(
                        {
                            "matcher": {"id": "byName", "options": "share of all requests"},
                            "properties": [
                                {"id": "unit", "value": "percentunit"},
                                {"id": "custom.axisPlacement", "value": "right"},
                            ],
                        },
                    ),
                ),
                Panel(
                    "timeseries",
                    "Images per second",
                    (
                        Target(
                            f"sum by (protocol) (rate(tsr_request_images_sum{{{M}}}[{RI}]))",
                            "{{protocol}}",
                        ),
                    ),
                    "Images classified per second, by protocol (v1 / v2).",
                    unit="short",
                    options=ts,
                ),
                Panel(
                    "timeseries",
                    "Batch size",
                    (
                        Target(_mean("tsr_inference_batch_size", M), "mean forward-pass batch"),
                        *_quantiles("tsr_inference_batch_size", M, (0.9,), "forward-pass batch"),
                        Target(_mean("tsr_request_images", M), "mean images per request"),
                    ),
                    "Images per forward pass after in-process batching, and per request as sent.",
                    unit="short",
                    options=ts,
                ),
            ),
        ),
        Row(
            "Latency",
            (
                Panel(
                    "timeseries",
                    "End-to-end latency",
                    _quantiles("tsr_request_duration_seconds", M),
                    f"HTTP inference latency (tsr_request_duration_seconds); the line is the p99 alert "
                    f"threshold ({a.latency_p99_seconds}s).",
                    unit="s",
                    thresholds=(("green", None), ("red", a.latency_p99_seconds)),
                    show_thresholds=True,
                    options=ts,
                ),
                Panel(
                    "timeseries",
                    "KServe predict latency",
                    _quantiles("request_predict_seconds", KM),
                    "KServe's request_predict_seconds: the model call alone.",
                    unit="s",
                    options=ts,
                ),
                Panel(
                    "timeseries",
                    "Pre/post-processing (p99)",
                    tuple(
                        Target(f"histogram_quantile(0.99, sum by (le) (rate({m}_bucket{{{KM}}}[{RI}])))", label)
                        for m, label in (
                            ("request_preprocess_seconds", "preprocess"),
                            ("request_postprocess_seconds", "postprocess"),
                        )
                    ),
                    "KServe's request_preprocess_seconds / request_postprocess_seconds: decoding, response building.",
                    unit="s",
                    options=ts,
                ),
                Panel(
                    "timeseries",
                    "Batch queue wait",
                    _quantiles("tsr_batch_queue_seconds", M, (0.5, 0.99)),
                    "Time a request waited for its forward pass to start (in-process batching); growth means "
                    "too few replicas for the traffic.",
                    unit="s",
                    options=ts,
                ),
            ),
        ),
        Row(
            "Model quality",
            (
                Panel(
                    "bargauge",
                    "Class distribution (time range)",
                    (
                        Target(
                            f"sort_desc(sum by (class_name) (increase(tsr_predictions_total{{{M}}}[$__range])))",
                            "{{class_name}}",
                            instant=True,
                        ),
                    ),
                    "Predictions per class over the selected time range; a skew absent from traffic hints at drift.",
                    width=12,
                    height=16,
                    options={
                        "displayMode": "basic",
                        "orientation": "horizontal",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "showUnfilled": True,
                    },
                ),
                Panel(
                    "timeseries",
                    "Confidence",
                    (
                        Target(_mean("tsr_prediction_confidence", M, "model, version"), "mean {{model}} {{version}}"),
                        *(
                            Target(
                                f"histogram_quantile({q}, sum by (le) "
                                f"(rate(tsr_prediction_confidence_bucket{{{M}}}[{RI}])))",
                                f"p{round(q * 100)}",
                            )
                            for q in (0.1, 0.5)
                        ),
                    ),
                    f"Top-1 calibrated probability; TSRLowConfidence below {a.min_confidence} (the line).",
                    unit="percentunit",
                    thresholds=(("red", None), ("green", a.min_confidence)),
                    show_thresholds=True,
                    options=ts,
                    custom={"axisSoftMin": 0, "axisSoftMax": 1},
                ),
                Panel(
                    "heatmap",
                    "Confidence histogram",
                    (
                        Target(
                            f"sum by (le) (increase(tsr_prediction_confidence_bucket{{{M}}}[{RI}]))",
                            "{{le}}",
                            fmt="heatmap",
                        ),
                    ),
                    "Predictions per confidence bucket over time.",
                    options={
                        "calculate": False,
                        "cellGap": 1,
                        "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                        "yAxis": {"unit": "percentunit"},
                    },
                ),
            ),
        ),
        Row(
            "Input drift",
            (
                Panel(
                    "timeseries",
                    "Drift PSI",
                    (Target(f"max by (model) (tsr_input_drift_psi{{{M}}})", "{{model}}"),),
                    f"Population stability index of input brightness vs training (empty until the window fills); "
                    f"TSRInputDrift above {a.drift_psi} (red line), 0.1 marks moderate shift.",
                    unit="short",
                    thresholds=(("green", None), ("yellow", 0.1), ("red", a.drift_psi)),
                    show_thresholds=True,
                    options=ts,
                ),
                Panel(
                    "timeseries",
                    "Channel mean vs training",
                    (
                        Target(f"avg by (channel) (tsr_input_channel_mean{{{M}}})", "{{channel}} inputs"),
                        Target(
                            f"avg by (channel) (tsr_input_reference_channel_mean{{{M}}})",
                            "{{channel}} training",
                        ),
                    ),
                    "Mean brightness (0..1) per channel of recent inputs, dashed: the training data's.",
                    unit="percentunit",
                    options=ts,
                    overrides=(
                        {
                            "matcher": {"id": "byRegexp", "options": ".* training"},
                            "properties": [
                                {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
                            ],
                        },
                    ),
                ),
                Panel(
                    "timeseries",
                    "Drift window",
                    (Target(f"sum by (model) (tsr_input_drift_window_images{{{M}}})", "{{model}}"),),
                    "Input images in the rolling drift window (PSI is NaN until it is full).",
                    unit="short",
                    width=24,
                    height=6,
                    options=ts,
                ),
            ),
        ),
    )


def _layout(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Rows one under another; each panel goes where it sits highest (leftmost on ties), like Grafana's
    gravity, so a tall panel gets shorter ones stacked beside it instead of a gap."""
    panels: list[dict[str, Any]] = []
    heights = [0] * 24  # the lowest occupied y per grid column
    next_id = 1
    for row in rows:
        y = max(heights)
        panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "id": next_id,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        next_id, heights = next_id + 1, [y + 1] * 24
        for panel in row.panels:
            x = min(range(25 - panel.width), key=lambda i: (max(heights[i : i + panel.width]), i))
            top = max(heights[x : x + panel.width])
            panels.append(panel.to_dict(next_id, x, top))
            next_id += 1
            heights[x : x + panel.width] = [top + panel.height] * panel.width
    return panels


def _templating() -> dict[str, Any]:
    return {
        "list": [
            {
                "current": {},
                "hide": 0,
                "includeAll": False,
                "label": "Data source",
                "multi": False,
                "name": "datasource",
                "options": [],
                "query": "prometheus",
                "refresh": 1,
                "regex": "",
                "type": "datasource",
            },
            {
                "allValue": ".*",
                "current": {},
                "datasource": DS,
                "definition": MODEL_QUERY,
                "hide": 0,
                "includeAll": True,
                "label": "Model",
                "multi": True,
                "name": "model",
                "options": [],
                "query": {"query": MODEL_QUERY, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "type": "query",
            },
        ]
    }


def build_dashboard(cfg: DashboardConfig | None = None) -> dict[str, Any]:
    """The dashboard JSON object (import it, or let the sidecar load the ConfigMap)."""
    cfg = cfg or DashboardConfig()
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DS,
                    "enable": True,
                    "expr": f"changes(tsr_model_loaded_timestamp_seconds{{{M}}}[{RI}]) > 0",
                    "iconColor": "purple",
                    "name": "Model reloads",
                    "titleFormat": "model reloaded",
                },
            ]
        },
        "description": "Traffic, latency, prediction quality and input drift of the GTSRB traffic-sign predictor.",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": _layout(_rows(cfg)),
        "refresh": cfg.refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["tsr", "kserve", "ml"],
        "templating": _templating(),
        "time": {"from": cfg.time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": cfg.title,
        "uid": cfg.uid,
        "version": 1,
    }


def dashboard_exprs(cfg: DashboardConfig | None = None, dashboard: dict[str, Any] | None = None) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets, annotations, the `model` variable."""
    board = dashboard if dashboard is not None else build_dashboard(cfg)
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(query.removeprefix("label_values(").rsplit(",", 1)[0])
    return exprs
