"""KFP wrapper for deployment: an InferenceService in a cluster, or the local predictor.

The serving parameters are the ones `tsr deploy` takes, as scalars a person can type into the
Kubeflow UI: "" or 0 means KServe's default, -1 no canary, lists are comma-separated. Their
defaults equal `InferenceServiceSpec`'s; they are literals because kfp.local packages this function by
its source, and tests/test_defaults.py holds them to the spec.
"""

from kfp.dsl import Artifact, Output


def deploy_component(
    model_uri: str,
    manifest: Output[Artifact],
    model_name: str = "gtsrb-classifier",
    mode: str = "cluster",
    namespace: str = "tsr",
    predictor_image: str = "ghcr.io/tsr-platform/tsr-predictor:0.1.0",
    service_account: str = "tsr-predictor",
    deployment_mode: str = "Standard",
    canary_traffic_percent: int = -1,
    min_replicas: int = 1,
    max_replicas: int = 3,
    scale_metric: str = "",
    scale_target: int = 0,
    arch: str = "",
    arch_placement: str = "required",
    tolerations: str = "",
    cpu_request: str = "500m",
    cpu_limit: str = "2",
    memory_request: str = "1Gi",
    memory_limit: str = "2Gi",
    ready_timeout_s: float = 600.0,
    allow_unsigned: bool = False,
) -> str:
    """Returns the endpoint URL ("" when only a manifest is written).

    The InferenceService verifies the version's signature with the public key of the ConfigMap
    tsr-model-signing-public; `allow_unsigned` is the operator's opt-in to serve unsigned versions too.
    """
    from pathlib import Path

    from components.deploy.deploy import deploy, pipeline_serving_options
    from tsr.core.config import explicit_store_config, state_dir

    options = pipeline_serving_options(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        scale_metric=scale_metric,
        scale_target=scale_target,
        arch=arch,
        arch_placement=arch_placement,
        tolerations=tolerations,
        cpu_request=cpu_request,
        cpu_limit=cpu_limit,
        memory_request=memory_request,
        memory_limit=memory_limit,
        allow_unsigned=allow_unsigned,
    )
    result = deploy(
        mode,
        model_uri,
        model_name,
        namespace=namespace,
        predictor_image=predictor_image,
        service_account=service_account,
        deployment_mode=deployment_mode,
        canary_traffic_percent=None if canary_traffic_percent < 0 else canary_traffic_percent,
        cluster_ready_timeout_s=ready_timeout_s,
        spec_options=options,
        state_dir=state_dir(),
        store=explicit_store_config(),
        manifest_path=Path(manifest.path),
    )
    print(f"deploy ({result.mode}): {result.action}; {result.endpoint or 'manifest written'}", flush=True)
    return result.endpoint
