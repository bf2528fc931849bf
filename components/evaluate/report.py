"""A self-contained HTML report of an evaluation, shown by the Kubeflow dashboard and `make demo`."""

from __future__ import annotations

import html
from typing import Any


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def render_report(evaluation: dict[str, Any]) -> str:
    val = evaluation["validation"]
    names: list[str] = evaluation["class_names"]
    gate = evaluation["gate"]
    colour = "#1a7f37" if gate["result"] == "pass" else "#cf222e"
    rows = "".join(
        f"<tr><td>{i}</td><td>{html.escape(n)}</td><td>{_pct(a)}</td></tr>"
        for i, (n, a) in enumerate(zip(names, val["per_class_accuracy"], strict=True))
    )
    test = evaluation.get("test")
    test_line = (
        f"<li>test: accuracy {_pct(test['accuracy'])}, macro-F1 {test['macro_f1']:.4f}, n={test['n']}</li>"
        if test
        else ""
    )
    champ = evaluation.get("champion") or {}
    champ_line = (
        f"<li>champion {html.escape(str(champ.get('uri')))}: "
        f"{_pct(champ.get('accuracy'))} on this validation split</li>"
        if champ.get("uri")
        else "<li>no champion yet</li>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tsr evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>Evaluation</h1>
<p style="font-size:1.3em;color:{colour}"><b>gate: {gate["result"]}</b> – {html.escape(gate["reason"])}</p>
<ul><li>validation: accuracy {_pct(val["accuracy"])}, macro-F1 {val["macro_f1"]:.4f}, n={val["n"]}</li>
{test_line}{champ_line}</ul>
<h2>Per-class validation accuracy</h2><table><tr><th>id</th><th>class</th><th>accuracy</th></tr>{rows}</table>
</body></html>
"""
