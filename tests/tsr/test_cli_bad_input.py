"""Bad input to the `tsr` command: one clear line, the documented exit code, nothing started or written.

Exit codes (tsr.cli.common.EXIT_CODES_HELP): 2 for a usage error (a bad option or argument value, refused
before any work), 1 for a runtime failure (the arguments were fine, the data or the registry was not).
Most cases run in-process with typer's CliRunner, with the functions that would start a store, a
server, the pipeline or a rollout replaced by recorders: a usage error must reach none of them. A
few run the installed `tsr` executable to check the real entry point (exit status, no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tsr.cli import app

TSR = str(Path(sys.executable).parent / "tsr")
MISSING = "{tmp}/missing"  # placeholders, filled in per test from its tmp_path
A_FILE = "{tmp}/a-file"
A_DIR = "{tmp}/data"
MODEL = "{tmp}/model"  # passes the CLI's checks (a directory with config.json); never loaded here
OUT = "{tmp}/out"
S3_URI = "s3://models/gtsrb-classifier/20990101-000000-abcdef"


@dataclass
class Sandbox:
    """A temp dir with the environment the commands see, and recorders for every expensive side effect."""

    tmp: Path
    env: dict[str, str]
    started: list[str] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def store(self) -> Path:
        return self.tmp / "store"

    def fill(self, args: tuple[str, ...]) -> list[str]:
        return [a.format(tmp=self.tmp) for a in args]

    def run(self, *args: str) -> Any:
        return CliRunner().invoke(app, self.fill(args), env=self.env)

    def untouched(self) -> None:
        """Nothing started, nothing written: no state dir, no store objects, no output dir."""
        assert self.started == [], f"started {self.started} despite the bad input"
        assert not self.state.exists(), sorted(self.state.rglob("*"))
        assert not self.store.exists() or not any(p.is_file() for p in self.store.rglob("*"))
        assert not (self.tmp / "out").exists()


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    import pipelines.local_run as local_run
    import serving.server as server
    import tsr.kube.rollout as rollout
    import tsr.local.demo as demo
    from tsr.cli import common

    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}\n")
    for name in ("TSR_S3_ENDPOINT", "TSR_S3_ACCESS_KEY", "TSR_S3_SECRET_KEY", "TSR_CONFIG", "TSR_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "TSR_STATE_DIR": str(tmp_path / "state"),
        "TSR_STORE_DIR": str(tmp_path / "store"),  # a directory store: any registry write would show here
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }
    box = Sandbox(tmp_path, env)
    real_session = common._store_session

    def recorder(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            box.started.append(name)
            raise AssertionError(f"{name} must not be reached with bad input")

        return record

    def store_session() -> Any:
        box.started.append("store")
        return real_session()

    monkeypatch.setattr(common, "_store_session", store_session)
    monkeypatch.setattr(server, "serve", recorder("server"))
    monkeypatch.setattr(local_run, "run_local", recorder("pipeline"))
    monkeypatch.setattr(demo, "run_demo", recorder("demo"))
    for name in ("deploy_command", "promote_command", "rollback_command"):
        monkeypatch.setattr(rollout, name, recorder(name))
    yield box


def assert_one_line_error(result: Any, code: int, *fragments: str) -> str:
    """The exit code, no traceback, and exactly one error line on stderr that holds every fragment."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---- usage errors: exit 2, the option named, nothing started or written ------------------------------
INGEST = ("ingest", "--out", OUT, "--source")
EVALUATE_DATA = ("evaluate", "--model", MODEL, "--data")
EVALUATE_MODEL = ("evaluate", "--data", A_DIR, "--model")
SERVE = ("serve", "--model", MODEL)
RUN_LOCAL = ("pipeline", "run-local", "--data", A_DIR)

USAGE_ERRORS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    # ingest: paths, URIs, values
    ("ingest-missing-source", (*INGEST, MISSING), ("'--source'", "does not exist")),
    ("ingest-source-is-a-file", (*INGEST, A_FILE), ("'--source'", "is a file")),
    ("ingest-s3-without-bucket", (*INGEST, "s3://"), ("'--source'", "has no bucket name")),
    ("ingest-s3-empty-bucket", (*INGEST, "s3:///x"), ("'--source'", "has no bucket name")),
    ("ingest-s3-bad-bucket", (*INGEST, "s3://Big_Bucket/x"), ("'--source'", "invalid bucket name")),
    ("ingest-s3-dotdot", (*INGEST, "s3://datasets/../etc"), ("'--source'", "'..'")),
    ("ingest-ftp", (*INGEST, "ftp://host/x"), ("'--source'", "unknown URI scheme 'ftp'")),
    ("ingest-gs", (*INGEST, "gs://bucket/x"), ("'--source'", "unknown URI scheme 'gs'")),
    ("ingest-out-is-a-file", ("ingest", "--source", A_DIR, "--out", A_FILE), ("'--out'", "is a file")),
    ("ingest-out-under-a-file", ("ingest", "--source", A_DIR, "--out", A_FILE + "/x"), ("'--out'", "is a file")),
    ("ingest-val-fraction-0", (*INGEST, A_DIR, "--val-fraction", "0"), ("'--val-fraction'", "(0, 1)")),
    ("ingest-val-fraction-1", (*INGEST, A_DIR, "--val-fraction", "1"), ("'--val-fraction'", "(0, 1)")),
    ("ingest-val-fraction-neg", (*INGEST, A_DIR, "--val-fraction", "-0.2"), ("'--val-fraction'", "(0, 1)")),
    ("ingest-layout", (*INGEST, A_DIR, "--layout", "coco"), ("'--layout'", "coco")),
    ("ingest-max-groups", (*INGEST, A_DIR, "--max-groups-per-class", "-1"), ("'--max-groups-per-class'",)),
    ("ingest-seed", (*INGEST, A_DIR, "--seed", "-1"), ("'--seed'",)),
    # evaluate: --model and --data
    ("evaluate-missing-model", (*EVALUATE_MODEL, MISSING), ("'--model'", "no such directory")),
    ("evaluate-model-is-a-file", (*EVALUATE_MODEL, A_FILE), ("'--model'", "is a file")),
    ("evaluate-model-not-a-model", (*EVALUATE_MODEL, A_DIR), ("'--model'", "not a model directory")),
    ("evaluate-model-s3-no-bucket", (*EVALUATE_MODEL, "s3://"), ("'--model'", "has no bucket name")),
    ("evaluate-model-s3-empty-bucket", (*EVALUATE_MODEL, "s3:///x"), ("'--model'", "has no bucket name")),
    ("evaluate-model-s3-shape", (*EVALUATE_MODEL, "s3://models/a/b/c"), ("'--model'", "must look like")),
    ("evaluate-model-s3-dotdot-name", (*EVALUATE_MODEL, "s3://models/../v1"), ("'--model'", "'..'")),
    ("evaluate-model-s3-dotdot-version", (*EVALUATE_MODEL, "s3://models/x/.."), ("'--model'", "'..'")),
    ("evaluate-model-gs", (*EVALUATE_MODEL, "gs://models/x/y"), ("'--model'", "unknown URI scheme")),
    ("evaluate-model-ftp", (*EVALUATE_MODEL, "ftp://host/x"), ("'--model'", "unknown URI scheme")),
    ("evaluate-model-name-slash", (*EVALUATE_MODEL, "champion", "--model-name", "a/b"), ("'--model-name'", "'a/b'")),
    ("evaluate-model-name-dotdot", (*EVALUATE_MODEL, "latest", "--model-name", ".."), ("'--model-name'", "'..'")),
    ("evaluate-missing-data", (*EVALUATE_DATA, MISSING), ("'--data'", "does not exist")),
    ("evaluate-data-is-a-file", (*EVALUATE_DATA, A_FILE), ("'--data'", "is a file")),
    ("evaluate-data-s3-no-bucket", (*EVALUATE_DATA, "s3://"), ("'--data'", "has no bucket name")),
    ("evaluate-data-unknown-scheme", (*EVALUATE_DATA, "http://example.com/x"), ("'--data'", "unknown URI")),
    ("evaluate-split", (*EVALUATE_DATA, A_DIR, "--split", "validation"), ("'--split'", "validation")),
    # serve: fails before the server (or the store) starts
    ("serve-http-port-0", (*SERVE, "--http-port", "0"), ("'--http-port'",)),
    ("serve-http-port-65536", (*SERVE, "--http-port", "65536"), ("'--http-port'", "65535")),
    ("serve-http-port-negative", (*SERVE, "--http-port", "-1"), ("'--http-port'",)),
    ("serve-http-port-text", (*SERVE, "--http-port", "http"), ("'--http-port'",)),
    ("serve-grpc-port", (*SERVE, "--grpc-port", "70000"), ("'--grpc-port'", "65535")),
    ("serve-same-ports", (*SERVE, "--grpc-port", "8080"), ("'--grpc-port'", "--http-port")),
    ("serve-threads", (*SERVE, "--threads", "-1"), ("'--threads'",)),
    ("serve-batch-size", (*SERVE, "--batch-size", "0"), ("'--batch-size'",)),
    ("serve-batch-wait", (*SERVE, "--batch-wait-ms", "-5"), ("'--batch-wait-ms'",)),
    ("serve-reload-interval", (*SERVE, "--reload-interval", "-1"), ("'--reload-interval'",)),
    ("serve-max-request-bytes", (*SERVE, "--max-request-bytes", "0"), ("'--max-request-bytes'",)),
    ("serve-max-request-pixels", (*SERVE, "--max-request-pixels", "0"), ("'--max-request-pixels'",)),
    (
        "serve-request-pixels-over-decode-pixels",
        (*SERVE, "--max-request-pixels", "100", "--max-decode-pixels", "50"),
        ("'--max-request-pixels'", "max_decode_pixels=50"),
    ),
    ("serve-max-header-bytes", (*SERVE, "--max-header-bytes", "100"), ("'--max-header-bytes'",)),
    ("serve-header-timeout", (*SERVE, "--header-timeout", "0"), ("'--header-timeout'",)),
    ("serve-body-timeout", (*SERVE, "--body-timeout", "-1"), ("'--body-timeout'",)),
    ("serve-decode-threads", (*SERVE, "--decode-threads", "0"), ("'--decode-threads'",)),
    ("serve-decode-wait", (*SERVE, "--decode-wait", "-1"), ("'--decode-wait'",)),
    ("serve-missing-model", ("serve", "--model", MISSING), ("'--model'", "no such directory")),
    ("serve-model-not-a-model", ("serve", "--model", A_DIR), ("'--model'", "no config.json")),
    ("serve-model-file-uri", ("serve", "--model", "file://{tmp}/data"), ("'--model'", "no config.json")),
    ("serve-model-s3-no-bucket", ("serve", "--model", "s3://"), ("'--model'", "has no bucket name")),
    ("serve-model-unknown-scheme", ("serve", "--model", "ftp://h/m"), ("'--model'", "unknown URI scheme")),
    ("serve-model-name", ("serve", "--model", "champion", "--model-name", "x/../y"), ("'--model-name'",)),
    # pipeline run-local: fails before the store starts or any step runs
    ("run-local-missing-data", ("pipeline", "run-local", "--data", MISSING), ("'--data'", "does not exist")),
    ("run-local-data-is-a-file", ("pipeline", "run-local", "--data", A_FILE), ("'--data'", "is a file")),
    ("run-local-data-ftp", ("pipeline", "run-local", "--data", "ftp://h/x"), ("'--data'", "unknown URI")),
    ("run-local-data-s3-no-bucket", ("pipeline", "run-local", "--data", "s3://"), ("'--data'", "no bucket")),
    ("run-local-epochs-0", (*RUN_LOCAL, "--epochs", "0"), ("'--epochs'",)),
    ("run-local-epochs-negative", (*RUN_LOCAL, "--epochs", "-3"), ("'--epochs'",)),
    ("run-local-batch-size-0", (*RUN_LOCAL, "--batch-size", "0"), ("'--batch-size'",)),
    ("run-local-arch", (*RUN_LOCAL, "--arch", "resnet9000"), ("'--arch'", "unknown architecture 'resnet9000'")),
    ("run-local-threads", (*RUN_LOCAL, "--threads", "-1"), ("'--threads'",)),
    ("run-local-lr", (*RUN_LOCAL, "--lr", "0"), ("'--lr'", "(0, 10)")),
    ("run-local-val-fraction", (*RUN_LOCAL, "--val-fraction", "1.5"), ("'--val-fraction'", "(0, 1)")),
    ("run-local-layout", (*RUN_LOCAL, "--layout", "coco"), ("'--layout'",)),
    ("run-local-min-accuracy-high", (*RUN_LOCAL, "--min-accuracy", "1.5"), ("'--min-accuracy'",)),
    ("run-local-min-accuracy-low", (*RUN_LOCAL, "--min-accuracy", "-0.1"), ("'--min-accuracy'",)),
    ("run-local-max-groups", (*RUN_LOCAL, "--max-groups-per-class", "-1"), ("'--max-groups-per-class'",)),
    ("run-local-model-name", (*RUN_LOCAL, "--model-name", "../evil"), ("'--model-name'", "'../evil'")),
    ("run-local-deploy-mode", (*RUN_LOCAL, "--deploy-mode", "k8s"), ("'--deploy-mode'", "k8s")),
    ("run-local-missing-test-data", (*RUN_LOCAL, "--test-data", MISSING), ("'--test-data'", "does not exist")),
    # registry browsing: names are checked before the store is opened
    ("models-show-dotdot", ("models", "show", "a/../b"), ("'ref'", "'a/../b'")),
    ("models-show-slash", ("models", "show", "x/y"), ("'ref'", "'x/y'")),
    ("models-show-model-name", ("models", "show", "latest", "--model-name", "Bad/Name"), ("'--model-name'",)),
    ("models-list-model-name", ("models", "list", "--model-name", ".."), ("'--model-name'", "'..'")),
    # rollout: refused before the registry or any cluster is contacted
    ("deploy-unknown-scheme", ("deploy", "gs://models/x/y"), ("'model'", "unknown URI scheme")),
    ("deploy-s3-no-bucket", ("deploy", "s3://"), ("'model'", "has no bucket name")),
    ("deploy-bad-version", ("deploy", "../v1"), ("'model'", "'../v1'")),
    ("deploy-model-name", ("deploy", S3_URI, "--model-name", "a/b"), ("'--model-name'", "'a/b'")),
    ("deploy-canary-101", ("deploy", S3_URI, "--canary-percent", "101"), ("'--canary-percent'",)),
    ("deploy-min-replicas", ("deploy", S3_URI, "--min-replicas", "-1"), ("'--min-replicas'",)),
    ("deploy-max-replicas", ("deploy", S3_URI, "--max-replicas", "0"), ("'--max-replicas'",)),
    ("deploy-arch-placement", ("deploy", S3_URI, "--arch-placement", "sometimes"), ("'--arch-placement'",)),
    ("deploy-timeout", ("deploy", S3_URI, "--timeout", "0"), ("'--timeout'", "> 0")),
    ("promote-model-name", ("promote", "../x"), ("'model_name'", "'../x'")),
    ("promote-timeout", ("promote", "--timeout", "-1"), ("'--timeout'", "> 0")),
    ("rollback-model-name", ("rollback", "UPPER"), ("'model_name'", "'UPPER'")),
    ("rollback-to-version", ("rollback", "--to-version", "v/../../x"), ("'--to-version'",)),
    # demo: checked before the store, the pipeline or the predictor
    ("demo-missing-data-dir", ("demo", "--data-dir", MISSING), ("'--data-dir'", "does not exist")),
    ("demo-data-dir-is-a-file", ("demo", "--data-dir", A_FILE), ("'--data-dir'", "is a file")),
    ("demo-epochs", ("demo", "--epochs", "0"), ("'--epochs'",)),
    ("demo-batch-size", ("demo", "--batch-size", "0"), ("'--batch-size'",)),
    ("demo-min-accuracy", ("demo", "--min-accuracy", "2"), ("'--min-accuracy'",)),
    ("demo-min-class-accuracy", ("demo", "--min-class-accuracy", "1.5"), ("'--min-class-accuracy'",)),
    ("demo-requests", ("demo", "--requests", "0"), ("'--requests'",)),
]


@pytest.mark.parametrize(("args", "fragments"), [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS])
def test_usage_error_exits_2_naming_the_option(
    sandbox: Sandbox, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = sandbox.run(*args)
    line = assert_one_line_error(result, 2, "Invalid value for", *fragments)
    assert line.startswith("Error: ")
    assert result.stdout == "", "no result on stdout after a usage error"
    sandbox.untouched()


def test_ingest_refuses_to_write_into_a_foreign_directory(sandbox: Sandbox) -> None:
    foreign = sandbox.tmp / "notes"
    foreign.mkdir()
    (foreign / "keep-me.txt").write_text("mine\n")
    result = sandbox.run("ingest", "--source", A_DIR, "--out", str(foreign))
    assert_one_line_error(result, 2, "'--out'", "not empty", "keep-me.txt")
    assert sorted(p.name for p in foreign.iterdir()) == ["keep-me.txt"]
    sandbox.untouched()


def test_deploy_combination_refused_by_the_rollout_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canary in Standard mode passes every single-option check; the real deploy_command refuses the
    combination before any API call, and the CLI reports it as a usage error too."""
    monkeypatch.setattr("tsr.cli.common._store_session", lambda: pytest.fail("no registry is needed for an s3:// URI"))
    env = {"KUBECONFIG": str(tmp_path / "none"), "TSR_STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(app, ["deploy", S3_URI, "--canary-percent", "10"], env=env)
    line = assert_one_line_error(result, 2, "needs deployment_mode 'Knative'")
    assert line.startswith("error: invalid deployment")
    assert not (tmp_path / "state").exists()


# ---- runtime failures: exit 1, one line naming the file or object, nothing half-written -------------
def test_runtime_failures_exit_1(sandbox: Sandbox, tiny_model_dir: Path, gtsrb_small: Path) -> None:
    broken_model = sandbox.tmp / "broken-model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    wrong_layout = sandbox.tmp / "flat"
    wrong_layout.mkdir()
    (wrong_layout / "readme.txt").write_text("no images here\n")

    result = sandbox.run("evaluate", "--model", str(broken_model), "--data", str(gtsrb_small))
    assert_one_line_error(result, 1, "broken-model")

    result = sandbox.run("evaluate", "--model", str(tiny_model_dir), "--data", str(wrong_layout))
    assert_one_line_error(result, 1, str(wrong_layout), "neither GTSRB layout")

    result = sandbox.run("evaluate", "--model", str(tiny_model_dir), "--data", str(gtsrb_small), "--split", "nope")
    assert result.exit_code == 2  # (a usage error, for contrast)

    result = sandbox.run("ingest", "--source", str(wrong_layout), "--out", str(sandbox.tmp / "out"))
    assert_one_line_error(result, 1, "neither GTSRB layout")

    sandbox.started.clear()
    result = sandbox.run("models", "show", "20990101-000000-abcdef")
    assert_one_line_error(result, 1, "20990101-000000-abcdef", "is not a complete version")
    result = sandbox.run("models", "show", "champion", "--model-name", "nothing-here")
    assert_one_line_error(result, 1, "'nothing-here' has no 'champion' alias")
    assert sandbox.started == ["store", "store"]
    sandbox.started.clear()
    assert not (sandbox.tmp / "out").exists()
    assert not sandbox.store.exists() or not any(p.is_file() for p in sandbox.store.rglob("*"))


def test_corrupt_image_fails_ingest_naming_the_file_and_writes_nothing(sandbox: Sandbox, gtsrb_small: Path) -> None:
    root = sandbox.tmp / "folder"
    training = gtsrb_small / "gtsrb" / "GTSRB" / "Training"
    for cls in ("00001", "00014"):
        shutil.copytree(training / cls, root / cls, ignore=shutil.ignore_patterns("*.csv"))
    victim = sorted((root / "00014").glob("*.ppm"))[7]
    victim.write_bytes(b"\x89PNG this is not an image")
    out = sandbox.tmp / "out"
    result = sandbox.run("ingest", "--source", str(root), "--out", str(out))
    assert_one_line_error(result, 1, victim.name, "cannot decode image")
    assert not out.exists() and not list(sandbox.tmp.glob(".out.*")), "no partial output, no temp leftovers"

    # Opting in to skipping: the dataset is written and the data card says what was left out.
    result = sandbox.run("ingest", "--source", str(root), "--out", str(out), "--skip-corrupt")
    assert result.exit_code == 0, result.output
    card = json.loads((out / "data-card.json").read_text())
    assert card["skipped_images"]["count"] == 1
    assert card["skipped_images"]["files"][0]["file"] == f"00014/{victim.name}"


def test_demo_gate_failure_exits_3(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tsr.local.demo.run_demo", lambda cfg, out, err, **_: {"gate": "fail"})
    result = sandbox.run("demo", "--epochs", "1")
    assert result.exit_code == 3 and '"gate": "fail"' in result.stdout


def test_help_documents_the_exit_codes() -> None:
    text = CliRunner().invoke(app, ["--help"]).stdout
    assert "Exit codes:" in text
    for line in ("0  success", "1  the command ran and failed", "2  usage error", "3  tsr demo"):
        assert line in text


# ---- the real executable -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("ingest", "--source", "s3://", "--out", "{tmp}/out"), 2, "has no bucket name"),
        (("serve", "--model", "{tmp}/missing", "--http-port", "8080"), 2, "no such directory"),
        (("pipeline", "run-local", "--data", "{tmp}", "--epochs", "0"), 2, "'--epochs'"),
        (("models", "show", "does-not-exist"), 1, "is not a complete version"),
    ],
    ids=["ingest-s3", "serve-missing-model", "run-local-epochs", "models-show-missing"],
)
def test_installed_tsr_exit_codes(tmp_path: Path, args: tuple[str, ...], code: int, fragment: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSR_S3_") and k not in {"TSR_CONFIG", "TSR_DEBUG"}}
    env |= {"TSR_STATE_DIR": str(tmp_path / "state"), "TSR_STORE_DIR": str(tmp_path / "store")}
    proc = subprocess.run(
        [TSR, *(a.format(tmp=tmp_path) for a in args)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()


def test_tsr_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "TSR_STORE_DIR": str(tmp_path / "store"), "TSR_STATE_DIR": str(tmp_path / "state")}
    env["TSR_DEBUG"] = "1"
    proc = subprocess.run([TSR, "models", "show", "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "RegistryError" in proc.stderr
