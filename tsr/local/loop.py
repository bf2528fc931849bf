"""`tsr loop --once`: the continuous-training cycle on one machine, with the real parts.

serve the champion (following the alias) -> normal traffic -> shifted traffic (simulated drift:
darker images) -> the TSRInputDrift alert's own PromQL condition, evaluated by a real Prometheus
scraping the predictor (or, without Prometheus, the same threshold on the predictor's /metrics)
-> an Alertmanager-format notification to the real webhook receiver (pipelines.retrain) -> a retraining
run of the same pipeline (kfp.local) -> its gate and champion comparison -> `champion` moves when
the new model is better -> the running predictor hot-reloads it.

The retrain repeats the champion's own recipe, read from its model card: architecture, epochs,
batch size, learning rate and the data split (seed, validation share, tracks per class). The split
matters most: the gate re-evaluates the champion on the new run's validation tracks, and a split drawn
differently (another seed, another subset of tracks) puts tracks the champion trained on into it, so
the champion scores near 100 % and no retrain can keep up. After a full `make demo` that recipe is the
full training (about as long as the demo's). `quick` retrains a few epochs on a few tracks instead:
it proves the wiring in a minute, and the gate refuses it against a fully trained champion (it
passes only against a small bootstrapped one).

The cycle never forces a promotion: when the gate refuses the new model, the summary says so and
the old champion keeps serving. The shifted images are what a camera with a dirty lens or dusk
light would send; retraining on the same data does not cure drift (it only proves the loop), which
is why the predictor can log sampled inputs for relabelling (serving/README.md, feedback).
"""

from __future__ import annotations

import base64
import io
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tsr.core.config import StoreConfig
from tsr.core.processes import free_port
from tsr.core.registry import CHAMPION, DEFAULT_MODEL_NAME, Registry

DRIFT_ALERT = "TSRInputDrift"


RECIPES = ("champion", "quick")
# What a champion's model card must record for its recipe to be repeated (`champion_recipe`).
_RECIPE_FIELDS = ("arch", "epochs", "batch_size", "lr", "seed", "val_fraction", "max_groups_per_class")


@dataclass(frozen=True)
class LoopConfig:
    """One cycle. `bootstrap_epochs` trains a first champion when the registry has none. `recipe` is the
    retrain's: "champion" (the champion's own, from its model card) or "quick" (`epochs` on
    `max_groups_per_class` tracks, a wiring demonstration)."""

    data: str
    model_name: str = DEFAULT_MODEL_NAME
    recipe: str = "champion"
    epochs: int = 3
    bootstrap_epochs: int = 1
    max_groups_per_class: int = 5
    batch_size: int = 128
    min_accuracy: float = 0.0
    champion_tolerance: float = 0.005
    # Like min_accuracy, off: the loop's gate is the champion comparison (a quick retrain on a few tracks
    # never reaches the platform's per-class floor, and the loop proves the wiring, not the recipe).
    min_class_accuracy: float = 0.0
    images: int = 192  # per traffic phase; at least the drift window
    drift_window: int = 192
    shift: float = 0.3  # brightness factor of the simulated drift
    seed: int = 0
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if not 0 < self.shift < 1:
            raise ValueError(f"shift must be in (0, 1) (a brightness factor), got {self.shift}")
        if self.images < self.drift_window:
            raise ValueError(f"images ({self.images}) must be >= drift_window ({self.drift_window}) to fill it")
        if self.drift_window < 100:
            raise ValueError(
                f"drift_window must be >= 100 (the predictor's minimum for a PSI), got {self.drift_window}"
            )
        if self.epochs < 1 or self.bootstrap_epochs < 1:
            raise ValueError("epochs and bootstrap_epochs must be >= 1")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")


def champion_recipe(card: dict[str, Any], version: str) -> dict[str, Any]:
    """The pipeline parameters that trained the champion `version`, from its model card.

    The seed is the pipeline's one seed (the ingest split's and the training's), so repeating it with
    the validation share and the tracks per class reproduces the champion's split on the same data.
    """
    params, data = card.get("params") or {}, card.get("data") or {}
    recipe = {k: params[k] for k in ("arch", "epochs", "batch_size", "lr") if params.get(k) is not None}
    seed = data.get("seed") if data.get("seed") is not None else params.get("seed")
    if seed is not None:
        recipe["seed"] = int(seed)
    recipe |= {k: data[k] for k in ("val_fraction", "max_groups_per_class") if data.get(k) is not None}
    missing = [k for k in _RECIPE_FIELDS if k not in recipe]
    if missing:
        raise ValueError(
            f"the model card of champion {version} does not record {', '.join(missing)} (registered by an older "
            "version): retrain with the quick recipe (`tsr loop --quick`), or register a new champion"
        )
    return recipe


def load_images(source: str, n: int, seed: int) -> list[np.ndarray]:
    """`n` images (HWC uint8) from validation tracks, spread over the classes."""
    from tsr.core.dataset import split_by_group
    from tsr.core.sources import list_source

    listing = list_source(Path(source))
    import torch

    labels = torch.tensor([s.label for s in listing.samples])
    groups = torch.tensor([s.group for s in listing.samples])
    _, val_idx = split_by_group(labels, groups, 0.2, seed)
    rng = np.random.default_rng(seed)
    picks = rng.permutation(val_idx.numpy())[:n]
    return [np.asarray(Image.open(listing.samples[int(i)].path).convert("RGB")) for i in picks]


def shifted(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def send(url: str, model_name: str, images: list[np.ndarray], batch: int = 32) -> list[dict[str, Any]]:
    """V1 requests of `batch` PNG images each; returns the predictions."""
    out: list[dict[str, Any]] = []
    with httpx.Client(timeout=60) as http:
        for i in range(0, len(images), batch):
            body = {"instances": [{"b64": _png_b64(im)} for im in images[i : i + batch]]}
            response = http.post(f"{url}/v1/models/{model_name}:predict", json=body)
            response.raise_for_status()
            out.extend(response.json()["predictions"])
    return out


def _model_samples(url: str, name: str, model_name: str) -> list[Any]:
    """The predictor's /metrics samples called `name` for `model_name`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("model") == model_name
    ]


def drift_psi(url: str, model_name: str) -> float:
    """The predictor's own drift gauge."""
    samples = _model_samples(url, "tsr_input_drift_psi", model_name)
    if not samples:
        raise RuntimeError(f"{url}/metrics has no tsr_input_drift_psi for model {model_name!r}")
    return float(samples[0].value)


def served_version(url: str, model_name: str) -> str | None:
    samples = _model_samples(url, "tsr_model_info", model_name)
    return samples[0].labels.get("version") if samples else None


def drift_rule() -> Any:
    """The TSRInputDrift rule exactly as generated into manifests/monitoring (one source for both)."""
    from tsr.kube.monitoring.alerts import AlertConfig, alert_rules

    (rule,) = [r for r in alert_rules(AlertConfig()) if r.name == DRIFT_ALERT]
    return rule


def write_rules_file(directory: Path) -> Path:
    """The Prometheus rules file (`tsr-rules.yaml`) written into `directory`, rendered from
    `tsr.kube.monitoring` exactly as `make monitoring` writes manifests/monitoring/tsr-rules.yaml
    (the tests hold the committed copy to the same bytes); needs no checkout, so an installed `tsr loop` works."""
    from tsr.kube.monitoring.alerts import RULES_FILE
    from tsr.kube.monitoring.generate import render_all

    path = directory / RULES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_all()[RULES_FILE])
    return path


def alertmanager_payload(rule: Any, model_name: str, value: float) -> dict[str, Any]:
    """What Alertmanager would POST for the firing rule (webhook format version 4)."""
    labels = {"alertname": rule.name, "model": model_name, **rule.all_labels}
    return {
        "version": "4",
        "status": "firing",
        "receiver": "tsr-retrain",
        "groupKey": f'{{}}:{{alertname="{rule.name}"}}',
        "commonLabels": labels,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": f"Input drift of model {model_name}: PSI {value:.3f}"},
                "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ],
    }


class LocalTrigger:
    """Runs the pipeline through kfp.local in a background thread (the receiver must answer at once)."""

    def __init__(self, run: Callable[[str], Any]) -> None:
        self._run = run
        self.threads: dict[str, threading.Thread] = {}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}

    def __call__(self, reason: str) -> str:
        run_id = f"retrain-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"

        def target() -> None:
            try:
                self.results[run_id] = self._run(run_id)
            except BaseException as exc:  # reported by wait()
                self.errors[run_id] = exc

        thread = threading.Thread(target=target, name=f"tsr-{run_id}", daemon=True)
        self.threads[run_id] = thread
        thread.start()
        return run_id

    def wait(self, run_id: str, timeout_s: float) -> Any:
        self.threads[run_id].join(timeout_s)
        if self.threads[run_id].is_alive():
            raise TimeoutError(f"retraining run {run_id} did not finish within {timeout_s:.0f}s")
        if run_id in self.errors:
            raise self.errors[run_id]
        return self.results[run_id]


def _wait(what: str, check: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def run_loop(
    cfg: LoopConfig, store: StoreConfig, state: Path, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """One cycle; returns the summary (also what `tsr loop --once --json` prints)."""
    import uvicorn

    from pipelines.local_run import run_local
    from pipelines.retrain import RetrainController, RetrainPolicy, create_app, parse_alertmanager
    from serving.process import start_local_predictor, stop_local_predictor
    from tsr.local.prometheus_server import LocalPrometheus, PrometheusConfig, PrometheusError, find_prometheus_binary

    registry = Registry.from_config(store)
    base = {
        "data_source": cfg.data,
        "max_groups_per_class": cfg.max_groups_per_class,
        "batch_size": cfg.batch_size,
        "model_name": cfg.model_name,
        "min_accuracy": cfg.min_accuracy,
        "champion_tolerance": cfg.champion_tolerance,
        "min_class_accuracy": cfg.min_class_accuracy,
        "deploy_mode": "none",
    }
    summary: dict[str, Any] = {"model_name": cfg.model_name, "bootstrapped": False}
    if registry.get_alias(cfg.model_name, CHAMPION) is None:
        say(f"no champion yet: training a first one ({cfg.bootstrap_epochs} epoch(s))")
        first = run_local(
            {**base, "epochs": cfg.bootstrap_epochs, "seed": cfg.seed, "min_accuracy": 0.0},
            store,
            state / "kfp-local",
        )
        if first.gate != "pass":
            raise RuntimeError(f"the bootstrap run {first.run_id} did not pass its gate: nothing to serve")
        summary["bootstrapped"] = True
    champion_before = registry.resolve(cfg.model_name, CHAMPION)
    summary["champion_before"] = champion_before

    # 1. serve the champion, following the alias
    say(f"serving champion {champion_before}")
    endpoint = start_local_predictor(
        CHAMPION,
        cfg.model_name,
        state / "predictor",
        store=store,
        extra_args=["--reload-interval", "1", "--drift-window", str(cfg.drift_window)],
    )
    url = str(endpoint["url"])
    prometheus: LocalPrometheus | None = None
    webhook: uvicorn.Server | None = None
    try:
        binary = find_prometheus_binary()
        if binary is not None:
            prometheus = LocalPrometheus(
                PrometheusConfig(
                    root=state / "prometheus",
                    targets=[urllib.parse.urlsplit(url).netloc],
                    job_name="tsr-predictor",
                    scrape_interval="1s",
                    rule_files=[write_rules_file(state / "prometheus")],
                ),
                binary,
            )
            prometheus.stop()
            try:
                prometheus.start()
            except PrometheusError as exc:
                say(f"Prometheus did not start ({exc}); evaluating the drift threshold on /metrics instead")
                prometheus = None

        # 2. normal traffic, then shifted traffic
        images = load_images(cfg.data, cfg.images, cfg.seed)
        send(url, cfg.model_name, images)
        summary["psi_normal"] = round(drift_psi(url, cfg.model_name), 4)
        say(f"normal traffic: {len(images)} images, drift PSI {summary['psi_normal']}")
        send(url, cfg.model_name, [shifted(im, cfg.shift) for im in images])
        summary["psi_shifted"] = round(drift_psi(url, cfg.model_name), 4)
        say(f"shifted traffic (brightness x{cfg.shift}): drift PSI {summary['psi_shifted']}")

        # 3. the alert's condition
        rule = drift_rule()
        summary["alert_expr"] = rule.expr
        if prometheus is not None:
            after = time.time()
            prometheus.wait_for(
                'timestamp(up{job="tsr-predictor"} == 1)', lambda r: bool(r) and float(r[0]["value"][1]) > after, 30
            )
            result = prometheus.query(rule.expr)
            summary["alert_condition"] = bool(result)
            summary["evaluated_by"] = f"Prometheus {prometheus.url}"
        else:
            summary["alert_condition"] = summary["psi_shifted"] > float(rule.expr.rsplit(">", 1)[1])
            summary["evaluated_by"] = "the rule's threshold on /metrics (Prometheus not installed)"
        if not summary["alert_condition"]:
            summary["outcome"] = "no alert: drift below the threshold"
            return summary
        say(f"alert condition true ({summary['evaluated_by']}): {rule.expr}")

        # 4. the webhook receiver starts a retraining run
        if cfg.recipe == "champion":
            recipe = champion_recipe(registry.read_card(cfg.model_name, champion_before), champion_before)
        else:  # the bootstrap's split (same seed and tracks): a fair comparison with a bootstrapped champion
            recipe = {"epochs": cfg.epochs, "seed": cfg.seed}
        summary["retrain"] = {"recipe": cfg.recipe, **recipe}

        def retrain(run_id: str) -> Any:
            return run_local({**base, **recipe, "run_id": run_id}, store, state / "kfp-local")

        trigger = LocalTrigger(retrain)
        port = free_port()
        webhook = uvicorn.Server(
            uvicorn.Config(
                create_app(RetrainController(trigger, RetrainPolicy(cooldown_s=0))),
                host="127.0.0.1",
                port=port,
                log_level="warning",
            )
        )
        threading.Thread(target=webhook.run, daemon=True, name="tsr-retrain-webhook").start()
        _wait("the webhook receiver", lambda: bool(webhook and webhook.started), 30, 0.05)
        notification = alertmanager_payload(rule, cfg.model_name, summary["psi_shifted"])
        parse_alertmanager(notification)  # what we send is what Alertmanager sends
        decision = httpx.post(f"http://127.0.0.1:{port}/alerts", json=notification, timeout=30).json()
        summary["webhook"] = decision
        if decision["outcome"] != "started":
            summary["outcome"] = f"webhook did not start a run: {decision['reason']}"
            return summary
        shown = ", ".join(f"{k} {v}" for k, v in recipe.items())
        say(f"webhook started retraining run {decision['run']} ({cfg.recipe} recipe: {shown})")
        result = trigger.wait(decision["run"], cfg.timeout_s)
        summary.update(
            {
                "run_id": result.run_id,
                "gate": result.gate,
                "validation_accuracy": round(result.accuracy, 5),
                "report": str(result.report) if result.report else None,
            }
        )
        champion_after = registry.resolve(cfg.model_name, CHAMPION)
        summary["champion_after"] = champion_after
        if champion_after == champion_before:
            summary["outcome"] = f"gate {result.gate}: champion unchanged, {champion_before} keeps serving"
            summary["served_version"] = served_version(url, cfg.model_name)
            return summary

        # 5. the running predictor picks the new champion up
        say(f"champion moved {champion_before} -> {champion_after}; waiting for the predictor to reload")
        _wait(
            "the predictor to serve the new champion",
            lambda: served_version(url, cfg.model_name) == champion_after,
            120,
        )
        summary["served_version"] = served_version(url, cfg.model_name)
        summary["predictions_after"] = len(send(url, cfg.model_name, images[:32]))
        summary["outcome"] = "retrained and promoted; the predictor serves the new champion"
        return summary
    finally:
        if webhook is not None:
            webhook.should_exit = True
        if prometheus is not None:
            prometheus.stop()
        stop_local_predictor(state / "predictor")
