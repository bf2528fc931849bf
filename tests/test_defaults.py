"""Each default is written once, in a typed config; this is the one test for the copies that must stay literal.

The sources: `TrainConfig` (components/train/config.py), `GateConfig` (components/evaluate/config.py), the
serving configs (serving/config.py: `ServeConfig` and the configs it is split into) and `InferenceServiceSpec`
(tsr/kube/spec.py). Everything else in Python takes its defaults from them: the `tsr` options, `python -m
serving`, the demo config, the pipeline function's parameters, `deploy_command`, the deploy step's logic,
and the Makefile passes nothing unless asked. Two kinds of copy cannot: a KFP component's signature (kfp.local
packages the function by its source text, so its defaults must be literals) and the Helm chart's values.yaml.
Both are compared with their source here; a failure names the copy to change.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from components.deploy.component import deploy_component
from components.evaluate.component import evaluate_component
from components.evaluate.config import GateConfig
from components.ingest.component import ingest_component
from components.optimize.component import optimize_component
from components.register.component import register_component
from components.train.component import train_component
from components.train.config import TrainConfig
from serving.config import ServeConfig
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.core.signing import Trust
from tsr.kube.inference_service import (
    DEFAULT_S3_SECRET,
    PIPELINE_S3_SECRET,
    RUN_AS_USER,
    SIGNING_PUBLIC_CONFIG_MAP,
    isvc_name,
)
from tsr.kube.spec import (
    DEFAULT_NAMESPACE,
    DEFAULT_PREDICTOR_IMAGE,
    READY_TIMEOUT_S,
    InferenceServiceSpec,
)
from tsr.local.checkout import REPO_ROOT

CHART = REPO_ROOT / "helm" / "tsr-platform"
# Only what the source of a default is not: the spelling of "unset" in a KFP parameter (the Kubeflow UI
# takes scalars), checked below by translating it into the spec.
UNSET_SPELLINGS = {"canary_traffic_percent": -1, "scale_metric": "", "scale_target": 0, "arch": "", "tolerations": ""}


def signature_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def spec(**changes: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec(name="m", namespace="ns", storage_uri="s3://models/m/v1", **changes)


def logic_defaults(module: str, function: str) -> dict[str, Any]:
    """The defaults of a step's plain logic (imported late: torch)."""
    import importlib

    return signature_defaults(getattr(importlib.import_module(module), function))


# ---- KFP component signatures --------------------------------------------------------------------------
def expected_component_defaults() -> dict[str, tuple[Callable[..., Any], dict[str, Any]]]:
    """Every defaulted parameter of every component, with the value its source gives it."""
    ingest = logic_defaults("components.ingest.ingest", "IngestConfig")
    optimize = logic_defaults("components.optimize.optimize", "run_optimize")
    register = logic_defaults("components.register.register", "register")
    base = spec()
    return {
        "ingest": (
            ingest_component,
            {
                k: ingest[k]
                for k in ("layout", "val_fraction", "seed", "image_size", "max_groups_per_class", "download")
            },
        ),
        "train": (
            train_component,
            {k: getattr(TrainConfig, k) for k in ("arch", "epochs", "batch_size", "lr", "seed", "threads")},
        ),
        "evaluate": (
            evaluate_component,
            {
                "model_name": DEFAULT_MODEL_NAME,
                "min_accuracy": GateConfig.min_accuracy,
                "champion_tolerance": GateConfig.champion_tolerance,
                "min_class_accuracy": GateConfig.min_class_accuracy,
                "test_data": "",  # no test split
                "allow_unsigned": Trust(public_key=None).allow_unsigned,  # unsigned champions only on opt-in
            },
        ),
        "register": (
            register_component,
            {"model_name": DEFAULT_MODEL_NAME, "run_id": "", "promote": register["promote"]},
        ),
        "optimize": (
            optimize_component,
            {k: optimize[k] for k in ("variant", "calibration_images", "latency_repeats")},
        ),
        "deploy": (
            deploy_component,
            {
                "model_name": DEFAULT_MODEL_NAME,
                "mode": "cluster",  # the step's own: in a cluster, a pipeline deploys to it
                "namespace": DEFAULT_NAMESPACE,
                "predictor_image": DEFAULT_PREDICTOR_IMAGE,
                "service_account": base.service_account,
                "deployment_mode": base.deployment_mode,
                "min_replicas": base.min_replicas,
                "max_replicas": base.max_replicas,
                "arch_placement": base.arch_placement,
                "cpu_request": base.cpu_request,
                "cpu_limit": base.cpu_limit,
                "memory_request": base.memory_request,
                "memory_limit": base.memory_limit,
                "ready_timeout_s": READY_TIMEOUT_S,
                "allow_unsigned": base.allow_unsigned,
                **UNSET_SPELLINGS,
            },
        ),
    }


@pytest.mark.parametrize("step", ["ingest", "train", "evaluate", "register", "optimize", "deploy"])
def test_component_signature_defaults_equal_their_source(step: str) -> None:
    component, expected = expected_component_defaults()[step]
    found = signature_defaults(component)
    assert set(found) == set(expected), f"components/{step}/component.py: defaulted parameters changed"
    wrong = {name: (found[name], want) for name, want in expected.items() if found[name] != want}
    assert not wrong, f"components/{step}/component.py: (literal, source) {wrong}"


def test_deploy_component_unset_spellings_mean_the_spec_defaults() -> None:
    """The deploy step's "" / 0 / -1 defaults, translated as the step does, are exactly the spec's defaults."""
    from components.deploy.deploy import pipeline_serving_options

    found = signature_defaults(deploy_component)
    options = pipeline_serving_options(**{k: found[k] for k in inspect.signature(pipeline_serving_options).parameters})
    canary = found["canary_traffic_percent"]
    assert spec(**options, canary_traffic_percent=None if canary < 0 else canary) == spec()


# ---- Helm values -------------------------------------------------------------------------------------
def test_helm_values_equal_their_source() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    isvc = values["inferenceService"]
    base = spec()
    pairs: dict[str, tuple[Any, Any]] = {  # values.yaml key: (value, source)
        "inferenceService.image": (f"{isvc['image']['repository']}:{isvc['image']['tag'] or app_version}", base.image),
        "inferenceService.resources": (
            isvc["resources"],
            {
                "requests": {"cpu": base.cpu_request, "memory": base.memory_request},
                "limits": {"cpu": base.cpu_limit, "memory": base.memory_limit},
            },
        ),
        "inferenceService.minReplicas": (isvc["minReplicas"], base.min_replicas),
        "inferenceService.maxReplicas": (isvc["maxReplicas"], base.max_replicas),
        "inferenceService.deploymentMode": (isvc["deploymentMode"], base.deployment_mode),
        "inferenceService.canaryTrafficPercent": (isvc["canaryTrafficPercent"], base.canary_traffic_percent),
        "inferenceService.scaleTarget": (isvc["scaleTarget"], base.scale_target),
        "inferenceService.scaleMetric": (isvc["scaleMetric"], base.scale_metric),
        "inferenceService.tmpSizeLimit": (isvc["tmpSizeLimit"], base.tmp_size_limit),
        "inferenceService.prometheusScraping": (isvc["prometheusScraping"], base.enable_prometheus_scraping),
        "inferenceService.nodeSelector": (isvc["nodeSelector"], base.node_selector),
        "inferenceService.threads": (isvc["threads"], base.torch_threads),  # None: derived from the CPU limit
        # The `python -m serving` flags the chart sets: the port, also the InferenceService's; others only
        # through extraArgs, empty by default.
        "inferenceService.httpPort": (isvc["httpPort"], ServeConfig.http_port),
        "inferenceService.extraArgs": (isvc["extraArgs"], []),
        "inferenceService.name": (isvc["name"], isvc_name(DEFAULT_MODEL_NAME)),
        "model.name": (values["model"]["name"], DEFAULT_MODEL_NAME),
        "serviceAccounts.predictor.name": (values["serviceAccounts"]["predictor"]["name"], base.service_account),
        "s3.pipelineSecretName": (values["s3"]["pipelineSecretName"], PIPELINE_S3_SECRET),
        "s3.predictorSecretName": (values["s3"]["predictorSecretName"], DEFAULT_S3_SECRET),
        "signing.publicKeyConfigMap": (values["signing"]["publicKeyConfigMap"], SIGNING_PUBLIC_CONFIG_MAP),
        "signing.allowUnsigned": (values["signing"]["allowUnsigned"], base.allow_unsigned),
        **{f"security.{k}": (values["security"][k], RUN_AS_USER) for k in ("runAsUser", "runAsGroup", "fsGroup")},
    }
    wrong = {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}
    assert not wrong, f"helm/tsr-platform/values.yaml: (value, source) {wrong}"
