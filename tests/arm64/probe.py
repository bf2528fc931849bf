"""Run inside the arm64 components image, under qemu-user, by tests/arm64/test_smoke.py: the platform's own code
on arm64 (the image's Python, torch and tsr), nothing of this file but the sequence of calls.

    python /smoke/probe.py /smoke

Reads /smoke/inputs.safetensors (uint8 `images` and `calibration`) and the fp32 model directory /smoke/model;
writes /smoke/arm64/: `logits.safetensors` (fp32 and int8 logits of `images`), the int8 variant the optimize step's
code writes here (`int8/`, packed for the engine it chooses on this machine) and `probe.json`.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.optimize.optimize import optimize, select_engine
from tsr.core.models import load_model_dir
from tsr.core.preprocessing import to_model_input


def main(smoke: Path) -> None:
    started = time.monotonic()
    inputs = load_file(str(smoke / "inputs.safetensors"))
    out = smoke / "arm64"
    out.mkdir(exist_ok=True)
    model, config = load_model_dir(smoke / "model")
    with torch.inference_mode():
        fp32 = model(to_model_input(inputs["images"], config.preprocess))
    fp32_seconds = time.monotonic() - started
    result = optimize(smoke / "model", inputs["calibration"], out / "int8", "int8")
    int8_model, int8_config = load_model_dir(out / "int8")  # as the predictor loads it: the engine is checked
    with torch.inference_mode():
        int8 = int8_model(to_model_input(inputs["images"], int8_config.preprocess))
    save_file({"fp32": fp32.contiguous(), "int8": int8.contiguous()}, str(out / "logits.safetensors"))
    report = {
        "machine": platform.machine(),
        "selected_engine": select_engine(),
        "optimize_engine": result.quant_engine,
        "loaded_quant_engine": int8_config.quant_engine,
        "torch_quantized_engine": torch.backends.quantized.engine,
        "supported_engines": list(torch.backends.quantized.supported_engines),
        "fp32_seconds": round(fp32_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
