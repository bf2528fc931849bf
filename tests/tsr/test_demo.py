"""`tsr demo` (what `make demo` runs) in a quick configuration, in a fresh state folder."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

import pytest
from rich.console import Console

from tests.conftest import ARCHIVE
from tsr.core.dataset import DataError
from tsr.core.processes import free_port
from tsr.local import demo
from tsr.local.checkout import REPO_ROOT
from tsr.local.demo import copy_report, prometheus_query, start_prometheus
from tsr.local.loop import write_rules_file
from tsr.local.prometheus_server import (
    LocalPrometheus,
    PrometheusConfig,
    find_prometheus_binary,
    sample_value,
    stop_recorded,
)


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    binary = find_prometheus_binary()
    if binary is None:
        pytest.fail(
            "no `prometheus` binary on PATH or in .tools/bin: install Debian's prometheus package: make prometheus"
        )
    return binary


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_the_store_usable(
    tmp_path: Path, minio_binary: Path, prometheus_binary: Path
) -> None:
    env = {
        **os.environ,
        "TSR_STATE_DIR": str(tmp_path / "state"),
        "TSR_GTSRB_ARCHIVE": str(ARCHIVE),
        "HOME": str(tmp_path),  # no user config file
        "PYTHONPATH": str(REPO_ROOT),  # this checkout's code, whichever checkout the venv was installed from
    }
    for key in ("TSR_S3_ENDPOINT", "TSR_S3_ACCESS_KEY", "TSR_S3_SECRET_KEY", "TSR_STORE_DIR", "TSR_CONFIG"):
        env.pop(key, None)
    tsr = str(Path(sys.executable).parent / "tsr")
    args = ["demo", "--epochs", "2", "--max-groups-per-class", "3", "--min-accuracy", "0.0"]
    args += ["--min-class-accuracy", "0.0", "--requests", "5"]
    prometheus_root = tmp_path / "state" / "prometheus"
    try:
        result = subprocess.run([tsr, *args], capture_output=True, text=True, env=env, timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # The terminal gets a row per step and the summary; kfp.local's output (executor JSON, every
        # artifact's metadata: hundreds of lines) stays in the log file.
        err_lines = result.stderr.splitlines()
        rows = [line.split()[1] for line in err_lines if line[:1] in {"✔", "✘", "–"}]
        assert rows == ["ingest", "train", "evaluate", "register", "deploy"], result.stderr
        assert len(err_lines) <= len(rows) + 5, result.stderr  # + step logs, extracting, store, Prometheus
        assert len(result.stdout.splitlines()) <= 40, result.stdout  # the summary, 5 predictions, the JSON line
        (log,) = (tmp_path / "state" / "kfp-local" / "logs").iterdir()
        assert "Executing task" in log.read_text() and "Executing task" not in result.stderr + result.stdout
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["gate"] == "pass"
        assert summary["model_uri"].startswith("s3://models/gtsrb-classifier/")
        assert summary["store"].startswith("MinIO/S3 at http://127.0.0.1:")
        assert 0 < summary["validation_accuracy"] <= 1
        assert len(summary["predictions"]) == 5
        # The run report was copied out of the pipeline root to a fixed place, and the summary says where.
        assert summary["report"] == str(tmp_path / "state" / "demo" / "report.html")
        assert summary["report"] in result.stdout
        assert '<section id="training">' in Path(summary["report"]).read_text()
        assert "gate **pass**" in (tmp_path / "state" / "demo" / "summary.md").read_text()
        for p in summary["predictions"]:
            assert {"class_id", "class_name", "probability", "true_class"} <= set(p)
        # The predictor and MinIO were stopped ...
        assert not (tmp_path / "state" / "predictor.json").exists()
        assert not (tmp_path / "state" / "minio" / "server.json").exists()
        # ... Prometheus was left running, with the demo's requests in its TSDB, and the summary says where.
        assert summary["prometheus"].startswith("http://127.0.0.1:")
        assert summary["prometheus"] in result.stdout and "tsr prometheus stop" in result.stdout
        assert prometheus_query("gtsrb-classifier") in result.stdout
        server = LocalPrometheus(PrometheusConfig(root=prometheus_root), binary=None)
        assert server.running() and server.url == summary["prometheus"]
        example = server.query(prometheus_query("gtsrb-classifier"))
        assert sum(sample_value(s) for s in example) == 5, example
        assert {s["metric"]["class_name"] for s in example} == {p["class_name"] for p in summary["predictions"]}
        # ... until `tsr prometheus stop`.
        port = server.port
        stopped = subprocess.run([tsr, "prometheus", "stop"], capture_output=True, text=True, env=env, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert not (prometheus_root / "server.json").exists()
        assert not _port_open(port)
        # A later command starts MinIO on demand over the demo's data.
        later = subprocess.run(
            [tsr, "models", "show", "champion", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=True,
        )
        assert json.loads(later.stdout)["uri"] == summary["model_uri"]
    finally:
        stop_recorded(prometheus_root)


def test_demo_without_prometheus_says_so_in_one_line(tmp_path: Path) -> None:
    buffer = io.StringIO()
    server = start_prometheus(
        tmp_path / "prometheus", "http://127.0.0.1:1", None, write_rules_file(tmp_path / "rules"), Console(file=buffer)
    )
    assert server is None
    lines = buffer.getvalue().strip().splitlines()
    assert len(lines) == 1 and "Prometheus not installed" in lines[0] and "make prometheus" in lines[0], lines


def test_copy_report_puts_the_latest_report_at_a_fixed_path(tmp_path: Path) -> None:
    run = tmp_path / "kfp-local" / "run"
    run.mkdir(parents=True)
    (run / "report").write_text("<html>one</html>")
    (run / "summary").write_text("## one")
    out = tmp_path / "demo"
    assert copy_report(run / "report", run / "summary", out) == out / "report.html"
    assert (out / "report.html").read_text() == "<html>one</html>" and (out / "summary.md").read_text() == "## one"
    (run / "report").write_text("<html>two</html>")
    assert copy_report(run / "report", None, out) == out / "report.html"
    assert (out / "report.html").read_text() == "<html>two</html>"
    assert copy_report(None, None, out) is None and copy_report(run / "missing", None, out) is None


# ---- no local data and no network ---------------------------------------------------------------------------
def _offline(*args: object, **kwargs: object) -> NoReturn:
    """What urllib raises on a machine without DNS, torchvision's downloader deep below."""
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


def test_demo_without_data_or_network_says_in_one_line_how_to_give_it_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone not beside shared/, no cached copy, no archive, and torchvision's download fails: one
    DataError line naming the options that give the demo its data, and nothing left in the state dir."""
    monkeypatch.setattr(demo, "SHARED_ARCHIVE", tmp_path / "elsewhere" / "gtsrb-train-32.tar.gz")
    monkeypatch.delenv("TSR_GTSRB_ARCHIVE", raising=False)
    monkeypatch.setenv("TSR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DataError) as caught:
        demo.find_data(None, Console(file=io.StringIO()))
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith("GTSRB could not be downloaded") and "Name or service not known" in message, message
    assert "--data-dir DIR" in message and "TSR_GTSRB_ARCHIVE=/path/to/gtsrb-train-32.tar.gz" in message, message
    assert "DEMO_DATA=DIR" in message, message
    leftovers = list((tmp_path / "state").iterdir()) if (tmp_path / "state").exists() else []
    assert leftovers == [], f"a failed download must leave nothing that passes for data: {leftovers}"


def test_demo_names_a_missing_archive_given_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "typo" / "gtsrb-train-32.tar.gz"
    monkeypatch.setenv("TSR_GTSRB_ARCHIVE", str(missing))
    monkeypatch.setenv("TSR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)  # it must not try to download instead
    with pytest.raises(DataError, match=f"^TSR_GTSRB_ARCHIVE={re.escape(str(missing))}: no such file"):
        demo.find_data(None, Console(file=io.StringIO()))


def test_tsr_demo_offline_without_data_exits_1_with_one_line(tmp_path: Path) -> None:
    """The real entry point in its own process, with the shared archive moved out of reach (a clone
    elsewhere) and every HTTPS request sent to a closed port on loopback (no network needed)."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSR_") and k.lower() != "no_proxy"}
    env |= {
        "TSR_STATE_DIR": str(tmp_path / "state"),
        "TSR_STORE_DIR": str(tmp_path / "store"),  # no MinIO needed: the data is missing before any store starts
        "HOME": str(tmp_path),
        "https_proxy": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "HTTP_PROXY": closed,
        "PYTHONPATH": str(REPO_ROOT),
    }
    script = (
        "import pathlib, sys; import tsr.local.demo as d; d.SHARED_ARCHIVE = pathlib.Path(sys.argv[1]); "
        "from tsr.cli import app; app(prog_name='tsr', args=sys.argv[2:])"
    )
    elsewhere = str(tmp_path / "elsewhere" / "gtsrb-train-32.tar.gz")
    proc = subprocess.run(
        [sys.executable, "-c", script, elsewhere, "demo", "--epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "GTSRB could not be downloaded" in errors[0] and "Connection refused" in errors[0], errors[0]
    assert "--data-dir DIR" in errors[0] and "TSR_GTSRB_ARCHIVE=" in errors[0], errors[0]
    assert len(proc.stderr.splitlines()) <= 4, proc.stderr  # the log path, what it tried, the error
    assert not (tmp_path / "state" / "data").exists()
