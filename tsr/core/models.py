"""Model architectures and the on-disk model format shared by train, evaluate, register and serve.

A model directory holds:
  model.safetensors  the state_dict (safetensors: loading it can never run code)
  config.json        ModelConfig: architecture, classes, preprocessing, training parameters and the
                     calibration temperature (`probabilities` applies it to every served probability)
  program.pt2        a `torch.export` program with a dynamic batch dimension, for runtimes
                     that do not want our Python classes (optional when loading)

That is the "fp32" variant. The optimize step (components/optimize) writes two more, each a
TorchScript archive plus config.json (no safetensors: the archive holds its own weights):
  model.int8.ts      "int8": post-training static int8 quantization for `quant_engine`
  model.frozen.ts    "exported": fp32, frozen weights, optimized for inference
Every variant takes the same standardized float input (`to_model_input`), so callers of
`load_model_dir` never need to know which one they got.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from tsr.core.architectures import DEFAULT_ARCH, is_known_arch
from tsr.core.preprocessing import PreprocessConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PROGRAM_FILE = "program.pt2"
VARIANT_FILES = {"int8": "model.int8.ts", "exported": "model.frozen.ts"}
VARIANTS = ("fp32", *VARIANT_FILES)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    """Two 3x3 conv-BN-ReLU layers with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(channels, channels), *_conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TSRNet(nn.Module):
    """A narrow ResNet-9 (the DAWNBench CIFAR design at a quarter of its width).

    Chosen by measurement on 2 CPU cores: ~1,500 training images/s at batch 256 with
    channels_last, so ~20 epochs fit comfortably in a 10-minute budget.
    """

    def __init__(self, num_classes: int = 43, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(3, w),
            *_conv_bn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            Residual(2 * w),
            *_conv_bn_relu(2 * w, 4 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(4 * w, 8 * w),
            nn.MaxPool2d(2),
            Residual(8 * w),
        )
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * w, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _torchvision_model(arch: str, num_classes: int) -> nn.Module:
    """Any `torchvision.models` classifier by name, untrained, with small-image stems for ResNets."""
    if not is_known_arch(arch):
        raise ValueError(
            f"unknown architecture {arch!r}: use {DEFAULT_ARCH!r} or a torchvision.models classifier "
            f"such as 'resnet18' or 'mobilenet_v3_small'"
        )
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if isinstance(model, torchvision.models.ResNet):
        # 32x32 inputs: a 7x7/2 conv plus max-pool would leave 8x8 maps before the first block.
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()  # type: ignore[assignment]
    return model


def build_model(arch: str, num_classes: int, width: int = 16) -> nn.Module:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if arch == DEFAULT_ARCH:
        return TSRNet(num_classes=num_classes, width=width)
    return _torchvision_model(arch, num_classes)


@dataclass
class ModelConfig:
    """What a reader of a model directory needs to rebuild and feed the model."""

    arch: str
    class_names: list[str]
    preprocess: PreprocessConfig
    width: int = 16
    train_params: dict[str, Any] = field(default_factory=dict)
    # The training data's brightness distribution (tsr.core.drift.InputReference.to_dict()): the
    # predictor's drift baseline, carried with the weights so it always matches the model.
    input_reference: dict[str, Any] | None = None
    # "fp32" (safetensors weights), "int8" or "exported" (a TorchScript archive, see VARIANT_FILES).
    variant: str = "fp32"
    # The quantized engine ("x86", "qnnpack", ...) an int8 archive was packed for; it must be
    # available where the model is loaded, because packed weights are engine-specific.
    quant_engine: str | None = None
    # Temperature scaling fitted on the validation split at the end of training (tsr.core.calibration):
    # served probabilities are softmax(logits / temperature), see `probabilities`. 1.0 = uncalibrated,
    # which is also what a model directory written before calibration existed reads back as.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.variant == "int8" and not self.quant_engine:
            raise ValueError("an int8 variant needs the quant_engine it was quantized for")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        data["num_classes"] = self.num_classes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            return cls(
                arch=str(data["arch"]),
                class_names=[str(c) for c in data["class_names"]],
                preprocess=PreprocessConfig.from_dict(data["preprocess"]),
                width=int(data.get("width", 16)),
                train_params=dict(data.get("train_params", {})),
                input_reference=dict(data["input_reference"]) if data.get("input_reference") else None,
                variant=str(data.get("variant", "fp32")),
                quant_engine=str(data["quant_engine"]) if data.get("quant_engine") else None,
                temperature=float(data.get("temperature", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid model config: {exc!r}") from exc


def probabilities(logits: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The model's calibrated class probabilities: softmax(logits / config.temperature), in float32.

    The one place a probability is made from logits: the predictor, `tsr evaluate`, the evaluate step
    and the plain-server benchmark all call it, so what a client, the confidence metric and the run
    report see is the same number.
    """
    return torch.softmax(logits.float() / config.temperature, dim=1)


def save_model_dir(model: nn.Module, config: ModelConfig, out_dir: Path, export_program: bool = True) -> None:
    """Write weights, config and (optionally) the exported program into `out_dir`."""
    if config.variant != "fp32":
        raise ValueError(f"save_model_dir writes fp32 models; use save_variant_dir for {config.variant!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    if export_program:
        size = config.preprocess.image_size
        example = torch.zeros(2, 3, size, size)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(out_dir / PROGRAM_FILE))


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch 2.14's FutureWarning on every torch.jit call (TorchScript is deprecated there in
    favour of torch.export); variants knowingly use it, and a warning per model load is only log noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        yield


def save_variant_dir(program: torch.jit.ScriptModule, config: ModelConfig, out_dir: Path) -> Path:
    """Write an int8/exported variant: its TorchScript archive plus config.json; returns the archive path."""
    if config.variant not in VARIANT_FILES:
        raise ValueError(f"save_variant_dir writes {list(VARIANT_FILES)} variants, not {config.variant!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / VARIANT_FILES[config.variant]
    with quiet_torchscript():
        torch.jit.save(program, str(archive))
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return archive


def supported_quant_engines() -> list[str]:
    """The quantized engines this torch build can run (a function so tests can pretend another machine)."""
    return list(torch.backends.quantized.supported_engines)


def _load_variant(model_dir: Path, config: ModelConfig) -> nn.Module:
    """Load an int8/exported TorchScript archive for serving on this machine."""
    archive = model_dir / VARIANT_FILES[config.variant]
    if not archive.is_file():
        raise FileNotFoundError(f"model directory {model_dir} has no {archive.name} ({config.variant} variant)")
    if config.variant == "int8":
        engine = str(config.quant_engine)
        if engine not in supported_quant_engines():
            raise ValueError(
                f"int8 variant was quantized for {engine}, which this machine does not support "
                f"(supported: {supported_quant_engines()}); serve the fp32 version here"
            )
        # Packed int8 weights are re-packed for the *current* engine while the archive is read,
        # so the engine must be set first. This is process-wide; one process serves one model.
        torch.backends.quantized.engine = engine
    # torch.jit.load is not pickle.load: TorchScript's unpickler only rebuilds tensors and the
    # TorchScript types compiled from the archive's own TorchScript code, so it cannot import or
    # call arbitrary Python objects. The bytes themselves are vouched for by the registry's SHA256SUMS.
    try:
        with quiet_torchscript():
            program = torch.jit.load(str(archive), map_location="cpu")
    except RuntimeError as exc:
        raise ValueError(f"{archive}: not a loadable TorchScript archive ({exc})") from exc
    program.eval()
    return program


def load_model_dir(model_dir: Path) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model of any variant; fp32 from config + safetensors. The result is in eval mode
    and takes `to_model_input` batches whatever the variant."""
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"model directory {model_dir} has no {config_path.name}")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc})") from exc
    variant = raw.get("variant", "fp32") if isinstance(raw, dict) else "fp32"
    weights_path = model_dir / WEIGHTS_FILE
    if variant == "fp32" and not weights_path.is_file():
        raise FileNotFoundError(f"model directory {model_dir} has no {weights_path.name}")
    config = ModelConfig.from_dict(raw)
    if config.variant != "fp32":
        return _load_variant(model_dir, config), config
    model = build_model(config.arch, config.num_classes, width=config.width)
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights_path}: weights do not fit arch {config.arch!r} "
            f"(missing={missing[:3]}, unexpected={unexpected[:3]})"
        )
    model.eval()
    model.to(memory_format=torch.channels_last)
    return model, config
