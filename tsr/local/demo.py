"""`make demo`: the main job end to end on one machine, with real parts only.

data -> embedded MinIO -> kfp.local pipeline (ingest, train, evaluate/gate, register, deploy
locally) -> a real Prometheus scraping the predictor (when installed) -> real HTTP requests to
the served champion -> summary and one JSON line. The evaluate step's run report (HTML) and its
Markdown summary are copied to `<state>/demo/` whatever the gate decided.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from components.evaluate.config import GateConfig
from components.train.config import TrainConfig
from tsr.core.config import state_dir
from tsr.core.dataset import DataError, split_by_group
from tsr.core.registry import DEFAULT_MODEL_NAME, Registry
from tsr.core.sources import DownloadError, download_gtsrb, list_source
from tsr.local.checkout import REPO_ROOT
from tsr.local.loop import write_rules_file
from tsr.local.prometheus_server import (
    INSTALL_HINT,
    LocalPrometheus,
    PrometheusConfig,
    PrometheusError,
    find_prometheus_binary,
    sample_value,
)

SHARED_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "gtsrb-train-32.tar.gz"
PROMETHEUS_JOB = "tsr-predictor"
PROMETHEUS_SCRAPE_INTERVAL = "2s"


@dataclass(frozen=True)
class DemoConfig:
    """What `tsr demo` runs; training and gate defaults are the train step's and the gate's own."""

    data_dir: Path | None = None
    epochs: int = TrainConfig.epochs
    max_groups_per_class: int = 0
    min_accuracy: float = GateConfig.min_accuracy
    min_class_accuracy: float = GateConfig.min_class_accuracy
    batch_size: int = TrainConfig.batch_size
    requests: int = 8
    model_name: str = DEFAULT_MODEL_NAME
    seed: int = TrainConfig.seed


ARCHIVE_ENV = "TSR_GTSRB_ARCHIVE"
# How to give the demo its data when it has none and cannot download it (the error names them all).
DATA_HINT = (
    f"give it the data with `tsr demo --data-dir DIR` (`make demo DEMO_DATA=DIR`; DIR holds gtsrb/GTSRB/Training) "
    f"or {ARCHIVE_ENV}=/path/to/gtsrb-train-32.tar.gz"
)


def find_data(
    data_dir: Path | None,
    console: Console,
    on_progress: Callable[[int, int], None] | None = None,
    on_download: Callable[[int, int], None] | None = None,
) -> str:
    """A local GTSRB root: an explicit dir, the cached extraction, the archive ($TSR_GTSRB_ARCHIVE, else
    the shared one beside the checkout), or torchvision's download into the cache.

    The download happens here, before any store or pipeline starts, so that a machine without
    network access gets one line (`DataError`) saying how to give the data instead of a failed step.
    Extraction and download write to a temporary folder renamed into place at the end: an interrupted
    one never passes for a cached copy. `on_progress(done, total)` follows the archive's extraction in
    compressed bytes read, `on_download(done, total)` the download in bytes.
    """
    if data_dir is not None:
        if not data_dir.is_dir():
            raise ValueError(f"--data-dir {data_dir} does not exist")
        return str(data_dir)
    cached = state_dir() / "data"
    if (cached / "gtsrb" / "GTSRB" / "Training").is_dir():
        return str(cached)
    explicit = os.environ.get(ARCHIVE_ENV)
    archive = Path(explicit) if explicit else SHARED_ARCHIVE
    if explicit and not archive.is_file():
        raise DataError(
            f"{ARCHIVE_ENV}={explicit}: no such file (expected the GTSRB training archive gtsrb-train-32.tar.gz); "
            "correct the path, or unset it to download GTSRB"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".extract-"))
    try:
        if archive.is_file():
            console.print(f"extracting {archive} -> {cached}", soft_wrap=True, markup=False, highlight=False)
            # Stream mode reads the archive once, front to back, so the bytes read measure the progress
            # (and only ever calls read(): the cast tells tarfile's type stubs so).
            with archive.open("rb") as raw:
                source = cast(BinaryIO, _ReadCounter(raw, on_progress)) if on_progress is not None else raw
                with tarfile.open(fileobj=source, mode="r|*") as tar:
                    tar.extractall(tmp, filter="data")
        else:
            console.print(
                f"no local GTSRB copy (nor {archive}): downloading it with torchvision",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
            try:
                download_gtsrb(tmp, ("train",), on_download)
            except DownloadError as exc:
                raise DataError(
                    f"GTSRB could not be downloaded ({exc.reason}) and there is no local copy: {DATA_HINT}"
                ) from exc
            for zipped in tmp.glob("gtsrb/*.zip"):  # extracted already; only the images are read
                zipped.unlink()
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(cached)


class _ReadCounter:
    """A read-only file that reports (bytes read, file size) after every read."""

    def __init__(self, raw: BinaryIO, on_progress: Callable[[int, int], None] | None) -> None:
        self.raw = raw
        self.on_progress = on_progress
        self.total = os.fstat(raw.fileno()).st_size
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.done += len(data)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
        return data


def sample_requests(source: str, cfg: DemoConfig) -> list[tuple[Path, int]]:
    """Images from validation tracks (never trained on), one per class as far as possible."""
    listing = list_source(Path(source))
    import torch

    labels = torch.tensor([s.label for s in listing.samples])
    groups = torch.tensor([s.group for s in listing.samples])
    _, val_idx = split_by_group(labels, groups, 0.2, cfg.seed)
    rng = random.Random(cfg.seed)
    picks = [listing.samples[i] for i in val_idx.tolist()]
    rng.shuffle(picks)
    chosen, seen = [], set()
    for s in picks:
        if s.label not in seen:
            seen.add(s.label)
            chosen.append((s.path, s.label))
        if len(chosen) == cfg.requests:
            break
    return chosen


def send_requests(
    url: str, model_name: str, images: list[tuple[Path, int]], class_names: list[str]
) -> list[dict[str, Any]]:
    """One V1 request with every image (base64 PPM bytes, exactly as on disk)."""
    body = {"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p, _ in images]}
    response = httpx.post(f"{url}/v1/models/{model_name}:predict", json=body, timeout=60)
    response.raise_for_status()
    predictions = response.json()["predictions"]
    return [
        {
            "file": p.name,
            "true_class": class_names[label],
            "class_id": pred["class_id"],
            "class_name": pred["class_name"],
            "probability": round(float(pred["probability"]), 4),
            "correct": pred["class_id"] == label,
        }
        for (p, label), pred in zip(images, predictions, strict=True)
    ]


def prometheus_query(model_name: str) -> str:
    """The example the summary prints: predictions per class. `last_over_time` because the demo stops
    the predictor at the end, after which its series are stale and a plain instant query is empty."""
    return f'sum by (class_name) (last_over_time(tsr_predictions_total{{model="{model_name}"}}[1h]))'


def start_prometheus(
    root: Path, predictor_url: str, binary: Path | None, rules: Path, err: Console
) -> LocalPrometheus | None:
    """A real Prometheus under `root` scraping the demo's predictor, or None (said in one line) when
    it is not installed or will not start: monitoring is something to look at, not a gate.

    One demo Prometheus at a time, over a fresh TSDB, so what it shows is this run's traffic; it is
    left running after the demo (`tsr prometheus stop`), holding the samples of the demo's requests.
    """
    if binary is None:
        err.print(f"Prometheus not installed ({INSTALL_HINT}); continuing without it", soft_wrap=True)
        return None
    config = PrometheusConfig(
        root=root,
        targets=[urllib.parse.urlsplit(predictor_url).netloc],
        job_name=PROMETHEUS_JOB,
        scrape_interval=PROMETHEUS_SCRAPE_INTERVAL,
        rule_files=[rules] if rules.is_file() else [],
    )
    server = LocalPrometheus(config, binary)
    server.stop()
    shutil.rmtree(config.data_dir, ignore_errors=True)
    try:
        url = server.start()
    except PrometheusError as exc:
        err.print(f"WARNING: Prometheus did not start; continuing without it: {exc}", markup=False)
        return None
    loaded = f", rules {rules}" if config.rule_files else ", no rule file"
    err.print(
        f"Prometheus: {url} scraping {predictor_url}/metrics every {config.scrape_interval}{loaded}", soft_wrap=True
    )
    return server


def await_scrape(server: LocalPrometheus, after: float, err: Console, timeout_s: float = 30.0) -> None:
    """Wait for a scrape that started after the requests were answered, so Prometheus holds their
    counts before the predictor stops."""
    query = f'timestamp(up{{job="{PROMETHEUS_JOB}"}} == 1)'
    try:
        server.wait_for(query, lambda r: bool(r) and sample_value(r[0]) > after, timeout_s=timeout_s)
    except (TimeoutError, PrometheusError) as exc:
        err.print(f"WARNING: Prometheus has not scraped the predictor since the requests: {exc}", markup=False)


def copy_report(report: Path | None, summary: Path | None, out_dir: Path) -> Path | None:
    """Copy the run report (HTML) and its Markdown summary out of the kfp.local pipeline root to a fixed
    place (`<state>/demo/report.html`, `summary.md`), so the latest run's report is always at one path."""
    if report is None or not report.is_file():
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "report.html"
    shutil.copyfile(report, target)
    if summary is not None and summary.is_file():
        shutil.copyfile(summary, out_dir / "summary.md")
    return target


def run_demo(
    cfg: DemoConfig,
    out: Console,
    err: Console,
    on_extract: Callable[[int, int], None] | None = None,
    on_download: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The whole demo; the summary is printed on `out` and returned (the CLI prints it as JSON too).

    `on_extract(done, total)` follows the extraction of the shared GTSRB archive, `on_download` the
    download of GTSRB, when either happens.
    """
    from pipelines.local_run import run_local
    from serving.process import stop_local_predictor
    from tsr.local.minio_server import store_session

    source = find_data(cfg.data_dir, err, on_extract, on_download)
    state = state_dir()
    with store_session() as store:
        err.print(f"store: {store.describe()} ({store.origin})", soft_wrap=True, markup=False, highlight=False)
        params = {
            "data_source": source,
            "epochs": cfg.epochs,
            "max_groups_per_class": cfg.max_groups_per_class,
            "min_accuracy": cfg.min_accuracy,
            "min_class_accuracy": cfg.min_class_accuracy,
            "batch_size": cfg.batch_size,
            "model_name": cfg.model_name,
            "deploy_mode": "local",
            "seed": cfg.seed,
        }
        result = run_local(params, store, state / "kfp-local")
        gate, accuracy = result.gate, result.accuracy
        report = copy_report(result.report, result.summary, state / "demo")
        summary: dict[str, Any] = {
            "validation_accuracy": round(accuracy, 5),
            "gate": gate,
            "model_uri": None,
            "store": store.describe(),
            "pipeline_seconds": round(result.seconds, 1),
            "run_id": result.run_id,
            "report": str(report) if report else None,
            "predictions": [],
            "prometheus": None,
        }
        if gate == "pass":
            registry = Registry.from_config(store)
            version = registry.resolve(cfg.model_name, "champion")
            card = registry.read_card(cfg.model_name, version)
            if card.get("run_id") != result.run_id:
                raise RuntimeError(f"champion {version} was not registered by this run ({result.run_id})")
            summary["model_uri"] = registry.uri(cfg.model_name, version)
            try:
                from serving.process import read_local_predictor

                endpoint = read_local_predictor(state)
                summary["endpoint"] = endpoint["url"]
                prometheus = start_prometheus(
                    state / "prometheus",
                    endpoint["url"],
                    find_prometheus_binary(),
                    write_rules_file(state / "prometheus"),
                    err,
                )
                try:
                    images = sample_requests(source, cfg)
                    summary["predictions"] = send_requests(endpoint["url"], cfg.model_name, images, card["class_names"])
                except BaseException:
                    if prometheus is not None:  # only a finished demo leaves it running
                        prometheus.stop()
                    raise
                if prometheus is not None:
                    await_scrape(prometheus, time.time(), err)
                    summary["prometheus"] = prometheus.url
            finally:
                stop_local_predictor(state)
    print_summary(summary, cfg.model_name, out)
    return summary


def print_summary(summary: dict[str, Any], model_name: str, out: Console) -> None:
    """The demo's end for people: aligned key/value rows (gate coloured), then the sample predictions."""
    from tsr.local.ui import confidence_text, gate_text, key_value_table, percent

    rows: list[tuple[str, Any]] = [
        ("validation accuracy", Text(percent(summary.get("validation_accuracy")), style="bold")),
        ("gate", gate_text(summary.get("gate"))),
        ("model", summary.get("model_uri")),
        ("store", summary.get("store")),
        ("pipeline wall time", f"{summary.get('pipeline_seconds')} s"),
        ("run id", summary.get("run_id")),
    ]
    if summary.get("report"):
        rows.append(("run report", summary["report"]))
    if summary.get("endpoint"):
        rows.append(("endpoint", f"{summary['endpoint']} (stopped at the end of the demo)"))
    if summary.get("prometheus"):
        url, query = summary["prometheus"], prometheus_query(model_name)
        link = f"{url}/graph?" + urllib.parse.urlencode({"g0.expr": query, "g0.tab": "1"})
        rows.append(("prometheus", f"{url}  (left running; stop it with `tsr prometheus stop`)"))
        rows.append(("example query", query))
        rows.append(("", link))
    out.rule("tsr demo")
    out.print(key_value_table(rows))
    if summary.get("predictions"):
        correct = sum(1 for p in summary["predictions"] if p["correct"])
        table = Table(
            title=f"predictions from {summary.get('endpoint')}: {correct}/{len(summary['predictions'])} correct",
            title_justify="left",
            header_style="bold",
        )
        table.add_column("file", style="cyan")
        table.add_column("true class")
        table.add_column("predicted")
        table.add_column("p", justify="right")
        table.add_column("ok", justify="center")
        for p in summary["predictions"]:
            ok = Text("✔", style="green") if p["correct"] else Text("✘", style="bold red")
            table.add_row(p["file"], p["true_class"], p["class_name"], confidence_text(p["probability"]), ok)
        out.print(table)
