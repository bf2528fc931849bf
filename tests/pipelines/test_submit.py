"""submit/schedule through the real kfp.Client against a loopback server speaking the KFP v2beta1 REST API.

The server (tests/pipelines/kfp_fake.py) records every request, so these tests assert what actually went over
the wire: the uploaded package, parameters, cron, namespace and the bearer token, and that bad parameters
fail before the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kfp.client import Client
from typer.testing import CliRunner

from pipelines.compile import COMPILED, compile_pipeline
from pipelines.submit import (
    KfpTarget,
    ParameterError,
    PipelinePackage,
    SubmitError,
    kfp_cron,
    parse_parameter_args,
    schedule,
    submit,
)
from pipelines.training_pipeline import Placement
from tests.pipelines.kfp_fake import API, FakeKfp
from tsr.cli import app

TOKEN = "tok-0123456789-secret"
PARAMS: dict[str, Any] = {"data_source": "s3://datasets/gtsrb", "epochs": 3, "lr": 0.05, "download": True}


@pytest.fixture(autouse=True)
def _isolated_kfp_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kfp.Client reads ~/.config/kfp/context.json and KF_PIPELINES_* variables; keep the tests hermetic."""
    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kfp() -> Iterator[FakeKfp]:
    with FakeKfp() as server:
        yield server


def only(fake: FakeKfp, method: str, path: str) -> Any:
    (request,) = [r for r in fake.requests if (r.method, r.path) == (method, path)]
    return request


def test_submit_uploads_version_creates_experiment_and_starts_run(kfp: FakeKfp) -> None:
    target = KfpTarget(host=kfp.url, existing_token=TOKEN)
    result = submit(target, PARAMS, run_name="nightly")

    package = PipelinePackage.load(COMPILED)
    assert result.url == f"{kfp.url}/#/runs/details/{result.id}"
    assert result.id in kfp.runs
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests)

    created = only(kfp, "POST", f"{API}/pipelines").json()
    assert created["display_name"] == "tsr-training" and "namespace" not in created, "a shared pipeline"
    upload = only(kfp, "POST", f"{API}/pipelines/upload_version")
    assert upload.q("pipelineid") == result.pipeline_id
    assert upload.q("name") == f"tsr-training-{package.sha256[:12]}"
    filename, content = upload.uploaded_file()
    assert filename == "tsr_training.yaml" and content == COMPILED.read_bytes()

    listed = only(kfp, "GET", f"{API}/experiments")
    assert listed.q("namespace") == "kubeflow"
    experiment = only(kfp, "POST", f"{API}/experiments").json()
    assert experiment == {"display_name": "tsr", "namespace": "kubeflow"}

    run = only(kfp, "POST", f"{API}/runs").json()
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == result.experiment_id
    assert run["pipeline_version_reference"] == {
        "pipeline_id": result.pipeline_id,
        "pipeline_version_id": result.pipeline_version_id,
    }
    assert "pipeline_spec" not in run, "the run references the uploaded version, not an inline spec"
    assert run["runtime_config"]["parameters"] == {**PARAMS, "lr": 0.05}


def test_resubmit_reuses_version_and_experiment_and_a_new_package_adds_a_version(kfp: FakeKfp, tmp_path: Path) -> None:
    target = KfpTarget(host=kfp.url, existing_token=TOKEN)
    first = submit(target, PARAMS)
    second = submit(target, PARAMS)
    assert first.id != second.id
    assert (first.pipeline_id, first.pipeline_version_id, first.experiment_id) == (
        second.pipeline_id,
        second.pipeline_version_id,
        second.experiment_id,
    )
    assert kfp.calls().count(("POST", f"{API}/pipelines/upload_version")) == 1
    assert kfp.calls().count(("POST", f"{API}/experiments")) == 1

    arm = compile_pipeline(tmp_path / "arm.yaml", placement=Placement.arm64_training())
    third = submit(target, PARAMS, package=arm)
    assert third.pipeline_id == first.pipeline_id and third.pipeline_version_id != first.pipeline_version_id
    assert kfp.calls().count(("POST", f"{API}/pipelines")) == 1, "the pipeline is created once"
    versions = kfp.versions[first.pipeline_id]
    assert len(versions) == 2 and versions[1]["spec"] == arm.read_text()


def test_schedule_creates_a_cron_recurring_run_without_catchup(kfp: FakeKfp) -> None:
    target = KfpTarget(host=kfp.url, existing_token=TOKEN, ui_url="https://kubeflow.example/pipeline/")
    result = schedule(target, {"data_source": "s3://datasets/gtsrb"}, cron="0 3 * * 0", max_concurrency=2)

    assert result.url == f"https://kubeflow.example/pipeline/#/recurringrun/details/{result.id}"
    body = only(kfp, "POST", f"{API}/recurringruns").json()
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}, "KFP's cron has a leading seconds field"
    assert int(body["max_concurrency"]) == 2
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["experiment_id"] == result.experiment_id
    assert body["pipeline_version_reference"]["pipeline_version_id"] == result.pipeline_version_id
    assert body["runtime_config"]["parameters"] == {"data_source": "s3://datasets/gtsrb"}
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests)


def test_multi_user_namespace_and_private_pipeline() -> None:
    with FakeKfp(multi_user=True) as kfp:
        target = KfpTarget(host=kfp.url, namespace="team-a", existing_token=TOKEN, private_pipeline=True)
        submit(target, PARAMS)
        submit(target, PARAMS)
    assert ("GET", f"{API}/healthz") not in kfp.calls(), "an explicit profile namespace needs no discovery"
    pipeline_lists = [r for r in kfp.requests if (r.method, r.path) == ("GET", f"{API}/pipelines")]
    assert pipeline_lists and all(r.q("namespace") == "team-a" for r in pipeline_lists)
    assert only(kfp, "POST", f"{API}/pipelines").json()["namespace"] == "team-a"
    assert only(kfp, "POST", f"{API}/experiments").json()["namespace"] == "team-a"
    assert len(kfp.runs) == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({**PARAMS, "epochz": 4}, "'epochz'"),
        ({**PARAMS, "epochs": "3"}, "'epochs' must be an integer"),
        ({**PARAMS, "epochs": True}, "'epochs' must be an integer"),
        ({**PARAMS, "lr": "fast"}, "'lr' must be a number"),
        ({**PARAMS, "download": "yes"}, "'download' must be a boolean"),
        ({**PARAMS, "model_name": 7}, "'model_name' must be a string"),
        ({"epochs": 3}, "missing required pipeline parameter(s): data_source"),
    ],
)
def test_bad_parameters_fail_before_any_request(kfp: FakeKfp, params: dict[str, Any], message: str) -> None:
    target = KfpTarget(host=kfp.url, existing_token=TOKEN)
    with pytest.raises(ParameterError) as raised:
        submit(target, params)
    assert message in str(raised.value)
    with pytest.raises(ParameterError):
        schedule(target, params, cron="0 3 * * 0")
    assert kfp.requests == []


@pytest.mark.parametrize(("cron", "concurrency"), [("0 3 * *", 1), ("0 3 * * 0 * *", 1), ("0 3 * * 0", 0)])
def test_bad_schedule_fails_before_any_request(kfp: FakeKfp, cron: str, concurrency: int) -> None:
    with pytest.raises(ParameterError):
        schedule(KfpTarget(host=kfp.url), PARAMS, cron=cron, max_concurrency=concurrency)
    assert kfp.requests == []


def test_cron_forms() -> None:
    assert kfp_cron("0 3 * * 0") == "0 0 3 * * 0"
    assert kfp_cron(" 30  0 3 * * MON ") == "30 0 3 * * MON"
    assert kfp_cron("@daily") == "@daily"


def test_cli_param_parsing_by_declared_type() -> None:
    declared = PipelinePackage.load(COMPILED).parameters
    parsed = parse_parameter_args(
        ["data_source=s3://b/p=1", "epochs=3", "lr=0.1", "download=true", "test_data="], declared
    )
    assert parsed == {"data_source": "s3://b/p=1", "epochs": 3, "lr": 0.1, "download": True, "test_data": ""}
    for bad in (["epochs=three"], ["download=maybe"], ["nokey"], ["=1"], ["epochz=1"]):
        with pytest.raises(ParameterError):
            parse_parameter_args(bad, declared)


def test_token_is_never_logged_or_printed(
    kfp: FakeKfp, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    target = KfpTarget(host=kfp.url, existing_token=TOKEN)
    assert TOKEN not in repr(target)
    with caplog.at_level(logging.DEBUG):
        submit(target, PARAMS)
        kfp.failures[("POST", f"{API}/runs")] = 500
        with pytest.raises(SubmitError) as raised:
            submit(target, PARAMS)
    assert "500" in str(raised.value) and TOKEN not in str(raised.value)
    captured = capsys.readouterr()
    assert TOKEN not in caplog.text + captured.out + captured.err
    assert "Run details" not in captured.out, "kfp.Client's prints go to the debug log, not stdout"


def test_unreachable_backend_is_a_clear_error() -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = KfpTarget(host=f"http://user:pw@127.0.0.1:{port}", namespace="team-a", existing_token=TOKEN)
    assert target.where == f"http://127.0.0.1:{port}" and "pw" not in target.ui_base
    with pytest.raises(SubmitError) as raised:
        submit(target, PARAMS)
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and TOKEN not in message and ":pw@" not in message


def test_cli_submit_and_schedule_print_the_url(kfp: FakeKfp) -> None:
    runner = CliRunner()
    env = {"KFP_TOKEN": TOKEN}
    args = ["--host", kfp.url, "--param", "data_source=s3://datasets/gtsrb", "--param", "epochs=2"]
    submitted = runner.invoke(app, ["pipeline", "submit", *args, "--package", str(COMPILED)], env=env)
    assert submitted.exit_code == 0, submitted.output
    (run_id,) = kfp.runs
    assert submitted.stdout.strip().splitlines()[-1] == f"{kfp.url}/#/runs/details/{run_id}"
    assert kfp.runs[run_id]["runtime_config"]["parameters"] == {"data_source": "s3://datasets/gtsrb", "epochs": 2}

    scheduled = runner.invoke(
        app, ["pipeline", "schedule", *args, "--cron", "0 3 * * 0", "--package", str(COMPILED)], env=env
    )
    assert scheduled.exit_code == 0, scheduled.output
    (recurring_id,) = kfp.recurring_runs
    assert scheduled.stdout.strip().splitlines()[-1] == f"{kfp.url}/#/recurringrun/details/{recurring_id}"
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests)
    assert TOKEN not in submitted.output + scheduled.output


def test_cli_rejects_unknown_parameter_without_contacting_the_server(kfp: FakeKfp) -> None:
    result = CliRunner().invoke(
        app,
        ["pipeline", "submit", "--host", kfp.url, "--param", "data_source=x", "--param", "epochz=1"],
        env={"KFP_TOKEN": TOKEN},
    )
    assert result.exit_code == 2
    assert "epochz" in result.output
    assert kfp.requests == []
