"""The train step's parameters: `TrainConfig`, the one place their defaults are written.

Everything that offers a training parameter takes its default from here: `tsr pipeline run-local`,
`tsr demo` (tsr.local.demo.DemoConfig), the pipeline function's parameters (pipelines/training_pipeline.py)
and the Makefile (through `tsr demo`). The KFP component's signature must keep literals (kfp.local packages
it by source); tests/test_defaults.py holds those to these values.

No torch at import: the `tsr` command line reads these defaults when it starts. The architecture and
contrast checks import what they need when a config is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from tsr.core.architectures import DEFAULT_ARCH, is_known_arch
from tsr.core.validation import InvalidParameter, check_choice, check_range

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = DEFAULT_ARCH
    width: int = 16
    epochs: int = 18
    batch_size: int = 256
    lr: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 0  # 0 = every core torch sees
    contrast: str = "clahe"  # tsr.core.preprocessing.CONTRAST_MODES; docs/model.md has what each measured
    augment: bool = True
    rotate_deg: float = 15.0
    scale: float = 0.15
    translate: float = 0.12
    erase: float = 0.5  # probability of blanking a random square (cutout) in each image
    brightness: float = 0.0  # photometric augmentation: shift each image's [0, 1] pixels by up to +-this
    contrast_jitter: float = 0.0  # ... and scale them about the image's mean by a factor in 1 +- this
    balance: float = 0.0  # class sampling: each image drawn with weight count(class) ** -balance (0 = plain shuffle)
    ema: float = 0.0  # decay of an exponential moving average of the weights, which is the model returned (0 = off)
    # "bf16": convolutions in bfloat16 under autocast, weights and their updates in float32 (about twice the
    # images per second where the CPU has bf16 instructions); "fp32": float32 throughout; "auto": bf16 where
    # the CPU has native bf16 instructions (tsr.core.backend.native_bf16), else fp32. Evaluation, calibration
    # and serving are always float32.
    precision: str = "auto"
    export_program: bool = True

    def __post_init__(self) -> None:
        """Refuse values that can never train before any data is loaded (`InvalidParameter` names the field)."""
        from tsr.core.preprocessing import CONTRAST_MODES  # late: imports torch

        if not is_known_arch(self.arch):
            raise InvalidParameter(
                "arch", f"unknown architecture {self.arch!r}: use {DEFAULT_ARCH!r} or a torchvision.models classifier"
            )
        check_range("width", self.width, low=1)
        check_range("epochs", self.epochs, low=1)
        check_range("batch_size", self.batch_size, low=2)  # BatchNorm needs two samples per batch
        check_range("lr", self.lr, low=0.0, high=10.0, low_open=True, high_open=True)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        check_range("seed", self.seed, low=0)
        check_range("threads", self.threads, low=0)
        check_choice("contrast", self.contrast, sorted(CONTRAST_MODES))
        for name in ("rotate_deg", "scale", "translate"):
            check_range(name, getattr(self, name), low=0.0)
        check_range("erase", self.erase, low=0.0, high=1.0)
        check_range("brightness", self.brightness, low=0.0, high=1.0)
        check_range("contrast_jitter", self.contrast_jitter, low=0.0, high=1.0)
        check_range("balance", self.balance, low=0.0, high=1.0)
        check_range("ema", self.ema, low=0.0, high=1.0, high_open=True)
        check_choice("precision", self.precision, list(PRECISIONS))
