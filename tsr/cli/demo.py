"""The local end-to-end runs: `tsr demo`, `tsr loop --once`, and `tsr prometheus stop` (the Prometheus
the demo leaves running)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from components.evaluate.config import GateConfig
from components.train.config import TrainConfig
from tsr.cli import common
from tsr.cli.common import TYPER_SETTINGS, QuietOption, cli_errors, err, out, pipeline_output, progress
from tsr.core.config import state_dir
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.core.validation import InvalidParameter, check_data_source, check_existing_dir
from tsr.local import ui

# The tsr.local imports below are late: the demo pulls in torch (seconds), the loop numpy, PIL and httpx,
# and the Prometheus helper httpx, which every other command would pay at its start.

prometheus_app = typer.Typer(help="The local Prometheus the demo leaves running.", **TYPER_SETTINGS)


@prometheus_app.command("stop")
@cli_errors()
def prometheus_stop() -> None:
    """Stop the Prometheus that `tsr demo` left running (state in <state>/prometheus)."""
    from tsr.local.prometheus_server import stop_recorded

    stopped = stop_recorded(state_dir() / "prometheus")
    err.print("local Prometheus stopped" if stopped else "no local Prometheus was running")


@cli_errors()
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="GTSRB root (else cached, $TSR_GTSRB_ARCHIVE or the shared archive, or download)"),
    ] = None,
    epochs: Annotated[
        int, typer.Option(min=1, help=f"training epochs (the default config uses {TrainConfig.epochs})")
    ] = TrainConfig.epochs,
    max_groups_per_class: Annotated[
        int, typer.Option(min=0, help="tracks per class, 0 = all (quick runs use a few)")
    ] = 0,
    min_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="gate floor; quick runs need a lower one")
    ] = GateConfig.min_accuracy,
    min_class_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="gate floor for the worst class; quick runs need a lower one")
    ] = GateConfig.min_class_accuracy,
    batch_size: Annotated[
        int, typer.Option(min=2, help="training batch size (smaller helps tiny quick runs)")
    ] = TrainConfig.batch_size,
    requests: Annotated[int, typer.Option(min=1, help="images sent to the endpoint")] = 8,
    as_json: Annotated[
        bool, typer.Option("--json", help="print only the summary JSON on stdout (no table, no progress bars)")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """The main job end to end: MinIO, pipeline, registry, predictor, real HTTP requests, summary.

    Prints a summary table and, as its last line, the summary as one JSON object (what `make demo`
    and scripts read); --json prints that JSON line alone. The pipeline steps' output goes to a log
    file in the state dir (when no progress is drawn, stderr gets one line per step). Exits 3 (not 0) when the run
    completes but the gate refuses the model.
    """
    from tsr.local.demo import DemoConfig, print_summary, run_demo

    if data_dir is not None:
        check_existing_dir("data_dir", data_dir)
    cfg = DemoConfig(
        data_dir=data_dir,
        epochs=epochs,
        max_groups_per_class=max_groups_per_class,
        min_accuracy=min_accuracy,
        min_class_accuracy=min_class_accuracy,
        batch_size=batch_size,
        requests=requests,
    )
    with (
        progress(as_json, quiet) as activity,
        pipeline_output(activity, rows=not activity.enabled and not quiet),
    ):
        # The summary is printed below, once the progress display is gone.
        summary = run_demo(
            cfg,
            Console(quiet=True),
            err,
            on_extract=activity.bar("extracting GTSRB", "bytes"),
            on_download=activity.bar("downloading GTSRB", "bytes"),
        )
    if not as_json:
        print_summary(summary, cfg.model_name, out)
    print(json.dumps(summary), flush=True)
    if summary.get("gate") != "pass":
        raise typer.Exit(3)


@cli_errors()
def loop(
    data: Annotated[str, typer.Option(help="GTSRB/ImageFolder directory the runs train on")],
    once: Annotated[bool, typer.Option("--once", help="one cycle (the only mode: a loop runs on a cluster)")] = False,
    model_name: Annotated[str, typer.Option(help="registry model name")] = DEFAULT_MODEL_NAME,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="retrain --epochs on --max-groups-per-class tracks instead of the champion's own recipe "
            "(a wiring demonstration: the gate refuses it against a fully trained champion)",
        ),
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, help="epochs of a --quick retraining run")] = 3,
    max_groups_per_class: Annotated[
        int, typer.Option(min=0, help="tracks per class of the bootstrap and --quick runs (0: all)")
    ] = 5,
    shift: Annotated[float, typer.Option(min=0.01, max=0.99, help="brightness factor of the simulated drift")] = 0.3,
    as_json: Annotated[bool, typer.Option("--json", help="the summary as one JSON document")] = False,
) -> None:
    """Demonstrate the continuous-training cycle locally: serve -> drift -> alert -> retrain -> gate -> promote.

    Serves the champion (training a first one if there is none), sends normal then darkened images,
    evaluates the TSRInputDrift rule's PromQL with a real Prometheus (when installed), posts the alert to
    the retrain webhook receiver, which runs the pipeline with the champion's own recipe (from its model
    card: as long as the champion's training) or, with --quick, a few epochs on a few tracks; a model that
    passes the gate becomes champion and the running predictor reloads it. The runs' step output goes to a
    log file in the state dir. Exits 3 when the cycle completes without a promotion.
    """
    from tsr.local.loop import LoopConfig, run_loop

    if not once:
        raise InvalidParameter("once", "only --once is supported locally; on a cluster Alertmanager drives the loop")
    check_data_source("data", data, must_exist=True)
    cfg = LoopConfig(
        data=data,
        model_name=model_name,
        recipe="quick" if quick else "champion",
        epochs=epochs,
        max_groups_per_class=max_groups_per_class,
        shift=shift,
    )
    # The pipeline runs' output (the bootstrap's and the retrain's) goes to a log file, one line per step here.
    with (
        progress(as_json) as activity,
        pipeline_output(activity, rows=not activity.enabled),
        common._store_session() as store,
    ):
        summary = run_loop(cfg, store, state_dir() / "loop", say=lambda line: err.print(line, markup=False))
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(ui.key_value_table([(k, v) for k, v in summary.items()], title="tsr loop --once"))
    if summary.get("champion_after") in (None, summary.get("champion_before")):
        raise typer.Exit(3)
