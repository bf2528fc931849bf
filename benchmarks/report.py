"""Rows of `make bench` and the three files they become: JSON (everything), Markdown (the table), PNG (the chart).

Pure functions over `Row`s, so the tests can check the writers on synthetic rows without timing anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Direction = Literal["le", "ge", "info"]


@dataclass
class Row:
    """One comparison: a measured ratio against its target. `status` is derived, never typed in."""

    key: str  # "1", "2a", ...: stable ids for the README and the chart
    title: str
    measured: str  # the raw numbers behind the ratio, for humans
    ratio: float | None  # None: could not be measured (see `unavailable`)
    target: float | None = None  # None: informational row, no target
    direction: Direction = "info"  # "le": ratio <= target is met; "ge": ratio >= target is met
    unit: str = "x"  # how the ratio is printed: "x", "pt", "%"
    note: str = ""
    unavailable: str = ""  # why there is no number ("not available: ...")
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.unavailable or self.ratio is None or math.isnan(self.ratio):
            return self.unavailable or "not available"
        if self.target is None or self.direction == "info":
            return "info"
        ok = self.ratio <= self.target if self.direction == "le" else self.ratio >= self.target
        return "met" if ok else "missed"

    def fmt(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return "–"
        if self.unit == "%":
            return f"{value * 100:.1f} %"
        if self.unit == "pt":
            return f"{value:+.2f} pt"
        return f"{value:.2f}×"

    def target_text(self) -> str:
        if self.target is None or self.direction == "info":
            return "– (info)"
        return f"{'≤' if self.direction == 'le' else '≥'} {self.fmt(self.target)}".replace("+", "")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data


def write_json(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps({**meta, "rows": [r.to_dict() for r in rows]}, indent=2, default=str) + "\n")


def read_json(path: Path) -> tuple[list[Row], dict[str, Any]]:
    """Rows and meta back from a results file (to re-render the table or the chart without re-measuring)."""
    data = json.loads(path.read_text())
    rows = [Row(**{k: v for k, v in r.items() if k != "status"}) for r in data.pop("rows")]
    return rows, data


def markdown_table(rows: list[Row]) -> str:
    lines = ["| # | comparison | measured | ratio | target | status |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        cell = r.measured + (f" — {r.note}" if r.note else "")
        lines.append(
            f"| {r.key} | {r.title} | {cell.replace('|', '/')} | {r.fmt(r.ratio)} | {r.target_text()} | {r.status} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    m = meta.get("machine", {})
    head = [
        f"# make bench — {meta.get('date', '')} ({m.get('arch', '?')})",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('arch', '?')}, {m.get('cores', '?')} cores, "
        f"torch {m.get('torch', '?')}; backend: `{m.get('backend', '?')}`.",
        f"Mode: {meta.get('mode', '?')}; suite wall time {meta.get('wall_seconds', '?')} s.",
        "",
        "",
    ]
    path.write_text("\n".join(head) + markdown_table(rows))


def plot_value(row: Row) -> tuple[float, float] | None:
    """(measured, target) on one scale where higher is better, or None for rows without both."""
    if row.status not in ("met", "missed") or row.ratio is None or row.target is None:
        return None
    if row.unit != "pt" and row.ratio > 0:  # ratios, fractions: invert "lower is better" ones (taller is better)
        return (row.ratio, row.target) if row.direction == "ge" else (1 / row.ratio, 1 / row.target)
    # differences (may be <= 0): headroom below the limit as a share of the limit, + 1
    return (1.0 + (row.target - row.ratio) / max(abs(row.target), 1e-9), 1.0)


def write_plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r, v) for r in rows if (v := plot_value(r)) is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(points) + 2), 4.5))
    if points:
        xs = range(len(points))
        scores = [max(v[0] / v[1], 0.02) for _, v in points]  # log scale: clamp far misses
        colors = ["tab:green" if r.status == "met" else "tab:red" for r, _ in points]
        ax.bar(xs, scores, color=colors)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="target")
        ax.set_xticks(list(xs), [f"{r.key}\n{r.target_text()}" for r, _ in points], fontsize=8)
        for x, (r, _), s in zip(xs, points, scores, strict=True):
            ax.annotate(r.fmt(r.ratio), (x, s), ha="center", va="bottom", fontsize=8)
        ax.set_yscale("log")
    ax.set_ylabel("measured / target (higher is better; ≥ 1 = met)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
