"""KFP wrapper for deployment: an InferenceService in a cluster, or the local predictor."""

from kfp.dsl import Artifact, Output


def deploy_component(
    model_uri: str,
    manifest: Output[Artifact],
    model_name: str = "gtsrb-classifier",
    mode: str = "cluster",
    namespace: str = "tsr",
    predictor_image: str = "ghcr.io/tsr-platform/tsr-predictor:0.1.0",
) -> str:
    """Returns the endpoint URL ("" when only a manifest is written)."""
    from pathlib import Path

    from components.deploy.deploy import deploy
    from tsr.config import explicit_store_config, state_dir

    result = deploy(
        mode,
        model_uri,
        model_name,
        namespace=namespace,
        predictor_image=predictor_image,
        state_dir=state_dir(),
        store=explicit_store_config(),
        manifest_path=Path(manifest.path),
    )
    print(f"deploy ({result.mode}): {result.endpoint or 'manifest written'}", flush=True)
    return result.endpoint
