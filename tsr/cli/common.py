"""What every `tsr` command shares: the exit-code convention, the consoles, argument checks, the store
session, the progress display and the common options."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape

from tsr.core.config import state_dir
from tsr.core.registry import ModelSpec, RegistryError, parse_model_spec
from tsr.core.signing import ENV_ALLOW_UNSIGNED
from tsr.core.validation import InvalidParameter, check_model_ref, check_registry_name, check_s3_uri
from tsr.local import ui
from tsr.local.minio_server import store_session

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the command ran and failed: unreadable or damaged data, no such model version,
     store or cluster unreachable, a pipeline step failed (one line on stderr: error: ...)
  2  usage error: a bad option or argument value (path, URI, range, name), refused
     before any work starts, so nothing is written (stderr: Error: Invalid value for ...)
  3  tsr demo ran to the end but the evaluation gate refused the model
Set TSR_DEBUG=1 to get the Python traceback of a failure instead of the one line."""

# Plain (not rich) rendering keeps every usage error on one line that names the option,
# whatever the terminal width; rich panels wrap long messages across lines.
TYPER_SETTINGS: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}

err = Console(stderr=True)
# Wide enough for the demo tables when stdout is a pipe or a log file (rich assumes 80 columns).
out = Console(width=None if sys.stdout.isatty() else 140)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (never wrapped, never read as rich markup), then exit with `code`."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


class _ParameterError(typer.BadParameter):
    """An `InvalidParameter` shown against the option or argument it came from (exit code 2).

    The option is looked up when click prints the error, once it has attached the context.
    """

    def __init__(self, exc: InvalidParameter, name: str) -> None:
        super().__init__(exc.reason)
        self.name = name

    def format_message(self) -> str:
        if self.param_hint is None:
            found = [p for p in self.ctx.command.params if p.name == self.name] if self.ctx is not None else []
            hint = getattr(found[0], "get_error_hint", None) if found else None  # typer's options and arguments
            self.param_hint = hint() if callable(hint) else f"'{self.name}'"
        return super().format_message()


_F = TypeVar("_F", bound=Callable[..., Any])


def cli_errors(renames: Mapping[str, str] | None = None) -> Callable[[_F], _F]:
    """Turn what a command raises into the exit-code convention (EXIT_CODES_HELP), never a traceback.

    `InvalidParameter` becomes a usage error (2) naming the option; `renames` maps a config's
    field name to the command's parameter (data_source -> data). Any other ValueError,
    RuntimeError or OSError (DataError, RegistryError, StoreError, ConfigError, a failed step,
    a full disk) is a runtime failure (1) printed as one line.
    """

    def decorate(func: _F) -> _F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except (typer.Exit, typer.Abort):
                raise
            except InvalidParameter as exc:
                raise _ParameterError(exc, (renames or {}).get(exc.param, exc.param)) from exc
            except (ValueError, RuntimeError, OSError) as exc:
                if os.environ.get("TSR_DEBUG"):
                    raise
                fail(str(exc) or type(exc).__name__)

        return cast(_F, wrapper)

    return decorate


@contextlib.contextmanager
def as_parameter(param: str) -> Iterator[None]:
    """A ValueError or RegistryError from parsing an argument is a usage error naming `param`."""
    try:
        yield
    except InvalidParameter:
        raise
    except (ValueError, RegistryError) as exc:
        raise InvalidParameter(param, str(exc)) from exc


def model_spec(param: str, model: str, model_name: str, name_param: str = "model_name") -> ModelSpec:
    """Parse a --model argument without touching the store: a directory, champion/latest or an s3:// URI."""
    check_registry_name(name_param, model_name)
    if "://" not in model and model not in {"champion", "latest"} and Path(model).is_file():
        raise InvalidParameter(param, f"{model} is a file; expected a model directory, champion, latest or s3://")
    if model.startswith("s3://"):
        check_s3_uri(param, model)
    with as_parameter(param):
        spec = parse_model_spec(model, model_name)
    if spec.directory is None:
        check_model_ref(param, spec.ref)
    elif not (spec.directory / "config.json").is_file():
        raise InvalidParameter(param, f"{model} is not a model directory (no config.json)")
    return spec


def registry_ref(param: str, ref: str) -> None:
    """A deploy/rollback target: an s3:// version URI, champion, latest or a version id."""
    if ref.startswith("s3://"):
        check_s3_uri(param, ref)
    elif "://" in ref:
        raise InvalidParameter(param, f"{ref!r}: unknown URI scheme (use s3://, a version id, champion or latest)")
    else:
        check_model_ref(param, ref)


def _store_session() -> Any:
    """The configured store, else the embedded MinIO. The commands call it as `common._store_session()`,
    so that a test replaces it here, once, for all of them."""
    return store_session()


def cache_dir() -> Path:
    return state_dir() / "cache" / "models"


def allow_unsigned(allowed: bool) -> None:
    """`--allow-unsigned`: the operator's opt-in to load versions without model.sig (warned on every load).

    Set in the environment, where every load (also a predictor's reloads, in this or a child process)
    reads it through `tsr.core.signing.Trust.from_env`."""
    if allowed:
        os.environ[ENV_ALLOW_UNSIGNED] = "1"


JsonOption = Annotated[
    bool, typer.Option("--json", help="print exactly one JSON document on stdout (no table, no progress bars)")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or spinners on stderr")]


def progress(as_json: bool = False, quiet: bool = False) -> ui.Activity:
    """Progress on stderr for a person at a terminal; none in a pipe or with --json/--quiet (tsr.local.ui)."""
    return ui.Activity(err, ui.progress_enabled(err, quiet=quiet, as_json=as_json))


@contextlib.contextmanager
def pipeline_output(activity: ui.Activity, rows: bool) -> Iterator[tuple[ui.PipelineWatcher, Path]]:
    """kfp.local prints every step's output, its executor's JSON and every artifact's metadata on
    stdout (and logs through a handler on stdout): send all of it to a log file in the state dir, and
    the steps to the progress display, or as one line per finished step to stderr when `rows` (no
    progress is drawn), so that stdout holds the result alone and the terminal a line per step."""
    path = state_dir() / "kfp-local" / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    err.print(f"step logs: {path}", style="dim", markup=False, highlight=False, soft_wrap=True)
    with path.open("w", encoding="utf-8") as log:
        watcher = ui.PipelineWatcher(activity, log, sys.stderr if rows else None)
        with contextlib.redirect_stdout(watcher):
            yield watcher, path
