"""KFP wrapper for ingest: typed artifacts in, plain `components.ingest.ingest` logic inside."""

from kfp.dsl import Dataset, Metrics, Output


def ingest_component(
    source: str,
    dataset: Output[Dataset],
    stats: Output[Metrics],
    layout: str = "auto",
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    max_groups_per_class: int = 0,
    download: bool = False,
) -> None:
    """Read GTSRB/ImageFolder data (dir or s3://), split by track, write uint8 tensors + data card."""
    from pathlib import Path

    from components.ingest.ingest import IngestConfig, ingest
    from tsr.config import explicit_store_config

    config = IngestConfig(
        source=source,
        layout=layout,
        val_fraction=val_fraction,
        seed=seed,
        image_size=image_size,
        max_groups_per_class=max_groups_per_class,
        download=download,
    )
    store = explicit_store_config() if source.startswith("s3://") else None
    card = ingest(config, Path(dataset.path), store)
    dataset.metadata.update({"layout": card["layout"], "fingerprint": card["fingerprint"]["value"], **card["totals"]})
    for key, value in card["totals"].items():
        stats.log_metric(key, value)
