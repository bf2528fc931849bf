"""Train: a seeded, CPU-friendly training loop over the uint8 tensors that ingest wrote.

Speed comes from keeping the whole split in memory as uint8, augmenting whole batches at
once (one affine_grid/grid_sample call), channels_last, and explicit thread settings; no
DataLoader workers are needed on two cores.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.train.config import TrainConfig
from tsr.core.calibration import calibration_summary
from tsr.core.dataset import Split
from tsr.core.drift import build_reference
from tsr.core.models import ModelConfig, build_model, save_model_dir
from tsr.core.preprocessing import PreprocessConfig, channel_stats, prepare, prepare_uint8, standardize, to_model_input


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float  # the whole epoch, validation pass included
    lr: float = float("nan")  # the learning rate of the epoch's last step (one-cycle: it changes every step)


@dataclass
class TrainResult:
    model: nn.Module
    config: ModelConfig
    history: list[EpochLog] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_second: float = 0.0

    @property
    def calibration(self) -> dict[str, Any] | None:
        """What `calibrate` recorded: temperature, ECE and NLL before/after (None without a validation split)."""
        return self.config.train_params.get("calibration")


def set_threads(threads: int) -> int:
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def resolve_precision(precision: str) -> str:
    """The precision to train in: "auto" is "bf16" on a CPU with bfloat16 instructions, else "fp32"."""
    if precision != "auto":
        return precision
    from tsr.core.backend import native_bf16

    return "bf16" if native_bf16() else "fp32"


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift for a whole [0, 1] float batch in one grid_sample.

    No flips: many signs (turn left/right, curves) change meaning when mirrored.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * cfg.scale
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * cfg.translate * 2  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.brightness > 0 or cfg.contrast_jitter > 0:
        # Photometric jitter after the contrast step: the light of one photo, which whole tracks share.
        factor = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.contrast_jitter
        shift = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor + mean + shift).clamp_(0.0, 1.0)
    if cfg.erase > 0:
        size = x.shape[-1]
        side = max(1, size // 4)
        ys = torch.randint(0, size - side + 1, (n,), generator=gen).view(n, 1, 1)
        xs = torch.randint(0, size - side + 1, (n,), generator=gen).view(n, 1, 1)
        rows = torch.arange(size).view(1, size, 1)
        cols = torch.arange(size).view(1, 1, size)
        box = (rows >= ys) & (rows < ys + side) & (cols >= xs) & (cols < xs + side)
        box &= (torch.rand(n, generator=gen) < cfg.erase).view(n, 1, 1)
        x = x.masked_fill(box.unsqueeze(1), 0.5)
    return x


@torch.no_grad()
def evaluate_split(
    model: nn.Module, split: Split, pre: PreprocessConfig, batch_size: int = 1024, bf16: bool = False
) -> tuple[float, float]:
    """(mean loss, accuracy) of an eval-mode model on a whole split; `bf16` runs it under bf16 autocast (the
    per-epoch curve of a bf16 run: half the time of a float32 pass, which took a fifth of each epoch)."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x = standardize(prepare(split.images[start : start + batch_size], pre), pre)
        y = split.labels[start : start + batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / max(len(split), 1), correct / max(len(split), 1)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=False,
    )
    progress.start()
    progress.add_task("train", total=total, info="")
    return progress


def epoch_order(labels: torch.Tensor, balance: float, gen: torch.Generator) -> torch.Tensor:
    """One epoch's sample indices: a permutation, or with `balance` > 0 as many draws (with replacement)
    weighted count(class) ** -balance, so rare classes are seen more often (1 = every class equally)."""
    if balance <= 0:
        return torch.randperm(len(labels), generator=gen)
    counts = torch.bincount(labels).double()
    weights = counts[labels].pow(-balance)
    return torch.multinomial(weights, len(labels), replacement=True, generator=gen)


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (a copy kept in eval mode).

    The decay ramps up from 0.1 as (1 + t) / (10 + t), so the first steps' random weights fade quickly.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.steps = 0
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        self._floats = [(e, p) for e, p in pairs if e.is_floating_point()]
        self._others = [(e, p) for e, p in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_([e for e, _ in self._floats], [p for _, p in self._floats], 1.0 - decay)
        for e, p in self._others:
            e.copy_(p)


def train(
    train_split: Split,
    val_split: Split,
    class_names: list[str],
    cfg: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
    show_progress: bool | None = None,
    input_reference: dict[str, Any] | None = None,
) -> TrainResult:
    """Train from scratch and return the eval-mode model with its config and history."""
    if len(train_split) == 0:
        raise ValueError("training split is empty")
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    # The contrast step is per image and random-free: once for the whole split, not per batch and epoch.
    base = PreprocessConfig(image_size=int(train_split.images.shape[-1]), contrast=cfg.contrast)
    images = torch.cat([prepare_uint8(part, base) for part in train_split.images.split(4096)])
    # Standardization constants come from those prepared (contrast-adjusted) training pixels.
    stats = channel_stats(images)
    pre = PreprocessConfig(base.image_size, base.contrast, stats.mean(), stats.std())

    model = build_model(cfg.arch, len(class_names), width=cfg.width).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.lr,
        total_steps=cfg.epochs * steps_per_epoch,
        pct_start=0.25,
        div_factor=10.0,
        final_div_factor=100.0,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    precision = resolve_precision(cfg.precision)
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    final = average.model if average is not None else model  # the model validated and returned

    if show_progress is None:
        show_progress = sys.stderr.isatty()
    bar = _progress_bar(cfg.epochs * steps_per_epoch, show_progress)
    history: list[EpochLog] = []
    seen, t_start = 0, time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t_epoch = time.perf_counter()
            order = epoch_order(train_split.labels, cfg.balance, gen)
            loss_sum, correct, count = 0.0, 0, 0
            lr = float(optimizer.param_groups[0]["lr"])
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                x = images[idx].float().div_(255.0)
                if cfg.augment:
                    x = augment(x, cfg, gen)
                x = standardize(x, pre)
                y = train_split.labels[idx]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = model(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = float(optimizer.param_groups[0]["lr"])  # recorded for the run report's curves
                optimizer.step()
                schedule.step()
                if average is not None:
                    average.update()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y).sum())
                count += len(idx)
                if bar is not None:
                    bar.update(bar.task_ids[0], advance=1, info=f"epoch {epoch}/{cfg.epochs} loss {float(loss):.3f}")
            seen += count
            # The last epoch's figures are float32, as the model is served; earlier ones in the training precision.
            val_loss, val_acc = (
                evaluate_split(final, val_split, pre, bf16=precision == "bf16" and epoch < cfg.epochs)
                if len(val_split)
                else (float("nan"), float("nan"))
            )
            log = EpochLog(
                epoch,
                loss_sum / max(count, 1),
                correct / max(count, 1),
                val_loss,
                val_acc,
                time.perf_counter() - t_epoch,
                lr,
            )
            history.append(log)
            if on_epoch is not None:
                on_epoch(log)
    finally:
        if bar is not None:
            bar.stop()
    elapsed = time.perf_counter() - t_start
    model = final.eval()
    config = ModelConfig(
        arch=cfg.arch,
        class_names=list(class_names),
        preprocess=pre,
        width=cfg.width,
        train_params={**asdict(cfg), "threads_used": torch.get_num_threads(), "precision_used": precision},
        # The data card's reference when there is one; else the same statistic of this split.
        input_reference=input_reference or build_reference(train_split.images).to_dict(),
    )
    calibrate(model, config, val_split)
    return TrainResult(model, config, history, elapsed, seen / elapsed if elapsed else 0.0)


@torch.no_grad()
def calibrate(model: nn.Module, config: ModelConfig, val_split: Split, batch_size: int = 1024) -> None:
    """Temperature scaling on the held-out split (tsr.core.calibration): sets `config.temperature` and
    records temperature, ECE and NLL before/after and the cross-fitted ECE (T fitted on other tracks) in
    `config.train_params["calibration"]`.

    The validation split is the data the model never trained on, so a temperature fitted there corrects
    the over- or underconfidence training leaves (label smoothing and augmentation move it either way, so
    it is refitted for every model). Without a validation split the model keeps T = 1. The logits come through
    `to_model_input`, the path serving uses, so the temperature fits the served model.
    """
    if len(val_split) == 0:
        return
    model.eval()
    logits = torch.cat(
        [
            model(to_model_input(val_split.images[s : s + batch_size], config.preprocess)).float()
            for s in range(0, len(val_split), batch_size)
        ]
    )
    summary = calibration_summary(logits, val_split.labels, groups=val_split.groups)
    config.temperature = float(summary["temperature"])
    config.train_params["calibration"] = summary


def write_model(result: TrainResult, out_dir: Path, export_program: bool = True) -> None:
    """The Model artifact: weights, config, exported program and the training history."""
    import json

    save_model_dir(result.model, result.config, out_dir, export_program=export_program)
    (out_dir / "history.json").write_text(
        json.dumps(
            {
                "epochs": [asdict(h) for h in result.history],
                "train_seconds": round(result.train_seconds, 2),
                "images_per_second": round(result.images_per_second, 1),
                "calibration": result.calibration,
            },
            indent=2,
        )
        + "\n"
    )
