"""The loopback Prometheus: a real server scraping itself, PromQL through its API, clean stops, and
clear errors for a bad rule file or a missing binary."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tsr.core.processes import free_port
from tsr.local.prometheus_server import (
    LocalPrometheus,
    PrometheusConfig,
    PrometheusError,
    find_prometheus_binary,
    sample_value,
    stop_recorded,
    write_config,
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


def test_scrapes_itself_answers_promql_and_stops(tmp_path: Path, prometheus_binary: Path) -> None:
    port = free_port()
    config = PrometheusConfig(root=tmp_path / "prom", targets=[f"localhost:{port}"], job_name="self", port=port)
    with LocalPrometheus(config, prometheus_binary) as server:
        assert server.url == f"http://127.0.0.1:{port}"
        assert server.running() and config.server_file.is_file()
        up = server.wait_for('up{job="self"}', lambda r: len(r) == 1 and sample_value(r[0]) == 1, timeout_s=30)
        assert up[0]["metric"]["instance"] == f"localhost:{port}"
        # A metric Prometheus only has because it scraped itself.
        assert server.query('prometheus_build_info{job="self"}')
        assert [(s["metric"], s["value"][1]) for s in server.query("1 + 1")] == [({}, "2")]
        with pytest.raises(PrometheusError, match="parse error"):
            server.query("sum(")
        with pytest.raises(TimeoutError, match=r"last result: \[\{'metric': \{\}"):
            server.wait_for("vector(7)", lambda r: False, timeout_s=1)
    assert not _port_open(port)
    assert not config.server_file.exists()
    assert not server.running()


def test_another_process_stops_it_through_the_record(tmp_path: Path, prometheus_binary: Path) -> None:
    """What `tsr prometheus stop` does for the server the demo left running."""
    config = PrometheusConfig(root=tmp_path / "prom")
    server = LocalPrometheus(config, prometheus_binary)
    server.start()
    port = server.port
    try:
        assert _port_open(port)
        assert stop_recorded(config.root) is True
        assert not _port_open(port)
        assert stop_recorded(config.root) is False
    finally:
        server.stop()


def test_bad_rule_file_fails_the_start_and_names_the_file(tmp_path: Path, prometheus_binary: Path) -> None:
    rules = tmp_path / "broken-rules.yaml"
    rules.write_text("groups:\n  - name: broken\n    rules:\n      - alert: Oops\n        expr: sum(rate(x[5m])\n")
    port = free_port()
    server = LocalPrometheus(PrometheusConfig(root=tmp_path / "prom", rule_files=[rules], port=port), prometheus_binary)
    with pytest.raises(PrometheusError) as info:
        server.start(timeout_s=30)
    try:
        message = str(info.value)
        assert "exited with code" in message
        assert f'{rules}: 5:15: group "broken", rule 1, "Oops"' in message, message
        assert "parse error" in message
        assert not server.config.server_file.exists()
        assert not _port_open(port)
    finally:
        server.stop()


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    server = LocalPrometheus(PrometheusConfig(root=tmp_path / "prom"), binary=None)
    with pytest.raises(PrometheusError, match=r"install Debian's prometheus package: make prometheus"):
        server.start()


def test_written_config_passes_promtool(tmp_path: Path) -> None:
    """Rule files by absolute path, one static job; promtool (from the same package) accepts it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("no `promtool` on PATH: install Debian's prometheus package: make prometheus")
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups:\n  - name: ok\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n")
    config = PrometheusConfig(
        root=tmp_path / "prom", targets=["127.0.0.1:8080"], rule_files=[rules], scrape_interval="5s"
    )
    path = write_config(config)
    document = yaml.safe_load(path.read_text())
    assert document["scrape_configs"] == [
        {"job_name": "tsr-predictor", "metrics_path": "/metrics", "static_configs": [{"targets": ["127.0.0.1:8080"]}]}
    ]
    assert document["global"]["scrape_interval"] == "5s" == document["global"]["evaluation_interval"]
    assert document["rule_files"] == [str(rules)]
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr
