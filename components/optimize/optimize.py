"""Optimize: int8 post-training quantization and a frozen TorchScript export of a trained model.

Both variants take the same standardized float input as the fp32 model (`to_model_input`),
so evaluation and serving keep the one preprocessing path and only `load_model_dir` knows
which variant it loaded. Quantization is FX graph mode (`prepare_fx`/`convert_fx`): on
torch 2.14 it fuses conv-bn-relu and quantizes tsrnet's residual adds without model changes
(resnet18 and mobilenet_v3_small quantize and export too, untested for accuracy), and its
converted module traces to TorchScript, which is what a variant directory stores. The pt2e
flow was not used: it lives in torchao now, which this project does not depend on.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsr.core.models import VARIANT_FILES, load_model_dir, quiet_torchscript, save_variant_dir
from tsr.core.preprocessing import PreprocessConfig, to_model_input

CALIBRATION_BATCH = 64
# Traced with this batch size; nothing in the supported archs depends on it, so any batch works.
EXAMPLE_BATCH = 2


def select_engine() -> str:
    """The quantized engine for this machine: "x86" (oneDNN/FBGEMM) on x86_64, "qnnpack" on ARM.

    Chosen at run time rather than at build time because int8 weights are packed for one engine.
    """
    machine = platform.machine().lower()
    engine = "qnnpack" if machine in ("arm64", "aarch64") or machine.startswith("arm") else "x86"
    supported = list(torch.backends.quantized.supported_engines)
    if engine not in supported:
        fallback = next((e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in supported), None)
        if fallback is None:
            raise RuntimeError(f"this torch build has no quantized engine (supported: {supported})")
        engine = fallback
    return engine


def _use_engine(engine: str | None) -> str:
    engine = engine or select_engine()
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized engine {engine!r} is not supported here (supported: "
            f"{list(torch.backends.quantized.supported_engines)})"
        )
    # Process-wide: converting packs weights for the current engine, and running needs the same one.
    torch.backends.quantized.engine = engine
    return engine


@torch.no_grad()
def quantize_int8(
    model: nn.Module,
    preprocess: PreprocessConfig,
    calibration: torch.Tensor,
    engine: str | None = None,
) -> nn.Module:
    """Post-training static int8 quantization, calibrated on uint8 images through `to_model_input`.

    The result still takes standardized float input (it quantizes at its first layer and
    dequantizes its logits), so it is a drop-in replacement for the fp32 model. Sets the
    process-wide `torch.backends.quantized.engine`.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if calibration.dtype != torch.uint8 or calibration.ndim != 4 or calibration.shape[0] == 0:
        raise ValueError(
            f"calibration must be non-empty uint8 (N, 3, H, W), got {calibration.dtype} {tuple(calibration.shape)}"
        )
    engine = _use_engine(engine)
    float_model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    example = to_model_input(calibration[:1], preprocess)
    # prepare_fx fuses conv-bn-relu (eval mode) and inserts observers; residual adds become quantized adds.
    prepared = prepare_fx(float_model, get_default_qconfig_mapping(engine), (example,))
    for start in range(0, calibration.shape[0], CALIBRATION_BATCH):
        prepared(to_model_input(calibration[start : start + CALIBRATION_BATCH], preprocess))
    quantized = convert_fx(prepared)
    quantized.eval()
    return quantized


@torch.no_grad()
def export_frozen(model: nn.Module, image_size: int, optimize_for_inference: bool = False) -> torch.jit.ScriptModule:
    """Trace (dynamic batch) in channels_last and freeze the weights into the graph.

    `torch.jit.freeze` already folds conv-bn and inlines the weights. `optimize_for_inference`
    is opt-in: on torch 2.14 it rewrites fp32 convs to MKL-DNN tensors that `torch.jit.save`
    cannot serialize (the archive loses its weights), and it measured slower at batch 64 on
    2 cores; use it only for in-process runs. Tracing rather than scripting: the archs have
    no data-dependent control flow, and traced FX-quantized modules serialize reliably.
    """
    model = model.eval().to(memory_format=torch.channels_last)
    example = torch.zeros(EXAMPLE_BATCH, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    with quiet_torchscript(), warnings.catch_warnings():
        # Quantized adds read their scale/zero-point tensors as Python numbers: constants, as intended.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        return torch.jit.optimize_for_inference(frozen) if optimize_for_inference else frozen


def measure_latency(fn: Callable[[torch.Tensor], Any], batch: torch.Tensor, repeats: int = 30) -> dict[str, float]:
    """Wall-clock latency of `fn(batch)` in ms after a warm-up; p50 is what the model card reports."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(min(5, repeats)):
            fn(batch)
        for _ in range(repeats):
            start = time.perf_counter()
            fn(batch)
            times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return {
        "batch": float(batch.shape[0]),
        "repeats": float(repeats),
        "p50_ms": round(statistics.median(times), 4),
        "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 4),
        "min_ms": round(times[0], 4),
    }


def compare_latency(
    baseline: nn.Module,
    candidate: nn.Module,
    image_size: int,
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 30,
) -> dict[str, float]:
    """p50 latency (ms) of the fp32 model vs a variant on the same standardized input, plus the speedup.

    The two are timed alternately, call by call, so a busy machine slows both alike instead of
    whichever happened to run second.
    """
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)
    for bs in batch_sizes:
        x = torch.randn(bs, 3, image_size, image_size, generator=gen).contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {"fp32": [], "variant": []}
        with torch.inference_mode():
            for _ in range(5):  # warm-up; TorchScript's profiling executor optimizes on the first calls
                baseline(x)
                candidate(x)
            for _ in range(repeats):
                for key, fn in (("fp32", baseline), ("variant", candidate)):
                    start = time.perf_counter()
                    fn(x)
                    times[key].append((time.perf_counter() - start) * 1000.0)
        base, cand = statistics.median(times["fp32"]), statistics.median(times["variant"])
        out[f"fp32_p50_ms_b{bs}"] = round(base, 4)
        out[f"variant_p50_ms_b{bs}"] = round(cand, 4)
        out[f"speedup_b{bs}"] = round(base / cand, 3) if cand > 0 else float("nan")
    return out


@dataclass
class OptimizeResult:
    variant: str
    quant_engine: str | None
    archive: str  # file name inside the output directory
    size_bytes: int
    fp32_size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dir_size(path: Path, names: list[str]) -> int:
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


def optimize(model_dir: Path, calibration: torch.Tensor, out_dir: Path, variant: str = "int8") -> OptimizeResult:
    """Write `variant` ("int8" or "exported") of the fp32 model in `model_dir` as a model directory in `out_dir`."""
    if variant not in VARIANT_FILES:
        raise ValueError(f"variant must be one of {sorted(VARIANT_FILES)}, got {variant!r}")
    model, config = load_model_dir(model_dir)
    if config.variant != "fp32":
        raise ValueError(f"{model_dir} is already a {config.variant!r} variant; optimize the fp32 model")
    size = config.preprocess.image_size
    engine: str | None = None
    if variant == "int8":
        engine = select_engine()
        model = quantize_int8(model, config.preprocess, calibration, engine)
    program = export_frozen(model, size)
    # `replace` keeps every other field, the calibration temperature included: a variant's logits are
    # (close to) the fp32 model's, so it serves the same calibrated probabilities.
    archive = save_variant_dir(program, replace(config, variant=variant, quant_engine=engine), out_dir)
    return OptimizeResult(
        variant=variant,
        quant_engine=engine,
        archive=archive.name,
        size_bytes=archive.stat().st_size,
        fp32_size_bytes=_dir_size(model_dir, ["model.safetensors"]),
    )


REPORT_FILE = "optimize.json"


def run_optimize(
    model_dir: Path,
    dataset_dir: Path,
    out_dir: Path,
    variant: str = "int8",
    calibration_images: int = 512,
    latency_repeats: int = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """The component's work: calibrate on a seeded sample of the training split, write the variant,
    and measure it against fp32; the report also lands in the directory (optimize.json) for the model card."""
    import json

    from tsr.core.dataset import TRAIN_FILE, load_split

    if calibration_images < 1:
        raise ValueError("calibration_images must be >= 1")
    train_split = load_split(dataset_dir / TRAIN_FILE)
    pick = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(seed))[:calibration_images]
    calibration = train_split.images[pick]
    result = optimize(model_dir, calibration, out_dir, variant)
    fp32, config = load_model_dir(model_dir)
    candidate, _ = load_model_dir(out_dir)  # measure what will be served: the archive as loaded
    report = {
        **result.to_dict(),
        "calibration_images": int(calibration.shape[0]),
        "latency": compare_latency(fp32, candidate, config.preprocess.image_size, (1, 64), latency_repeats),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
