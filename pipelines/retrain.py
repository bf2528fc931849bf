"""Alerts back to training: an Alertmanager webhook receiver that starts a retraining run.

Alertmanager POSTs its webhook payload (version 4) when an alert group fires or resolves. A
firing alert whose name is in `RetrainPolicy.alerts` (input drift, low confidence by default)
starts one pipeline run through a `Trigger`: the KFP backend on a cluster (`KfpTrigger`), or
any callable locally (`tsr loop` runs the pipeline in-process). The policy keeps one alert
storm from starting a run per notification: a cooldown between runs and a daily cap.

The new model then goes through the same gate, champion comparison and rollout as every run;
the receiver never promotes anything itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, generate_latest

log = logging.getLogger(__name__)

DEFAULT_ALERTS = ("TSRInputDrift", "TSRLowConfidence")
OUTCOMES = ("started", "cooldown", "daily_cap", "ignored", "failed")
MAX_PAYLOAD_BYTES = 1 << 20  # Alertmanager groups are small; anything larger is not from it


@dataclass(frozen=True)
class RetrainPolicy:
    """Which alerts retrain, and how often at most."""

    alerts: tuple[str, ...] = DEFAULT_ALERTS
    cooldown_s: float = 6 * 3600.0
    max_runs_per_day: int = 4

    def __post_init__(self) -> None:
        if not self.alerts:
            raise ValueError("RetrainPolicy.alerts must name at least one alert")
        if self.cooldown_s < 0:
            raise ValueError(f"RetrainPolicy.cooldown_s must be >= 0, got {self.cooldown_s}")
        if self.max_runs_per_day < 1:
            raise ValueError(f"RetrainPolicy.max_runs_per_day must be >= 1, got {self.max_runs_per_day}")


@dataclass(frozen=True)
class Alert:
    name: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(frozen=True)
class Decision:
    outcome: str  # one of OUTCOMES
    reason: str
    run: str | None = None
    alerts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason, "run": self.run, "alerts": list(self.alerts)}


class Trigger(Protocol):
    def __call__(self, reason: str) -> str:
        """Start one retraining run; returns its id (or URL). Raises on failure."""
        ...


class PayloadError(ValueError):
    """The body is not an Alertmanager webhook payload; the message names the field."""


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PayloadError(f"{where} must be an object of strings")
    return dict(value)


def parse_alertmanager(payload: Any) -> list[Alert]:
    """The alerts of an Alertmanager webhook payload (version 4), validated field by field."""
    if not isinstance(payload, Mapping):
        raise PayloadError("payload must be a JSON object")
    if str(payload.get("version", "")) != "4":
        raise PayloadError(f'version must be "4" (Alertmanager\'s webhook format), got {payload.get("version")!r}')
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts must be a list")
    parsed = []
    for i, raw in enumerate(alerts):
        if not isinstance(raw, Mapping):
            raise PayloadError(f"alerts[{i}] must be an object")
        status = raw.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{i}].status must be 'firing' or 'resolved', got {status!r}")
        labels = _str_map(raw.get("labels"), f"alerts[{i}].labels")
        if "alertname" not in labels:
            raise PayloadError(f"alerts[{i}].labels.alertname is missing")
        parsed.append(
            Alert(labels["alertname"], status, labels, _str_map(raw.get("annotations"), f"alerts[{i}].annotations"))
        )
    return parsed


@dataclass
class RetrainController:
    """Decides, under the policy, whether a notification starts a run; thread-safe."""

    trigger: Trigger
    policy: RetrainPolicy = field(default_factory=RetrainPolicy)
    clock: Callable[[], float] = time.time
    _started: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, alerts: Sequence[Alert]) -> Decision:
        firing = sorted({a.name for a in alerts if a.status == "firing" and a.name in self.policy.alerts})
        if not firing:
            return Decision("ignored", "no firing alert that retrains (" + ", ".join(self.policy.alerts) + ")")
        with self._lock:
            now = self.clock()
            while self._started and now - self._started[0] >= 86400:
                self._started.popleft()
            if self._started and now - self._started[-1] < self.policy.cooldown_s:
                wait = self.policy.cooldown_s - (now - self._started[-1])
                return Decision(
                    "cooldown",
                    f"last run started {now - self._started[-1]:.0f}s ago; next in {wait:.0f}s",
                    alerts=tuple(firing),
                )
            if len(self._started) >= self.policy.max_runs_per_day:
                return Decision(
                    "daily_cap", f"{len(self._started)} runs in the last 24 h (max_runs_per_day)", alerts=tuple(firing)
                )
            reason = "alert " + ", ".join(firing)
            try:
                run = self.trigger(reason)
            except Exception as exc:  # the receiver must answer; Alertmanager retries on 5xx
                log.error("retraining run for %s failed to start: %s", reason, exc)
                return Decision("failed", f"could not start a run: {exc}", alerts=tuple(firing))
            self._started.append(now)
        log.info("retraining run %s started (%s)", run, reason)
        return Decision("started", reason, run=run, alerts=tuple(firing))


def create_app(controller: RetrainController) -> FastAPI:
    """The receiver: POST /alerts (Alertmanager's webhook_config url), GET /healthz, GET /metrics."""
    registry = CollectorRegistry()
    notifications = Counter(
        "tsr_retrain_notifications", "Alertmanager notifications by decision", ["outcome"], registry=registry
    )
    for outcome in (*OUTCOMES, "bad_payload"):
        notifications.labels(outcome)
    app = FastAPI(title="tsr retrain webhook", docs_url=None, redoc_url=None)

    @app.post("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_PAYLOAD_BYTES:
            notifications.labels("bad_payload").inc()
            raise HTTPException(413, f"payload of {len(body)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            parsed = parse_alertmanager(json.loads(body))
        except (ValueError, PayloadError) as exc:  # json.JSONDecodeError is a ValueError
            notifications.labels("bad_payload").inc()
            raise HTTPException(400, f"not an Alertmanager webhook payload: {exc}") from exc
        decision = controller.handle(parsed)
        notifications.labels(decision.outcome).inc()
        # 500 only when starting the run failed: Alertmanager then retries the notification.
        return JSONResponse(decision.to_dict(), status_code=500 if decision.outcome == "failed" else 200)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app


@dataclass(frozen=True)
class KfpTrigger:
    """Starts a run of the compiled pipeline on the KFP backend with fixed parameters (the current data)."""

    target: Any  # pipelines.submit.KfpTarget
    params: Mapping[str, Any]
    service_account: str | None = None

    def __call__(self, reason: str) -> str:
        from pipelines.submit import submit

        run_name = f"tsr-retrain-{time.strftime('%Y%m%d-%H%M%S')}"
        result = submit(self.target, self.params, run_name=run_name, service_account=self.service_account)
        log.info("retraining for %s: %s", reason, result.url)
        return result.id
