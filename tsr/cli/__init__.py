"""`tsr`: the command line. Thin: parse arguments, call the functions the components call.

One module per group of commands (data, models, serve, deploy, pipeline, demo), the helpers they share
in `common`, the --help examples in `examples`; this module assembles them into `app`, the console entry.
The commands are registered in the order `tsr --help` lists them.
"""

from __future__ import annotations

import typer

from tsr.cli import data, demo, deploy, examples, models, pipeline, serve
from tsr.cli.common import EXIT_CODES_HELP, TYPER_SETTINGS

__all__ = ["app", "main"]

app = typer.Typer(
    help="Traffic-sign recognition platform: pipeline, registry, serving.", epilog=EXIT_CODES_HELP, **TYPER_SETTINGS
)
app.add_typer(data.store_app, name="store")
app.add_typer(pipeline.pipeline_app, name="pipeline")
app.add_typer(models.models_app, name="models")
app.add_typer(demo.prometheus_app, name="prometheus")

app.command()(data.ingest)
app.command()(models.evaluate)
app.command()(serve.serve)
app.command()(serve.backend)
app.command("deploy")(deploy.deploy_cmd)
app.command()(deploy.promote)
app.command()(deploy.rollback)
app.command()(serve.predict)
app.command()(demo.demo)
app.command("retrain-webhook")(pipeline.retrain_webhook)
app.command()(demo.loop)

examples.add_examples(app, "")
app.info.epilog = f"{examples.epilog('')}\n\n{EXIT_CODES_HELP}"


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="tsr")
