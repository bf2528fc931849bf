"""`tsr demo` (what `make demo` runs) in a quick configuration, in a fresh state folder."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import ARCHIVE
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
    }
    for key in ("TSR_S3_ENDPOINT", "TSR_S3_ACCESS_KEY", "TSR_S3_SECRET_KEY", "TSR_STORE_DIR", "TSR_CONFIG"):
        env.pop(key, None)
    tsr = str(Path(sys.executable).parent / "tsr")
    args = ["demo", "--epochs", "2", "--max-groups-per-class", "3", "--min-accuracy", "0.0", "--requests", "5"]
    prometheus_root = tmp_path / "state" / "prometheus"
    try:
        result = subprocess.run([tsr, *args], capture_output=True, text=True, env=env, timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
