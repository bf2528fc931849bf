"""The monitoring contract end to end: a real predictor, scraped by a real Prometheus every second,
loading the shipped alert rules; real GTSRB images and real client mistakes go in over HTTP, and
every assertion reads the result back THROUGH PROMETHEUS (PromQL on /api/v1/query), so a metric
that is exported but unscrapable, mislabelled or misnamed fails here, as does a rule or dashboard
query that Prometheus cannot evaluate.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tsr.core.gtsrb import CLASS_NAMES
from tsr.core.processes import free_port
from tsr.local.checkout import REPO_ROOT
from tsr.local.prometheus_server import (
    LocalPrometheus,
    PrometheusConfig,
    PrometheusError,
    Sample,
    find_prometheus_binary,
    sample_value,
)

NAME = "gtsrb-classifier"
JOB = "tsr-predictor"
MONITORING = REPO_ROOT / "manifests" / "monitoring"
RULES = MONITORING / "tsr-rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# 150 images: more than the drift monitor's default minimum (100) so the PSI is a number, fewer
# than its window (1000) so the window gauge counts every one.
V1_BATCHES, V2_BATCHES, BATCH = 4, 2, 25
# Grafana's variables, as the dashboard would expand them for this model.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "1m",
    "${__interval}": "1m",
    "$__range": "5m",
    "${__range}": "5m",
    "${model}": NAME,
    "$model": NAME,
}
WAIT_S = 20.0  # for values one or two scrapes (1 s each) away


@dataclass
class Traffic:
    """What the test sent, tallied from the HTTP side, to compare with what Prometheus saw."""

    images: int
    requests_ok: int
    predicted: Counter[tuple[str, str]]  # (class_id, class_name) -> predictions, from the responses
    rejected: Counter[str]  # reason -> requests refused with it
    finished_at: float  # unix time after the last response


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    binary = find_prometheus_binary()
    if binary is None:
        pytest.fail(
            "no `prometheus` binary on PATH or in .tools/bin: install Debian's prometheus package: make prometheus"
        )
    return binary


@pytest.fixture(scope="module")
def rule_file() -> Path:
    if not RULES.is_file():
        pytest.fail(f"{RULES} is missing: generate it with `python -m tsr.kube.monitoring`")
    return RULES


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tsrnet with a drift reference (the predictor exports drift gauges against it)."""
    return make_model_dir(tmp_path_factory.mktemp("prom-model") / "model")


@pytest.fixture(scope="module")
def request_images(gtsrb_root: Path) -> list[Path]:
    """Real GTSRB images spread over all 43 classes and over each class's tracks."""
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    per_class = [sorted((training / f"{c:05d}").glob("*.ppm")) for c in range(len(CLASS_NAMES))]
    count = (V1_BATCHES + V2_BATCHES) * BATCH
    return [per_class[i % 43][(i // 43) * 37 % len(per_class[i % 43])] for i in range(count)]


@pytest.fixture(scope="module")
def predictor(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m serving` in a subprocess on a free loopback port; its base URL."""
    root = tmp_path_factory.mktemp("prom-serve")
    args = ["--model", str(model_dir), "--model-name", NAME, "--http-port", str(free_port()), "--threads", "1"]
    with running_predictor(args, root / "server.log", env={"TSR_STATE_DIR": str(root / "state")}, name=NAME) as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(
    predictor: str, prometheus_binary: Path, rule_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPrometheus]:
    """A real Prometheus scraping the predictor every second as job tsr-predictor, with the rules loaded."""
    target = predictor.removeprefix("http://")
    config = PrometheusConfig(
        root=tmp_path_factory.mktemp("prometheus"), targets=[target], job_name=JOB, rule_files=[rule_file]
    )
    server = LocalPrometheus(config, prometheus_binary)
    server.start()
    try:
        server.wait_for(f'up{{job="{JOB}"}} == 1', bool, timeout_s=30)
        yield server
    finally:
        server.stop()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def traffic(predictor: str, prometheus: LocalPrometheus, request_images: list[Path]) -> Traffic:
    """Real images over V1 (b64 instances) and V2 (BYTES), then client mistakes with known reasons."""
    predicted: Counter[tuple[str, str]] = Counter()
    batches = [request_images[i : i + BATCH] for i in range(0, len(request_images), BATCH)]
    with httpx.Client(base_url=predictor, timeout=60) as client:
        for batch in batches[:V1_BATCHES]:
            resp = client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"b64": _b64(p)} for p in batch]})
            assert resp.status_code == 200, resp.text
            for pred in resp.json()["predictions"]:
                predicted[(str(pred["class_id"]), pred["class_name"])] += 1
        for batch in batches[V1_BATCHES:]:
            data = [_b64(p) for p in batch]
            body = {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
            resp = client.post(f"/v2/models/{NAME}/infer", json=body)
            assert resp.status_code == 200, resp.text
            outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
            for class_id, class_name in zip(outputs["class_id"], outputs["class_name"], strict=True):
                predicted[(str(class_id), class_name)] += 1
        rejected: Counter[str] = Counter()
        headers = {"content-type": "application/json"}
        bad: list[tuple[str, str, bytes]] = [
            ("malformed_json", f"/v1/models/{NAME}:predict", b'{"instances": [{"b64": '),
            ("malformed_json", f"/v2/models/{NAME}/infer", b"not json at all"),
            ("bad_shape", f"/v1/models/{NAME}:predict", json.dumps({"instances": [[[1, 2], [3, 4]]]}).encode()),
            (
                "bad_shape",
                f"/v2/models/{NAME}/infer",
                json.dumps(
                    {"inputs": [{"name": "image", "shape": [1, 4, 4], "datatype": "UINT8", "data": [0] * 16}]}
                ).encode(),
            ),
            (
                "undecodable_image",
                f"/v1/models/{NAME}:predict",
                json.dumps({"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}).encode(),
            ),
        ]
        for reason, path, content in bad:
            resp = client.post(path, content=content, headers=headers)
            assert resp.status_code == 400, f"{reason}: {resp.status_code} {resp.text}"
            rejected[reason] += 1
    return Traffic(
        images=len(request_images),
        requests_ok=len(batches),
        predicted=predicted,
        rejected=rejected,
        finished_at=time.time(),
    )


def _values(result: list[Sample], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): sample_value(s) for s in result}


def _equals(expected: float) -> Callable[[list[Sample]], bool]:
    return lambda result: len(result) == 1 and sample_value(result[0]) == expected


def test_prometheus_scrapes_the_predictor(prometheus: LocalPrometheus, predictor: str) -> None:
    targets = prometheus.api("targets")["activeTargets"]
    assert [(t["labels"]["job"], t["scrapeUrl"], t["health"]) for t in targets] == [(JOB, f"{predictor}/metrics", "up")]


def test_kserve_latency_histograms(prometheus: LocalPrometheus, traffic: Traffic) -> None:
    result = prometheus.wait_for(
        f'sum(request_predict_seconds_count{{model_name="{NAME}"}})',
        lambda r: bool(r) and sample_value(r[0]) > 0,
        timeout_s=WAIT_S,
    )
    assert sample_value(result[0]) > 0


def test_request_duration_histogram(prometheus: LocalPrometheus, traffic: Traffic) -> None:
    buckets = prometheus.wait_for(f'tsr_request_duration_seconds_bucket{{model="{NAME}"}}', bool, timeout_s=WAIT_S)
    assert {s["metric"]["le"] for s in buckets} >= {"0.001", "10.0", "+Inf"}
    ok = prometheus.wait_for(
        f'sum(tsr_request_duration_seconds_count{{model="{NAME}", code="200"}})',
        _equals(traffic.requests_ok),
        timeout_s=WAIT_S,
    )
    assert sample_value(ok[0]) == traffic.requests_ok


def test_predictions_per_class(prometheus: LocalPrometheus, traffic: Traffic) -> None:
    total = prometheus.wait_for(f'sum(tsr_predictions_total{{model="{NAME}"}})', _equals(traffic.images), WAIT_S)
    assert sample_value(total[0]) == traffic.images
    per_class = prometheus.query(f'sum by (class_id, class_name) (tsr_predictions_total{{model="{NAME}"}}) > 0')
    seen = {(s["metric"]["class_id"], s["metric"]["class_name"]): sample_value(s) for s in per_class}
    # The model is untrained, so the classes it predicted (from the responses) are what must add up.
    assert seen == {key: float(n) for key, n in traffic.predicted.items()}


def test_rejections_by_reason(prometheus: LocalPrometheus, traffic: Traffic) -> None:
    expected = {reason: float(n) for reason, n in traffic.rejected.items()}
    query = f'sum by (reason) (tsr_requests_rejected_total{{model="{NAME}"}}) > 0'
    result = prometheus.wait_for(query, lambda r: _values(r, "reason") == expected, timeout_s=WAIT_S)
    assert _values(result, "reason") == expected


def test_drift_gauges(prometheus: LocalPrometheus, traffic: Traffic) -> None:
    window = prometheus.wait_for(
        f'tsr_input_drift_window_images{{model="{NAME}"}}', _equals(traffic.images), timeout_s=WAIT_S
    )
    assert sample_value(window[0]) == traffic.images
    psi = prometheus.query(f'tsr_input_drift_psi{{model="{NAME}"}}')
    assert len(psi) == 1, psi
    value = sample_value(psi[0])
    assert math.isfinite(value) and value >= 0, f"PSI over {traffic.images} images should be a number, got {value}"
    channels = prometheus.query(f'tsr_input_channel_mean{{model="{NAME}"}}')
    assert {s["metric"]["channel"] for s in channels} == {"red", "green", "blue"}


def test_model_info(prometheus: LocalPrometheus, traffic: Traffic) -> None:
    info = prometheus.wait_for(f'tsr_model_info{{model="{NAME}"}}', bool, timeout_s=WAIT_S)
    assert len(info) == 1 and sample_value(info[0]) == 1, info


def _evaluated_after(groups: list[dict[str, Any]], when: float) -> bool:
    stamps = [rule.get("lastEvaluation", "") for group in groups for rule in group["rules"]]
    return bool(stamps) and all(
        s and not s.startswith("0001") and datetime.fromisoformat(s).timestamp() > when for s in stamps
    )


def test_rules_load_and_evaluate_cleanly(prometheus: LocalPrometheus, traffic: Traffic, rule_file: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    groups = prometheus.rules()
    while not _evaluated_after(groups, traffic.finished_at) and time.monotonic() < deadline:
        time.sleep(0.5)
        groups = prometheus.rules()
    assert _evaluated_after(groups, traffic.finished_at), f"rules not evaluated since the traffic: {groups}"
    document = yaml.safe_load(rule_file.read_text())
    declared = [g["name"] for g in document["groups"]]
    assert sorted(g["name"] for g in groups) == sorted(declared)
    broken = [
        (group["name"], rule["name"], rule.get("lastError"))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert not broken, broken


def _panel_exprs(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target, including panels nested in (collapsed) rows."""
    found: list[tuple[str, str]] = []
    for panel in panels:
        found += [(panel.get("title", "?"), t["expr"]) for t in panel.get("targets", []) if t.get("expr")]
        found += _panel_exprs(panel.get("panels", []))
    return found


def test_dashboard_queries_evaluate(prometheus: LocalPrometheus, traffic: Traffic) -> None:
    if not DASHBOARD.is_file():
        pytest.fail(f"{DASHBOARD} is missing: generate it with `python -m tsr.kube.monitoring`")
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _panel_exprs(dashboard["panels"])
    assert exprs, f"no PromQL targets in {DASHBOARD}"
    failures: list[str] = []
    # The model picker: Grafana's label_values(metric, label) is the label-values API with a match[].
    for variable in dashboard.get("templating", {}).get("list", []):
        spec = variable.get("query")
        text = spec.get("query", "") if isinstance(spec, dict) else str(spec or "")
        picker = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text.strip())
        if picker is not None:
            values = prometheus.api(f"label/{picker.group(2)}/values", {"match[]": picker.group(1)})
            if NAME not in values:
                failures.append(f"variable {variable['name']}: {text} offers {values}, not {NAME}")
    for title, expr in exprs:
        query = expr
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        if "$" in query:
            failures.append(f"{title}: unknown Grafana variable in {expr!r}")
            continue
        try:
            prometheus.query(query)
        except PrometheusError as exc:
            failures.append(f"{title}: {exc}")
    assert not failures, "\n".join(failures)
