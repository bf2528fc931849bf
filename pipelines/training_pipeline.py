"""The training pipeline: ingest -> train -> evaluate/gate -> (pass) register -> deploy.

One definition for both modes: the KFP backend runs its compiled IR (pipelines/compiled/),
`pipelines.local_run` runs the very same function with kfp.local.SubprocessRunner.

Where and how each step runs on a cluster (node selectors, node affinity, tolerations, requests/limits,
retries, caching) is a typed `Placement`, applied through kfp-kubernetes and the task API at build time,
so it lands in the compiled IR and is reviewed like code.
"""

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Markdown

from components.deploy.component import deploy_component
from components.evaluate.component import evaluate_component
from components.evaluate.config import GateConfig
from components.factory import DEFAULT_COMPONENT_IMAGE, Packaging, kfp_component
from components.ingest.component import ingest_component
from components.optimize.component import optimize_component
from components.register.component import register_component
from components.train.component import train_component
from components.train.config import TrainConfig
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.core.signing import ENV_PUBLIC_KEY, ENV_SIGNING_KEY, Trust
from tsr.kube.inference_service import PIPELINE_S3_SECRET as S3_SECRET
from tsr.kube.inference_service import PIPELINE_S3_SECRET_ENV as S3_SECRET_ENV
from tsr.kube.labels import OS_LABEL
from tsr.kube.placement import PREFERRED_WEIGHT, Toleration, arch_expression, check_arch
from tsr.kube.spec import (
    DEFAULT_NAMESPACE,
    DEFAULT_PREDICTOR_IMAGE,
    READY_TIMEOUT_S,
    SIGNING_KEY_DIR,
    SIGNING_KEY_PATH,
    SIGNING_PUBLIC_CONFIG_MAP,
    SIGNING_PUBLIC_KEY_DIR,
    SIGNING_PUBLIC_KEY_PATH,
    SIGNING_SECRET,
    InferenceServiceSpec,
)

PIPELINE_NAME = "tsr-training"
# The deploy step's own defaults: its spellings of "unset" for the Kubeflow UI ("" / 0 / -1) and its mode.
_DEPLOY_STEP = {name: p.default for name, p in inspect.signature(deploy_component).parameters.items()}
STEPS = ("ingest", "train", "evaluate", "register", "deploy")
# Steps that run only when a pipeline parameter asks for them (`optimize`); placed like the others.
OPTIONAL_STEPS = ("optimize",)
# The steps that hold a model-signing key in a cluster (tsr.core.signing): register signs what it publishes with
# the private key, evaluate verifies the champion it fetches from the registry with the public key. No other
# step loads a registry version (deploy creates the InferenceService; its predictor verifies on its own).
SIGNING_STEPS = ("register",)
VERIFYING_STEPS = ("evaluate",)


@dataclass(frozen=True)
class StepResources:
    """One step's pod: what it asks of the scheduler, and whether KFP may retry or reuse it.

    Empty strings leave a request/limit unset. CPU limits are off by default: a CPU limit only
    throttles (it never protects the node), while a memory limit stops a runaway step early.
    """

    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    retries: int = 0
    cache: bool = True
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")


def _default_steps() -> dict[str, StepResources]:
    # Retries only where a rerun is harmless: ingest rewrites its own outputs, register writes a new
    # immutable version (a half-written one has no SHA256SUMS and is ignored), deploy applies the same
    # object again. Train is not retried: a failure there is almost always deterministic (OOM, bad data)
    # and a rerun costs the whole training time. Evaluate, register and deploy are never cached: the gate
    # compares against the registry's *current* champion, and register/deploy have side effects.
    return {
        "ingest": StepResources(cpu_request="1", memory_request="2Gi", memory_limit="4Gi", retries=2, cache=True),
        "train": StepResources(cpu_request="2", memory_request="4Gi", memory_limit="8Gi", retries=0, cache=True),
        "evaluate": StepResources(cpu_request="1", memory_request="2Gi", memory_limit="4Gi", cache=False),
        "register": StepResources(cpu_request="500m", memory_request="1Gi", memory_limit="2Gi", retries=3, cache=False),
        "deploy": StepResources(cpu_request="250m", memory_request="512Mi", memory_limit="1Gi", retries=3, cache=False),
        # Deterministic given its inputs (seeded calibration sample), so cached like train; its latency
        # numbers are those of the node it ran on.
        "optimize": StepResources(cpu_request="2", memory_request="2Gi", memory_limit="4Gi", retries=0, cache=True),
    }


@dataclass(frozen=True)
class Placement:
    """Where and how every step runs on a cluster; `build_pipeline` applies it, the compiled IR carries it.

    - `os`: `kubernetes.io/os` node selector on every step ("" = none).
    - `train_arch`: `kubernetes.io/arch` for the train step ("" = any node; e.g. "arm64" for Graviton/Ampere
      pools, which needs a multi-arch component image). `train_arch_required=False` makes it a preference
      (weighted node affinity) instead of a hard requirement.
    - `tolerations`: on every step; a step's own `StepResources.tolerations` are added to these.
    - `steps`: per-step requests/limits, retries and caching (see `_default_steps` for why the defaults).
    - `retry_backoff*`: the backoff of every retried step (first wait, growth factor, give-up horizon).
    """

    os: str = "linux"
    train_arch: str = ""
    train_arch_required: bool = True
    tolerations: tuple[Toleration, ...] = ()
    steps: Mapping[str, StepResources] = field(default_factory=_default_steps)
    retry_backoff: str = "30s"
    retry_backoff_factor: float = 2.0
    retry_backoff_max: str = "1800s"

    def __post_init__(self) -> None:
        unknown = set(self.steps) - set(STEPS) - set(OPTIONAL_STEPS)
        if unknown:
            raise ValueError(f"unknown step(s) {sorted(unknown)} in placement; steps are {STEPS + OPTIONAL_STEPS}")
        if self.train_arch:
            check_arch(self.train_arch)

    def step(self, name: str) -> StepResources:
        return self.steps.get(name, StepResources())

    def with_step(self, name: str, **changes: Any) -> "Placement":
        """A copy with one step's settings changed, e.g. `placement.with_step("train", memory_limit="16Gi")`."""
        return replace(self, steps={**self.steps, name: replace(self.step(name), **changes)})

    @classmethod
    def arm64_training(cls, taint: str = "arch=arm64:NoSchedule", **changes: Any) -> "Placement":
        """Train on arm64 nodes only, tolerating the taint such pools usually carry; other steps run anywhere."""
        base = cls(train_arch="arm64", **changes)
        train = base.step("train")
        return base.with_step("train", tolerations=(*train.tolerations, Toleration.parse(taint)))

    @classmethod
    def local(cls) -> "Placement":
        """For kfp.local: no node constraints, resources or retries (it has no scheduler, and would sleep
        through backoffs on a failure); the caching flags stay, so `enable_caching` behaves like a cluster."""
        return cls(os="", steps={name: StepResources(cache=spec.cache) for name, spec in _default_steps().items()})


def apply_placement(task: Any, name: str, placement: Placement, kubernetes_platform: bool = True) -> Any:
    """Apply one step's placement to its task; `kubernetes_platform=False` skips the kfp-kubernetes parts."""
    spec = placement.step(name)
    if spec.cpu_request:
        task.set_cpu_request(spec.cpu_request)
    if spec.cpu_limit:
        task.set_cpu_limit(spec.cpu_limit)
    if spec.memory_request:
        task.set_memory_request(spec.memory_request)
    if spec.memory_limit:
        task.set_memory_limit(spec.memory_limit)
    if spec.retries:
        task.set_retry(
            num_retries=spec.retries,
            backoff_duration=placement.retry_backoff,
            backoff_factor=placement.retry_backoff_factor,
            backoff_max_duration=placement.retry_backoff_max,
        )
    task.set_caching_options(spec.cache)
    if not kubernetes_platform:
        return task
    selector = {OS_LABEL: placement.os} if placement.os else {}
    for key, value in {**selector, **spec.node_selector}.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if name == "train" and placement.train_arch:
        kubernetes.add_node_affinity(
            task,
            match_expressions=[arch_expression([placement.train_arch])],
            weight=None if placement.train_arch_required else PREFERRED_WEIGHT,
        )
    for toleration in (*placement.tolerations, *spec.tolerations):
        kubernetes.add_toleration(
            task,
            key=toleration.key,
            operator=toleration.operator,
            value=toleration.value or None,
            effect=toleration.effect,
            toleration_seconds=toleration.toleration_seconds,
        )
    return task


class PipelineOutputs(NamedTuple):
    """What a run reports back: the gate decision, the evaluation (metrics, champion, reason), and the run
    report (HTML) with its key numbers (Markdown), so `tsr demo` and a run's outputs page can point at them."""

    gate: str
    evaluation: Artifact
    report: HTML
    summary: Markdown


def build_pipeline(
    image: str = DEFAULT_COMPONENT_IMAGE,
    use_k8s_secret: bool = True,
    placement: Placement | None = None,
    packaging: Packaging = "containerized",
) -> Any:
    """Build the pipeline with every step running in `image` (registry and tag are configurable).

    `packaging`: `containerized` for a cluster (the image is each step's `target_image`; the IR
    carries no code), `lightweight` for kfp.local (components/factory.py says why both exist).

    `use_k8s_secret` attaches the MinIO Secret, the model-signing keys and the Kubernetes placement (node
    selectors, affinity, tolerations) through kfp-kubernetes; the local runner turns it off because kfp.local
    has no Kubernetes and hands the store over through the environment (and signs with the local key pair of
    tsr.core.signing). `placement` defaults to `Placement()`.

    The signing keys: the register steps mount the Secret `tsr-model-signing` (the private key) read-only,
    $TSR_SIGNING_KEY naming its file; the evaluate steps mount the ConfigMap `tsr-model-signing-public` (the
    public key), $TSR_SIGNING_PUBLIC_KEY naming its file.
    """
    placement = placement or Placement()
    ingest_op = kfp_component(ingest_component, image, packaging)
    train_op = kfp_component(train_component, image, packaging)
    evaluate_op = kfp_component(evaluate_component, image, packaging)
    register_op = kfp_component(register_component, image, packaging)
    deploy_op = kfp_component(deploy_component, image, packaging)
    optimize_op = kfp_component(optimize_component, image, packaging)

    def with_store(task: Any) -> Any:
        if use_k8s_secret:
            kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_ENV)
        return task

    def placed(task: Any, name: str) -> Any:  # the step's placement and the signing key it holds
        with_signing_keys(task, name)
        return apply_placement(task, name, placement, kubernetes_platform=use_k8s_secret)

    def with_signing_keys(task: Any, name: str) -> Any:
        if not use_k8s_secret:
            return task
        if name in SIGNING_STEPS:
            kubernetes.use_secret_as_volume(task, secret_name=SIGNING_SECRET, mount_path=SIGNING_KEY_DIR)
            task.set_env_variable(ENV_SIGNING_KEY, SIGNING_KEY_PATH)
        if name in VERIFYING_STEPS:
            kubernetes.use_config_map_as_volume(
                task, config_map_name=SIGNING_PUBLIC_CONFIG_MAP, mount_path=SIGNING_PUBLIC_KEY_DIR
            )
            task.set_env_variable(ENV_PUBLIC_KEY, SIGNING_PUBLIC_KEY_PATH)
        return task

    # The parameters' defaults are the typed configs' (TrainConfig, GateConfig, InferenceServiceSpec) and, for
    # the deploy step's "unset" spellings, that step's: a pipeline function is evaluated, never serialized, so
    # they reach the compiled IR as the values they name.
    @dsl.pipeline(name=PIPELINE_NAME, description="GTSRB traffic-sign classifier: data to served model")
    def training_pipeline(
        data_source: str,
        model_name: str = DEFAULT_MODEL_NAME,
        layout: str = "auto",
        val_fraction: float = 0.2,
        max_groups_per_class: int = 0,
        download: bool = False,
        seed: int = TrainConfig.seed,
        arch: str = TrainConfig.arch,
        epochs: int = TrainConfig.epochs,
        batch_size: int = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        threads: int = TrainConfig.threads,
        min_accuracy: float = GateConfig.min_accuracy,
        champion_tolerance: float = GateConfig.champion_tolerance,
        min_class_accuracy: float = GateConfig.min_class_accuracy,
        test_data: str = "",
        allow_unsigned_champion: bool = Trust.allow_unsigned,
        deploy_mode: str = _DEPLOY_STEP["mode"],
        namespace: str = DEFAULT_NAMESPACE,
        predictor_image: str = DEFAULT_PREDICTOR_IMAGE,
        # How the InferenceService serves (deploy_mode=cluster/manifest); the deploy step's parameters,
        # "" / 0 = KServe's default, -1 = no canary, lists comma-separated (components/deploy/README.md).
        deployment_mode: str = InferenceServiceSpec.deployment_mode,
        canary_traffic_percent: int = _DEPLOY_STEP["canary_traffic_percent"],
        serving_service_account: str = InferenceServiceSpec.service_account,
        serving_min_replicas: int = InferenceServiceSpec.min_replicas,
        serving_max_replicas: int = InferenceServiceSpec.max_replicas,
        serving_scale_metric: str = _DEPLOY_STEP["scale_metric"],
        serving_scale_target: int = _DEPLOY_STEP["scale_target"],
        serving_arch: str = _DEPLOY_STEP["arch"],
        serving_arch_placement: str = InferenceServiceSpec.arch_placement,
        serving_tolerations: str = _DEPLOY_STEP["tolerations"],
        serving_cpu_request: str = InferenceServiceSpec.cpu_request,
        serving_cpu_limit: str = InferenceServiceSpec.cpu_limit,
        serving_memory_request: str = InferenceServiceSpec.memory_request,
        serving_memory_limit: str = InferenceServiceSpec.memory_limit,
        deploy_timeout_s: float = READY_TIMEOUT_S,
        serving_allow_unsigned: bool = InferenceServiceSpec.allow_unsigned,
        run_id: str = "",
        optimize: str = "",
    ) -> PipelineOutputs:
        ingest = with_store(
            ingest_op(
                source=data_source,
                layout=layout,
                val_fraction=val_fraction,
                seed=seed,
                max_groups_per_class=max_groups_per_class,
                download=download,
            )
        ).set_display_name("ingest")
        placed(ingest, "ingest")
        train = train_op(
            dataset=ingest.outputs["dataset"],
            arch=arch,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            threads=threads,
        ).set_display_name("train")
        placed(train, "train")
        evaluate = with_store(
            evaluate_op(
                dataset=ingest.outputs["dataset"],
                model=train.outputs["model"],
                model_name=model_name,
                min_accuracy=min_accuracy,
                champion_tolerance=champion_tolerance,
                min_class_accuracy=min_class_accuracy,
                test_data=test_data,
                allow_unsigned=allow_unsigned_champion,
            )
        ).set_display_name("evaluate & gate")
        placed(evaluate, "evaluate")
        with dsl.If(evaluate.outputs["Output"] == "pass", name="gate-passed"):
            register = with_store(
                register_op(
                    model=train.outputs["model"],
                    dataset=ingest.outputs["dataset"],
                    evaluation=evaluate.outputs["evaluation"],
                    model_name=model_name,
                    run_id=run_id,
                )
            ).set_display_name("register")
            placed(register, "register")
            deploy = with_store(
                deploy_op(
                    model_uri=register.output,
                    model_name=model_name,
                    mode=deploy_mode,
                    namespace=namespace,
                    predictor_image=predictor_image,
                    service_account=serving_service_account,
                    deployment_mode=deployment_mode,
                    canary_traffic_percent=canary_traffic_percent,
                    min_replicas=serving_min_replicas,
                    max_replicas=serving_max_replicas,
                    scale_metric=serving_scale_metric,
                    scale_target=serving_scale_target,
                    arch=serving_arch,
                    arch_placement=serving_arch_placement,
                    tolerations=serving_tolerations,
                    cpu_request=serving_cpu_request,
                    cpu_limit=serving_cpu_limit,
                    memory_request=serving_memory_request,
                    memory_limit=serving_memory_limit,
                    ready_timeout_s=deploy_timeout_s,
                    allow_unsigned=serving_allow_unsigned,
                )
            ).set_display_name("deploy")
            placed(deploy, "deploy")
            # Optional: an int8 or frozen-TorchScript variant of the model just registered, evaluated by
            # the same gate against the champion (that fp32 model, so the tolerance bounds what optimizing
            # may cost) and registered as its own version without moving the alias. Placement: the
            # "optimize" step's own (2 CPU, 2Gi/4Gi, cached), the evaluate and register steps' for theirs.
            with dsl.If(optimize != "", name="optimize-requested"):
                optimize_task = optimize_op(
                    model=train.outputs["model"], dataset=ingest.outputs["dataset"], variant=optimize
                ).set_display_name("optimize")
                placed(optimize_task, "optimize")
                evaluate_variant = with_store(
                    evaluate_op(
                        dataset=ingest.outputs["dataset"],
                        model=optimize_task.outputs["optimized"],
                        model_name=model_name,
                        min_accuracy=min_accuracy,
                        champion_tolerance=champion_tolerance,
                        min_class_accuracy=min_class_accuracy,
                        test_data=test_data,
                        allow_unsigned=allow_unsigned_champion,
                    )
                ).set_display_name("evaluate variant")
                evaluate_variant.after(register)  # the champion it compares with is this run's fp32 model
                placed(evaluate_variant, "evaluate")
                with dsl.If(evaluate_variant.outputs["Output"] == "pass", name="variant-gate-passed"):
                    register_variant = with_store(
                        register_op(
                            model=optimize_task.outputs["optimized"],
                            dataset=ingest.outputs["dataset"],
                            evaluation=evaluate_variant.outputs["evaluation"],
                            model_name=model_name,
                            run_id=run_id,
                            promote=False,
                        )
                    ).set_display_name("register variant")
                    placed(register_variant, "register")
        return PipelineOutputs(
            gate=evaluate.outputs["Output"],
            evaluation=evaluate.outputs["evaluation"],
            report=evaluate.outputs["report"],
            summary=evaluate.outputs["summary"],
        )

    return training_pipeline
