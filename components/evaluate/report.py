"""The run report: one self-contained HTML page and a Markdown summary, from an evaluation dict.

The HTML is what the Kubeflow dashboard shows for the evaluate step's `HTML` artifact and what
`make demo` copies to `.state/demo/report.html`. It must open anywhere, offline and sandboxed (the
dashboard renders it in an iframe), so figures are PNGs embedded as `data:` URIs and there is no
script, stylesheet link or external URL. Every section copes with what older evaluations or other
models lack (no history, no champion, no latency samples) by saying so instead of failing: the
report explains a gate decision, it must never be the reason a run fails.
"""

from __future__ import annotations

import base64
import html
import sys
from collections.abc import Callable
from typing import Any

SECTIONS = (
    ("summary", "Summary"),
    ("training", "Training curves"),
    ("confusion", "Confusion matrix"),
    ("per-class", "Per-class accuracy and misclassified samples"),
    ("calibration", "Calibration (reliability diagram)"),
    ("data", "Data card"),
    ("champion", "Champion vs this model"),
    ("latency", "Inference latency"),
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#1f2328}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:3px 10px;border-bottom:1px solid #d8dee4;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} img.fig{max-width:100%;height:auto}
.gate{font-size:1.3em;font-weight:bold} .muted{color:#656d76}
.samples{display:flex;flex-wrap:wrap;gap:12px;margin:.3em 0 1em}
.sample{text-align:center;font-size:.75em;width:96px}
.sample img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #d0d7de}
nav a{margin-right:1em}
"""


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _points(delta: float | None) -> str:
    return "–" if delta is None else f"{100 * delta:+.2f} pt"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="fig" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _figure(alt: str, draw: Callable[[], bytes]) -> str:
    """A figure as an embedded PNG, or a one-line note when drawing it failed (the run goes on)."""
    try:
        return _img(draw(), alt)
    except Exception as exc:  # a broken figure must not fail the evaluate step and hide the gate
        print(f"report: figure {alt!r} failed: {exc!r}", file=sys.stderr, flush=True)
        return f'<p class="muted">figure “{_esc(alt)}” could not be drawn: {_esc(repr(exc))}</p>'


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def champion_delta(evaluation: dict[str, Any]) -> float | None:
    """This model's validation accuracy minus the champion's on the same split (None without a champion)."""
    champion = evaluation.get("champion") or {}
    if champion.get("accuracy") is None:
        return None
    return float(evaluation["validation"]["accuracy"]) - float(champion["accuracy"])


def top_confusions(confusion: list[list[int]], limit: int = 10) -> list[tuple[int, int, int]]:
    """The largest off-diagonal cells as (true, predicted, count), largest first."""
    cells = [(count, t, p) for t, row in enumerate(confusion) for p, count in enumerate(row) if t != p and count]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(t, p, count) for count, t, p in cells[:limit]]


def _extras(evaluation: dict[str, Any]) -> dict[str, Any]:
    return evaluation.get("report") or {}


def _split_rows(evaluation: dict[str, Any]) -> list[tuple[str, str]]:
    """Accuracy, macro-F1 and size of the validation split (and the test split, when evaluated):
    the first rows of both the HTML summary and the Markdown one."""
    rows = []
    for split, metrics in (("validation", evaluation["validation"]), ("test", evaluation.get("test"))):
        if metrics:
            rows += [
                (f"{split} accuracy", _pct(metrics["accuracy"])),
                (f"{split} macro-F1", f"{metrics['macro_f1']:.4f}"),
                (f"{split} images (n)", f"{metrics['n']:,}"),
            ]
            if metrics.get("ece") is not None:
                rows.append((f"{split} ECE (served probabilities)", f"{metrics['ece']:.4f}"))
    worst = evaluation.get("worst_class")
    if worst:
        rows.append(("worst class", _esc(_worst_text(worst))))
    return rows


def _worst_text(worst: dict[str, Any]) -> str:
    return f"{worst['class_id']} {worst['class_name']}: {_pct(worst['accuracy'])}"


def _summary_section(evaluation: dict[str, Any]) -> str:
    gate = evaluation["gate"]
    colour = "#1a7f37" if gate["result"] == "pass" else "#cf222e"
    rows = _split_rows(evaluation)
    champion = evaluation.get("champion") or {}
    if champion.get("accuracy") is not None:
        rows.append(("vs champion", f"{_points(champion_delta(evaluation))} ({_esc(champion['uri'])})"))
    latency = evaluation.get("latency") or {}
    if "p50_ms" in latency:
        rows.append(("latency p50 / p99 (batch 1)", f"{latency['p50_ms']:.2f} / {latency['p99_ms']:.2f} ms"))
    rows.append(
        (
            "gate thresholds",
            f"min accuracy {gate.get('min_accuracy')}, min class accuracy {gate.get('min_class_accuracy', '–')}, "
            f"champion tolerance {gate.get('champion_tolerance')}",
        )
    )
    model = _extras(evaluation).get("model") or {}
    if model:
        rows.append(
            ("model", _esc(f"{model.get('name', '')} {model.get('arch', '')} ({model.get('variant', 'fp32')})"))
        )
    return (
        f'<p class="gate" style="color:{colour}">gate: {_esc(gate["result"])}</p>'
        f"<p>{_esc(gate['reason'])}</p>{_table(rows)}"
    )


def _training_section(evaluation: dict[str, Any]) -> str:
    from components.evaluate import plots

    history = _extras(evaluation).get("history")
    if not history or not history.get("epochs"):
        return (
            '<p class="muted">No training history recorded for this model (optimized variants and models '
            "trained outside the train step have none).</p>"
        )
    epochs = history["epochs"]
    last = epochs[-1]
    rows = [
        ("epochs", str(len(epochs))),
        ("training time", f"{history.get('train_seconds', sum(e['seconds'] for e in epochs)):.1f} s"),
        ("throughput", f"{history['images_per_second']:,.0f} images/s" if "images_per_second" in history else "–"),
        ("final train loss / accuracy", f"{last['train_loss']:.4f} / {_pct(last['train_accuracy'])}"),
        ("final validation accuracy (train step)", _pct(last.get("val_accuracy"))),
    ]
    return _figure("training curves", lambda: plots.training_curves(history)) + _table(rows)


def _confusion_section(evaluation: dict[str, Any]) -> str:
    from components.evaluate import plots

    names: list[str] = evaluation["class_names"]
    confusion = evaluation["validation"]["confusion"]
    pairs = top_confusions(confusion)
    rows = "".join(
        f"<tr><td>{t} {_esc(names[t])}</td><td>{p} {_esc(names[p])}</td><td class='num'>{c}</td></tr>"
        for t, p, c in pairs
    )
    listing = (
        f"<h3>Most frequent confusions</h3><table><tr><th>true</th><th>predicted</th><th>images</th></tr>{rows}</table>"
        if pairs
        else "<p>No confusions: every validation image was classified correctly.</p>"
    )
    return _figure("confusion matrix", lambda: plots.confusion_heatmap(confusion, names)) + listing


def _per_class_section(evaluation: dict[str, Any]) -> str:
    from components.evaluate import plots

    names: list[str] = evaluation["class_names"]
    accuracy = evaluation["validation"]["per_class_accuracy"]
    extras = _extras(evaluation)
    worst = extras.get("misclassified") or []
    champion = extras.get("champion_per_class_accuracy")
    figure = _figure(
        "per-class accuracy",
        lambda: plots.per_class_accuracy(accuracy, names, champion, highlight=[w["class_id"] for w in worst]),
    )
    blocks = []
    for entry in worst:
        samples = "".join(
            f'<div class="sample"><img alt="class {entry["class_id"]} predicted as {s["predicted"]}" '
            f'src="data:image/png;base64,{s["png_base64"]}"><br>→ {s["predicted"]} {_esc(s["predicted_name"])}</div>'
            for s in entry["samples"]
        )
        blocks.append(
            f"<h3>{entry['class_id']} {_esc(entry['class_name'])}: {_pct(entry['accuracy'])} "
            f"<span class='muted'>({entry['errors']} of {entry['support']} wrong)</span></h3>"
            f'<div class="samples">{samples}</div>'
        )
    samples_html = (
        "<p>The worst classes (red above), with misclassified validation images (original pixels, "
        "shown 2× enlarged) and what the model predicted:</p>" + "".join(blocks)
        if blocks
        else '<p class="muted">No misclassified samples recorded.</p>'
    )
    rows = "".join(
        f"<tr><td>{i}</td><td>{_esc(n)}</td><td class='num'>{_pct(a)}</td>"
        f"<td class='num'>{sum(evaluation['validation']['confusion'][i])}</td></tr>"
        for i, (n, a) in enumerate(zip(names, accuracy, strict=True))
    )
    table = (
        "<details><summary>All classes as a table</summary><table><tr><th>id</th><th>class</th>"
        f"<th>accuracy</th><th>images</th></tr>{rows}</table></details>"
    )
    return figure + samples_html + table


def _calibration_section(evaluation: dict[str, Any]) -> str:
    from components.evaluate import plots

    val = evaluation["validation"]
    bins = val.get("reliability")
    if not bins:
        return '<p class="muted">No calibration data with this evaluation (it predates calibration).</p>'
    temperature = evaluation.get("temperature")
    explain = (
        "<p>How far the probabilities the model serves can be taken at their word: each bar is the accuracy "
        "of the validation images whose top-1 probability fell in that bin; a calibrated model's bars touch "
        "the diagonal. ECE is the gap averaged over the bins, weighted by how many predictions each holds. "
        "The served probability is softmax(logits / T), with T fitted on the validation split at the end of "
        "training (T = 1: not calibrated), so the confidence alert and clients read honest numbers; because "
        "T is fitted on this same split, the ECE here is optimistic; the cross-fitted ECE (each half of the "
        "validation tracks scored with the T fitted on the other half) and the test split's are not.</p>"
    )
    rows = [
        ("temperature (T)", _esc(f"{temperature:g}" if temperature is not None else "–")),
        ("validation ECE", f"{val['ece']:.4f}" if val.get("ece") is not None else "–"),
    ]
    crossed = ((_extras(evaluation).get("history") or {}).get("calibration") or {}).get("ece_cross_fitted")
    if crossed is not None:
        rows.append(("validation ECE, cross-fitted (T from the other half of the tracks)", f"{crossed:.4f}"))
    test = evaluation.get("test") or {}
    if test.get("ece") is not None:
        rows.append(("test ECE", f"{test['ece']:.4f}"))
    figure = _figure("reliability diagram", lambda: plots.reliability_diagram(bins, val.get("ece"), temperature))
    return explain + figure + _table(rows)


def _data_section(evaluation: dict[str, Any]) -> str:
    from components.evaluate import plots

    card = _extras(evaluation).get("data")
    if not card:
        return '<p class="muted">No data card with this evaluation.</p>'
    totals = card.get("totals", {})
    fingerprint = card.get("fingerprint", {})
    size = card.get("original_size", {})
    rows = [
        ("source", _esc(card.get("source", "–"))),
        ("layout / split", _esc(f"{card.get('layout', '–')}, {card.get('split_strategy', '–')}")),
        ("seed / validation fraction", _esc(f"{card.get('seed', '–')} / {card.get('val_fraction', '–')}")),
        ("images", _esc(", ".join(f"{k} {v:,}" for k, v in totals.items()))),
        ("classes", _esc(card.get("num_classes", "–"))),
        ("image size (stored)", f"{card.get('image_size', '–')} px"),
        (
            "original size (w × h, min–max)",
            _esc(
                f"{size['width']['min']}–{size['width']['max']} × {size['height']['min']}–{size['height']['max']}"
                if size
                else "–"
            ),
        ),
        ("channel mean (RGB)", _esc(", ".join(f"{v:.4f}" for v in card.get("channel_mean", [])))),
        ("channel std (RGB)", _esc(", ".join(f"{v:.4f}" for v in card.get("channel_std", [])))),
        (
            f"fingerprint ({_esc(fingerprint.get('algorithm', 'sha256'))})",
            f"<code>{_esc(fingerprint.get('value', '–'))}</code> over {fingerprint.get('files', '–')} files",
        ),
        ("created", _esc(card.get("created", "–"))),
    ]
    counts = card.get("counts")
    chart = _figure("images per class", lambda: plots.class_counts(counts, evaluation["class_names"])) if counts else ""
    return _table(rows) + chart


def _champion_section(evaluation: dict[str, Any]) -> str:
    from components.evaluate import plots

    champion = evaluation.get("champion") or {}
    if not champion.get("uri"):
        return '<p class="muted">No champion yet: the gate compared this model with the accuracy floor only.</p>'
    if champion.get("accuracy") is None:
        return (
            f"<p>Champion {_esc(champion['uri'])} has a different set of classes, so it was not compared "
            "(the gate used the accuracy floor only).</p>"
        )
    val = evaluation["validation"]
    rows = "".join(
        f"<tr><th>{label}</th><td class='num'>{_pct(champion.get(key))}</td><td class='num'>{_pct(val[key])}</td>"
        f"<td class='num'>{_points(val[key] - champion[key]) if champion.get(key) is not None else '–'}</td></tr>"
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))
    )
    table = (
        f"<p>Champion {_esc(champion['uri'])}, re-evaluated on this run's validation split.</p>"
        f"<table><tr><th></th><th>champion</th><th>this model</th><th>difference</th></tr>{rows}</table>"
    )
    challenger = {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"]}
    per_class = _extras(evaluation).get("champion_per_class_accuracy")
    return table + _figure(
        "champion comparison",
        lambda: plots.champion_comparison(challenger, champion, val["per_class_accuracy"], per_class),
    )


def _latency_section(evaluation: dict[str, Any]) -> str:
    from components.evaluate import plots

    latency = evaluation.get("latency") or {}
    samples = latency.get("samples_ms") or []
    if not samples:
        return '<p class="muted">No latency samples with this evaluation.</p>'
    batched = latency.get("batched") or {}
    rows = [
        (
            "single image (batch 1)",
            _esc(
                f"p50 {latency['p50_ms']:.2f} ms, p90 {latency['p90_ms']:.2f} ms, "
                f"p99 {latency['p99_ms']:.2f} ms, mean {latency['mean_ms']:.2f} ms"
            ),
        ),
        ("samples / torch threads", _esc(f"{len(samples)} / {latency.get('threads', '–')}")),
    ]
    if batched.get("images_per_second"):
        rows.append(
            (f"evaluation pass (batch {batched.get('batch_size')})", f"{batched['images_per_second']:,.0f} images/s")
        )
    note = (
        '<p class="muted">Measured in the evaluate step, on its node, in process: a served request adds '
        "decoding and HTTP handling on top.</p>"
    )
    figure = _figure("latency histogram", lambda: plots.latency_histogram(samples, latency, latency.get("threads")))
    return figure + _table(rows) + note


_RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "summary": _summary_section,
    "training": _training_section,
    "confusion": _confusion_section,
    "per-class": _per_class_section,
    "calibration": _calibration_section,
    "data": _data_section,
    "champion": _champion_section,
    "latency": _latency_section,
}


def render_report(evaluation: dict[str, Any]) -> str:
    """The whole report as one HTML document (figures embedded; nothing fetched from anywhere)."""
    model = _extras(evaluation).get("model") or {}
    title = f"tsr evaluation{': ' + model['name'] if model.get('name') else ''}"
    nav = "".join(f'<a href="#{key}">{_esc(label)}</a>' for key, label in SECTIONS)
    body = "".join(
        f'<section id="{key}"><h2>{_esc(label)}</h2>{_RENDERERS[key](evaluation)}</section>' for key, label in SECTIONS
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_esc(title)}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def render_summary(evaluation: dict[str, Any]) -> str:
    """The key numbers as Markdown (the evaluate step's `Markdown` artifact)."""
    gate = evaluation["gate"]
    champion = evaluation.get("champion") or {}
    latency = evaluation.get("latency") or {}
    rows = _split_rows(evaluation)
    if champion.get("accuracy") is not None:
        rows.append(("champion", f"{_md(champion['uri'])} ({_pct(champion['accuracy'])})"))
        rows.append(("Δ accuracy vs champion", _points(champion_delta(evaluation))))
    elif champion.get("uri"):
        rows.append(("champion", f"{_md(champion['uri'])} (different classes, not compared)"))
    else:
        rows.append(("champion", "none yet"))
    if "p50_ms" in latency:
        rows.append(("latency p50 / p99 (batch 1)", f"{latency['p50_ms']:.2f} ms / {latency['p99_ms']:.2f} ms"))
    history = _extras(evaluation).get("history")
    if history and history.get("epochs"):
        seconds = history.get("train_seconds")
        rows.append(("training", f"{len(history['epochs'])} epochs" + (f", {seconds:.0f} s" if seconds else "")))
    table = "\n".join(f"| {label} | {value} |" for label, value in rows)
    worst = _extras(evaluation).get("misclassified") or []
    worst_line = (
        "\n\nWorst classes: "
        + ", ".join(f"{w['class_id']} {_md(w['class_name'])} {_pct(w['accuracy'])}" for w in worst[:5])
        if worst
        else ""
    )
    return (
        f"## Evaluation: gate **{gate['result']}**\n\n{_md(gate['reason'])}\n\n"
        f"| metric | value |\n|---|---|\n{table}{worst_line}\n"
    )
