"""The `tsr` command for operators: examples in every --help, tables for people, exactly one JSON
document with --json, progress only on a terminal, and `tsr predict` against a real predictor."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tsr.cli import app
from tsr.core.config import StoreConfig
from tsr.core.gtsrb import CLASS_NAMES
from tsr.core.processes import free_port
from tsr.core.registry import Registry
from tsr.local.predict_client import FILES_PER_REQUEST
from tsr.local.ui import Activity, PipelineWatcher, progress_enabled

TSR = str(Path(sys.executable).parent / "tsr")
NAME = "gtsrb-classifier"
KFP_LOG = Path(__file__).parent / "data" / "kfp-local-run.log"  # a real `tsr pipeline run-local` log, trimmed


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A directory store and state dir of the test's own; no configured S3, no colours, no progress."""
    for name in ("TSR_S3_ENDPOINT", "TSR_S3_ACCESS_KEY", "TSR_S3_SECRET_KEY", "TSR_CONFIG", "TSR_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    return {"TSR_STORE_DIR": str(tmp_path / "store"), "TSR_STATE_DIR": str(tmp_path / "state")}


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def flat(text: str) -> str:
    """A table's text without its box drawing, whitespace collapsed: what a person reads, in one line."""
    return " ".join(re.sub(r"[│┃┆┊║]", " ", text).split())


def one_json_document(stdout: str) -> Any:
    """stdout holds exactly one JSON document and nothing else."""
    return json.loads(stdout)


# ---- --help ---------------------------------------------------------------------------------------------
def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and group under `command` (typer's click classes: groups have `commands`)."""
    yield path
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _command_paths(sub, (*path, name))


def test_every_command_and_group_help_ends_with_examples() -> None:
    paths = list(_command_paths(typer.main.get_command(app)))
    assert len(paths) >= 20 and ("predict",) in paths and ("models", "show") in paths
    for path in paths:
        text = CliRunner().invoke(app, [*path, "--help"]).stdout
        assert "Examples:" in text, path
        examples = [line.strip() for line in text[text.index("Examples:") :].splitlines()[1:] if line.strip()]
        prefix = " ".join(("tsr", *path))
        assert any(prefix in line for line in examples), (path, examples)


# ---- registry browsing ------------------------------------------------------------------------------------
CARD: dict[str, Any] = {
    "arch": "tsrnet",
    "variant": "fp32",
    "created": "2026-11-23T12:00:05+00:00",
    "metrics": {"validation": {"accuracy": 0.9731, "macro_f1": 0.9612, "n": 7829}},
    "gate": {"result": "pass", "reason": "accuracy 0.9731 >= 0.95; no champion yet"},
    "params": {"epochs": 18, "batch_size": 256, "lr": 0.2, "seed": 0},
    "data": {
        "source": "/data/gtsrb",
        "fingerprint": {"algorithm": "sha256", "value": "ab" * 32, "files": 39209},
        "totals": {"train": 31380, "val": 7829},
        "split_strategy": "by-track",
    },
    "git_commit": "f0fb272",
    "champion_before": None,
}


def test_models_list_and_show_tables_and_json(tmp_path: Path, env: dict[str, str]) -> None:
    registry = Registry.from_config(StoreConfig(kind="dir", directory=Path(env["TSR_STORE_DIR"])))
    model_dir = make_model_dir(tmp_path / "model")
    first = registry.publish(NAME, model_dir, {**CARD, "run_id": "run-one"}, version="20261123-120000-aaaaaa")
    registry.set_alias(NAME, first)
    second_card = {
        **CARD,
        "run_id": "run-two",
        "metrics": {"validation": {"accuracy": 0.9898, "macro_f1": 0.985, "n": 7829, "ece": 0.0123}},
        "gate": {
            "result": "pass",
            "reason": "ok",
            "worst_class": {"class_id": 27, "class_name": "Pedestrians", "accuracy": 0.9123},
        },
        "temperature": 1.42,
        "champion_before": {"uri": registry.uri(NAME, first), "accuracy": 0.9731, "macro_f1": 0.96},
    }
    second = registry.publish(NAME, model_dir, second_card, version="20261123-130000-bbbbbb")
    registry.set_alias(NAME, second)

    table = invoke(env, "models", "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    row = next(line for line in lines if second in line)
    assert "★ champion" in row and "98.98%" in row and "98.50%" in row and "run-two" in row and "fp32" in row
    assert "2026-11-23 12:00" in row  # creation time, shortened
    assert "★" not in next(line for line in lines if first in line)

    rows = one_json_document(invoke(env, "models", "list", "--json").stdout)
    assert [r["version"] for r in rows] == [first, second]
    assert rows[1] | {"uri": None} == {
        "version": second,
        "champion": True,
        "accuracy": 0.9898,
        "arch": "tsrnet",
        "uri": None,
        "aliases": ["champion"],
        "macro_f1": 0.985,
        "test_accuracy": None,
        "variant": "fp32",
        "created": "2026-11-23T12:00:05+00:00",
        "run_id": "run-two",
        "data_sha256": "ab" * 32,
        "champion_before": registry.uri(NAME, first),
    }
    assert rows[0]["champion"] is False and rows[0]["aliases"] == []

    shown = invoke(env, "models", "show")
    assert shown.exit_code == 0, shown.output
    text = flat(shown.stdout)
    for fragment in (
        f"version {second}",
        "alias champion",
        "gate pass",
        "validation 98.98% 98.50% 7,829",
        "lineage",
        "run id run-two",
        f"champion before {registry.uri(NAME, first)} (val acc 97.31%",
        "data sha256 " + "ab" * 32,
        "epochs 18",
        "worst class 27 Pedestrians: 91.23%",
        "calibration temperature 1.42, validation ECE 0.0123",
    ):
        assert fragment in text, fragment
    old = flat(invoke(env, "models", "show", first).stdout)
    assert "alias –" in old and "none (first champion)" in old
    assert "worst class –" in old and "calibration –" in old  # a card from before either existed
    card = one_json_document(invoke(env, "models", "show", "latest", "--json").stdout)
    assert card == registry.read_card(NAME, second)


# ---- progress ----------------------------------------------------------------------------------------------
def test_progress_only_for_a_person_at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TSR_NO_PROGRESS", raising=False)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert progress_enabled(terminal)
    assert not progress_enabled(Console(file=io.StringIO()))  # a pipe or a log file
    assert not progress_enabled(terminal, as_json=True) and not progress_enabled(terminal, quiet=True)
    monkeypatch.setenv("TSR_NO_PROGRESS", "1")
    assert not progress_enabled(terminal)


def test_activity_bars_and_steps_render_and_a_disabled_one_costs_nothing() -> None:
    with Activity(Console(file=io.StringIO()), enabled=False) as off:
        assert off.bar("reading images") is None
        with off.step("anything") as info:
            info("ignored")
    buffer = io.StringIO()
    with Activity(Console(file=buffer, force_terminal=True, width=120), enabled=True) as on:
        report = on.bar("reading images")
        assert report is not None
        for done in (256, 512, 700):
            report(done, 700)
        download = on.bar("downloading", "bytes")
        assert download is not None
        download(1_500_000, 3_000_000)
        with pytest.raises(RuntimeError), on.step("evaluating"):
            raise RuntimeError("boom")
    screen = buffer.getvalue()
    assert "reading images" in screen and "700/700" in screen and "1.5 MB/3.0 MB" in screen
    assert "✘" in screen and "✔" in screen


def test_pipeline_watcher_turns_register_upload_lines_into_a_bar() -> None:
    screen, log = io.StringIO(), io.StringIO()
    with Activity(Console(file=screen, force_terminal=True, width=160), enabled=True) as activity:
        watcher = PipelineWatcher(activity, log)
        watcher.write("Executing task 'register-component'\n")
        for done in (1_000_000, 2_500_000, 3_000_000):  # what components/register/component.py prints
            watcher.write(f"    upload {done}/3000000 bytes\n")
        (step,) = watcher.steps.values()
        assert step.info == "uploading to the registry 3.0/3.0 MB"
        watcher.write("Task 'register-component' finished with status SUCCESS\n")
    assert step.state == "done" and "3.0/3.0 MB" in screen.getvalue()


def test_pipeline_watcher_follows_a_real_kfp_local_log() -> None:
    screen, log = io.StringIO(), io.StringIO()
    with Activity(Console(file=screen, force_terminal=True, width=160), enabled=True) as activity:
        watcher = PipelineWatcher(activity, log)
        text = KFP_LOG.read_text()
        for start in range(0, len(text), 97):  # kfp.local writes in pieces that split lines
            watcher.write(text[start : start + 97])
    assert log.getvalue() == text, "every byte reaches the log file"
    steps = list(watcher.steps.values())
    assert [s.name for s in steps] == ["ingest", "train", "evaluate", "register", "deploy"]
    assert all(s.state == "done" and s.seconds is not None for s in steps)
    by_name = {s.name: s for s in steps}
    assert by_name["train"].info == "epoch 2/2  val_acc 0.0364"
    assert by_name["evaluate"].info.startswith("gate: pass")
    assert by_name["register"].info.startswith("registered ")
    assert by_name["ingest"].info == "", "kfp's own executor lines are not the step's output"
    assert "epoch 2/2" in screen.getvalue()


def test_pipeline_watcher_marks_a_failed_step_in_its_row() -> None:
    rows = io.StringIO()
    watcher = PipelineWatcher(Activity(Console(file=io.StringIO()), enabled=False), io.StringIO(), rows)
    watcher.write("12:00:00.000 - INFO - Executing task \x1b[96m'train-component'\x1b[0m\n")
    watcher.write("    ValueError: training split is empty\n")
    watcher.write("12:00:01.000 - ERROR - Task 'train-component' finished with status \x1b[91mFAILURE\x1b[0m\n")
    watcher.write("12:00:01.000 - INFO - Skipping conditional task 'register-component'\n")
    (train, register) = watcher.steps.values()
    assert (train.name, train.state, train.info) == ("train", "failed", "ValueError: training split is empty")
    assert (register.name, register.state) == ("register", "skipped")
    first, second = rows.getvalue().splitlines()
    assert first.startswith("✘ train") and first.endswith("ValueError: training split is empty"), first
    assert second.startswith("– register") and "skipped" in second, second


def test_pipeline_watcher_without_progress_prints_one_row_per_step() -> None:
    """The terminal gets a line per step; kfp.local's executor JSON and artifact metadata (most of a real
    log) go to the log file alone."""
    rows, log = io.StringIO(), io.StringIO()
    watcher = PipelineWatcher(Activity(Console(file=io.StringIO()), enabled=False), log, rows)
    text = KFP_LOG.read_text()
    watcher.write(text)
    assert log.getvalue() == text
    lines = rows.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["✔", "ingest"],
        ["✔", "train"],
        ["✔", "evaluate"],
        ["✔", "register"],
        ["✔", "deploy"],
    ], lines
    assert "epoch 2/2  val_acc 0.0364" in lines[1]
    assert "Executing task" not in rows.getvalue() and "executor" not in rows.getvalue().lower()


def test_ingest_progress_callbacks_and_summary(tmp_path: Path, env: dict[str, str]) -> None:
    from components.ingest.ingest import IngestConfig, ingest

    source = _tiny_gtsrb(tmp_path / "gtsrb")
    reports: list[tuple[int, int]] = []
    card = ingest(
        IngestConfig(source=str(source), threads=2),
        tmp_path / "direct",
        on_progress=lambda d, t: reports.append((d, t)),
    )
    n = card["totals"]["images"]
    assert reports[-1] == (n, n) and all(t == n for _, t in reports)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)

    result = invoke(env, "ingest", "--source", str(source), "--out", str(tmp_path / "ds"), "--json")
    assert result.exit_code == 0, result.output
    summary = one_json_document(result.stdout)
    assert {k: summary[k] for k in card["totals"]} == card["totals"]  # the old output's keys, unchanged
    assert summary["num_classes"] == 43 and summary["skipped"] == 0 and len(summary["fingerprint"]) == 64
    assert summary["out"] == str(tmp_path / "ds")

    table = invoke(env, "ingest", "--source", str(source), "--out", str(tmp_path / "ds"))
    assert table.exit_code == 0, table.output
    text = flat(table.stdout)
    assert f"images {n:,} in 43 classes" in text and f"sha256 {summary['fingerprint']}" in text


def test_evaluate_keeps_its_json_line_and_offers_a_table(tmp_path: Path, env: dict[str, str]) -> None:
    source = _tiny_gtsrb(tmp_path / "gtsrb")
    model = make_model_dir(tmp_path / "model")
    base = ("evaluate", "--model", str(model), "--data", str(source), "--split", "train")
    default = invoke(env, *base)
    assert default.exit_code == 0, default.output
    line = one_json_document(default.stdout)
    assert set(line) == {"accuracy", "macro_f1", "n", "ece", "model", "data", "split"}
    assert one_json_document(invoke(env, *base, "--json").stdout) == line
    table = invoke(env, *base, "--table", "--per-class")
    text = flat(table.stdout)
    assert table.exit_code == 0 and f"images {line['n']:,}" in text and "per-class accuracy" in text
    assert f"ECE {line['ece']:.4f} (temperature 1)" in text
    both = invoke(env, *base, "--table", "--json")
    assert both.exit_code == 2 and "'--table'" in both.stderr and both.stdout == ""


# ---- pipeline run-local and demo: stdout holds the result alone ------------------------------------------
KFP_LOG_STEPS = ("ingest", "train", "evaluate", "register", "deploy")  # the steps of KFP_LOG


def _one_row_per_step(stderr: str) -> bool:
    """What a command running KFP_LOG's pipeline may print on stderr without progress bars: the log
    file's path and one row per step (kfp.local's own output, 92 lines here, stays in the log file)."""
    lines = stderr.splitlines()
    named = [line.split()[1] for line in lines if line[:1] in {"✔", "✘", "–"}]
    return named == list(KFP_LOG_STEPS) and len(lines) == len(KFP_LOG_STEPS) + 1 and lines[0].startswith("step logs:")


def _fake_kfp_output() -> None:
    """What kfp.local prints while a pipeline runs: on whatever sys.stdout is at the time."""
    print(KFP_LOG.read_text(), end="")


def test_run_local_json_is_one_document_and_step_logs_go_elsewhere(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.local_run as local_run

    model_dir = make_model_dir(tmp_path / "model")

    def fake_run_local(params: dict[str, Any], store: Any, root: Path) -> Any:
        _fake_kfp_output()
        if not Registry.from_config(store).versions(NAME):  # the first run registers a champion, as a pass does
            registry = Registry.from_config(store)
            registry.set_alias(NAME, registry.publish(NAME, model_dir, {"run_id": "local-test"}))
        evaluation = {
            "validation": {"accuracy": 0.9, "macro_f1": 0.8, "n": 100},
            "gate": {"result": "pass", "reason": "ok"},
        }
        return local_run.LocalRunResult("local-test", root, 12.34, "pass", evaluation, report=root / "report")

    monkeypatch.setattr(local_run, "run_local", fake_run_local)
    args = ("pipeline", "run-local", "--data", str(tmp_path), "--epochs", "1")
    result = invoke(env, *args, "--json")
    assert result.exit_code == 0, result.output
    summary = one_json_document(result.stdout)
    champion = Registry.from_config(StoreConfig(kind="dir", directory=Path(env["TSR_STORE_DIR"]))).get_alias(NAME)
    assert {k: summary[k] for k in ("run_id", "seconds", "champion")} == {
        "run_id": "local-test",
        "seconds": 12.3,
        "champion": champion,
    }
    assert summary["champion_from_this_run"] is True and summary["champion_uri"].endswith(f"/{NAME}/{champion}")
    assert summary["gate"] == "pass" and summary["validation"] == {"accuracy": 0.9, "macro_f1": 0.8, "n": 100}
    log = Path(summary["log"])
    assert log.read_text() == KFP_LOG.read_text() and log.is_relative_to(Path(env["TSR_STATE_DIR"]))
    assert "epoch 2/2" in result.stderr, "without progress bars each step's row reaches stderr"
    assert "Executing task" not in result.stderr, "kfp.local's own output stays in the log file"
    assert _one_row_per_step(result.stderr), result.stderr

    quiet = invoke(env, *args, "--json", "--quiet")
    assert "epoch 2/2" not in quiet.stderr and one_json_document(quiet.stdout)["run_id"] == "local-test"

    table = invoke(env, *args)
    text = flat(table.stdout)
    assert table.exit_code == 0 and "steps" in text and "train ✔" in text and "epoch 2/2 val_acc 0.0364" in text
    assert "gate pass ok" in text and "accuracy 90.00%, macro-F1 80.00% on 100 images" in text
    assert f"{champion} (this run)" in text


def test_demo_prints_its_summary_then_one_json_line_or_the_json_alone(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = {
        "validation_accuracy": 0.98765,
        "gate": "pass",
        "model_uri": "s3://models/gtsrb-classifier/20261123-120000-aaaaaa",
        "store": "MinIO/S3 at http://127.0.0.1:9000",
        "pipeline_seconds": 61.2,
        "run_id": "local-demo",
        "report": "/state/demo/report.html",
        "endpoint": "http://127.0.0.1:8080",
        "predictions": [
            {
                "file": "00000_00001.ppm",
                "true_class": "Stop",
                "class_id": 14,
                "class_name": "Stop",
                "probability": 0.97,
                "correct": True,
            },
        ],
        "prometheus": None,
    }

    def fake_run_demo(
        cfg: Any, out: Console, err: Console, on_extract: Any = None, on_download: Any = None
    ) -> dict[str, Any]:
        _fake_kfp_output()
        return summary

    monkeypatch.setattr("tsr.local.demo.run_demo", fake_run_demo)
    result = invoke(env, "demo", "--epochs", "1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == summary
    text = flat(result.stdout)
    assert "validation accuracy 98.77%" in text and "gate pass" in text and "1/1 correct" in text
    assert "Executing task" not in result.stdout, "the steps' output is not on stdout"
    assert _one_row_per_step(result.stderr), result.stderr

    alone = invoke(env, "demo", "--epochs", "1", "--json")
    assert alone.exit_code == 0 and one_json_document(alone.stdout) == summary


def test_loop_keeps_the_pipeline_runs_output_in_the_log_file(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tsr loop --once` runs the pipeline twice (bootstrap, retrain): kfp.local's output of both goes to
    the log file; the terminal gets the loop's own lines, a row per step and the summary."""
    summary = {"model_name": NAME, "champion_before": "v1", "champion_after": "v2", "outcome": "retrained"}

    def fake_run_loop(cfg: Any, store: Any, state: Path, say: Any = None) -> dict[str, Any]:
        assert cfg.recipe == "champion", "the champion's recipe is the default"
        say("serving champion v1")
        _fake_kfp_output()  # the bootstrap run
        _fake_kfp_output()  # the retrain
        return summary

    monkeypatch.setattr("tsr.local.loop.run_loop", fake_run_loop)
    result = invoke(env, "loop", "--once", "--data", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert one_json_document(result.stdout) == summary
    lines = result.stderr.splitlines()
    assert lines[0].startswith("step logs:") and "serving champion v1" in lines
    assert len(lines) == 2 + 2 * len(KFP_LOG_STEPS), result.stderr
    assert "Executing task" not in result.stderr + result.stdout
    (log,) = (Path(env["TSR_STATE_DIR"]) / "kfp-local" / "logs").iterdir()
    assert log.read_text() == 2 * KFP_LOG.read_text()


# ---- data download and extraction -------------------------------------------------------------------------
def test_demo_extraction_reports_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tsr.local.demo import find_data

    training = tmp_path / "src" / "gtsrb" / "GTSRB" / "Training" / "00000"
    training.mkdir(parents=True)
    for i in range(50):
        (training / f"00000_{i:05d}.ppm").write_bytes(os.urandom(3000))
    archive = tmp_path / "gtsrb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "gtsrb", arcname="gtsrb")
    monkeypatch.setenv("TSR_GTSRB_ARCHIVE", str(archive))
    monkeypatch.setenv("TSR_STATE_DIR", str(tmp_path / "state"))
    reports: list[tuple[int, int]] = []
    source = find_data(None, Console(file=io.StringIO()), lambda d, t: reports.append((d, t)))
    assert len(list((Path(source) / "gtsrb" / "GTSRB" / "Training" / "00000").iterdir())) == 50
    assert reports[-1] == (archive.stat().st_size, archive.stat().st_size)


def test_torchvision_download_goes_through_the_progress_callback(tmp_path: Path) -> None:
    """The download itself stays torchvision's (redirects, md5, extraction); only the transfer reports."""
    from torchvision.datasets import utils as tv_utils

    from tsr.core.sources import _download_progress

    payload = tmp_path / "GTSRB-Training_fixed.zip"
    with zipfile.ZipFile(payload, "w") as zf:
        zf.writestr("GTSRB/Training/00000/00000_00000.ppm", os.urandom(200_000))
    md5 = hashlib.md5(payload.read_bytes()).hexdigest()
    original = tv_utils._urlretrieve
    reports: list[tuple[int, int]] = []
    with _download_progress(lambda d, t: reports.append((d, t))):
        tv_utils.download_and_extract_archive(payload.as_uri(), tmp_path / "root", md5=md5)
    assert tv_utils._urlretrieve is original, "torchvision is left as it was"
    assert (tmp_path / "root" / "GTSRB" / "Training" / "00000" / "00000_00000.ppm").is_file()
    size = payload.stat().st_size
    assert reports[-1] == (size, size) and len(reports) > 1


# ---- tsr predict against the real predictor ---------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("predict")
    model_dir = make_model_dir(root / "model")
    args = ["--model", str(model_dir), "--model-name", NAME, "--http-port", str(free_port()), "--threads", "1"]
    args += ["--top-k", "5"]  # the server's ranking depth; `tsr predict --top-k` shows up to this many
    with running_predictor(args, root / "server.log", env={"TSR_STATE_DIR": str(root / "state")}) as url:
        yield url


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Sign-sized images in the three formats the predictor reads, of assorted sizes."""
    root = tmp_path_factory.mktemp("images")
    rng = random.Random(0)
    paths = []
    for i in range(FILES_PER_REQUEST + 8):  # more than one request's worth
        size = rng.choice([(32, 32), (48, 40), (64, 64)])
        image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
        path = root / f"sign-{i:02d}.{('png', 'ppm', 'jpg')[i % 3]}"
        image.save(path)
        paths.append(path)
    return paths


def test_predict_prints_top_k_per_file(predictor: str, images: list[Path], env: dict[str, str]) -> None:
    files = [str(p) for p in images[:3]]
    table = invoke(env, "predict", *files, "--url", predictor)
    assert table.exit_code == 0, table.output
    for path in files:
        row = next(line for line in table.stdout.splitlines() if Path(path).name in line)
        assert "%" in row and any(name in row for name in CLASS_NAMES)

    result = invoke(env, "predict", *[str(p) for p in images], "--url", predictor, "--json", "--top-k", "5")
    assert result.exit_code == 0, result.output
    answer = one_json_document(result.stdout)
    assert (answer["url"], answer["model"], answer["protocol"]) == (predictor, NAME, "v1")
    assert [p["file"] for p in answer["predictions"]] == [str(p) for p in images], "one per file, in order"
    for pred in answer["predictions"]:
        top = pred["top_k"]
        assert len(top) == 5 and top[0]["class_id"] == pred["class_id"]
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert all(t["class_name"] == CLASS_NAMES[t["class_id"]] for t in top)

    v2 = one_json_document(invoke(env, "predict", *files, "--url", predictor, "--protocol", "v2", "--json").stdout)
    v1_top = [(p["class_id"], round(p["probability"], 5)) for p in answer["predictions"][:3]]
    assert [(p["class_id"], round(p["probability"], 5)) for p in v2["predictions"]] == v1_top
    assert all(p["class_name"] == CLASS_NAMES[p["class_id"]] for p in v2["predictions"])

    one = one_json_document(invoke(env, "predict", files[0], "--url", predictor, "--top-k", "1", "--json").stdout)
    assert len(one["predictions"][0]["top_k"]) == 1
    more = invoke(env, "predict", files[0], "--url", predictor, "--top-k", "8", "--json")
    assert more.exit_code == 0 and len(one_json_document(more.stdout)["predictions"][0]["top_k"]) == 5
    assert "sent 5 classes per image" in more.stderr and "--top-k 8" in more.stderr


def test_predict_errors_are_one_line_with_the_right_exit_code(
    predictor: str, images: list[Path], tmp_path: Path, env: dict[str, str]
) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image\n")
    files = [str(p) for p in images[: FILES_PER_REQUEST + 3]]
    files.insert(FILES_PER_REQUEST + 1, str(bad))  # in the second request: the index is mapped back to the file
    cases = [
        ((*files, "--url", predictor), 1, ("answered 400", str(bad), "cannot decode image")),
        ((str(bad), "--url", predictor, "--protocol", "v2"), 1, ("answered 400", str(bad))),
        ((files[0], "--url", predictor, "--model", "no-such-model"), 1, ("answered 404", "no-such-model")),
        ((files[0], "--url", f"http://127.0.0.1:{free_port()}"), 1, ("cannot reach the predictor",)),
        ((str(tmp_path / "missing.png"), "--url", predictor), 2, ("missing.png", "does not exist")),
        ((str(tmp_path), "--url", predictor), 2, ("is a directory",)),
        ((files[0], "--url", "ftp://host"), 2, ("'--url'", "http(s)://")),
        ((files[0], "--top-k", "0"), 2, ("'--top-k'",)),
        ((files[0], "--protocol", "v3"), 2, ("'--protocol'",)),
    ]
    for args, code, fragments in cases:
        result = invoke(env, "predict", *args)
        assert result.exit_code == code, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
        assert len(errors) == 1, result.stderr
        for fragment in fragments:
            assert fragment in errors[0], (fragment, errors[0])
        assert result.stdout == "" and "Traceback" not in result.output

    # The installed executable: same exit code and message, stdout clean.
    proc = subprocess.run(
        [TSR, "predict", str(bad), "--url", predictor],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert proc.returncode == 1 and proc.stdout == "" and "cannot decode image" in proc.stderr


# ---- helpers ------------------------------------------------------------------------------------------------
def _tiny_gtsrb(root: Path, tracks: int = 2, frames: int = 3) -> Path:
    """All 43 GTSRB class folders with a few random 8x8 frames per track: enough to ingest and split."""
    rng = random.Random(1)
    training = root / "gtsrb" / "GTSRB" / "Training"
    for label in range(len(CLASS_NAMES)):
        folder = training / f"{label:05d}"
        folder.mkdir(parents=True)
        for track in range(tracks):
            for frame in range(frames):
                pixels = bytes(rng.randrange(256) for _ in range(8 * 8 * 3))
                Image.frombytes("RGB", (8, 8), pixels).save(folder / f"{track:05d}_{frame:05d}.ppm")
    return root
