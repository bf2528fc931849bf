"""`make demo`: the main job end to end on one machine, with real parts only.

data -> embedded MinIO -> kfp.local pipeline (ingest, train, evaluate/gate, register, deploy
locally) -> a real Prometheus scraping the predictor (when installed) -> real HTTP requests to
the served champion -> summary and one JSON line.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from components.ingest.ingest import list_source, split_by_group
from tsr.config import REPO_ROOT, state_dir
from tsr.local_prometheus import (
    INSTALL_HINT,
    LocalPrometheus,
    PrometheusConfig,
    PrometheusError,
    find_prometheus_binary,
    sample_value,
)
from tsr.registry import DEFAULT_MODEL_NAME, Registry

SHARED_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "gtsrb-train-32.tar.gz"
RULES_FILE = REPO_ROOT / "manifests" / "monitoring" / "tsr-rules.yaml"
PROMETHEUS_JOB = "tsr-predictor"
PROMETHEUS_SCRAPE_INTERVAL = "2s"


@dataclass(frozen=True)
class DemoConfig:
    data_dir: Path | None = None
    epochs: int = 18
    max_groups_per_class: int = 0
    min_accuracy: float = 0.95
    batch_size: int = 256
    requests: int = 8
    model_name: str = DEFAULT_MODEL_NAME
    seed: int = 0


def find_data(data_dir: Path | None, console: Console) -> tuple[str, bool]:
    """(source, download?): an explicit dir, the cached extraction, the shared archive, or torchvision's download."""
    if data_dir is not None:
        if not data_dir.is_dir():
            raise ValueError(f"--data-dir {data_dir} does not exist")
        return str(data_dir), False
    cached = state_dir() / "data"
    if (cached / "gtsrb" / "GTSRB" / "Training").is_dir():
        return str(cached), False
    archive = Path(os.environ.get("TSR_GTSRB_ARCHIVE", SHARED_ARCHIVE))
    if archive.is_file():
        console.print(f"extracting {archive} -> {cached}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".extract-"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
        return str(cached), False
    console.print("no local GTSRB copy: downloading with torchvision")
    return str(cached), True


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


def run_demo(cfg: DemoConfig, out: Console, err: Console) -> dict[str, Any]:
    from components.deploy.deploy import stop_local_predictor
    from pipelines.local_run import run_local
    from tsr.local_minio import store_session

    source, download = find_data(cfg.data_dir, err)
    state = state_dir()
    with store_session() as store:
        err.print(f"store: {store.describe()} ({store.origin})")
        params = {
            "data_source": source,
            "epochs": cfg.epochs,
            "max_groups_per_class": cfg.max_groups_per_class,
            "min_accuracy": cfg.min_accuracy,
            "batch_size": cfg.batch_size,
            "model_name": cfg.model_name,
            "deploy_mode": "local",
            "seed": cfg.seed,
            "download": download,
        }
        result = run_local(params, store, state / "kfp-local")
        gate, accuracy = result.gate, result.accuracy
        summary: dict[str, Any] = {
            "validation_accuracy": round(accuracy, 5),
            "gate": gate,
            "model_uri": None,
            "store": store.describe(),
            "pipeline_seconds": round(result.seconds, 1),
            "run_id": result.run_id,
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
                from components.deploy.deploy import read_local_predictor

                endpoint = read_local_predictor(state)
                summary["endpoint"] = endpoint["url"]
                prometheus = start_prometheus(
                    state / "prometheus", endpoint["url"], find_prometheus_binary(), RULES_FILE, err
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
    _print_summary(summary, cfg.model_name, out)
    return summary


def _print_summary(summary: dict[str, Any], model_name: str, out: Console) -> None:
    colour = "green" if summary["gate"] == "pass" else "red"
    out.rule("tsr demo")
    out.print(f"validation accuracy  [bold]{100 * summary['validation_accuracy']:.2f}%[/]")
    out.print(f"gate                 [bold {colour}]{summary['gate']}[/]")
    out.print(f"model                {summary['model_uri']}")
    out.print(f"store                {summary['store']}")
    out.print(f"pipeline wall time   {summary['pipeline_seconds']} s")
    if summary.get("prometheus"):
        url, query = summary["prometheus"], prometheus_query(model_name)
        link = f"{url}/graph?" + urllib.parse.urlencode({"g0.expr": query, "g0.tab": "1"})
        out.print(f"prometheus           {url}  (left running; stop it with `tsr prometheus stop`)")
        out.print(f"example query        {query}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"                     {link}", markup=False, highlight=False, soft_wrap=True)
    if summary["predictions"]:
        table = Table(title=f"predictions from {summary.get('endpoint')}")
        for col in ("file", "true class", "predicted", "p", "ok"):
            table.add_column(col)
        for p in summary["predictions"]:
            table.add_row(
                p["file"], p["true_class"], p["class_name"], f"{p['probability']:.3f}", "✔" if p["correct"] else "✘"
            )
        out.print(table)
