"""The predictor as a detached local process (`python -m serving`): start, find and stop it.

The deploy step's `local` mode, `tsr serve --detach`-style tooling and the demo use it; the record of the
running process is `<state_dir>/predictor.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tsr.core.config import ENV_STATE_DIR, StoreConfig
from tsr.core.processes import free_port, proc_start_time, send_signal_to_group, terminate


class PredictorProcessError(RuntimeError):
    """The local predictor did not start or is not recorded; the message says why (with its log's tail)."""


LOCAL_STATE_FILE = "predictor.json"


LOCAL_LOG_FILE = "predictor.log"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _log_tail(path: Path, max_chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-max_chars:]
    except OSError:
        return "(no log)"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def start_local_predictor(
    model_uri: str,
    model_name: str,
    state_dir: Path,
    store: StoreConfig | None = None,
    port: int | None = None,
    timeout_s: float = 180.0,
    threads: int | None = None,
    command: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Start `python -m serving` detached and wait for /v2/models/<name>/ready; return the record.

    Detached (its own session) so that it outlives the pipeline step that started it; pid, port,
    URL and log path go to `<state_dir>/predictor.json` for whoever talks to it or stops it.
    A predictor already recorded there is stopped first: one local endpoint, the newest model.
    The store reaches the child through the environment (StoreConfig.env()), never argv.
    `command` replaces `python -m serving` (the flags are appended); tests pass a fake server.
    `extra_args` are more `python -m serving` flags (e.g. `--reload-interval` to follow `champion`).
    """
    stop_local_predictor(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = state_dir / LOCAL_LOG_FILE
    prefix = list(command) if command is not None else [sys.executable, "-m", "serving"]
    # The child runs in the state dir: a relative model directory is made absolute (the caller's cwd).
    model_arg = str(Path(model_uri).resolve()) if "://" not in model_uri and Path(model_uri).exists() else model_uri
    argv = [*prefix, "--model", model_arg, "--model-name", model_name]
    argv += ["--http-port", str(port)]
    if threads:
        argv += ["--threads", str(threads)]
    argv += list(extra_args)
    env = {**os.environ, **(store.env() if store is not None else {})}
    # Absolute: the child's cwd is the state dir, where a relative path would mean something else.
    env[ENV_STATE_DIR] = str(Path(env.get(ENV_STATE_DIR) or state_dir).resolve())
    with log_path.open("wb") as log_fh:
        proc = subprocess.Popen(
            argv,
            cwd=state_dir,  # not the checkout: `python -m serving` imports from wherever tsr-platform is installed
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    info: dict[str, Any] = {
        "pid": proc.pid,
        "start_time": proc_start_time(proc.pid),
        "port": port,
        "url": url,
        "model_uri": model_uri,
        "model_name": model_name,
        "log": str(log_path),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record = state_dir / LOCAL_STATE_FILE
    _write_json(record, info)
    ready_url = f"{url}/v2/models/{model_name}/ready"
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            record.unlink(missing_ok=True)
            raise PredictorProcessError(
                f"local predictor exited with code {code} before it was ready; {log_path}:\n{_log_tail(log_path)}"
            )
        if _ready(ready_url):
            return info
        if time.monotonic() >= deadline:
            stop_local_predictor(state_dir, timeout_s=5)  # it never served: no requests to drain
            raise PredictorProcessError(
                f"local predictor not ready within {timeout_s:.0f}s at {ready_url}; {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.5)


def read_local_predictor(state_dir: Path) -> dict[str, Any]:
    """The record written by start_local_predictor ({pid, port, url, model_uri, model_name, log, ...})."""
    path = state_dir / LOCAL_STATE_FILE
    if not path.is_file():
        raise PredictorProcessError(f"no local predictor recorded in {path}")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def stop_local_predictor(state_dir: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM the predictor's process group (KServe drains in-flight requests), SIGKILL if it
    lingers, then remove the record. Returns whether a running predictor was stopped."""
    path = state_dir / LOCAL_STATE_FILE
    if not path.is_file():
        return False
    try:
        info = json.loads(path.read_text())
        pid, start_time = int(info["pid"]), info.get("start_time")
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        path.unlink(missing_ok=True)
        return False
    stopped = terminate(pid, start_time, timeout_s, signal_fn=send_signal_to_group)
    path.unlink(missing_ok=True)
    return stopped
