"""The training pipeline: ingest -> train -> evaluate/gate -> (pass) register -> deploy.

One definition for both modes: the KFP backend runs its compiled IR (pipelines/compiled/),
`pipelines.local_run` runs the very same function with kfp.local.SubprocessRunner.
"""

from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Artifact

from components.deploy.component import deploy_component
from components.evaluate.component import evaluate_component
from components.factory import DEFAULT_COMPONENT_IMAGE, containerized
from components.ingest.component import ingest_component
from components.register.component import register_component
from components.train.component import train_component

PIPELINE_NAME = "tsr-training"
# The Kubernetes Secret whose keys become the store's environment variables in each step.
S3_SECRET = "tsr-s3-credentials"
S3_SECRET_ENV = {
    "endpoint": "TSR_S3_ENDPOINT",
    "accesskey": "TSR_S3_ACCESS_KEY",
    "secretkey": "TSR_S3_SECRET_KEY",
    "secure": "TSR_S3_SECURE",
}


class PipelineOutputs(NamedTuple):
    """What a run reports back: the gate decision and the evaluation (metrics, champion, reason)."""

    gate: str
    evaluation: Artifact


def build_pipeline(image: str = DEFAULT_COMPONENT_IMAGE, use_k8s_secret: bool = True) -> Any:
    """Build the pipeline with every step running in `image` (registry and tag are configurable).

    `use_k8s_secret` attaches the MinIO Secret through kfp-kubernetes; the local runner turns it
    off because kfp.local has no Kubernetes and hands the store over through the environment.
    """
    ingest_op = containerized(ingest_component, image)
    train_op = containerized(train_component, image)
    evaluate_op = containerized(evaluate_component, image)
    register_op = containerized(register_component, image)
    deploy_op = containerized(deploy_component, image)

    def with_store(task: Any) -> Any:
        if use_k8s_secret:
            kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_ENV)
        return task

    @dsl.pipeline(name=PIPELINE_NAME, description="GTSRB traffic-sign classifier: data to served model")
    def training_pipeline(
        data_source: str,
        model_name: str = "gtsrb-classifier",
        layout: str = "auto",
        val_fraction: float = 0.2,
        max_groups_per_class: int = 0,
        download: bool = False,
        seed: int = 0,
        arch: str = "tsrnet",
        epochs: int = 18,
        batch_size: int = 256,
        lr: float = 0.2,
        threads: int = 0,
        min_accuracy: float = 0.95,
        champion_tolerance: float = 0.005,
        test_data: str = "",
        deploy_mode: str = "cluster",
        namespace: str = "tsr",
        predictor_image: str = "ghcr.io/tsr-platform/tsr-predictor:0.1.0",
        run_id: str = "",
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
        train = train_op(
            dataset=ingest.outputs["dataset"],
            arch=arch,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            threads=threads,
        ).set_display_name("train")
        train.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("8Gi")
        evaluate = with_store(
            evaluate_op(
                dataset=ingest.outputs["dataset"],
                model=train.outputs["model"],
                model_name=model_name,
                min_accuracy=min_accuracy,
                champion_tolerance=champion_tolerance,
                test_data=test_data,
            )
        ).set_display_name("evaluate & gate")
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
            register.set_caching_options(False)
            deploy = with_store(
                deploy_op(
                    model_uri=register.output,
                    model_name=model_name,
                    mode=deploy_mode,
                    namespace=namespace,
                    predictor_image=predictor_image,
                )
            ).set_display_name("deploy")
            deploy.set_caching_options(False)
        return PipelineOutputs(gate=evaluate.outputs["Output"], evaluation=evaluate.outputs["evaluation"])

    return training_pipeline
