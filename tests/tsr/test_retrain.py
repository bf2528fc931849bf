"""The Alertmanager webhook receiver: payload validation, the retrain policy, a real HTTP server on loopback,
and the KFP trigger against the loopback KFP API (tests/pipelines/kfp_fake.py: no KFP backend runs here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from kfp.client import Client

from pipelines.retrain import (
    Alert,
    KfpTrigger,
    PayloadError,
    RetrainController,
    RetrainPolicy,
    create_app,
    parse_alertmanager,
)
from pipelines.submit import KfpTarget
from tests.conftest import wait_until_ok
from tests.pipelines.kfp_fake import API, FakeKfp
from tsr.core.processes import free_port


def payload(*alerts: tuple[str, str]) -> dict[str, Any]:
    """What Alertmanager's webhook_config POSTs (version 4), trimmed to the fields it always sends."""
    return {
        "version": "4",
        "status": "firing",
        "receiver": "tsr-retrain",
        "groupKey": '{}:{alertname=~"TSR.*"}',
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": name, "model": "gtsrb-classifier", "severity": "warning"},
                "annotations": {"summary": f"{name} on gtsrb-classifier"},
                "startsAt": "2026-11-23T10:00:00Z",
            }
            for name, status in alerts
        ],
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.reasons: list[str] = []
        self.fail = fail

    def __call__(self, reason: str) -> str:
        if self.fail:
            raise RuntimeError("KFP API unreachable: connection refused")
        self.reasons.append(reason)
        return f"run-{len(self.reasons)}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "payload must be a JSON object"),
        ({"version": "3", "alerts": []}, 'version must be "4"'),
        ({"version": "4"}, "alerts must be a list"),
        ({"version": "4", "alerts": [{"status": "pending", "labels": {"alertname": "x"}}]}, r"alerts\[0\].status"),
        ({"version": "4", "alerts": [{"status": "firing", "labels": {}}]}, r"alerts\[0\].labels.alertname"),
        ({"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": 3}}]}, r"alerts\[0\].labels must"),
    ],
)
def test_bad_payloads_name_the_field(body: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_alertmanager(body)


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="cooldown_s"):
        RetrainPolicy(cooldown_s=-1)
    with pytest.raises(ValueError, match="max_runs_per_day"):
        RetrainPolicy(max_runs_per_day=0)
    with pytest.raises(ValueError, match="alerts"):
        RetrainPolicy(alerts=())


def test_only_firing_retrain_alerts_start_runs_with_cooldown_and_daily_cap() -> None:
    clock, trigger = Clock(), Recorder()
    controller = RetrainController(trigger, RetrainPolicy(cooldown_s=3600, max_runs_per_day=2), clock=clock)

    assert controller.handle(parse_alertmanager(payload(("TSRHighLatencyP99", "firing")))).outcome == "ignored"
    assert controller.handle(parse_alertmanager(payload(("TSRInputDrift", "resolved")))).outcome == "ignored"
    first = controller.handle(parse_alertmanager(payload(("TSRInputDrift", "firing"), ("TSRLowConfidence", "firing"))))
    assert first.outcome == "started" and first.run == "run-1"
    assert trigger.reasons == ["alert TSRInputDrift, TSRLowConfidence"]

    clock.now += 600  # Alertmanager repeats the notification: no second run within the cooldown
    repeat = controller.handle([Alert("TSRInputDrift", "firing", {}, {})])
    assert repeat.outcome == "cooldown" and "next in 3000s" in repeat.reason
    clock.now += 3600
    assert controller.handle([Alert("TSRInputDrift", "firing", {}, {})]).outcome == "started"
    clock.now += 3600
    assert controller.handle([Alert("TSRInputDrift", "firing", {}, {})]).outcome == "daily_cap"
    clock.now += 86400  # a day later both runs have aged out
    assert controller.handle([Alert("TSRLowConfidence", "firing", {}, {})]).outcome == "started"
    assert len(trigger.reasons) == 3


@pytest.fixture
def receiver() -> Iterator[tuple[str, Recorder]]:
    """The receiver app served by uvicorn on loopback, as `tsr retrain-webhook` runs it."""
    trigger = Recorder()
    app = create_app(RetrainController(trigger, RetrainPolicy(cooldown_s=3600)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "webhook receiver did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", trigger
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_receiver_over_http(receiver: tuple[str, Recorder]) -> None:
    url, trigger = receiver
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        started = http.post("/alerts", json=payload(("TSRInputDrift", "firing")))
        assert started.status_code == 200 and started.json()["outcome"] == "started"
        assert started.json()["run"] == "run-1" and started.json()["alerts"] == ["TSRInputDrift"]
        again = http.post("/alerts", json=payload(("TSRInputDrift", "firing")))
        assert again.status_code == 200 and again.json()["outcome"] == "cooldown"

        bad = http.post("/alerts", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not an Alertmanager webhook payload" in bad.json()["detail"]
        wrong = http.post("/alerts", json={"version": "4", "alerts": "x"})
        assert wrong.status_code == 400 and "alerts must be a list" in wrong.json()["detail"]
        huge = http.post("/alerts", content=b"x" * ((1 << 20) + 1))
        assert huge.status_code == 413

        metrics = http.get("/metrics").text
        assert 'tsr_retrain_notifications_total{outcome="started"} 1.0' in metrics
        assert 'tsr_retrain_notifications_total{outcome="cooldown"} 1.0' in metrics
        assert 'tsr_retrain_notifications_total{outcome="bad_payload"} 3.0' in metrics
    assert trigger.reasons == ["alert TSRInputDrift"]


def test_a_trigger_that_fails_answers_500_so_alertmanager_retries() -> None:
    controller = RetrainController(Recorder(fail=True))
    decision = controller.handle([Alert("TSRInputDrift", "firing", {}, {})])
    assert decision.outcome == "failed" and "connection refused" in decision.reason
    # a failed start does not count against the cooldown: the retry may start a run
    controller.trigger = Recorder()
    assert controller.handle([Alert("TSRInputDrift", "firing", {}, {})]).outcome == "started"


def test_kfp_trigger_starts_a_run_of_the_compiled_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    params = {"data_source": "s3://datasets/gtsrb", "namespace": "tsr"}
    with FakeKfp() as kfp:
        trigger = KfpTrigger(KfpTarget(host=kfp.url), params, service_account="tsr-pipeline-runner")
        run_id = RetrainController(trigger).handle([Alert("TSRInputDrift", "firing", {}, {})]).run
        assert run_id in kfp.runs
        (run,) = [r.json() for r in kfp.requests if (r.method, r.path) == ("POST", f"{API}/runs")]
    assert run["display_name"].startswith("tsr-retrain-")
    assert run["runtime_config"]["parameters"] == params
    assert run["service_account"] == "tsr-pipeline-runner"


def test_cli_receiver_starts_a_kfp_run_from_a_params_file(tmp_path: Path) -> None:
    """`tsr retrain-webhook` as its own process, as the Deployment runs it (manifests/retrain/)."""
    import json
    import subprocess
    import sys

    params = tmp_path / "params.json"
    params.write_text(json.dumps({"data_source": "s3://datasets/gtsrb", "namespace": "tsr", "epochs": 3}))
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TSR_STATE_DIR": str(tmp_path / "state")}
    with FakeKfp() as kfp:
        argv = [sys.executable, "-m", "tsr.cli", "retrain-webhook", "--port", str(port), "--kfp-host", kfp.url]
        argv += ["--params-file", str(params), "--cooldown-s", "60", "--service-account", "tsr-pipeline-runner"]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_ok(proc, f"{url}/healthz", "tsr retrain-webhook", 60)
            answer = httpx.post(f"{url}/alerts", json=payload(("TSRLowConfidence", "firing")), timeout=60).json()
            assert answer["outcome"] == "started" and answer["run"] in kfp.runs
            (run,) = [r.json() for r in kfp.requests if (r.method, r.path) == ("POST", f"{API}/runs")]
            assert run["runtime_config"]["parameters"]["data_source"] == "s3://datasets/gtsrb"
            assert run["runtime_config"]["parameters"]["epochs"] == 3
            assert run["service_account"] == "tsr-pipeline-runner"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params-file", "/nonexistent/params.json"], "cannot read"),
        (["--param", "no_such_param=1"], "no_such_param"),
        (["--cooldown-s", "-5"], "cooldown"),
    ],
)
def test_cli_receiver_refuses_bad_configuration(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from tsr.cli import app

    result = CliRunner().invoke(app, ["retrain-webhook", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_loop_needs_once(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tsr.cli import app

    result = CliRunner().invoke(app, ["loop", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "--once" in result.output
