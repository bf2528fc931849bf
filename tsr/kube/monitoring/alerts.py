"""Alert and recording rules for the predictor, as typed Python: one source for every rendering.

The same `RuleGroup`s become a plain Prometheus rules file (`groups:`), the `spec` of a
prometheus-operator `PrometheusRule`, and the promtool unit tests that pin every alert down
(a firing and a quiet case each, inputs derived from the thresholds so they cannot drift apart).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.monitoring.metrics import LATENCY_BUCKETS

DEFAULT_JOB = "tsr-predictor"
DEFAULT_MODEL = "gtsrb-classifier"  # only labels the promtool test series
SEVERITIES = ("critical", "warning", "info")
RULES_FILE = "tsr-rules.yaml"

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_VALUE = re.compile(r'^[^"\\\n]*$')


def _seconds(duration: str) -> float:
    """A Prometheus duration ("1h30m") in seconds, for checks and test timing."""
    if not _DURATION.match(duration):
        raise ValueError(f"{duration!r} is not a Prometheus duration")
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration))


def _num(value: float) -> str:
    """A threshold as PromQL and prose show it: `0.5`, `2`, never `2.0` or `5e-02`."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class AlertConfig:
    """Every threshold and `for` duration of the alerts, with the defaults committed in manifests/monitoring.

    Defaults, and why:
    - job "tsr-predictor": the scrape job of the predictor (local Prometheus config; the Pod/ServiceMonitor
      take the job from the pods' `app.kubernetes.io/name` label, which is the same value).
    - rate_window 5m: at least four scrapes at a 15s-60s interval, short enough to page within minutes.
    - down_for 2m / absent_for 5m: a rolling restart or a reload must not page; a crash loop must.
    - latency_p99_seconds 0.5 for 10m: a small 32x32 classifier on CPU should answer well below that; half a
      second at p99 for ten minutes means queueing or CPU starvation, not one slow request. Tune it to
      the latencies measured under your traffic (benchmarks/).
    - error_ratio 0.05 for 5m: more than 1 in 20 requests failing on the server side is an outage.
    - rejection_ratio 0.25 for 15m: client mistakes are the client's, but a quarter of all traffic rejected
      usually means a broken client release or a protocol change on our side.
    - min_request_rate 0.05/s: below 3 requests a minute a single failure would be a "ratio"; stay quiet.
    - min_confidence 0.7 for 30m: on inputs like its training data a well-trained classifier's mean top-1
      probability sits far above this; a sustained drop means inputs it does not recognise (drift, wrong
      preprocessing). Set it from the mean confidence measured on the validation split. The probability is the
      calibrated one (softmax(logits / T), T fitted in training), so a mean of 0.7 means about 70 % of those
      predictions are right, and the threshold keeps its meaning when a new recipe makes raw logits sharper or flatter.
    - drift_psi 0.25 for 30m: the usual PSI rule of thumb (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major).
    - reload_window 15m: any failed champion reload in the last quarter hour (the old model keeps serving).
    """

    job: str = DEFAULT_JOB
    rate_window: str = "5m"
    down_for: str = "2m"
    absent_for: str = "5m"
    latency_p99_seconds: float = 0.5
    latency_for: str = "10m"
    error_ratio: float = 0.05
    error_for: str = "5m"
    rejection_ratio: float = 0.25
    rejection_for: str = "15m"
    min_request_rate: float = 0.05
    min_confidence: float = 0.7
    confidence_for: str = "30m"
    drift_psi: float = 0.25
    drift_for: str = "30m"
    reload_window: str = "15m"

    def __post_init__(self) -> None:
        if not self.job or not _LABEL_VALUE.match(self.job):
            raise ValueError(f"job {self.job!r} must be a non-empty label value without quotes or backslashes")
        durations = ("rate_window", "down_for", "absent_for", "latency_for", "error_for", "rejection_for")
        for name in (*durations, "confidence_for", "drift_for", "reload_window"):
            _seconds(getattr(self, name))
        for name in ("error_ratio", "rejection_ratio", "min_confidence"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must lie strictly between 0 and 1")
        if not LATENCY_BUCKETS[0] < self.latency_p99_seconds < LATENCY_BUCKETS[-2]:
            # Outside the buckets histogram_quantile cannot tell above from below the threshold.
            raise ValueError(f"latency_p99_seconds must lie within ({LATENCY_BUCKETS[0]}, {LATENCY_BUCKETS[-2]})")
        if self.min_request_rate < 0 or self.drift_psi <= 0:
            raise ValueError("min_request_rate must be >= 0 and drift_psi > 0")

    @property
    def selector(self) -> str:
        return f'job="{self.job}"'

    @property
    def records(self) -> RecordNames:
        return RecordNames.for_window(self.rate_window)


@dataclass(frozen=True)
class RecordNames:
    """Names of the recording rules (`level:metric:operations`, prefixed `tsr:`), window in the name."""

    requests: str
    errors: str
    rejections: str
    p99: str
    confidence: str

    @classmethod
    def for_window(cls, window: str) -> RecordNames:
        return cls(
            requests=f"tsr:requests:rate{window}",
            errors=f"tsr:request_errors:ratio_rate{window}",
            rejections=f"tsr:requests_rejected:ratio_rate{window}",
            p99=f"tsr:request_duration_seconds:p99_rate{window}",
            confidence=f"tsr:prediction_confidence:mean_rate{window}",
        )


@dataclass(frozen=True)
class RecordingRule:
    """A precomputed series, so alert expressions read as `<thing> > <threshold>`."""

    record: str
    expr: str

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class AlertRule:
    """One alert; `summary`/`description` are Prometheus templates, `runbook` says what to do first."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"alert name {self.name!r} is not a valid metric name")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        _seconds(self.for_)

    @property
    def all_labels(self) -> dict[str, str]:
        return {**self.labels, "severity": self.severity}

    def to_dict(self) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "alert": self.name,
            "expr": self.expr,
            "labels": self.all_labels,
            "annotations": {"summary": self.summary, "description": self.description, "runbook": self.runbook},
        }
        if _seconds(self.for_) > 0:
            rule["for"] = self.for_
        return rule


@dataclass(frozen=True)
class RuleGroup:
    """A Prometheus rule group: its rules are evaluated in order, so records come before their users."""

    name: str
    rules: tuple[RecordingRule | AlertRule, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": [r.to_dict() for r in self.rules]}


def recording_rules(cfg: AlertConfig) -> tuple[RecordingRule, ...]:
    """Per-model request rate, 5xx and rejection ratios, p99 latency, mean confidence (per version).

    Every aggregation keeps `namespace`: prometheus-operator's AlertmanagerConfig (manifests/retrain/)
    only matches alerts carrying the namespace label; locally the label is absent and changes nothing.
    """
    sel, w, rec = cfg.selector, cfg.rate_window, cfg.records
    return (
        RecordingRule(
            rec.requests, f"sum by (namespace, model) (rate(tsr_request_duration_seconds_count{{{sel}}}[{w}]))"
        ),
        RecordingRule(
            rec.errors,
            f'sum by (namespace, model) (rate(tsr_request_duration_seconds_count{{{sel}, code=~"5.."}}[{w}]))'
            f" / {rec.requests}",
        ),
        RecordingRule(
            rec.rejections,
            f"sum by (namespace, model) (rate(tsr_requests_rejected_total{{{sel}}}[{w}])) / {rec.requests}",
        ),
        RecordingRule(
            rec.p99,
            "histogram_quantile(0.99, sum by (namespace, model, le) "
            f"(rate(tsr_request_duration_seconds_bucket{{{sel}}}[{w}])))",
        ),
        RecordingRule(
            rec.confidence,
            f"sum by (namespace, model, version) (rate(tsr_prediction_confidence_sum{{{sel}}}[{w}]))"
            f" / sum by (namespace, model, version) (rate(tsr_prediction_confidence_count{{{sel}}}[{w}]))",
        ),
    )


def alert_rules(cfg: AlertConfig) -> tuple[AlertRule, ...]:
    """The alerts, thresholds from `cfg`; README's table describes them for people."""
    sel, rec = cfg.selector, cfg.records
    busy = f"and on (model) {rec.requests} > {_num(cfg.min_request_rate)}"
    pct = "{{ $value | humanizePercentage }}"
    value3 = '{{ $value | printf "%.3f" }}'
    failed = f'tsr_model_reloads_total{{{sel}, result="failure"}}'
    return (
        AlertRule(
            name="TSRPredictorDown",
            expr=f"up{{{sel}}} == 0",
            for_=cfg.down_for,
            severity="critical",
            summary="TSR predictor target {{ $labels.instance }} is down",
            description=(
                f"Prometheus job {{{{ $labels.job }}}} has failed to scrape {{{{ $labels.instance }}}} "
                f"for more than {cfg.down_for}: the pod is crashing, not ready, or /metrics is unreachable."
            ),
            runbook=(
                "kubectl -n <ns> get pods -l app.kubernetes.io/name=tsr-predictor; look at the kserve-container logs "
                "and events (OOMKilled, storage-initializer failure, failed readiness on /v2/models/<name>/ready)."
            ),
        ),
        AlertRule(
            name="TSRPredictorAbsent",
            expr=f"absent(up{{{sel}}})",
            for_=cfg.absent_for,
            severity="critical",
            summary=f"No target of job {cfg.job} is being scraped",
            description=(
                f"Prometheus has had no target for job {cfg.job} for {cfg.absent_for}: the InferenceService is "
                "gone, scaled to zero, or the PodMonitor/scrape config no longer selects its pods."
            ),
            runbook=(
                "kubectl -n <ns> get inferenceservice,pods; check the PodMonitor selector against the pod labels "
                "and Prometheus' /targets page (or the scrape config of the local Prometheus)."
            ),
        ),
        AlertRule(
            name="TSRHighLatencyP99",
            expr=f"{rec.p99} > {_num(cfg.latency_p99_seconds)}",
            for_=cfg.latency_for,
            severity="warning",
            summary=f"p99 latency of model {{{{ $labels.model }}}} is {value3}s",
            description=(
                f"The 99th percentile of end-to-end inference latency of {{{{ $labels.model }}}} has been above "
                f"{_num(cfg.latency_p99_seconds)}s for {cfg.latency_for} (now {value3}s)."
            ),
            runbook=(
                "Compare tsr_batch_queue_seconds and request_predict_seconds on the dashboard: queueing means too "
                "few replicas (raise maxReplicas / CPU), slow predict means CPU throttling or oversized batches."
            ),
        ),
        AlertRule(
            name="TSRHighErrorRate",
            expr=f"{rec.errors} > {_num(cfg.error_ratio)} {busy}",
            for_=cfg.error_for,
            severity="critical",
            summary=f"{pct} of requests to model {{{{ $labels.model }}}} fail with 5xx",
            description=(
                f"More than {_num(cfg.error_ratio * 100)}% of inference requests to {{{{ $labels.model }}}} "
                f"have ended in a 5xx status for {cfg.error_for} (now {pct})."
            ),
            runbook=(
                "Read the predictor logs for tracebacks; check tsr_model_reloads_total and the model version in "
                "tsr_model_info; roll back to the previous champion if a new version started it."
            ),
        ),
        AlertRule(
            name="TSRHighRejectionRate",
            expr=f"{rec.rejections} > {_num(cfg.rejection_ratio)} {busy}",
            for_=cfg.rejection_for,
            severity="warning",
            summary=f"{pct} of requests to model {{{{ $labels.model }}}} are rejected",
            description=(
                f"More than {_num(cfg.rejection_ratio * 100)}% of inference requests to {{{{ $labels.model }}}} "
                f"have been refused as client mistakes for {cfg.rejection_for} (now {pct})."
            ),
            runbook=(
                "See the rejection-by-reason panel (tsr_requests_rejected_total by reason): a new client release "
                "sending the wrong shape/dtype, oversized batches, or requests for a model name we do not serve."
            ),
        ),
        AlertRule(
            name="TSRLowConfidence",
            expr=f"{rec.confidence} < {_num(cfg.min_confidence)} {busy}",
            for_=cfg.confidence_for,
            severity="warning",
            summary=f"Mean confidence of model {{{{ $labels.model }}}} is {value3}",
            description=(
                f"The mean top-1 probability of {{{{ $labels.model }}}} version {{{{ $labels.version }}}} has been "
                f"below {_num(cfg.min_confidence)} for {cfg.confidence_for} (now {value3})."
            ),
            runbook=(
                "Check the drift PSI and channel-mean panels and the class distribution; sample recent inputs. "
                "Unfamiliar inputs call for retraining on fresh data, a new version for a rollback."
            ),
        ),
        AlertRule(
            name="TSRInputDrift",
            expr=f"max by (namespace, model) (tsr_input_drift_psi{{{sel}}}) > {_num(cfg.drift_psi)}",
            for_=cfg.drift_for,
            severity="warning",
            summary=f"Input drift of model {{{{ $labels.model }}}}: PSI {value3}",
            description=(
                f"The population stability index of input brightness against the training data has been above "
                f"{_num(cfg.drift_psi)} for {cfg.drift_for} (now {value3}): inputs differ markedly from training."
            ),
            runbook=(
                "Compare tsr_input_channel_mean with tsr_input_reference_channel_mean: a camera or encoding change "
                "upstream, or a new environment (night, weather). Collect samples and retrain if it persists."
            ),
        ),
        AlertRule(
            name="TSRModelReloadFailed",
            # The failure counter is born at 1 on a process's first failure, which increase() cannot see:
            # a failure series that did not exist `reload_window` ago counts as well.
            expr=(
                f"sum by (namespace, model) (increase({failed}[{cfg.reload_window}]) > 0"
                f" or ({failed} unless {failed} offset {cfg.reload_window})) > 0"
            ),
            for_="0s",
            severity="warning",
            summary="Champion reload of model {{ $labels.model }} failed",
            description=(
                f"At least one champion reload of {{{{ $labels.model }}}} failed in the last {cfg.reload_window}; "
                "the previously loaded version keeps serving."
            ),
            runbook=(
                "Read the predictor logs around the failure: registry unreachable, checksum mismatch, or a "
                "version whose architecture the predictor cannot load. Fix or re-point the champion alias."
            ),
        ),
    )


def rule_groups(cfg: AlertConfig | None = None) -> tuple[RuleGroup, ...]:
    cfg = cfg or AlertConfig()
    return (
        RuleGroup("tsr-predictor.records", recording_rules(cfg)),
        RuleGroup("tsr-predictor.alerts", alert_rules(cfg)),
    )


def rules_file(cfg: AlertConfig | None = None) -> dict[str, Any]:
    """The plain Prometheus rules file (`rule_files:` of prometheus.yml, `promtool check rules`)."""
    return {"groups": [g.to_dict() for g in rule_groups(cfg)]}


def prometheus_rule(
    cfg: AlertConfig | None = None,
    *,
    name: str = "tsr-predictor",
    namespace: str = "tsr",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The same groups as a prometheus-operator PrometheusRule (its ruleSelector may need extra labels)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": rules_file(cfg),
    }


# ---- promtool unit tests -------------------------------------------------------------------------
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def _render(template: str, labels: Mapping[str, str], value: float) -> str:
    """What Prometheus' template engine makes of our (deliberately few) template forms."""

    def one(match: re.Match[str]) -> str:
        expr = match.group(1)
        if expr.startswith("$labels."):
            return labels.get(expr[len("$labels.") :], "")
        if expr == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"  # Go's %.4g%%, which Python's %g matches for finite values
        if expr == '$value | printf "%.3f"':
            return f"{value:.3f}"
        raise ValueError(f"template form {{{{ {expr} }}}} is unknown to the test generator")

    return _TEMPLATE.sub(one, template)


def _series(metric: str, labels: Mapping[str, str]) -> str:
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{body}}}"


@dataclass(frozen=True)
class _Case:
    """One promtool test: input series, then one alert checked at one time (empty `expect`: quiet)."""

    name: str
    alert: AlertRule
    series: tuple[tuple[str, str], ...]
    eval_time: str
    expect: tuple[tuple[dict[str, str], float], ...] = ()

    def to_dict(self, interval: str) -> dict[str, Any]:
        exp = [
            {
                "exp_labels": {**labels, **self.alert.all_labels},
                "exp_annotations": {
                    "summary": _render(self.alert.summary, labels, value),
                    "description": _render(self.alert.description, labels, value),
                    "runbook": self.alert.runbook,
                },
            }
            for labels, value in self.expect
        ]
        checks = [{"eval_time": self.eval_time, "alertname": self.alert.name, "exp_alerts": exp}]
        hold = int(_seconds(self.alert.for_) // 60)
        if exp and hold >= 2:
            # Conditions hold from the first minutes on: a minute before `for` has passed it is only pending.
            checks.insert(0, {"eval_time": f"{hold - 1}m", "alertname": self.alert.name, "exp_alerts": []})
        return {
            "name": self.name,
            "interval": interval,
            "input_series": [{"series": s, "values": v} for s, v in self.series],
            "alert_rule_test": checks,
        }


def _quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """histogram_quantile as Prometheus 2.x computes it (linear within the bucket), for expected values."""
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    start, count = 0.0, cumulative[b]
    if b > 0:
        start, count, rank = bounds[b - 1], count - cumulative[b - 1], rank - cumulative[b - 1]
    return start + (bounds[b] - start) * (rank / count)


def _test_cases(cfg: AlertConfig, model: str) -> list[_Case]:
    """A firing and a quiet case per alert; inputs sit well either side of each threshold."""
    alerts = {a.name: a for a in alert_rules(cfg)}
    job = {"job": cfg.job, "instance": "tsr-predictor-0:8080"}
    steps = int((_seconds(cfg.rate_window) + max(_seconds(a.for_) for a in alerts.values())) // 60) + 10
    late = f"{steps - 2}m"  # long after every rate window has filled and every `for` has passed
    per_min = 600.0  # requests per minute (10/s) in the busy cases

    def counter(increment: float) -> str:
        return f"0+{_num(increment)}x{steps}"

    def gauge(value: float) -> str:
        # "NaNx5" would lex as one identifier: spell NaN out once per step.
        return " ".join(["NaN"] * (steps + 1)) if math.isnan(value) else f"{_num(value)}x{steps}"

    m = {**job, "model": model}
    ok = {**m, "protocol": "v2", "code": "200"}
    cases: list[_Case] = []

    # Down / absent ---------------------------------------------------------------------------------
    down, absent = alerts["TSRPredictorDown"], alerts["TSRPredictorAbsent"]
    cases += [
        _Case("predictor down fires", down, ((_series("up", job), gauge(0)),), late, ((job, 0.0),)),
        _Case("predictor up is quiet", down, ((_series("up", job), gauge(1)),), late),
        _Case(
            "no target of the job fires absent",
            absent,
            ((_series("up", {"job": "some-other-job", "instance": "x:9090"}), gauge(1)),),
            late,
            (({"job": cfg.job}, 1.0),),
        ),
        _Case("a scraped target keeps absent quiet", absent, ((_series("up", job), gauge(0)),), late),
    ]

    # Latency ----------------------------------------------------------------------------------------
    latency = alerts["TSRHighLatencyP99"]
    bounds = [*LATENCY_BUCKETS, math.inf]

    def latency_series(slow: bool) -> tuple[tuple[str, str], ...]:
        # Every request lands in one bucket: just above the threshold (slow) or the first one (fast).
        upper = next(i for i, b in enumerate(bounds) if b > cfg.latency_p99_seconds) + 1 if slow else 0
        rows = [
            (
                _series("tsr_request_duration_seconds_bucket", {**ok, "le": _le(b)}),
                counter(per_min if i >= upper else 0),
            )
            for i, b in enumerate(bounds)
        ]
        rows.append((_series("tsr_request_duration_seconds_count", ok), counter(per_min)))
        return tuple(rows)

    slow_bucket = next(i for i, b in enumerate(bounds) if b > cfg.latency_p99_seconds) + 1
    cum = [per_min / 60 if i >= slow_bucket else 0.0 for i in range(len(bounds))]
    p99 = _quantile(0.99, bounds, cum)
    cases += [
        _Case("slow requests fire p99 latency", latency, latency_series(True), late, (({"model": model}, p99),)),
        _Case("fast requests keep p99 latency quiet", latency, latency_series(False), late),
    ]

    # 5xx and rejections -----------------------------------------------------------------------------
    def split(share: float, bad_code: str, rejected: bool, total: float = per_min) -> tuple[tuple[str, str], ...]:
        bad = total * share
        rows = [
            (_series("tsr_request_duration_seconds_count", ok), counter(total - bad)),
            (_series("tsr_request_duration_seconds_count", {**ok, "code": bad_code}), counter(bad)),
        ]
        if rejected:
            rows.append((_series("tsr_requests_rejected_total", {**m, "reason": "bad_shape"}), counter(bad)))
        return tuple(rows)

    errors, rejections = alerts["TSRHighErrorRate"], alerts["TSRHighRejectionRate"]
    err_hi, err_lo = (1 + cfg.error_ratio) / 2, cfg.error_ratio / 2
    rej_hi, rej_lo = (1 + cfg.rejection_ratio) / 2, cfg.rejection_ratio / 2
    idle = cfg.min_request_rate * 60 / 2  # requests per minute below the traffic floor
    cases += [
        _Case("5xx above the ratio fires", errors, split(err_hi, "500", False), late, (({"model": model}, err_hi),)),
        _Case("5xx below the ratio is quiet", errors, split(err_lo, "500", False), late),
        _Case("5xx on an idle model is quiet", errors, split(err_hi, "500", False, idle), late),
        _Case(
            "rejections above the ratio fire",
            rejections,
            split(rej_hi, "400", True),
            late,
            (({"model": model}, rej_hi),),
        ),
        _Case("rejections below the ratio are quiet", rejections, split(rej_lo, "400", True), late),
    ]

    # Confidence -------------------------------------------------------------------------------------
    conf = alerts["TSRLowConfidence"]
    mv = {**m, "version": "v1"}

    def confidence(mean: float) -> tuple[tuple[str, str], ...]:
        return (
            (_series("tsr_request_duration_seconds_count", ok), counter(per_min)),
            (_series("tsr_prediction_confidence_sum", mv), counter(per_min * mean)),
            (_series("tsr_prediction_confidence_count", mv), counter(per_min)),
        )

    low, high = cfg.min_confidence / 2, (1 + cfg.min_confidence) / 2
    cases += [
        _Case(
            "low mean confidence fires",
            conf,
            confidence(low),
            late,
            (({"model": model, "version": "v1"}, low),),
        ),
        _Case("high mean confidence is quiet", conf, confidence(high), late),
    ]

    # Drift ------------------------------------------------------------------------------------------
    drift = alerts["TSRInputDrift"]
    psi = _series("tsr_input_drift_psi", m)
    cases += [
        _Case(
            "PSI above the threshold fires",
            drift,
            ((psi, gauge(cfg.drift_psi * 2)),),
            late,
            (({"model": model}, cfg.drift_psi * 2),),
        ),
        _Case("PSI below the threshold is quiet", drift, ((psi, gauge(cfg.drift_psi / 2)),), late),
        _Case("PSI still NaN (window not full) is quiet", drift, ((psi, gauge(math.nan)),), late),
    ]

    # Reloads ----------------------------------------------------------------------------------------
    reload = alerts["TSRModelReloadFailed"]
    fail, success = {**m, "result": "failure"}, {**m, "result": "success"}
    cases += [
        _Case(
            "a failed reload fires",
            reload,
            ((_series("tsr_model_reloads_total", fail), f"0 0 0 1x{steps - 3}"),),
            "5m",
            (({"model": model}, 1.0),),
        ),
        _Case(
            "a process's first failed reload (counter born at 1) fires",
            reload,
            ((_series("tsr_model_reloads_total", fail), f"_x3 1x{steps - 3}"),),
            "5m",
            (({"model": model}, 1.0),),
        ),
        _Case(
            "a failure older than the window is quiet",
            reload,
            ((_series("tsr_model_reloads_total", fail), gauge(1)),),
            late,
        ),
        _Case(
            "successful reloads are quiet",
            reload,
            (
                (_series("tsr_model_reloads_total", fail), gauge(0)),
                (_series("tsr_model_reloads_total", success), f"0 0 0 1x{steps - 3}"),
            ),
            "5m",
        ),
    ]
    return cases


def _le(bound: float) -> str:
    """The `le` label as prometheus-client writes it ("0.005", "1.0", "+Inf")."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def promtool_tests(cfg: AlertConfig | None = None, rules_path: str = f"../{RULES_FILE}") -> dict[str, Any]:
    """`promtool test rules` input for the rules file at `rules_path` (relative to the test file)."""
    cfg = cfg or AlertConfig()
    return {
        "rule_files": [rules_path],
        "evaluation_interval": "1m",
        "tests": [c.to_dict("1m") for c in _test_cases(cfg, DEFAULT_MODEL)],
    }
