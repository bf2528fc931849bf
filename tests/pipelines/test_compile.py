"""The committed IR YAML is what the code compiles to, and it carries what a cluster needs."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.compile import COMPILED, compile_pipeline
from tsr.core.signing import ENV_PUBLIC_KEY, ENV_SIGNING_KEY
from tsr.kube.spec import (
    SIGNING_KEY_DIR,
    SIGNING_KEY_PATH,
    SIGNING_PUBLIC_CONFIG_MAP,
    SIGNING_PUBLIC_KEY_DIR,
    SIGNING_PUBLIC_KEY_PATH,
    SIGNING_SECRET,
)


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
        "allow_unsigned": "serving_allow_unsigned",
    }
    for step_input, run_param in wiring.items():
        source = deploy[step_input]["componentInputParameter"]
        assert source == f"pipelinechannel--{run_param}", step_input
        assert run_param in params, run_param


def test_signing_keys_reach_exactly_the_steps_that_use_them(tmp_path: Path) -> None:
    """The register steps mount the private-key Secret and name its file in $TSR_SIGNING_KEY; the evaluate steps
    (they fetch the champion) mount the public-key ConfigMap and name it in $TSR_SIGNING_PUBLIC_KEY. No other
    step sees either, and the private key reaches no step but register."""
    spec, platform = list(yaml.safe_load_all(COMPILED.read_text()))[:2]
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    register = {name for name in executors if name.startswith("exec-register-component")}
    evaluate = {name for name in executors if name.startswith("exec-evaluate-component")}
    assert len(register) == 2 and len(evaluate) == 2  # the model's steps and the optimized variant's
    for name, executor in executors.items():
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        secrets = k8s.get(name, {}).get("secretAsVolume", [])
        config_maps = k8s.get(name, {}).get("configMapAsVolume", [])
        if name in register:
            assert env == {ENV_SIGNING_KEY: SIGNING_KEY_PATH}, name
            assert [(v["secretName"], v["mountPath"], v["optional"]) for v in secrets] == [
                (SIGNING_SECRET, SIGNING_KEY_DIR, False)
            ], name
            assert SIGNING_KEY_PATH.startswith(SIGNING_KEY_DIR + "/")
        else:
            assert ENV_SIGNING_KEY not in env and not secrets, name
        if name in evaluate:
            assert env == {ENV_PUBLIC_KEY: SIGNING_PUBLIC_KEY_PATH}, name
            assert [(v["configMapName"], v["mountPath"], v["optional"]) for v in config_maps] == [
                (SIGNING_PUBLIC_CONFIG_MAP, SIGNING_PUBLIC_KEY_DIR, False)
            ], name
            assert SIGNING_PUBLIC_KEY_PATH.startswith(SIGNING_PUBLIC_KEY_DIR + "/")
        else:
            assert ENV_PUBLIC_KEY not in env and not config_maps, name
    # The opt-ins for unsigned versions are run parameters, off by default: the predictor's and the gate's.
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["serving_allow_unsigned"]["defaultValue"] is False
    assert params["allow_unsigned_champion"]["defaultValue"] is False
    gate = spec["root"]["dag"]["tasks"]["evaluate-component"]["inputs"]["parameters"]["allow_unsigned"]
    assert gate == {"componentInputParameter": "allow_unsigned_champion"}
    variant = spec["components"]["comp-condition-2"]["dag"]["tasks"]["evaluate-component-2"]["inputs"]["parameters"]
    assert variant["allow_unsigned"] == {"componentInputParameter": "pipelinechannel--allow_unsigned_champion"}


def test_local_pipeline_holds_no_kubernetes_keys(tmp_path: Path) -> None:
    """kfp.local has no Kubernetes: the local build mounts nothing and signs with the local key pair."""
    from kfp import compiler

    from pipelines.training_pipeline import build_pipeline

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pipeline(use_k8s_secret=False), str(out))
    text = out.read_text()
    assert ENV_SIGNING_KEY not in text and SIGNING_SECRET not in text and SIGNING_PUBLIC_CONFIG_MAP not in text
