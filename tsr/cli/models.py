"""The model registry: `tsr models list|show`, and `tsr evaluate` (a model on a data split)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import typer
from rich.text import Text

from tsr.cli import common
from tsr.cli.common import (
    TYPER_SETTINGS,
    JsonOption,
    QuietOption,
    cache_dir,
    cli_errors,
    err,
    fail,
    model_spec,
    out,
    progress,
)
from tsr.core.config import ConfigError
from tsr.core.registry import CHAMPION, DEFAULT_MODEL_NAME, Registry, RegistryError, materialize
from tsr.core.store import StoreError
from tsr.core.validation import InvalidParameter, check_data_source, check_model_ref, check_registry_name
from tsr.local import ui

models_app = typer.Typer(help="Browse the model registry.", **TYPER_SETTINGS)


@cli_errors()
def evaluate(
    model: Annotated[str, typer.Option(help="s3://models/<name>/<version> | champion | latest | model directory")],
    data: Annotated[str, typer.Option(help="directory in GTSRB (or ImageFolder) layout, or s3://bucket/prefix")],
    split: Literal["test", "train"] = "test",
    model_name: Annotated[str, typer.Option(help="registry name used with champion/latest")] = DEFAULT_MODEL_NAME,
    per_class: Annotated[bool, typer.Option(help="include per-class accuracy in the JSON")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON line on stdout (the default)")] = False,
    table: Annotated[bool, typer.Option("--table", help="a table for people instead of the JSON line")] = False,
    quiet: QuietOption = False,
    allow_unsigned: Annotated[
        bool, typer.Option(help="load a version without model.sig (as TSR_ALLOW_UNSIGNED=1; warned on every load)")
    ] = False,
) -> None:
    """Evaluate a model on a data split; prints one JSON line with accuracy, macro_f1, n and ece.

    ece is the expected calibration error of the probabilities the model serves (its temperature applied).

    The JSON line is the default (scripts rely on it); --table shows the same numbers as a table.
    """
    # Late: these import torch (seconds); every other command starts without it.
    from components.evaluate.evaluate import evaluate_model
    from tsr.core.dataset import DataError
    from tsr.core.models import load_model_dir
    from tsr.core.sources import read_source

    spec = model_spec("model", model, model_name)
    common.allow_unsigned(allow_unsigned)
    check_data_source("data", data, must_exist=True)
    if as_json and table:
        raise InvalidParameter("table", "--table and --json exclude each other")
    try:
        with progress(as_json, quiet) as activity:
            with contextlib.ExitStack() as stack:  # the store only while the model and data are fetched
                needs_store = spec.needs_store or data.startswith("s3://")
                store = stack.enter_context(common._store_session()) if needs_store else None
                with activity.step(f"model {model}"):
                    model_dir, uri = materialize(spec, store, cache_dir())
                    loaded, config = load_model_dir(model_dir)
                reading = activity.bar(f"reading {split} images")
                data_split, _ = read_source(data, split, config.preprocess.image_size, store, on_progress=reading)
            with activity.step(f"evaluating {len(data_split):,} images"):
                metrics = evaluate_model(loaded, config, data_split)
    except (DataError, RegistryError, StoreError, ConfigError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    result: dict[str, Any] = {**metrics.summary(), "model": uri, "data": data, "split": split}
    if per_class:
        result["per_class_accuracy"] = metrics.per_class_accuracy
    if not table:
        print(json.dumps(result), flush=True)
        return
    out.print(
        ui.key_value_table(
            [
                ("model", uri),
                ("data", f"{data} ({split} split)"),
                ("images", f"{metrics.n:,}"),
                ("accuracy", Text(ui.percent(metrics.accuracy), style="bold")),
                ("macro-F1", ui.percent(metrics.macro_f1)),
                ("ECE", f"{metrics.ece:.4f} (temperature {config.temperature:g})" if metrics.ece is not None else None),
            ],
            title="evaluate",
        )
    )
    if per_class:
        out.print(ui.per_class_table(config.class_names, metrics.per_class_accuracy))


def _champion_record(registry: Registry, model_name: str) -> dict[str, Any]:
    """The champion alias object (version, previous, updated; registry layout `<name>/champion`), or {}."""
    try:
        record: dict[str, Any] = json.loads(registry.store.get_bytes(f"{model_name}/{CHAMPION}"))
    except FileNotFoundError:
        return {}
    return record


def _version_row(card: Mapping[str, Any], version: str, champion: str | None) -> dict[str, Any]:
    metrics = card.get("metrics") or {}
    val, test = metrics.get("validation") or {}, metrics.get("test") or {}
    data = card.get("data") or {}
    parent = card.get("champion_before") or {}
    return {
        "version": version,
        "champion": version == champion,
        "accuracy": val.get("accuracy"),
        "arch": card.get("arch"),
        "uri": card.get("uri"),
        "aliases": [CHAMPION] if version == champion else [],
        "macro_f1": val.get("macro_f1"),
        "test_accuracy": test.get("accuracy"),
        "variant": card.get("variant"),
        "created": card.get("created"),
        "run_id": card.get("run_id"),
        "data_sha256": (data.get("fingerprint") or {}).get("value"),
        "champion_before": parent.get("uri"),
    }


@models_app.command("list")
@cli_errors()
def models_list(
    model_name: str = DEFAULT_MODEL_NAME,
    as_json: JsonOption = False,
) -> None:
    """List complete versions, oldest first: metrics, variant, creation time, run; the champion is starred.

    --json prints a list with one object per version: version, champion, accuracy, arch, uri,
    aliases, macro_f1, test_accuracy, variant, created, run_id, data_sha256, champion_before.
    """
    check_registry_name("model_name", model_name)
    with common._store_session() as store:
        registry = Registry.from_config(store)
        champion = _champion_record(registry, model_name).get("version")
        rows = [
            _version_row(registry.read_card(model_name, version), version, champion)
            for version in registry.versions(model_name)
        ]
    if as_json:
        print(json.dumps(rows))
        return
    title = f"{model_name} ({store.describe()}): {len(rows)} version{'s' if len(rows) != 1 else ''}"
    out.print(ui.models_table(rows, title))
    if not rows:
        err.print("no complete versions yet: `tsr demo` or `tsr pipeline run-local` registers one")


@models_app.command("show")
@cli_errors()
def models_show(
    ref: Annotated[str, typer.Argument(help="version id, champion or latest")] = "champion",
    model_name: str = DEFAULT_MODEL_NAME,
    as_json: Annotated[bool, typer.Option("--json", help="print the version's model card as stored (JSON)")] = False,
) -> None:
    """Show a version's model card: metrics, gate, alias, lineage (run, code, data, parent) and parameters."""
    check_model_ref("ref", ref)
    check_registry_name("model_name", model_name)
    with common._store_session() as store:
        registry = Registry.from_config(store)
        version = registry.resolve(model_name, ref)
        card = registry.read_card(model_name, version)
        alias = _champion_record(registry, model_name)
    if as_json:
        print(json.dumps(card, indent=2))
        return
    aliases = [CHAMPION] if alias.get("version") == version else []
    for view in ui.model_card_view(card, aliases, alias.get("updated") if aliases else None):
        out.print(view)
        out.print()
