"""The committed IR YAML is what the code compiles to, and it carries what a cluster needs."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.compile import COMPILED, compile_pipeline


def test_compiled_pipeline_is_up_to_date(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "p.yaml")
    assert COMPILED.is_file(), "run `make compile` and commit pipelines/compiled/"
    assert fresh.read_text() == COMPILED.read_text(), "pipelines/compiled is stale: run `make compile`"


def test_compiled_pipeline_structure(tmp_path: Path) -> None:
    docs = list(
        yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", image="registry.example/tsr:1.2.3").read_text())
    )
    spec, platform = docs[0], docs[1]
    executors = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"registry.example/tsr:1.2.3"}
    for executor in executors.values():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command, "components must not pip install at run time"
    tasks = spec["root"]["dag"]["tasks"]
    assert {"ingest-component", "train-component", "evaluate-component", "condition-1"} <= set(tasks)
    condition = tasks["condition-1"]["triggerPolicy"]["condition"]
    assert "evaluate-component-Output" in condition and "pass" in condition
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert {"register-component", "deploy-component"} <= set(inner)
    # MinIO credentials reach steps only as Secret-backed env vars, never as parameters.
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = [env for ex in k8s.values() for env in ex.get("secretAsEnv", [])]
    assert secrets and all(s["secretName"] == "tsr-s3-credentials" or s.get("secretNameParameter") for s in secrets)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not any("secret" in name or "access" in name for name in params)


def test_serving_parameters_reach_the_deploy_step(tmp_path: Path) -> None:
    """Every serving knob of `tsr deploy` is a run parameter wired to the deploy step (both take their defaults
    from InferenceServiceSpec: tests/test_defaults.py)."""
    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    deploy = spec["components"]["comp-condition-1"]["dag"]["tasks"]["deploy-component"]["inputs"]["parameters"]
    wiring = {
        "deployment_mode": "deployment_mode",
        "canary_traffic_percent": "canary_traffic_percent",
        "service_account": "serving_service_account",
        "min_replicas": "serving_min_replicas",
        "max_replicas": "serving_max_replicas",
        "scale_metric": "serving_scale_metric",
        "scale_target": "serving_scale_target",
        "arch": "serving_arch",
        "arch_placement": "serving_arch_placement",
        "tolerations": "serving_tolerations",
        "cpu_request": "serving_cpu_request",
        "cpu_limit": "serving_cpu_limit",
        "memory_request": "serving_memory_request",
        "memory_limit": "serving_memory_limit",
        "ready_timeout_s": "deploy_timeout_s",
    }
    for step_input, run_param in wiring.items():
        source = deploy[step_input]["componentInputParameter"]
        assert source == f"pipelinechannel--{run_param}", step_input
        assert run_param in params, run_param
