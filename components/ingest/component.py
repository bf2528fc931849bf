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
    import json
    from pathlib import Path

    from components.ingest.ingest import IngestConfig, ingest
    from tsr.core.config import explicit_store_config

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
    # Metrics live in metadata; the file too lets kfp.local's cache reuse this step (it treats an
    # output artifact without a file as missing). On a cluster it is one more small object.
    Path(stats.path).write_text(json.dumps(stats.metadata, indent=2, sort_keys=True))
