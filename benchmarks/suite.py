"""`make bench`: every performance claim of the platform as one side-by-side table, each a ratio against a target.

`python -m benchmarks.suite [--quick] [--out benchmarks/results] [--data-dir DIR]`

Ratios, not absolute times: other processes may share the machine, so each comparison measures its two
sides in the same run (in-process ones in alternating rounds). One tsrnet is trained quickly at the start
(a track subset of GTSRB, held-out tracks for accuracy) and reused by rows 1-6. Writes
`<out>/<date>-<arch>.{json,md,png}` (`-quick` before the suffix for --quick) and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmarks.harness import Load, drive, interleaved_p50_ms, machine_info, server_process
from benchmarks.report import Row, markdown_table, write_json, write_markdown, write_plot
from benchmarks.serving_throughput import MODEL_NAME, mean_forward_batch
from benchmarks.serving_throughput import write_model as write_untrained_model
from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig, train
from tsr.core.dataset import Split, load_split, read_data_card
from tsr.core.models import ModelConfig, build_model, save_model_dir
from tsr.core.preprocessing import PreprocessConfig, to_model_input
from tsr.core.processes import free_port
from tsr.local.checkout import REPO_ROOT

RESULTS = Path(__file__).resolve().parent / "results"
OPTIMIZE_MODULE = "components.optimize.optimize"


@dataclass(frozen=True)
class SuiteConfig:
    """Every budget of the suite; `quick()` shrinks them all for a smoke run (< 3 min)."""

    out: Path = RESULTS
    data_dir: Path | None = None
    quick: bool = False
    ingest_tracks: int = 0  # tracks per class read from GTSRB (0 = all): val = 20 % of them, held out
    train_tracks: int = 12  # tracks per class of the train side used to train the shared model
    train_epochs: int = 8  # at most: fewer when the machine is too busy for them to fit train_budget_s
    train_budget_s: float = 150.0
    load_seconds: int = 10  # each measured load-generator run
    warmup_seconds: int = 2
    concurrency: int = 32
    server_threads: int = 1  # torch threads in every server: the load generator needs the other core
    latency_repeats: int = 300  # in-process batch-1 calls per contender
    batch64_repeats: int = 40
    compare_epochs: int = 2  # row 6: epochs per side
    compare_images: int = 6000  # row 6: the first N images of the training subset
    pipeline_tracks: int = 2  # row 7: tracks per class through the whole kfp.local pipeline

    @classmethod
    def quick_config(cls, **kw: Any) -> SuiteConfig:
        return cls(
            quick=True,
            ingest_tracks=6,
            train_tracks=2,
            train_epochs=1,
            load_seconds=2,
            warmup_seconds=1,
            latency_repeats=60,
            batch64_repeats=10,
            compare_epochs=1,
            compare_images=1500,
            **kw,
        )


@dataclass
class Trained:
    """The model shared by rows 1-6 and the data it came from."""

    model: nn.Module
    config: ModelConfig
    model_dir: Path
    train: Split
    val: Split
    seconds: float
    val_accuracy: float
    epochs: int


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def first_tracks(split: Split, per_class: int) -> Split:
    """The first `per_class` tracks of every class: a smaller training set that is still by-track."""
    keep = torch.zeros(len(split), dtype=torch.bool)
    for label in torch.unique(split.labels).tolist():
        in_class = split.labels == label
        groups = torch.unique(split.groups[in_class])[:per_class]
        keep |= in_class & torch.isin(split.groups, groups)
    return split.subset(torch.nonzero(keep).flatten())


def empty_split(size: int) -> Split:
    return Split(
        torch.empty(0, 3, size, size, dtype=torch.uint8),
        torch.empty(0, dtype=torch.int64),
        torch.empty(0, dtype=torch.int64),
    )


@torch.inference_mode()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], split: Split, pre: PreprocessConfig) -> float:
    correct = 0
    for start in range(0, len(split), 512):
        logits = fn(to_model_input(split.images[start : start + 512], pre))
        correct += int((logits.argmax(1) == split.labels[start : start + 512]).sum())
    return correct / max(len(split), 1)


def ppm_body(image: torch.Tensor) -> str:
    """One (3, H, W) uint8 image as the V1 JSON body every server gets."""
    import base64
    import json

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PPM")
    return json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]})


def prepare_model(cfg: SuiteConfig, tmp: Path) -> Trained:
    """Ingest GTSRB (by-track split), train tsrnet briefly on a track subset, save it as a model directory."""
    from rich.console import Console

    from tsr.local.demo import find_data

    source = find_data(cfg.data_dir, Console(stderr=True))
    data = tmp / "dataset"
    t0 = time.perf_counter()
    ingest(IngestConfig(source=source, max_groups_per_class=cfg.ingest_tracks), data)
    card = read_data_card(data)
    full_train, val = load_split(data / "train.safetensors"), load_split(data / "val.safetensors")
    tr = first_tracks(full_train, cfg.train_tracks)
    log(f"ingest {time.perf_counter() - t0:.0f} s; training on {len(tr)} images, {len(val)} held-out")
    epochs = fit_epochs(cfg, tr, card["class_names"])
    tcfg = TrainConfig(epochs=epochs, export_program=False)
    result = train(tr, empty_split(tr.images.shape[-1]), card["class_names"], tcfg, show_progress=False)
    model_dir = tmp / "model"
    save_model_dir(result.model, result.config, model_dir, export_program=False)
    acc = accuracy(result.model, val, result.config.preprocess)
    log(f"trained {result.train_seconds:.0f} s, held-out accuracy {acc:.4f}")
    return Trained(result.model, result.config, model_dir, tr, val, result.train_seconds, acc, epochs)


def fit_epochs(cfg: SuiteConfig, split: Split, names: list[str]) -> int:
    """Epochs that fit the training budget at the speed this machine has right now (it may be shared):
    a one-epoch probe on 2,048 images (OneCycleLR needs >= 8 steps), then at most `train_epochs`,
    at least 2 (1 in --quick)."""
    probe = split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:2048])
    r = train(probe, empty_split(split.images.shape[-1]), names, TrainConfig(epochs=1), show_progress=False)
    fits = int(cfg.train_budget_s * r.images_per_second / max(len(split), 1))
    epochs = max(min(2, cfg.train_epochs), min(cfg.train_epochs, fits))
    log(f"training speed {r.images_per_second:.0f} images/s: {epochs} epochs fit {cfg.train_budget_s:.0f} s")
    return epochs


# ---- serving rows (1, 2, 3) -------------------------------------------------------------------------------


def predictor_cmd(model_dir: Path, port: int, batch_size: int, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serving",
        "--model",
        str(model_dir),
        "--http-port",
        str(port),
        "--threads",
        str(threads),
        "--batch-size",
        str(batch_size),
    ]


def plain_cmd(model_dir: Path, port: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.plain_server", "--model", str(model_dir), "--port", str(port)]
    return [*cmd, "--threads", str(threads)]


def load_runs(
    cmd: Callable[[int], list[str]], name: str, concurrencies: list[int], cfg: SuiteConfig, body: str, tmp: Path
) -> tuple[dict[int, Load], float]:
    """Start one server, warm it up, measure each concurrency; (results, mean images per forward pass)."""
    port = free_port()
    ready = f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready"
    url = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"
    out: dict[int, Load] = {}
    with server_process(cmd(port), ready, tmp / f"{name}.log"):
        for c in concurrencies:
            drive(url, c, cfg.warmup_seconds, tmp, body)
            out[c] = drive(url, c, cfg.load_seconds, tmp, body)
            log(f"{name} c={c}: {out[c].requests_per_second:.0f} req/s p50 {out[c].p50_ms:.2f} ms")
        per_pass = mean_forward_batch(port) if "plain" not in name else 1.0
    return out, per_pass


def serving_rows(cfg: SuiteConfig, trained: Trained, tmp: Path, machine: dict[str, Any]) -> list[Row]:
    th, c = cfg.server_threads, cfg.concurrency
    pre = trained.config.preprocess
    body = ppm_body(trained.val.images[0])
    model_dir = trained.model_dir
    pred, pred_pass = load_runs(lambda p: predictor_cmd(model_dir, p, 32, th), "predictor", [1, c], cfg, body, tmp)
    plain, _ = load_runs(lambda p: plain_cmd(model_dir, p, th), "plain", [1, c], cfg, body, tmp)
    unb, _ = load_runs(lambda p: predictor_cmd(model_dir, p, 1, th), "predictor-bs1", [1, c], cfg, body, tmp)

    # Row 1's baseline: the same forward in-process, at the server's thread count.
    x = trained.val.images[:1]
    torch.set_num_threads(th)
    with torch.inference_mode():
        inproc = interleaved_p50_ms({"eager": lambda: trained.model(to_model_input(x, pre))}, cfg.latency_repeats)
    torch.set_num_threads(machine["cores"])
    rows = [
        Row(
            "1",
            "predictor HTTP p50, batch 1, sequential (V1, one 32×32 PPM) vs in-process eager forward p50",
            f"HTTP p50 {pred[1].p50_ms:.2f} ms / p99 {pred[1].p99_ms:.2f} ms vs in-process {inproc['eager']:.2f} ms "
            f"({th} thread); with --batch-size 1: p50 {unb[1].p50_ms:.2f} ms ({unb[1].p50_ms / inproc['eager']:.2f}×)",
            pred[1].p50_ms / inproc["eager"],
            3.0,
            "le",
            note="predictor at its defaults (--batch-size 32 --batch-wait-ms 2; a lone request skips the wait)",
            details={
                "http": asdict(pred[1]),
                "http_batch_size_1": asdict(unb[1]),
                "inprocess_p50_ms": inproc["eager"],
                "threads": th,
            },
        ),
        Row(
            "2a",
            "predictor vs plain FastAPI app: p50 latency at concurrency 1",
            f"{pred[1].p50_ms:.2f} ms vs {plain[1].p50_ms:.2f} ms",
            pred[1].p50_ms / plain[1].p50_ms,
            1.0,
            "le",
            note=f"--batch-size 1 (no batching wait): {unb[1].p50_ms:.2f} ms = {unb[1].p50_ms / plain[1].p50_ms:.2f}×",
            details={"predictor": asdict(pred[1]), "plain": asdict(plain[1]), "predictor_batch_size_1": asdict(unb[1])},
        ),
        Row(
            "2b",
            f"predictor vs plain FastAPI app: throughput at concurrency {c}",
            f"{pred[c].requests_per_second:.0f} vs {plain[c].requests_per_second:.0f} req/s "
            f"(p99 {pred[c].p99_ms:.1f} vs {plain[c].p99_ms:.1f} ms)",
            pred[c].requests_per_second / plain[c].requests_per_second,
            1.0,
            "ge",
            details={"predictor": asdict(pred[c]), "plain": asdict(plain[c]), "predictor_images_per_pass": pred_pass},
        ),
        Row(
            "3a",
            f"tsrnet: throughput at concurrency {c}, batching (32) vs --batch-size 1",
            f"{pred[c].requests_per_second:.0f} vs {unb[c].requests_per_second:.0f} req/s, {pred_pass:.1f} images/pass",
            pred[c].requests_per_second / unb[c].requests_per_second,
            5.0,
            "ge",
            note="tsrnet is compute-bound from ~8 images/pass on 2 cores: batching cannot reach 5× (README)",
            details={"batched": asdict(pred[c]), "unbatched": asdict(unb[c])},
        ),
    ]
    mnv3 = write_untrained_model(tmp / "mobilenet_v3_large", "mobilenet_v3_large")
    mb, mb_pass = load_runs(lambda p: predictor_cmd(mnv3, p, 32, th), "mnv3-batched", [c], cfg, body, tmp)
    mu, _ = load_runs(lambda p: predictor_cmd(mnv3, p, 1, th), "mnv3-bs1", [c], cfg, body, tmp)
    rows.append(
        Row(
            "3b",
            f"mobilenet_v3_large (untrained): throughput at concurrency {c}, batching (32) vs --batch-size 1",
            f"{mb[c].requests_per_second:.0f} vs {mu[c].requests_per_second:.0f} req/s, {mb_pass:.1f} images/pass",
            mb[c].requests_per_second / mu[c].requests_per_second,
            5.0,
            "ge",
            details={"batched": asdict(mb[c]), "unbatched": asdict(mu[c])},
        )
    )
    return rows


# ---- model-optimization rows (4, 5) ------------------------------------------------------------------------


def optimize_rows(cfg: SuiteConfig, trained: Trained) -> list[Row]:
    try:
        opt = importlib.import_module(OPTIMIZE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is not None and OPTIMIZE_MODULE.startswith(exc.name):
            why = "not available: components.optimize missing"
            return [Row(k, t, "", None, unavailable=why) for k, t in OPTIMIZE_TITLES]
        raise
    pre, model, val = trained.config.preprocess, trained.model, trained.val
    x1, x64 = to_model_input(val.images[:1], pre), to_model_input(val.images[:64], pre)
    engine = opt.select_engine()
    calib = trained.train.images[torch.randperm(len(trained.train), generator=torch.Generator().manual_seed(0))[:512]]
    t0 = time.perf_counter()
    q = opt.quantize_int8(copy.deepcopy(model), pre, calib, engine=engine)
    quant_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    frozen = opt.export_frozen(copy.deepcopy(model), pre.image_size)
    export_s = time.perf_counter() - t0
    with torch.inference_mode():
        t0 = time.perf_counter()
        frozen(x1)
        first_call_s = time.perf_counter() - t0
        t = interleaved_p50_ms(
            {"fp32": lambda: model(x1), "int8": lambda: q(x1), "frozen": lambda: frozen(x1)}, cfg.latency_repeats
        )
        t64 = interleaved_p50_ms(
            {"fp32": lambda: model(x64), "int8": lambda: q(x64), "frozen": lambda: frozen(x64)}, cfg.batch64_repeats
        )
        max_diff = float((frozen(x64) - model(x64)).abs().max())
    acc_fp32, acc_int8 = trained.val_accuracy, accuracy(q, val, pre)
    threads = torch.get_num_threads()
    common = {"engine": engine, "threads": threads, "timed": "model forward on a standardized input"}
    return [
        Row(
            "4a",
            "int8 vs fp32 forward, batch 64 (speed-up)",
            f"b64 {t64['fp32']:.2f} → {t64['int8']:.2f} ms; b1 {t['fp32']:.3f} → {t['int8']:.3f} ms "
            f"({t['fp32'] / t['int8']:.2f}×); engine {engine}, {threads} threads",
            t64["fp32"] / t64["int8"],
            1.5,
            "ge",
            details={"p50_ms_b1": t, "p50_ms_b64": t64, "quantize_seconds": quant_s, **common},
        ),
        Row(
            "4b",
            f"int8 accuracy loss on {len(val)} held-out GTSRB track images",
            f"fp32 {acc_fp32 * 100:.2f} % vs int8 {acc_int8 * 100:.2f} %",
            (acc_fp32 - acc_int8) * 100,
            0.3,
            "le",
            unit="pt",
            details={"fp32_accuracy": acc_fp32, "int8_accuracy": acc_int8, "calibration_images": len(calib), **common},
        ),
        Row(
            "5a",
            "exported (export_frozen) vs eager forward, batch 1 (speed-up)",
            f"{t['fp32']:.3f} → {t['frozen']:.3f} ms; export {export_s:.2f} s, first call {first_call_s * 1e3:.0f} ms",
            t["fp32"] / t["frozen"],
            details={"export_seconds": export_s, "first_call_seconds": first_call_s, "max_abs_logit_diff": max_diff},
        ),
        Row(
            "5b",
            "exported (export_frozen) vs eager forward, batch 64 (speed-up)",
            f"{t64['fp32']:.2f} → {t64['frozen']:.2f} ms (export/compile time in 5a)",
            t64["fp32"] / t64["frozen"],
            details={**common},
        ),
    ]


OPTIMIZE_TITLES = [
    ("4a", "int8 vs fp32 forward, batch 64 (speed-up)"),
    ("4b", "int8 accuracy loss on held-out GTSRB tracks"),
    ("5a", "exported (export_frozen) vs eager forward, batch 1"),
    ("5b", "exported (export_frozen) vs eager forward, batch 64"),
]


# ---- training rows (6, 7) -----------------------------------------------------------------------------------


def hand_loop(split: Split, pre: PreprocessConfig, batch_size: int, seed: int) -> tuple[int, float]:
    """The minimal loop row 6 compares against: plain SGD, same model, tensors, batch size, no augmentation."""
    torch.manual_seed(seed)
    model = build_model("tsrnet", 43).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    t0, seen = time.perf_counter(), 0
    order = torch.randperm(len(split), generator=gen)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue
        loss = F.cross_entropy(model(to_model_input(split.images[idx], pre)), split.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(idx)
    return seen, time.perf_counter() - t0


def train_row(cfg: SuiteConfig, trained: Trained, machine: dict[str, Any]) -> Row:
    pick = torch.randperm(len(trained.train), generator=torch.Generator().manual_seed(0))[: cfg.compare_images]
    split, batch = trained.train.subset(pick), 256
    tcfg = TrainConfig(epochs=1, batch_size=batch, augment=False, export_program=False)
    names = trained.config.class_names
    comp_images = comp_s = hand_images = hand_s = 0.0
    for epoch in range(cfg.compare_epochs):  # alternate sides, one epoch each, so load hits both alike
        n, s = hand_loop(split, trained.config.preprocess, batch, epoch)
        hand_images, hand_s = hand_images + n, hand_s + s
        r = train(split, empty_split(split.images.shape[-1]), names, replace(tcfg, seed=epoch), show_progress=False)
        comp_images, comp_s = comp_images + r.images_per_second * r.train_seconds, comp_s + r.train_seconds
    torch.set_num_threads(machine["cores"])
    comp, hand = comp_images / comp_s, hand_images / hand_s
    return Row(
        "6",
        "train component images/s vs a minimal hand-written loop (augmentation off on both)",
        f"{comp:.0f} vs {hand:.0f} images/s ({len(split)} images, batch {batch}, {cfg.compare_epochs} epoch(s) each)",
        comp / hand,
        0.9,
        "ge",
        note="component: SGD+nesterov, one-cycle, label smoothing, per-group weight decay; loop: plain SGD",
        details={"component_images_per_second": comp, "hand_images_per_second": hand},
    )


@contextmanager
def timed_kfp_steps(logfile: Path) -> Iterator[list[tuple[str, float, list[str]]]]:
    """Time every step subprocess kfp.local starts (and keep its output out of our terminal)."""
    from kfp.local import subprocess_task_handler as handler

    steps: list[tuple[str, float, list[str]]] = []
    original = handler.run_local_subprocess

    def run(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        env = {**os.environ, **(env_vars or {})}
        t0 = time.perf_counter()
        proc = subprocess.run(full_command, env=env, capture_output=True, text=True)
        lines = (proc.stdout + proc.stderr).splitlines()
        name = next((m.group(1) for c in full_command if (m := re.search(r"def (\w+_component)\(", c))), "step")
        steps.append((name, time.perf_counter() - t0, lines))
        with logfile.open("a") as fh:
            fh.write(f"==== {name} rc={proc.returncode}\n" + "\n".join(lines) + "\n")
        return proc.returncode

    handler.run_local_subprocess = run  # type: ignore[assignment]
    try:
        yield steps
    finally:
        handler.run_local_subprocess = original


def startup_seconds(step: str) -> float:
    """What a step pays before its first line of work: a Python that imports kfp's executor and the step's module
    (`components.<step>.<step>`, with torch and whatever else it pulls in), timed as its own process."""
    name = step.removesuffix("_component")
    module = f"components.{name}.{name}"
    code = f"import importlib.util, kfp.dsl.executor_main\nif importlib.util.find_spec({module!r}): import {module}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120, capture_output=True)
    return time.perf_counter() - t0


def pipeline_row(cfg: SuiteConfig, tmp: Path) -> Row:
    from rich.console import Console

    from pipelines.local_run import run_local
    from tsr.local.demo import find_data
    from tsr.local.minio_server import LocalMinio, find_minio_binary

    title = "local pipeline (kfp.local, real MinIO) overhead: (wall − Σ step compute) / wall"
    binary = find_minio_binary()
    if binary is None:
        return Row("7", title, "", None, 0.10, "le", "%", unavailable="not available: no MinIO binary (make tools)")
    source = find_data(cfg.data_dir, Console(stderr=True))
    params = {
        "data_source": source,
        "max_groups_per_class": cfg.pipeline_tracks,
        "epochs": 1,
        "batch_size": 64,
        "lr": 0.1,
        "min_accuracy": 0.0,
        "min_class_accuracy": 0.0,
        "model_name": "bench-pipeline",
        "deploy_mode": "manifest",
    }
    server = LocalMinio(root=tmp / "minio", binary=binary)
    store = server.start()
    try:
        with timed_kfp_steps(tmp / "pipeline-steps.log") as steps:
            result = run_local(params, store, tmp / "pipeline-root")
    finally:
        server.stop()
    startup = {name: startup_seconds(name) for name, _, _ in steps}
    step_wall = sum(s for _, s, _ in steps)
    compute = sum(max(0.0, s - startup[name]) for name, s, _ in steps)
    train_lines = [ln for name, _, lines in steps if name.startswith("train") for ln in lines]
    epoch_s = [float(m.group(1)) for ln in train_lines if (m := re.search(r"^epoch \d+/\d+: .*\(([\d.]+)s\)$", ln))]
    overhead = (result.seconds - compute) / result.seconds
    return Row(
        "7",
        title,
        f"wall {result.seconds:.1f} s, {len(steps)} step processes {step_wall:.1f} s, of which "
        f"{sum(startup.values()):.1f} s Python + import start-up → compute {compute:.1f} s",
        overhead,
        0.10,
        "le",
        "%",
        note="compute = each step process's wall − its measured interpreter + import start-up",
        details={
            "wall_seconds": result.seconds,
            "steps": {name: round(s, 2) for name, s, _ in steps},
            "startup_seconds": {k: round(v, 2) for k, v in startup.items()},
            "train_epoch_seconds_self_reported": epoch_s,
            "outside_step_processes_seconds": result.seconds - step_wall,
            "gate": result.gate,
            "params": params,
        },
    )


# ---- threads (8) ---------------------------------------------------------------------------------------------


def threads_row(cfg: SuiteConfig, trained: Trained, machine: dict[str, Any]) -> Row:
    pre, x = trained.config.preprocess, trained.val.images[:1]
    cores = machine["cores"]
    samples: dict[int, list[float]] = {1: [], cores: []}
    with torch.inference_mode():
        for _ in range(5):
            for n in samples:
                torch.set_num_threads(n)
                p = interleaved_p50_ms(
                    {"f": lambda: trained.model(to_model_input(x, pre))}, cfg.latency_repeats // 5, 1
                )
                samples[n].append(p["f"])
    torch.set_num_threads(cores)
    one, many = statistics.median(samples[1]), statistics.median(samples[cores])
    return Row(
        "8",
        f"in-process batch-1 forward (row 1's): 1 thread vs all {cores} cores (p50 ratio)",
        f"{one:.3f} vs {many:.3f} ms; {machine['backend']}",
        one / many,
        details={"p50_ms_1_thread": one, "p50_ms_all_cores": many},
    )


# ---- driver --------------------------------------------------------------------------------------------------


def guarded(rows: list[Row], keys: list[tuple[str, str]], fn: Callable[[], list[Row]]) -> None:
    """Run one group of rows; a failure becomes rows that say so instead of ending the suite."""
    try:
        rows.extend(fn())
    except Exception as exc:
        traceback.print_exc()
        rows.extend(Row(k, t, "", None, unavailable=f"failed: {type(exc).__name__}: {exc}"[:300]) for k, t in keys)


def run_suite(cfg: SuiteConfig) -> tuple[list[Row], dict[str, Any]]:
    t_start = time.perf_counter()
    machine = machine_info()
    log(f"{machine['backend']}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tsr-bench-") as name:
        tmp = Path(name)
        trained = prepare_model(cfg, tmp)
        guarded(rows, [("1-3", "serving")], lambda: serving_rows(cfg, trained, tmp, machine))
        log("rows 4-5: int8 / export")
        guarded(rows, OPTIMIZE_TITLES, lambda: optimize_rows(cfg, trained))
        log("row 6: training loop")
        guarded(rows, [("6", "train component vs hand loop")], lambda: [train_row(cfg, trained, machine)])
        log("row 7: local pipeline")
        guarded(rows, [("7", "local pipeline overhead")], lambda: [pipeline_row(cfg, tmp)])
        guarded(rows, [("8", "threads")], lambda: [threads_row(cfg, trained, machine)])
    for r in rows:
        r.machine = machine
    meta = {
        "benchmark": "suite",
        "date": date.today().isoformat(),
        "mode": "quick" if cfg.quick else "full",
        "machine": machine,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "model": {
            "arch": trained.config.arch,
            "train_images": len(trained.train),
            "heldout_images": len(trained.val),
            "epochs": trained.epochs,
            "train_seconds": round(trained.seconds, 1),
            "heldout_accuracy": trained.val_accuracy,
        },
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    return rows, meta


def write_results(rows: list[Row], meta: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{meta['date']}-{platform.machine()}{'-quick' if meta['mode'] == 'quick' else ''}"
    write_json(rows, meta, stem.with_suffix(".json"))
    write_markdown(rows, meta, stem.with_suffix(".md"))
    m = meta["machine"]
    write_plot(rows, stem.with_suffix(".png"), f"make bench {meta['date']}: {m['cpu']} {m['arch']} {m['cores']} cores")
    return stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shrink every budget: a smoke run (< 3 min)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--data-dir", type=Path, default=None, help="GTSRB root (default: as `make demo` finds it)")
    args = parser.parse_args(argv)
    cfg = (
        SuiteConfig.quick_config(out=args.out, data_dir=args.data_dir)
        if args.quick
        else SuiteConfig(args.out, args.data_dir)
    )
    rows, meta = run_suite(cfg)
    stem = write_results(rows, meta, cfg.out)
    print(markdown_table(rows))
    counts = {s: sum(r.status == s for r in rows) for s in ("met", "missed", "info")}
    print(f"wall {meta['wall_seconds']} s; {counts}; wrote {stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
