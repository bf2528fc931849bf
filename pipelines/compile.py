"""Compile the pipeline to KFP IR YAML (`make compile`); the output is committed and must be reproducible."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from components.factory import DEFAULT_COMPONENT_IMAGE
from pipelines.training_pipeline import build_pipeline

COMPILED = Path(__file__).resolve().parent / "compiled" / "tsr_training.yaml"


def compile_pipeline(out: Path = COMPILED, image: str = DEFAULT_COMPONENT_IMAGE) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image), package_path=str(out))
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=COMPILED)
    parser.add_argument("--image", default=DEFAULT_COMPONENT_IMAGE, help="component image, registry/name:tag")
    args = parser.parse_args()
    print(compile_pipeline(args.out, args.image))
