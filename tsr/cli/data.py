"""Data in: `tsr store start|upload|stop` (the object store) and `tsr ingest`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.text import Text

from tsr.cli import common
from tsr.cli.common import TYPER_SETTINGS, JsonOption, QuietOption, cli_errors, err, out, progress
from tsr.core.config import explicit_store_config
from tsr.core.validation import check_data_source, check_output_dir
from tsr.local import ui
from tsr.local.minio_server import local_minio
from tsr.local.upload import check_upload_args, upload_tree

store_app = typer.Typer(help="The object store (embedded MinIO by default).", **TYPER_SETTINGS)


@store_app.command("start")
@cli_errors()
def store_start() -> None:
    """Start the embedded MinIO (if no store is configured) and print its environment variables."""
    explicit = explicit_store_config()
    if explicit is not None:
        out.print(f"a store is configured ({explicit.origin}): {explicit.describe()}; nothing to start")
        return
    server = local_minio()
    config = server.running() or server.start()
    err.print(f"MinIO running: {config.describe()} (data {server.data_dir})")
    for key, value in config.env().items():
        out.print(f"export {key}={value}", markup=False, highlight=False)


@store_app.command("upload")
@cli_errors()
def store_upload(
    source: Annotated[Path, typer.Argument(help="a directory, or a .tar / .tar.gz / .tgz archive (extracted first)")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix (the bucket is created if needed)")],
    workers: Annotated[int, typer.Option(help="objects uploaded in parallel")] = 8,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Upload a dataset to the store, keeping relative paths: the data_source of a cluster run."""
    check_upload_args(source, dest, workers)
    with common._store_session() as store, progress(as_json, quiet) as activity:
        result = upload_tree(source, dest, store, workers=workers, on_progress=activity.bar("upload files", "items"))
    if as_json:
        print(json.dumps(dataclasses.asdict(result)))
        return
    rate = result.files / result.seconds if result.seconds else 0.0
    err.print(f"uploaded {result.files} files ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s ({rate:.0f}/s)")
    print(result.uri)


@store_app.command("stop")
@cli_errors()
def store_stop() -> None:
    """Stop the embedded MinIO."""
    local_minio().stop()
    err.print("embedded MinIO stopped")


@cli_errors()
def ingest(
    source: Annotated[str, typer.Option(help="GTSRB/ImageFolder directory or s3://bucket/prefix")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="where to write the dataset: absent, empty or a previous ingest output")
    ],
    layout: Literal["auto", "gtsrb", "imagefolder"] = "auto",
    val_fraction: Annotated[float, typer.Option(help="share of tracks held out, in (0, 1)")] = 0.2,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    max_groups_per_class: Annotated[int, typer.Option(min=0, help="keep N tracks per class (0 = all)")] = 0,
    download: Annotated[bool, typer.Option(help="fetch GTSRB with torchvision's downloader")] = False,
    skip_corrupt: Annotated[
        bool, typer.Option(help="leave out unreadable images (counted and named in the data card) instead of failing")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Read and split a data source into uint8 tensors plus a data card (what the ingest step does).

    All or nothing: on any error the output directory is left as it was. Prints a summary table,
    or with --json one object: the data card's totals plus out, source, layout, num_classes,
    skipped and fingerprint (sha256 of every image file).
    """
    # Late: both import torch (seconds); every other command starts without it.
    from components.ingest.ingest import IngestConfig
    from components.ingest.ingest import ingest as run_ingest
    from tsr.core.dataset import OUTPUT_FILES

    config = IngestConfig(
        source,
        layout,
        "train",
        val_fraction,
        seed,
        max_groups_per_class=max_groups_per_class,
        download=download,
        skip_corrupt=skip_corrupt,
    )
    check_data_source("source", source, must_exist=not download)
    check_output_dir("out_dir", out_dir, OUTPUT_FILES)
    with progress(as_json, quiet) as activity, activity.step(f"ingest {source} -> {out_dir}"):
        reading = activity.bar("reading images")
        fetching = activity.bar("downloading GTSRB", "bytes") if download else activity.bar(f"copying {source}")
        if source.startswith("s3://"):
            with common._store_session() as store:
                card = run_ingest(config, out_dir, store, reading, fetching)
        else:
            card = run_ingest(config, out_dir, None, reading, fetching)
    fingerprint = card["fingerprint"]["value"]
    summary = {
        **card["totals"],
        "out": str(out_dir),
        "source": source,
        "layout": card["layout"],
        "num_classes": card["num_classes"],
        "skipped": card["skipped_images"]["count"],
        "fingerprint": fingerprint,
    }
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    totals = card["totals"]
    skipped = summary["skipped"]
    out.print(
        ui.key_value_table(
            [
                ("dataset", f"{out_dir} (data card: {out_dir / 'data-card.json'})"),
                ("source", f"{source} ({card['layout']} layout, split {card['split_strategy']})"),
                ("images", f"{totals['images']:,} in {card['num_classes']} classes, {card['image_size']} px"),
                ("train", f"{totals['train']:,} images, {totals['train_groups']:,} tracks"),
                ("validation", f"{totals['val']:,} images, {totals['val_groups']:,} tracks"),
                ("skipped", Text(f"{skipped} unreadable", style="yellow") if skipped else "none"),
                ("sha256", fingerprint),
            ],
            title="ingest",
        )
    )
