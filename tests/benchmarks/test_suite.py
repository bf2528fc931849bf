"""The suite's pure parts: row status, the writers, the plain baseline server. No timing: speed targets live
in `make bench`, never in unit tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from benchmarks.harness import server_process
from benchmarks.report import Row, markdown_table, plot_value, read_json, write_json, write_markdown, write_plot
from benchmarks.suite import SuiteConfig, first_tracks, ppm_body
from tests.conftest import make_model_dir
from tsr.core.dataset import Split
from tsr.core.processes import free_port

MACHINE = {"cpu": "Test CPU", "arch": "x86_64", "cores": 2, "torch": "2.x", "backend": "x86_64 torch test"}


def synthetic_rows() -> list[Row]:
    return [
        Row("1", "http vs in-process", "3.0 vs 1.0 ms", 3.0, 3.0, "le"),
        Row("2b", "throughput", "900 vs 1000", 0.9, 1.0, "ge", note="a | pipe"),
        Row("4b", "accuracy loss", "99 vs 98.5", 0.5, 0.3, "le", unit="pt"),
        Row("7", "overhead", "", 0.6, 0.10, "le", unit="%"),
        Row("8", "threads", "", 1.2),
        Row("5a", "exported", "", None, unavailable="not available: components.optimize missing"),
    ]


def test_row_status_follows_direction_and_target() -> None:
    rows = {r.key: r for r in synthetic_rows()}
    assert rows["1"].status == "met"  # <= is inclusive
    assert rows["2b"].status == "missed"
    assert rows["4b"].status == "missed"
    assert rows["7"].status == "missed"
    assert rows["8"].status == "info"
    assert rows["5a"].status == "not available: components.optimize missing"
    assert rows["7"].fmt(0.6) == "60.0 %" and rows["4b"].fmt(0.5) == "+0.50 pt"
    assert rows["1"].target_text() == "≤ 3.00×" and rows["4b"].target_text() == "≤ 0.30 pt"
    # Chart scale: taller is better and 1.0 is the target, whatever the row's direction.
    assert plot_value(rows["1"]) == pytest.approx((1 / 3.0, 1 / 3.0))
    assert plot_value(rows["2b"]) == (0.9, 1.0)
    assert plot_value(rows["8"]) is None and plot_value(rows["5a"]) is None


def test_writers_produce_json_markdown_and_png(tmp_path: Path) -> None:
    rows = synthetic_rows()
    for r in rows:
        r.machine = MACHINE
    meta = {"date": "2026-01-01", "mode": "quick", "machine": MACHINE, "wall_seconds": 1.0}
    write_json(rows, meta, tmp_path / "r.json")
    write_markdown(rows, meta, tmp_path / "r.md")
    write_plot(rows, tmp_path / "r.png", "test")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["status"] for r in data["rows"]][:2] == ["met", "missed"]
    assert all(r["machine"]["cpu"] == "Test CPU" for r in data["rows"])
    md = (tmp_path / "r.md").read_text()
    assert "Test CPU" in md and "| 2b | throughput | 900 vs 1000 — a / pipe | 0.90× | ≥ 1.00× | missed |" in md
    assert markdown_table(rows).count("\n") == len(rows) + 2
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again, meta_again = read_json(tmp_path / "r.json")
    assert [r.status for r in again] == [r.status for r in rows] and meta_again["wall_seconds"] == 1.0


def test_first_tracks_keeps_whole_tracks() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    groups = torch.tensor([10, 10, 11, 12, 20, 21, 21])
    split = Split(torch.zeros(7, 3, 4, 4, dtype=torch.uint8), labels, groups)
    assert first_tracks(split, 1).groups.tolist() == [10, 10, 20]
    assert sorted(set(first_tracks(split, 2).groups.tolist())) == [10, 11, 20, 21]


def test_quick_config_shrinks_every_budget() -> None:
    full, quick = SuiteConfig(), SuiteConfig.quick_config()
    for name in ("train_epochs", "load_seconds", "latency_repeats", "batch64_repeats", "train_tracks"):
        assert getattr(quick, name) < getattr(full, name), name


def post(port: int, body: str) -> httpx.Response:
    url = f"http://127.0.0.1:{port}/v1/models/gtsrb-classifier:predict"
    return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)


def test_plain_server_answers_like_the_predictor(tmp_path: Path) -> None:
    """The baseline must do the same work as the predictor: same model, same preprocessing, same answer
    (the calibrated probability included: the model carries a temperature)."""
    model_dir = make_model_dir(tmp_path / "model", temperature=2.0)
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    body = ppm_body(torch.from_numpy(pixels).permute(2, 0, 1))
    ready = "http://127.0.0.1:{}/v2/models/gtsrb-classifier/ready"
    p1, p2 = free_port(), free_port()
    plain = [sys.executable, "-m", "benchmarks.plain_server", "--model", str(model_dir), "--port", str(p1)]
    predictor = [sys.executable, "-m", "serving", "--model", str(model_dir), "--http-port", str(p2)]
    with (
        server_process(plain, ready.format(p1), tmp_path / "plain.log"),
        server_process(predictor, ready.format(p2), tmp_path / "predictor.log"),
    ):
        got, want, bad = post(p1, body), post(p2, body), post(p1, json.dumps({"x": 1}))
    assert got.status_code == 200 and want.status_code == 200, (got.text, want.text)
    assert bad.status_code == 400
    g, w = got.json()["predictions"], want.json()["predictions"]
    assert [p["class_id"] for p in g[0]["top_k"]] == [p["class_id"] for p in w[0]["top_k"]]
    assert [p["probability"] for p in g[0]["top_k"]] == pytest.approx([p["probability"] for p in w[0]["top_k"]])
    assert len(g) == 1 and g[0].keys() == w[0].keys() and g[0]["class_name"] == w[0]["class_name"]


def test_server_process_stops_the_server_on_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match="not ready"), server_process(cmd, "http://127.0.0.1:9/", tmp_path / "x", 1):
        pass
    out = subprocess.run(["pgrep", "-f", "time.sleep\\(60\\)"], capture_output=True, text=True).stdout
    assert out.strip() == ""
