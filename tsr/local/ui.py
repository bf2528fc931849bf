"""How the `tsr` command looks: progress on stderr, coloured and aligned tables on stdout.

The library functions (ingest, evaluate, the predict client) report through plain `(done, total)`
callbacks and know nothing of terminals; this module turns those into rich progress bars and the
commands' results into tables. Progress is drawn only for a person watching (an interactive
stderr, no --json or --quiet, TSR_NO_PROGRESS unset), so a script's stdout holds the result alone.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from rich.console import Console, Group, RenderableType
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.spinner import Spinner
from rich.table import Column, Table
from rich.text import Text

ProgressCallback = Callable[[int, int], None]
Unit = Literal["items", "bytes", ""]
State = Literal["running", "done", "failed", "skipped", "cached"]
_STATE_MARKS: dict[str, tuple[str, str]] = {
    "done": ("✔", "green"),
    "failed": ("✘", "bold red"),
    "skipped": ("–", "dim"),
    "cached": ("✔", "cyan"),
}


def progress_enabled(console: Console, *, quiet: bool = False, as_json: bool = False) -> bool:
    """Bars only for a person at a terminal: never in a pipe, a log file, or with --json/--quiet."""
    return console.is_terminal and not quiet and not as_json and not os.environ.get("TSR_NO_PROGRESS")


class _StateColumn(ProgressColumn):
    """A spinner while a task runs, then ✔ / ✘ / – (a failed step must not look finished)."""

    def __init__(self, table_column: Column | None = None) -> None:
        super().__init__(table_column)
        self.spinner = Spinner("dots", style="cyan")

    def render(self, task: Task) -> RenderableType:
        state = task.fields.get("state", "running")
        if state == "running":
            return self.spinner.render(task.get_time())
        mark, style = _STATE_MARKS[state]
        return Text(mark, style=style)


class _CountColumn(ProgressColumn):
    """`1,024/39,209` images or `1.2/15.0 MB`; nothing for a step without a count."""

    def render(self, task: Task) -> RenderableType:
        unit = task.fields.get("unit", "")
        if task.total is None or not unit:
            return Text("")
        if unit == "bytes":
            return Text(f"{decimal(int(task.completed))}/{decimal(int(task.total))}", style="green")
        return Text(f"{int(task.completed):,}/{int(task.total):,}", style="green")


class Activity:
    """The progress display of one command: bars fed by callbacks, spinners around uncounted steps.

    Disabled, nothing is drawn: `bar()` returns None (the library then skips reporting) and
    `step()` only runs its block. Drawn on `console` (stderr); stray writes to sys.stderr are
    printed above the bars, stdout is never touched.
    """

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self._progress: Progress | None = None

    def __enter__(self) -> Activity:
        if self.enabled:
            # Every column keeps its width on a narrow terminal; only the info text is cut (…).
            self._progress = Progress(
                _StateColumn(table_column=Column(no_wrap=True, width=1)),
                TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=20, table_column=Column(no_wrap=True)),
                _CountColumn(table_column=Column(no_wrap=True)),
                TimeElapsedColumn(table_column=Column(no_wrap=True)),
                TextColumn(
                    "[dim]{task.fields[info]}",
                    table_column=Column(no_wrap=True, overflow="ellipsis", max_width=self._info_width()),
                ),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=True,
            )
            self._progress.start()
        return self

    def _info_width(self) -> int:
        """What is left for the info text once the bar columns (about 75 characters) have their room."""
        return max(1, min(STEP_INFO_WIDTH, self.console.width - 75))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def add(self, description: str, total: float | None = None, unit: Unit = "") -> TaskID | None:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, unit=unit, state="running", info="")

    def update(self, task: TaskID | None, **fields: Any) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, **fields)

    def finish(self, task: TaskID | None, state: State = "done", info: str | None = None) -> None:
        """Freeze a task's clock and mark it; a finished bar is shown full."""
        if self._progress is None or task is None:
            return
        extra: dict[str, Any] = {} if info is None else {"info": info}
        current = next(t for t in self._progress.tasks if t.id == task)
        if state == "done" and current.total is None:
            extra |= {"total": 1, "completed": 1}
        elif state == "done" and current.total is not None:
            extra["completed"] = current.total
        self._progress.update(task, state=state, **extra)
        self._progress.stop_task(task)

    def bar(self, description: str, unit: Unit = "items") -> ProgressCallback | None:
        """A `(done, total)` callback drawing a bar that appears with the first report."""
        if self._progress is None:
            return None
        task: TaskID | None = None

        def report(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = self.add(description, total, unit)
            self.update(task, completed=done, total=total)
            if total and done >= total:
                self.finish(task)

        return report

    @contextmanager
    def step(self, description: str) -> Iterator[Callable[[str], None]]:
        """A spinner while the block runs, ✔ after it, ✘ if it raised; yields a setter for the info text."""
        task = self.add(description)
        try:
            yield lambda info: self.update(task, info=info)
        except BaseException:
            self.finish(task, "failed")
            raise
        self.finish(task)


# ---- kfp.local output -------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_CACHED = re.compile(r"Task '?([\w.-]+)'? cache hit")
_SKIPPED = re.compile(r"Skipping (?:conditional )?task '?([\w.-]+)'?")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+):.*?val_acc (\S+)")
_UPLOAD = re.compile(r"^upload (\d+)/(\d+) bytes")  # the register step's on_progress lines
# kfp.local indents a step's output by 4 spaces; deeper lines are the executor's JSON or continuations.
_STEP_LINE = re.compile(r"^    [A-Za-z]")
_NOISE = re.compile(r"^\[KFP Executor|^[\w.]+Warning:|Warning: ")
STEP_INFO_WIDTH = 70


def step_label(task_name: str) -> str:
    """kfp.local's task name -> the step's: `train-component` -> `train`, `evaluate-component-2` -> `evaluate 2`."""
    match = re.fullmatch(r"(.+?)-component(?:-(\d+))?", task_name)
    if match is None:
        return task_name
    return match.group(1) + (f" {match.group(2)}" if match.group(2) else "")


@dataclass
class StepRecord:
    name: str
    state: State = "running"
    task: TaskID | None = None
    info: str = ""
    started: float | None = None
    seconds: float | None = None


class PipelineWatcher(io.TextIOBase):
    """Where `kfp.local` writes (see `pipelines.local_run`): every line goes to `log` and nowhere else
    (its executor inputs and outputs, every artifact's metadata: tens of kilobytes a run); each step
    becomes one row of the Activity: a spinner and its latest output line while it runs, the train
    step's epochs and the register step's upload as bars, then ✔ or ✘. Without a drawn Activity,
    `rows` (stderr) gets the same as plain text: one line per step when it ends, with its time and
    last output line (a failed step's error).
    """

    def __init__(self, activity: Activity, log: TextIO, rows: TextIO | None = None) -> None:
        super().__init__()
        self.activity = activity
        self.log = log
        self.rows = rows
        self.steps: dict[str, StepRecord] = {}
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.rows is not None:
            self.rows.flush()

    def _step(self, task_name: str) -> StepRecord:
        step = self.steps.get(task_name)
        if step is None:
            step = self.steps[task_name] = StepRecord(step_label(task_name))
        return step

    def _current(self) -> StepRecord | None:
        running = [s for s in self.steps.values() if s.state == "running"]
        return running[-1] if running else None

    def _line(self, raw: str) -> None:
        text = raw.strip()
        if not text:
            return
        if match := _EXECUTING.search(text):
            step = self._step(match.group(1))
            step.state, step.task, step.started = "running", self.activity.add(step.name), time.monotonic()
        elif match := _FINISHED.search(text):
            step = self._step(match.group(1))
            step.state = "done" if match.group(2) == "SUCCESS" else "failed"
            self._finish(step)
        elif match := _CACHED.search(text):
            step = self._step(match.group(1))
            step.state, step.info = "cached", "cached result reused"
            if step.task is None:
                step.task = self.activity.add(step.name)
            self._finish(step)
        elif match := _SKIPPED.search(text):
            step = self._step(match.group(1))
            step.state, step.info = "skipped", "skipped (condition false)"
            step.task = self.activity.add(step.name)
            self._finish(step)
        elif _STEP_LINE.match(raw):
            self._output(text)

    def _output(self, text: str) -> None:
        """A line the running step printed itself: an epoch moves the train bar, others become its info."""
        step = self._current()
        if step is None or _NOISE.search(text):
            return
        if match := _EPOCH.match(text):
            done, total = int(match.group(1)), int(match.group(2))
            step.info = f"epoch {done}/{total}  val_acc {match.group(3)}"
            self.activity.update(step.task, completed=done, total=total, unit="items", info=step.info)
        elif match := _UPLOAD.match(text):
            done, total = int(match.group(1)), int(match.group(2))
            step.info = f"uploading to the registry {done / 1e6:.1f}/{total / 1e6:.1f} MB"
            self.activity.update(step.task, completed=done, total=total, unit="bytes", info=step.info)
        else:
            step.info = text if len(text) <= STEP_INFO_WIDTH else text[: STEP_INFO_WIDTH - 1] + "…"
            self.activity.update(step.task, info=step.info)

    def _finish(self, step: StepRecord) -> None:
        self.activity.finish(step.task, step.state, step.info)
        if step.started is not None:
            step.seconds = time.monotonic() - step.started
        if self.rows is not None:
            mark = _STATE_MARKS.get(step.state, ("?", ""))[0]
            took = f"{step.seconds:6.1f} s" if step.seconds is not None else " " * 8
            self.rows.write(f"{mark} {step.name:<12} {took}  {step.info}".rstrip() + "\n")
            self.rows.flush()


# ---- tables -----------------------------------------------------------------------------------------
def percent(value: Any, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}%" if isinstance(value, int | float) else "–"


def key_value_table(rows: Sequence[tuple[str, Any]], title: str | None = None) -> RenderableType:
    """Two aligned columns: a label and its value (a renderable, or anything str() shows), under a title."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        shown = value if isinstance(value, Text | Table) else Text("–" if value is None else str(value))
        table.add_row(label, shown)
    return Group(Text(title, style="bold underline"), table) if title else table


def short_time(iso: Any) -> str:
    """`2026-11-23T12:00:05+00:00` -> `2026-11-23 12:00` (UTC, as the registry records it)."""
    if not isinstance(iso, str) or len(iso) < 16:
        return "–" if iso is None else str(iso)
    return iso[:10] + " " + iso[11:16]


def gate_text(gate: Any) -> Text:
    label = gate.get("result") if isinstance(gate, Mapping) else gate
    if not label:
        return Text("–")
    style = "bold green" if label == "pass" else "bold red"
    text = Text(str(label), style=style)
    reason = gate.get("reason") if isinstance(gate, Mapping) else None
    if reason:
        text.append(f"  {reason}", style="dim")
    return text


def worst_class_text(worst: Any) -> str | None:
    """The gate's worst class as `id name: accuracy` (None for cards from before the per-class gate)."""
    if not isinstance(worst, Mapping) or worst.get("class_id") is None:
        return None
    return f"{worst['class_id']} {worst.get('class_name', '')}: {percent(worst.get('accuracy'))}"


def calibration_text(card: Mapping[str, Any]) -> str | None:
    """Temperature and validation ECE of a model card (None for cards from before calibration)."""
    temperature = card.get("temperature")
    ece = ((card.get("metrics") or {}).get("validation") or {}).get("ece")
    if temperature is None and ece is None:
        return None
    parts = [f"temperature {temperature:g}" if temperature is not None else "temperature –"]
    if ece is not None:
        parts.append(f"validation ECE {ece:.4f}")
    return ", ".join(parts)


def confidence_text(probability: float) -> Text:
    style = "green" if probability >= 0.9 else "yellow" if probability >= 0.5 else "red"
    return Text(f"{100 * probability:5.1f}%", style=style)


def models_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """`tsr models list`: one row per complete version, oldest first; the champion starred."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("version", style="cyan", no_wrap=True)
    table.add_column("alias", style="bold yellow")
    table.add_column("variant")
    table.add_column("val acc", justify="right")
    table.add_column("macro-F1", justify="right")
    table.add_column("test acc", justify="right")
    table.add_column("arch")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("run", style="dim", overflow="fold")
    for r in rows:
        aliases = ", ".join(f"★ {a}" if a == "champion" else a for a in r.get("aliases") or [])
        table.add_row(
            r["version"],
            aliases,
            str(r.get("variant") or "–"),
            percent(r.get("accuracy")),
            percent(r.get("macro_f1")),
            percent(r.get("test_accuracy")),
            str(r.get("arch") or "–"),
            short_time(r.get("created")),
            str(r.get("run_id") or "–"),
        )
    return table


def metrics_table(metrics: Mapping[str, Any], title: str | None = "metrics") -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("split")
    table.add_column("accuracy", justify="right")
    table.add_column("macro-F1", justify="right")
    table.add_column("images", justify="right")
    order = {"validation": 0, "test": 1}
    for split, values in sorted(metrics.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])):
        if isinstance(values, Mapping):
            n = values.get("n")
            table.add_row(
                split, percent(values.get("accuracy")), percent(values.get("macro_f1")), f"{n:,}" if n else "–"
            )
    return table


def per_class_table(class_names: Sequence[str], accuracy: Sequence[float | None]) -> Table:
    """Per-class accuracy, worst first (classes absent from the split last)."""
    table = Table(title="per-class accuracy (worst first)", title_justify="left", header_style="bold")
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("accuracy", justify="right")
    order = sorted(range(len(accuracy)), key=lambda c: (accuracy[c] is None, accuracy[c] or 0.0))
    for c in order:
        value = accuracy[c]
        shown = Text("–", style="dim") if value is None else confidence_text(value)
        table.add_row(str(c), class_names[c] if c < len(class_names) else "", shown)
    return table


def model_card_view(card: Mapping[str, Any], aliases: Sequence[str], alias_updated: str | None) -> list[RenderableType]:
    """`tsr models show`: identity, metrics, gate, lineage (run, code, data, parent) and training params."""
    alias_text = Text(", ".join(aliases) or "–", style="bold yellow" if aliases else "dim")
    if aliases and alias_updated:
        alias_text.append(f"  (since {alias_updated})", style="dim")
    identity = key_value_table(
        [
            ("version", Text(str(card.get("version")), style="bold cyan")),
            ("uri", card.get("uri")),
            ("alias", alias_text),
            ("variant", card.get("variant", "fp32")),
            ("arch", card.get("arch")),
            ("classes", len(card.get("class_names") or []) or None),
            ("created", card.get("created")),
            ("gate", gate_text(card.get("gate"))),
            ("worst class", worst_class_text((card.get("gate") or {}).get("worst_class"))),
            ("calibration", calibration_text(card)),
        ],
        title=f"{card.get('name')} {card.get('version')}",
    )
    data = card.get("data") or {}
    fingerprint = data.get("fingerprint") or {}
    totals = data.get("totals") or {}
    parent = card.get("champion_before") or {}
    parent_text = (
        f"{parent.get('uri')} (val acc {percent(parent.get('accuracy'))} on this run's split)"
        if parent.get("uri")
        else "none (first champion)"
    )
    lineage = key_value_table(
        [
            ("run id", card.get("run_id") or None),
            ("git commit", card.get("git_commit")),
            ("champion before", parent_text),
            ("data source", data.get("source")),
            (
                f"data {fingerprint.get('algorithm', 'sha256')}",
                f"{fingerprint.get('value')} ({fingerprint.get('files')} files)" if fingerprint else None,
            ),
            (
                "data split",
                f"{totals.get('train')} train / {totals.get('val')} val images, {data.get('split_strategy')}"
                if totals
                else None,
            ),
            (
                "runtime",
                f"torch {card.get('torch')}, python {card.get('python')}, {card.get('cpu_arch')}"
                if card.get("torch")
                else None,
            ),
        ],
        title="lineage",
    )
    params = card.get("params") or {}
    shown = ("arch", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed", "width", "augment")
    params_table = key_value_table([(k, params[k]) for k in shown if k in params], title="training parameters")
    views: list[RenderableType] = [identity, metrics_table(card.get("metrics") or {}), lineage, params_table]
    if card.get("optimization"):
        opt = card["optimization"]
        views.append(
            key_value_table([(k, v) for k, v in opt.items() if not isinstance(v, dict | list)], "optimization")
        )
    return views


def steps_table(steps: Sequence[StepRecord]) -> Table:
    table = Table(title="steps", title_justify="left", header_style="bold")
    table.add_column("step", style="cyan")
    table.add_column("")
    table.add_column("time", justify="right")
    table.add_column("last output", style="dim", overflow="fold")
    for step in steps:
        mark, style = _STATE_MARKS.get(step.state, ("…", "yellow"))
        seconds = f"{step.seconds:.1f}s" if step.seconds is not None else "–"
        table.add_row(step.name, Text(mark, style=style), seconds, step.info)
    return table


def predictions_table(predictions: Sequence[Mapping[str, Any]], title: str) -> Table:
    """`tsr predict`: each file's top-k, most probable first, confidence coloured."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("file", style="cyan", overflow="fold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("confidence", justify="right")
    for i, pred in enumerate(predictions):
        for rank, entry in enumerate(pred["top_k"], 1):
            name = entry.get("class_name") or f"class {entry['class_id']}"
            table.add_row(
                pred["file"] if rank == 1 else "",
                str(rank),
                str(entry["class_id"]),
                Text(name, style="bold" if rank == 1 else ""),
                confidence_text(entry["probability"]),
                end_section=rank == len(pred["top_k"]) and i < len(predictions) - 1,
            )
    return table
