"""A real Prometheus on 127.0.0.1, for the integration tests and the demo.

Modelled on tsr.local.minio_server: the binary comes from PATH (Debian's `prometheus` package,
`make prometheus`) or .tools/bin; config, TSDB, log and a pid record live under one folder
(`PrometheusConfig.root`), so a server the demo leaves running can be found and stopped later
by another process (`tsr prometheus stop`). Everything is passed explicitly: no environment lookups.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from tsr.core.processes import alive, free_port, proc_start_time, terminate
from tsr.local.minio_server import TOOLS_BIN

log = logging.getLogger(__name__)

INSTALL_HINT = "install Debian's prometheus package: make prometheus"
DEFAULT_JOB = "tsr-predictor"

Sample = dict[str, Any]  # one element of a PromQL result: {"metric": {...}, "value": [ts, "v"]} (or "values")


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or answered a query with an error."""


def find_prometheus_binary(tools_bin: Path = TOOLS_BIN) -> Path | None:
    """.tools/bin first (a pinned copy wins), then PATH; None when neither has one."""
    local = tools_bin / "prometheus"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("prometheus")
    return Path(found) if found else None


@dataclass
class PrometheusConfig:
    """One Prometheus: what it scrapes, which rules it evaluates, where it keeps its state.

    `port` 0 means a free port picked at start. `scrape_interval` is short by default because
    tests wait for scrapes; rules are evaluated at the same interval unless told otherwise.
    """

    root: Path  # holds prometheus.yml, data/ (TSDB), prometheus.log and server.json
    targets: list[str] = field(default_factory=list)  # "host:port" of /metrics endpoints
    job_name: str = DEFAULT_JOB
    scrape_interval: str = "1s"
    evaluation_interval: str | None = None  # None: same as scrape_interval
    rule_files: list[Path] = field(default_factory=list)
    port: int = 0
    retention: str = "1d"  # local debugging data only; never kept for long

    @property
    def config_file(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def server_file(self) -> Path:
        return self.root / "server.json"


def write_config(cfg: PrometheusConfig) -> Path:
    """prometheus.yml with one static scrape job; rule files by absolute path (Prometheus resolves
    relative ones against the config file's folder, not the caller's working directory)."""
    interval = cfg.scrape_interval
    document: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": cfg.evaluation_interval or interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in cfg.rule_files],
        "scrape_configs": [
            {
                "job_name": cfg.job_name,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(cfg.targets)}],
            }
        ],
    }
    cfg.root.mkdir(parents=True, exist_ok=True)
    cfg.config_file.write_text(yaml.safe_dump(document, sort_keys=False))
    return cfg.config_file


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _log_errors(path: Path, offset: int) -> str:
    """The error lines this run wrote (they name the file and rule Prometheus refused), else the tail."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    errors = [_readable(line) for line in text.splitlines() if "level=error" in line]
    return "\n".join(errors) if errors else text[-3000:]


_LOGFMT_FIELD = re.compile(r'\b(msg|err)=("(?:[^"\\]|\\.)*"|\S+)')


def _readable(line: str) -> str:
    """A logfmt error line as 'msg: err', quotes unescaped; the raw line if it has neither field."""
    fields: dict[str, str] = {}
    for key, value in _LOGFMT_FIELD.findall(line):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value) if value.startswith('"') else value
        fields[key] = value
    return ": ".join(fields[k] for k in ("msg", "err") if k in fields) or line


def sample_value(sample: Sample) -> float:
    """The float of an instant-vector sample (Prometheus sends it as a string: "NaN", "+Inf", "3")."""
    return float(sample["value"][1])


@dataclass
class LocalPrometheus:
    """One Prometheus process over `config.root`; also a context manager (start on enter, stop on exit)."""

    config: PrometheusConfig
    binary: Path | None
    port: int = 0  # the port it listens on once started (or found running)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        if not self.port:
            raise PrometheusError("Prometheus is not started")
        return f"http://127.0.0.1:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> str:
        """Write the config, start the server detached (its own session, so it may outlive the
        caller), wait for /-/ready and record pid and port; returns the base URL.

        A config Prometheus refuses (a bad rule file, say) makes it exit: the error then carries
        its exit code and the error lines of its log, which name the offending file.
        """
        if self.binary is None:
            raise PrometheusError(f"no `prometheus` binary on PATH or in {TOOLS_BIN}: {INSTALL_HINT}")
        cfg = self.config
        if self.running():  # a second server would orphan the first: its record is overwritten
            raise PrometheusError(f"a Prometheus recorded in {cfg.server_file} is already running at {self.url}")
        write_config(cfg)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        port = cfg.port or free_port()
        argv = [
            str(self.binary),
            f"--config.file={cfg.config_file}",
            f"--storage.tsdb.path={cfg.data_dir}",
            f"--storage.tsdb.retention.time={cfg.retention}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        log_start = cfg.log_file.stat().st_size if cfg.log_file.is_file() else 0
        with cfg.log_file.open("ab") as log_fh:
            proc = subprocess.Popen(
                argv,
                cwd=cfg.root,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc, self.port = proc, port
        cfg.server_file.write_text(
            json.dumps({"pid": proc.pid, "start_time": proc_start_time(proc.pid), "port": port, "url": self.url})
        )
        deadline = time.monotonic() + timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                cfg.server_file.unlink(missing_ok=True)
                self._proc, self.port = None, 0
                rules = ", ".join(str(p) for p in cfg.rule_files) or "none"
                raise PrometheusError(
                    f"Prometheus exited with code {code} at start (config {cfg.config_file}, rule files: {rules}); "
                    f"errors in {cfg.log_file}:\n{_log_errors(cfg.log_file, log_start)}"
                )
            if self._ready(port):
                log.info("started Prometheus pid %s on 127.0.0.1:%s (state %s)", proc.pid, port, cfg.root)
                return self.url
            if time.monotonic() >= deadline:
                self.stop()
                raise PrometheusError(
                    f"Prometheus not ready within {timeout_s:.0f}s; log {cfg.log_file}:\n{_log_tail(cfg.log_file)}"
                )
            time.sleep(0.2)

    @staticmethod
    def _ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def running(self) -> bool:
        """Whether the recorded server is alive and ready; adopts its port when it is."""
        record = self._record()
        if record is None:
            return False
        pid, start_time, port = record
        if alive(pid, start_time) and self._ready(port):
            self.port = port
            return True
        return False

    def _record(self) -> tuple[int, str | None, int] | None:
        path = self.config.server_file
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
            return int(info["pid"]), info.get("start_time"), int(info["port"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            return None

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the recorded server (it flushes its TSDB head), SIGKILL if it lingers, remove the
        record. Works from any process that knows `config.root`. Returns whether one was stopped."""
        record = self._record()
        stopped = False
        if record is not None:
            pid, start_time, _ = record
            stopped = terminate(pid, start_time, timeout_s)
        if self._proc is not None:  # ours: make sure it is reaped even without a record
            if self._proc.poll() is None:
                stopped = True
                self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
        self.config.server_file.unlink(missing_ok=True)
        self.port = 0
        return stopped

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- HTTP API --------------------------------------------------------------------------------
    def api(self, path: str, params: dict[str, str] | None = None, timeout_s: float = 10.0) -> Any:
        """GET /api/v1/<path> and return `data`; any status other than "success" raises with
        Prometheus's own errorType and message (it answers bad PromQL with HTTP 400 + JSON)."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=timeout_s)
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusError(
                f"/api/v1/{path} answered HTTP {response.status_code}: {response.text[:500]}"
            ) from exc
        if body.get("status") != "success":
            raise PrometheusError(
                f"/api/v1/{path} {params or ''} failed ({body.get('errorType', response.status_code)}): "
                f"{body.get('error', body)}"
            )
        return body.get("data")

    def query(self, promql: str) -> list[Sample]:
        """An instant query; scalar and string results come back as one sample without labels."""
        data = self.api("query", {"query": promql})
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups, each with its rules' health and lastError (/api/v1/rules)."""
        return list(self.api("rules")["groups"])

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[Sample]], bool],
        timeout_s: float = 30.0,
        interval_s: float = 0.5,
    ) -> list[Sample]:
        """Poll `promql` until `predicate(result)` holds, for values that arrive with later scrapes.
        A query Prometheus rejects fails at once (it will not get better); the timeout error shows
        the last result so a failing test says what was there instead."""
        deadline = time.monotonic() + timeout_s
        last: list[Sample] | str = "(no answer yet)"
        while True:
            try:
                result = self.query(promql)
            except httpx.TransportError as exc:
                last = f"(transport error: {exc})"
            else:
                if predicate(result):
                    return result
                last = result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"PromQL {promql!r}: condition not met within {timeout_s:.0f}s; last result: {last}")
            time.sleep(interval_s)


def stop_recorded(root: Path) -> bool:
    """Stop the Prometheus recorded under `root` by another process (the demo's, for `tsr prometheus stop`)."""
    return LocalPrometheus(PrometheusConfig(root=root), binary=None).stop()
