"""KFP wrapper for registration: publish the gated model to MinIO and move `champion`."""

from kfp.dsl import Artifact, Dataset, Input, Model


def register_component(
    model: Input[Model],
    dataset: Input[Dataset],
    evaluation: Input[Artifact],
    model_name: str = "gtsrb-classifier",
    run_id: str = "",
    promote: bool = True,
) -> str:
    """Returns the version URI (s3://models/<name>/<version>); credentials come from env/Secret.

    `promote=False` publishes without moving `champion` (how optimized variants are registered).
    """
    import json
    from pathlib import Path

    from components.register.register import build_model_card, register
    from tsr.core.config import explicit_store_config
    from tsr.core.dataset import read_data_card

    store = explicit_store_config()
    if store is None:
        raise RuntimeError(
            "register needs a store: set TSR_S3_ENDPOINT/TSR_S3_ACCESS_KEY/TSR_S3_SECRET_KEY (a Secret in-cluster)"
        )
    result = json.loads(Path(evaluation.path).read_text())
    metrics = {
        split: {k: result[split][k] for k in ("accuracy", "macro_f1", "n", "ece") if k in result[split]}
        for split in ("validation", "test")
        if split in result
    }
    model_config = json.loads((Path(model.path) / "config.json").read_text())
    card = build_model_card(model_name, model_config, metrics, read_data_card(Path(dataset.path)), result["gate"])
    card["run_id"] = run_id
    card["champion_before"] = result.get("champion")
    card["variant"] = model_config.get("variant", "fp32")
    optimization = Path(model.path) / "optimize.json"  # written by the optimize step: engine, latency, size
    if optimization.is_file():
        card["optimization"] = json.loads(optimization.read_text())

    def progress(done: int, total: int) -> None:  # the CLI turns these lines into an upload bar
        print(f"upload {done}/{total} bytes", flush=True)

    # The champion the gate compared this model with (None: there was none); the alias moves only from it.
    champion_uri = (result.get("champion") or {}).get("uri")
    compared_with = champion_uri.rsplit("/", 1)[-1] if champion_uri else None
    registered = register(
        Path(model.path), model_name, card, store, promote=promote, on_progress=progress, compared_with=compared_with
    )
    moved = (
        f"champion -> {registered.version}"
        if registered.champion_moved
        else f"champion unchanged ({registered.champion_note})"
    )
    print(f"registered {registered.uri} ({card['variant']}); {moved}", flush=True)
    return registered.uri
