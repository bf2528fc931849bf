"""Compile the pipeline to KFP IR YAML (`make compile`); the output is committed and must be reproducible."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from components.factory import DEFAULT_COMPONENT_IMAGE
from pipelines.training_pipeline import Placement, build_pipeline
from tsr.kube.placement import Toleration

COMPILED = Path(__file__).resolve().parent / "compiled" / "tsr_training.yaml"


def compile_pipeline(
    out: Path = COMPILED, image: str = DEFAULT_COMPONENT_IMAGE, placement: Placement | None = None
) -> Path:
    """Write the IR; `placement` (default `Placement()`) is baked in, as the KFP backend reads it from the IR."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, placement=placement), package_path=str(out))
    return out


def placement_from_options(
    train_arch: str = "", arch_preferred: bool = False, tolerations: list[str] | None = None
) -> Placement:
    """The command-line view of `Placement`: tolerations (kubectl taint syntax) go to the train step,
    the step that an arch constraint sends to a tainted pool."""
    placement = Placement(train_arch=train_arch, train_arch_required=not arch_preferred)
    if tolerations:
        parsed = tuple(Toleration.parse(t) for t in tolerations)
        placement = placement.with_step("train", tolerations=(*placement.step("train").tolerations, *parsed))
    return placement


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=COMPILED)
    parser.add_argument("--image", default=DEFAULT_COMPONENT_IMAGE, help="component image, registry/name:tag")
    parser.add_argument("--train-arch", default="", help="kubernetes.io/arch for the train step, e.g. arm64")
    parser.add_argument("--train-arch-preferred", action="store_true", help="prefer --train-arch, do not require it")
    parser.add_argument(
        "--toleration", action="append", default=[], help="train-step toleration, e.g. arch=arm64:NoSchedule"
    )
    args = parser.parse_args()
    chosen = placement_from_options(args.train_arch, args.train_arch_preferred, args.toleration)
    print(compile_pipeline(args.out, args.image, chosen))
