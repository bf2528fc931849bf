"""The run report from a small real evaluation: real PNG figures, a self-contained HTML page, a Markdown summary."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from components.evaluate import plots
from components.evaluate.evaluate import GateConfig, run_evaluation
from components.evaluate.report import SECTIONS, render_report, render_summary
from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig, train, write_model
from tests.conftest import make_model_dir
from tsr.core.config import StoreConfig
from tsr.core.dataset import TRAIN_FILE, VAL_FILE, load_split, read_data_card
from tsr.core.registry import Registry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURE = re.compile(r'<img class="fig" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def dataset(gtsrb_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report-ds")
    ingest(IngestConfig(source=str(gtsrb_small), max_groups_per_class=2), out)
    return out


@pytest.fixture(scope="module")
def trained_model(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A really trained (2 short epochs) small model, so the directory carries the train step's history.json."""
    tr, va = load_split(dataset / TRAIN_FILE), load_split(dataset / VAL_FILE)
    tr, va = tr.subset(torch.arange(0, len(tr), 4)), va.subset(torch.arange(0, len(va), 5))  # seconds, not a minute
    cfg = TrainConfig(epochs=2, width=8, threads=2, batch_size=64, lr=0.1, export_program=False)
    result = train(tr, va, read_data_card(dataset)["class_names"], cfg, show_progress=False)
    out = tmp_path_factory.mktemp("report-model") / "model"
    write_model(result, out, export_program=False)
    return out


@pytest.fixture(scope="module")
def evaluation(trained_model: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trained model against a champion (an untrained model) in a directory-store registry."""
    store = StoreConfig(kind="dir", directory=tmp_path_factory.mktemp("report-store"))
    registry = Registry.from_config(store)
    champion = make_model_dir(tmp_path_factory.mktemp("report-champion") / "model", seed=1)
    registry.set_alias("m", registry.publish("m", champion, {}))
    return run_evaluation(
        trained_model,
        dataset,
        GateConfig(min_accuracy=0.0, champion_tolerance=1.0, min_class_accuracy=0.0),
        "m",
        store=store,
    )


def _png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _assert_real_figure(data: bytes, min_size: tuple[int, int] = (400, 200)) -> None:
    image = _png(data)
    assert image.width >= min_size[0] and image.height >= min_size[1], image.size
    assert len(data) > 5_000, "a figure with axes, labels and data is more than a few hundred bytes"
    lo, hi = image.convert("L").getextrema()
    assert hi - lo > 100, "the figure is blank"


def test_evaluation_gathers_what_the_report_needs(evaluation: dict[str, Any], dataset: Path) -> None:
    latency = evaluation["latency"]
    assert 0 < len(latency["samples_ms"]) <= 200 and all(t > 0 for t in latency["samples_ms"])
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"]
    assert latency["batched"]["images_per_second"] > 0 and latency["batched"]["batch_ms"]
    extras = evaluation["report"]
    worst = extras["misclassified"]
    assert 0 < len(worst) <= 6
    accuracies = [w["accuracy"] for w in worst]
    assert accuracies == sorted(accuracies)
    for entry in worst:
        assert 0 < len(entry["samples"]) <= 4 and entry["errors"] >= len(entry["samples"])
        for sample in entry["samples"]:
            assert sample["predicted"] != entry["class_id"]
            assert _png(base64.b64decode(sample["png_base64"])).size == (32, 32)  # original pixels, tiny
    card = extras["data"]
    assert card["fingerprint"]["algorithm"] == "sha256" and len(card["fingerprint"]["value"]) == 64
    assert sum(card["counts"]["val"]) == card["totals"]["val"] == evaluation["validation"]["n"]
    assert len(card["channel_mean"]) == len(card["channel_std"]) == 3
    assert "input_reference" not in card and "class_names" not in card  # bulky, or held elsewhere
    epochs = extras["history"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["lr"] > 0 and e["seconds"] > 0 and 0 <= e["val_accuracy"] <= 1 for e in epochs)
    assert epochs[1]["lr"] != epochs[0]["lr"]  # one-cycle moves it
    # Calibration: the trained model's temperature, the ECE and reliability bins of its served probabilities.
    val = evaluation["validation"]
    assert evaluation["temperature"] == extras["history"]["calibration"]["temperature"] != 1.0
    assert 0 <= extras["history"]["calibration"]["ece_cross_fitted"] <= 1
    assert 0 <= val["ece"] <= 1 and len(val["reliability"]) == 15
    assert sum(b["count"] for b in val["reliability"]) == val["n"]
    worst_class = evaluation["worst_class"]
    assert worst_class == evaluation["gate"]["worst_class"]
    assert worst_class["accuracy"] == min(a for a in val["per_class_accuracy"] if a is not None)
    assert worst_class["class_name"] == evaluation["class_names"][worst_class["class_id"]]
    champion = evaluation["champion"]
    assert "models/m/" in champion["uri"]
    assert 0 <= champion["macro_f1"] <= 1 and len(extras["champion_per_class_accuracy"]) == 43


def test_plots_render_real_pngs(evaluation: dict[str, Any]) -> None:
    names, val, extras = evaluation["class_names"], evaluation["validation"], evaluation["report"]
    _assert_real_figure(plots.training_curves(extras["history"]))
    _assert_real_figure(plots.confusion_heatmap(val["confusion"], names), (600, 600))
    _assert_real_figure(
        plots.per_class_accuracy(val["per_class_accuracy"], names, extras["champion_per_class_accuracy"], [0, 1]),
        (400, 800),
    )
    _assert_real_figure(plots.class_counts(extras["data"]["counts"], names))
    _assert_real_figure(plots.latency_histogram(evaluation["latency"]["samples_ms"], evaluation["latency"], 2))
    _assert_real_figure(plots.reliability_diagram(val["reliability"], val["ece"], evaluation["temperature"]))
    champion = evaluation["champion"]
    _assert_real_figure(
        plots.champion_comparison(
            {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"]},
            champion,
            val["per_class_accuracy"],
            extras["champion_per_class_accuracy"],
        )
    )


def test_html_report_has_every_section_embedded_and_nothing_external(evaluation: dict[str, Any]) -> None:
    page = render_report(evaluation)
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in page
    figures = dict(FIGURE.findall(page))
    assert set(figures) == {
        "training curves",
        "confusion matrix",
        "per-class accuracy",
        "images per class",
        "champion comparison",
        "latency histogram",
        "reliability diagram",
    }
    for data in figures.values():
        _assert_real_figure(base64.b64decode(data), (300, 200))
    worst = evaluation["report"]["misclassified"]
    assert page.count('<div class="sample">') == sum(len(w["samples"]) for w in worst)
    # Self-contained: every src is a data: URI, links stay in the page, no scripts, stylesheets or URLs.
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))
    for forbidden in ("<script", "<link", "<iframe", "http://", "https://", "url(", "@import"):
        assert forbidden not in page.lower(), forbidden
    assert "could not be drawn" not in page
    assert evaluation["report"]["data"]["fingerprint"]["value"] in page
    assert "Speed limit (20km/h)" in page  # the per-class table
    assert f"gate: {evaluation['gate']['result']}" in page
    assert f"{evaluation['validation']['ece']:.4f}" in page and "worst class" in page
    crossed = evaluation["report"]["history"]["calibration"]["ece_cross_fitted"]
    assert f"cross-fitted (T from the other half of the tracks)</th><td>{crossed:.4f}" in page


def test_markdown_summary_has_the_key_numbers(evaluation: dict[str, Any]) -> None:
    md = render_summary(evaluation)
    val, latency, champion = evaluation["validation"], evaluation["latency"], evaluation["champion"]
    assert f"gate **{evaluation['gate']['result']}**" in md
    assert f"{100 * val['accuracy']:.2f}%" in md and f"{val['macro_f1']:.4f}" in md and f"{val['n']:,}" in md
    delta = 100 * (val["accuracy"] - champion["accuracy"])
    assert f"{delta:+.2f} pt" in md and champion["uri"] in md
    assert f"{latency['p50_ms']:.2f} ms / {latency['p99_ms']:.2f} ms" in md
    assert "2 epochs" in md
    worst = evaluation["worst_class"]
    assert f"ECE (served probabilities) | {val['ece']:.4f}" in md
    assert f"worst class | {worst['class_id']} {worst['class_name']}: {100 * worst['accuracy']:.2f}%" in md
    assert md.count("\n|") >= 6  # a Markdown table, one row per number


def test_report_without_champion_or_history(tiny_model_dir: Path, dataset: Path) -> None:
    """An untrained model straight from a directory (no history.json) and no store: sections say so."""
    result = run_evaluation(tiny_model_dir, dataset, GateConfig(min_accuracy=0.0, min_class_accuracy=0.0), "m")
    assert result["champion"] == {"uri": None, "accuracy": None, "macro_f1": None}
    assert result["report"]["history"] is None and result["report"]["champion_per_class_accuracy"] is None
    page = render_report(result)
    for key, _ in SECTIONS:
        assert f'<section id="{key}">' in page
    assert "No champion yet" in page and "No training history" in page
    assert {alt for alt, _ in FIGURE.findall(page)} == {
        "confusion matrix",
        "per-class accuracy",
        "images per class",
        "latency histogram",
        "reliability diagram",
    }
    md = render_summary(result)
    assert "| champion | none yet |" in md and "Δ" not in md and "epochs" not in md


def test_report_of_a_bare_evaluation(tmp_path: Path) -> None:
    """An evaluation with only the gate's numbers (older runs, other tools) still renders every section."""
    confusion = [[5, 0, 0], [1, 3, 0], [0, 0, 4]]
    bare = {
        "validation": {
            "n": 13,
            "accuracy": 12 / 13,
            "macro_f1": 0.92,
            "per_class_accuracy": [1.0, 0.75, 1.0],
            "confusion": confusion,
        },
        "class_names": ["a", "b", "c"],
        "champion": {"uri": "s3://models/m/v1", "accuracy": None},
        "gate": {"result": "pass", "reason": "ok"},
    }
    page = render_report(bare)
    for key, _ in SECTIONS:
        assert f'<section id="{key}">' in page
    assert "different set of classes" in page and "No latency samples" in page and "No data card" in page
    assert "No calibration data" in page
    assert {alt for alt, _ in FIGURE.findall(page)} == {"confusion matrix", "per-class accuracy"}
    assert "<td>1 b</td><td>0 a</td>" in page  # the most frequent confusion
    assert "different classes, not compared" in render_summary(bare)


def test_a_broken_figure_leaves_the_rest_of_the_report(
    evaluation: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "confusion_heatmap", broken)
    page = render_report(evaluation)
    assert "could not be drawn" in page and "no fonts" in page
    assert len(FIGURE.findall(page)) == 6


def test_confusion_heatmap_handles_empty_rows_and_a_perfect_model() -> None:
    perfect = [[3 if i == j else 0 for j in range(43)] for i in range(43)]
    perfect[5] = [0] * 43  # a class with no validation images
    _assert_real_figure(plots.confusion_heatmap(perfect, [str(i) for i in range(43)]), (600, 600))
    history = {"epochs": [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "seconds": 1.0}]}
    _assert_real_figure(plots.training_curves(history))  # no validation or learning rate recorded: still draws
