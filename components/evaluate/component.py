"""KFP wrapper for evaluation and the gate: metrics, confusion matrix, HTML report, pass/fail."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate_component(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
    model_name: str = "gtsrb-classifier",
    min_accuracy: float = 0.95,
    champion_tolerance: float = 0.005,
    test_data: str = "",
) -> str:
    """Evaluate on the validation split (and a GTSRB test dir if given); returns the gate, "pass" or "fail".

    The gate is the single return value (KFP's "Output") on purpose: kfp.local's condition
    evaluator resolves only that name for a task output inside `dsl.If`.
    """
    import json
    from pathlib import Path

    from components.evaluate.evaluate import GateConfig, run_evaluation
    from components.evaluate.report import render_report
    from tsr.config import explicit_store_config

    result = run_evaluation(
        model.path,
        dataset.path,
        GateConfig(min_accuracy, champion_tolerance),
        model_name,
        test_data,
        store=explicit_store_config(),
    )
    val = result["validation"]
    for split in ("validation", "test"):
        if split in result:
            for key in ("accuracy", "macro_f1", "n"):
                metrics.log_metric(f"{split}_{key}", result[split][key])
    metrics.log_metric("gate_passed", result["gate"]["result"] == "pass")
    confusion.log_confusion_matrix(result["class_names"], val["confusion"])
    Path(report.path).write_text(render_report(result))
    Path(evaluation.path).write_text(json.dumps(result, indent=2))
    print(f"gate: {result['gate']['result']} ({result['gate']['reason']})", flush=True)
    return str(result["gate"]["result"])
