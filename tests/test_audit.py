"""`make audit` (.ci/audit.py around pip-audit): it never passes without having checked the pins.

pip-audit itself exits 0 ("No known vulnerabilities found") when it could look up none of them, which
is what happens where PyPI's JSON API is not reachable. These tests run the wrapper against a local
stand-in for the service (a closed port, a proxy answering 404, a real answer) and a stand-in
pip-audit that writes the JSON report pip-audit 2.10 writes, so they need no network and no tool venv.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tsr.local.checkout import REPO_ROOT

AUDIT = REPO_ROOT / ".ci" / "audit.py"
# The probe's own timeout (PROBE_TIMEOUT_S = 10 s) plus Python's start-up, with room for a loaded machine.
BOUND_S = 20.0
PINS = "# comment\nalpha==1.0\nbeta==2.3.4 ; python_version >= '3'\n"
DEPS = [{"name": "alpha", "version": "1.0"}, {"name": "beta", "version": "2.3.4"}]

FAKE_PIP_AUDIT = """\
import json, os, sys, time
args = sys.argv[1:]
open(os.environ["FAKE_ARGV"], "w").write(json.dumps(args))
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
report = os.environ.get("FAKE_REPORT")
if report is not None:
    open(args[args.index("--output") + 1], "w").write(report)
print("fake pip-audit: boom", file=sys.stderr)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


class _Service(BaseHTTPRequestHandler):
    status = 200
    body = b'{"info": {}, "vulnerabilities": []}'

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[tuple[str, type[_Service]]]:
    handler = type("Service", (_Service,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pypi", handler
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _audit(
    tmp_path: Path, service: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str, float]:
    requirements = tmp_path / "requirements.lock"
    requirements.write_text(PINS)
    fake = tmp_path / "pip-audit"
    fake.write_text(f"#!{sys.executable}\n{FAKE_PIP_AUDIT}")
    fake.chmod(0o755)
    command = [sys.executable, str(AUDIT), str(requirements), "--pip-audit", str(fake), "--service", service]
    command += ["--timeout", str(timeout)]
    started = time.monotonic()
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=BOUND_S + timeout,
        env={"FAKE_ARGV": str(tmp_path / "argv.json"), "PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )
    return run.returncode, run.stdout, run.stderr, time.monotonic() - started


def _one_line(stderr: str, pattern: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {stderr!r}"
    assert re.match(rf"make audit: {pattern}", lines[0]), lines[0]
    assert "audit.yml" in lines[0], "the line says where the audit does run"


def test_unreachable_service_fails_in_one_line_quickly_without_running_pip_audit(tmp_path: Path) -> None:
    code, stdout, stderr, took = _audit(tmp_path, f"http://127.0.0.1:{_closed_port()}/pypi")
    assert code == 2 and stdout == ""
    _one_line(stderr, r"vulnerability service not reachable \(http://127\.0\.0\.1:\d+/pypi/alpha/1\.0/json: .*refused")
    assert took < BOUND_S
    assert not (tmp_path / "argv.json").exists(), "pip-audit ran although the service was known to be unreachable"


def test_a_proxy_answering_404_counts_as_unreachable(tmp_path: Path, service: tuple[str, type[_Service]]) -> None:
    url, handler = service
    handler.status, handler.body = 404, b"not here"
    code, _, stderr, took = _audit(tmp_path, url)
    assert code == 2 and took < BOUND_S
    _one_line(stderr, r"vulnerability service not reachable \(.*/alpha/1\.0/json answered HTTP 404\)")


def test_every_pin_skipped_is_a_failure_not_a_clean_audit(tmp_path: Path, service: tuple[str, type[_Service]]) -> None:
    """pip-audit's own verdict here would be exit 0, 'No known vulnerabilities found'."""
    skipped = [{"name": d["name"], "skip_reason": f"Dependency not found on PyPI: {d['name']}"} for d in DEPS]
    code, _, stderr, _ = _audit(tmp_path, service[0], {"FAKE_REPORT": json.dumps({"dependencies": skipped})})
    assert code == 2
    _one_line(stderr, r"vulnerability service not reachable: pip-audit could look up none of the 2 pins")
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert {"--no-deps", "--disable-pip", "--format"} <= set(argv) and argv[argv.index("-r") + 1].endswith(".lock")


def test_some_pins_skipped_fails_naming_them(tmp_path: Path, service: tuple[str, type[_Service]]) -> None:
    deps = [{**DEPS[0], "vulns": []}, {"name": "beta", "skip_reason": "Dependency not found on PyPI: beta"}]
    code, _, stderr, _ = _audit(tmp_path, service[0], {"FAKE_REPORT": json.dumps({"dependencies": deps})})
    assert code == 2 and "1 of 2 pins were not audited: beta" in stderr


def test_known_vulnerability_fails_with_its_id(tmp_path: Path, service: tuple[str, type[_Service]]) -> None:
    vuln = {"id": "GHSA-xxxx-yyyy-zzzz", "fix_versions": ["1.1"], "aliases": [], "description": ""}
    deps = [{**DEPS[0], "vulns": [vuln]}, {**DEPS[1], "vulns": []}]
    code, stdout, stderr, _ = _audit(
        tmp_path, service[0], {"FAKE_REPORT": json.dumps({"dependencies": deps}), "FAKE_EXIT": "1"}
    )
    assert code == 1
    assert stdout == "alpha==1.0: GHSA-xxxx-yyyy-zzzz (fixed in: 1.1)\n"
    assert "1 known vulnerabilities in 1 pinned packages" in stderr


def test_clean_audit_passes(tmp_path: Path, service: tuple[str, type[_Service]]) -> None:
    deps = [{**d, "vulns": []} for d in DEPS]
    code, stdout, stderr, _ = _audit(tmp_path, service[0], {"FAKE_REPORT": json.dumps({"dependencies": deps})})
    assert (code, stderr) == (0, "")
    assert "2 pins of" in stdout and "no known vulnerabilities" in stdout


def test_a_hanging_pip_audit_is_cut_off(tmp_path: Path, service: tuple[str, type[_Service]]) -> None:
    code, _, stderr, took = _audit(tmp_path, service[0], {"FAKE_SLEEP": "30"}, timeout=2)
    assert code == 2 and took < BOUND_S
    _one_line(stderr, r"pip-audit did not finish within 2 s")


def test_pip_audit_failing_without_a_report_is_not_a_pass(tmp_path: Path, service: tuple[str, type[_Service]]) -> None:
    code, _, stderr, _ = _audit(tmp_path, service[0], {"FAKE_EXIT": "1"})
    assert code == 2 and stderr.strip() == "make audit: pip-audit failed without a report: fake pip-audit: boom"


def test_make_audit_runs_the_wrapper_with_the_pinned_pip_audit() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^PIP_AUDIT_VERSION \?= \d+\.\d+\.\d+$", makefile, re.M)
    recipe = makefile.split("\naudit:", 1)[1].split("\n\n", 1)[0]
    assert ".ci/audit.py --pip-audit $(AUDIT_VENV)/bin/pip-audit" in recipe and "requirements.lock" in recipe


def test_workflows_run_make_audit_on_push_weekly_and_before_a_release() -> None:
    from tests.test_containers import load_workflow, triggers

    audit = load_workflow("audit.yml")
    assert {"push", "pull_request", "schedule"} <= set(triggers(audit))
    (job,) = audit["jobs"].values()
    assert [s["run"] for s in job["steps"] if "run" in s] == ["make audit"]
    release = load_workflow("images.yml")["jobs"]
    assert release["audit"]["steps"] == job["steps"] and release["base"]["needs"] == "audit"
