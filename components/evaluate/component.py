"""KFP wrapper for evaluation and the gate: metrics, confusion matrix, HTML report, Markdown summary, pass/fail.

The gate's defaults are `GateConfig`'s (components/evaluate/config.py), written as literals because kfp.local
packages this function by its source; tests/test_defaults.py holds them to it.
"""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def evaluate_component(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
    model_name: str = "gtsrb-classifier",
    min_accuracy: float = 0.95,
    champion_tolerance: float = 0.005,
    test_data: str = "",
    min_class_accuracy: float = 0.9,
    allow_unsigned: bool = False,
) -> str:
    """Evaluate on the validation split (and a GTSRB test dir if given); returns the gate, "pass" or "fail".

    The gate is the single return value (KFP's "Output") on purpose: kfp.local's condition
    evaluator resolves only that name for a task output inside `dsl.If`. `report` is the run report
    (training curves from the model's history.json, confusion heatmap, per-class accuracy with
    misclassified samples, reliability diagram and ECE of the served probabilities, data card, champion
    comparison, latency histogram); `summary` its key numbers. `min_class_accuracy` is the floor for the
    worst class (GateConfig). The champion is fetched from the registry and its signature verified
    ($TSR_SIGNING_PUBLIC_KEY); `allow_unsigned` is the operator's opt-in to compare with an unsigned one
    (registered before signing), as TSR_ALLOW_UNSIGNED=1 would.
    """
    import json
    import os
    from pathlib import Path

    from components.evaluate.evaluate import GateConfig, run_evaluation
    from components.evaluate.report import champion_delta, render_report, render_summary
    from tsr.core.config import explicit_store_config
    from tsr.core.signing import ENV_ALLOW_UNSIGNED

    if allow_unsigned:  # read by tsr.core.signing.Trust.from_env when the champion is fetched
        os.environ[ENV_ALLOW_UNSIGNED] = "1"
    result = run_evaluation(
        model.path,
        dataset.path,
        GateConfig(
            min_accuracy=min_accuracy, champion_tolerance=champion_tolerance, min_class_accuracy=min_class_accuracy
        ),
        model_name,
        test_data,
        store=explicit_store_config(),
    )
    val = result["validation"]
    for split in ("validation", "test"):
        if split in result:
            for key in ("accuracy", "macro_f1", "n"):
                metrics.log_metric(f"{split}_{key}", result[split][key])
    if val.get("ece") is not None:
        metrics.log_metric("validation_ece", round(val["ece"], 6))
    worst = result.get("worst_class")
    if worst is not None:
        metrics.log_metric("worst_class_id", worst["class_id"])
        metrics.log_metric("worst_class_accuracy", round(worst["accuracy"], 6))
    metrics.log_metric("temperature", result["temperature"])
    metrics.log_metric("gate_passed", result["gate"]["result"] == "pass")
    delta = champion_delta(result)
    if delta is not None:
        metrics.log_metric("champion_accuracy_delta", round(delta, 6))
    for key in ("p50_ms", "p99_ms"):
        if key in result["latency"]:
            metrics.log_metric(f"latency_{key}", result["latency"][key])
    confusion.log_confusion_matrix(result["class_names"], val["confusion"])
    Path(report.path).write_text(render_report(result))
    Path(summary.path).write_text(render_summary(result))
    Path(evaluation.path).write_text(json.dumps(result, indent=2))
    print(f"gate: {result['gate']['result']} ({result['gate']['reason']})", flush=True)
    return str(result["gate"]["result"])
