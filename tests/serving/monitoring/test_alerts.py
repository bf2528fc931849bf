"""The committed alert rules pass the real promtool (syntax and unit tests), the PrometheusRule carries
the same groups, every expr names metrics the predictor (or KServe, or a recording rule) exports, and
thresholds in AlertConfig drive both the exprs and the promtool tests."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kserve.metrics
import pytest
import yaml
from prometheus_client import CollectorRegistry

from serving.monitoring.metrics import PredictorMetrics
from tsr.kube.monitoring.alerts import AlertConfig, AlertRule, RecordingRule, alert_rules, rule_groups
from tsr.kube.monitoring.generate import metric_names, render_all, rule_exprs
from tsr.local.checkout import REPO_ROOT

MONITORING = REPO_ROOT / "manifests" / "monitoring"
RULES = MONITORING / "tsr-rules.yaml"
RULE_TESTS = MONITORING / "tests" / "tsr-rules.test.yaml"
REQUIRED_ALERTS = {
    "TSRPredictorDown",
    "TSRPredictorAbsent",
    "TSRHighLatencyP99",
    "TSRHighErrorRate",
    "TSRHighRejectionRate",
    "TSRLowConfidence",
    "TSRInputDrift",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: install Debian's prometheus package (make prometheus)")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _known_names() -> set[str]:
    """Independent of the generator: series names from the live metric objects of the predictor and KServe."""
    registry = CollectorRegistry()
    PredictorMetrics.create(registry)
    families = [(f.name, f.type) for f in registry.collect()]
    kserve_hists = [
        kserve.metrics.PRE_HIST_TIME,
        kserve.metrics.PREDICT_HIST_TIME,
        kserve.metrics.POST_HIST_TIME,
        kserve.metrics.EXPLAIN_HIST_TIME,
    ]
    families += [(h.describe()[0].name, "histogram") for h in kserve_hists]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"], "gauge": [""]}
    names = {name + s for name, kind in families for s in suffixes[kind]}
    records = {r["record"] for g in _load(RULES)["groups"] for r in g["rules"] if "record" in r}
    return names | records | {"up"}


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES))
    _ok(result)
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests(promtool: str) -> None:
    _ok(_run(promtool, "test", "rules", str(RULE_TESTS)))


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = _load(RULE_TESTS)["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        checks = case["alert_rule_test"]
        # A firing case may also check that the alert is still pending before `for` has passed.
        (firing if any(c["exp_alerts"] for c in checks) else quiet).update(c["alertname"] for c in checks)
        for check in checks:
            for alert in check["exp_alerts"]:
                assert alert["exp_labels"]["severity"] in {"critical", "warning"}
                assert {"summary", "description", "runbook"} <= set(alert["exp_annotations"])
    alerts = {r["alert"] for g in _load(RULES)["groups"] for r in g["rules"] if "alert" in r}
    assert alerts >= REQUIRED_ALERTS
    assert firing == alerts and quiet == alerts


def test_prometheus_rule_carries_the_plain_groups() -> None:
    plain = _load(RULES)
    (obj,) = yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text())
    assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "PrometheusRule"
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    assert obj["spec"]["groups"] == plain["groups"]


def test_records_come_before_alerts_and_are_prefixed() -> None:
    groups = rule_groups()
    records = [r for g in groups for r in g.rules if isinstance(r, RecordingRule)]
    assert records and all(r.record.startswith("tsr:") for r in records)
    assert [type(r) for r in groups[0].rules] == [RecordingRule] * len(groups[0].rules)
    assert all(isinstance(r, AlertRule) for r in groups[1].rules)


def test_every_expr_names_exported_metrics() -> None:
    known = _known_names()
    for group in _load(RULES)["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, f"no metric found in {rule['expr']!r}"
            assert names <= known, f"{rule.get('alert') or rule.get('record')}: unknown {names - known}"


def test_metric_name_regex() -> None:
    expr = (
        'sum by (model, le) (rate(tsr_x_bucket{job="a", code=~"5.."}[5m])) / on (model) group_left (version) '
        "tsr:requests:rate5m > 0.5 and absent(up) unless bool foo_total offset 5m"
    )
    assert metric_names(expr) == {"tsr_x_bucket", "tsr:requests:rate5m", "up", "foo_total"}
    assert metric_names('tsr_model_info{model=~"$model"}') == {"tsr_model_info"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(a_bucket[$__rate_interval])))") == {"a_bucket"}


def test_generator_refuses_unknown_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    import tsr.kube.monitoring.generate as generate

    monkeypatch.setattr(generate, "rule_exprs", lambda cfg=None: [*rule_exprs(cfg), "rate(tsr_no_such_metric[5m])"])
    with pytest.raises(ValueError, match="tsr_no_such_metric"):
        generate.render_all()


def test_threshold_changes_the_rendered_expr() -> None:
    default = {a.name: a for a in alert_rules(AlertConfig())}
    changed = {
        a.name: a
        for a in alert_rules(
            AlertConfig(drift_psi=0.4, latency_p99_seconds=1.5, error_ratio=0.1, min_confidence=0.6, job="tsr-x")
        )
    }
    assert default["TSRInputDrift"].expr.endswith("> 0.25")
    assert changed["TSRInputDrift"].expr.endswith("> 0.4")
    assert changed["TSRHighLatencyP99"].expr.endswith("> 1.5")
    assert "> 0.1 and" in changed["TSRHighErrorRate"].expr
    assert "< 0.6 and" in changed["TSRLowConfidence"].expr
    assert changed["TSRPredictorDown"].expr == 'up{job="tsr-x"} == 0'
    assert "0.4" in changed["TSRInputDrift"].description
    later = {a.name: a for a in alert_rules(AlertConfig(drift_for="1h"))}
    assert later["TSRInputDrift"].to_dict()["for"] == "1h"
    # Only the rejection alert keeps its expr: it reads recording rules alone and its threshold did not move.
    assert {n for n, a in changed.items() if a.expr == default[n].expr} == {"TSRHighRejectionRate"}


def test_promtool_tests_follow_the_thresholds(promtool: str, tmp_path: Path) -> None:
    """Tests rendered for other thresholds pass against rules rendered for them, and fail against the defaults."""
    cfg = dataclasses.replace(
        AlertConfig(),
        drift_psi=0.6,
        latency_p99_seconds=2.0,
        error_ratio=0.2,
        rejection_ratio=0.5,
        min_confidence=0.5,
        confidence_for="1h",
        rate_window="2m",
    )
    files = render_all(alerts=cfg)
    for rel in ("tsr-rules.yaml", "tests/tsr-rules.test.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(files[rel])
    _ok(_run(promtool, "check", "rules", str(tmp_path / "tsr-rules.yaml")))
    _ok(_run(promtool, "test", "rules", str(tmp_path / "tests" / "tsr-rules.test.yaml")))
    (tmp_path / "tsr-rules.yaml").write_text(RULES.read_text())  # default thresholds, other tests
    stale = _run(promtool, "test", "rules", str(tmp_path / "tests" / "tsr-rules.test.yaml"))
    assert stale.returncode != 0
    assert "TSRInputDrift" in stale.stdout + stale.stderr


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_ratio": 1.5},
        {"min_confidence": 0},
        {"latency_p99_seconds": 60.0},
        {"drift_for": "soon"},
        {"job": 'a"b'},
        {"drift_psi": 0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AlertConfig(**kwargs)
