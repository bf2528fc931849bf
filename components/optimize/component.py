"""KFP wrapper for the optional optimize step: fp32 Model in, int8 or frozen-TorchScript Model out."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def optimize_component(
    model: Input[Model],
    dataset: Input[Dataset],
    optimized: Output[Model],
    metrics: Output[Metrics],
    variant: str = "int8",
    calibration_images: int = 512,
    latency_repeats: int = 30,
) -> None:
    """Write the `variant` ("int8" | "exported") model directory; log p50 latency vs fp32 at batch 1 and 64 and size."""
    from pathlib import Path

    from components.optimize.optimize import run_optimize

    report = run_optimize(
        Path(model.path), Path(dataset.path), Path(optimized.path), variant, calibration_images, latency_repeats
    )
    for key, value in report["latency"].items():
        metrics.log_metric(key, value)
    metrics.log_metric("size_bytes", report["size_bytes"])
    metrics.log_metric("fp32_size_bytes", report["fp32_size_bytes"])
    metrics.log_metric("calibration_images", report["calibration_images"])
    optimized.metadata.update(
        {"variant": variant, "quant_engine": report["quant_engine"] or "", "framework": "pytorch-torchscript"}
    )
    print(f"optimize: {variant} {report['latency']}", flush=True)
