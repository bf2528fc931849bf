"""The two packagings of the steps, and the executor config the component image carries.

No image can be built here (no Docker engine), so the containerized form is run the way its
container would run it: the compiled IR's own command and arguments, in a working directory holding
the `kfp_config.ini` that `python -m components.factory` writes at image build time.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import factory
from components.deploy.component import deploy_component
from pipelines.compile import compile_pipeline

URI = "s3://models/gtsrb-classifier/20261123-140501-3fa2c1"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "p.yaml", image="registry.example/tsr:1.2.3")
    spec: dict[str, Any] = next(yaml.safe_load_all(path.read_text()))
    return spec


def test_cluster_ir_holds_no_code_only_the_image_and_a_function_name(compiled: dict[str, Any]) -> None:
    names = {entry.partition(":")[2] for entry in factory.STEP_FUNCTIONS}
    executors = compiled["deploymentSpec"]["executors"].values()
    called = set()
    for executor in executors:
        container = executor["container"]
        assert container["image"] == "registry.example/tsr:1.2.3"
        assert container["command"] == ["python3", "-m", "kfp.dsl.executor_main"]
        args = container["args"]
        called.add(args[args.index("--function_to_execute") + 1])
        assert not any("def " in part or "import " in part for part in container["command"] + args)
    assert called == names, "every compiled step needs an entry in STEP_FUNCTIONS (kfp_config.ini)"


def test_local_packaging_embeds_the_source_and_installs_nothing() -> None:
    step = factory.kfp_component(deploy_component, "registry.example/tsr:1.2.3")
    container = step.component_spec.implementation.container
    assert container.image == "registry.example/tsr:1.2.3"
    source = " ".join(container.command)
    assert "def deploy_component(" in source and "pip install" not in source
    with pytest.raises(ValueError, match="packaging"):
        factory.kfp_component(deploy_component, "x", packaging="wheel")  # type: ignore[arg-type]


def test_executor_config_lists_every_step_through_shims(tmp_path: Path) -> None:
    config_path = factory.write_executor_config(tmp_path / "kfp")
    config = configparser.ConfigParser()
    config.optionxform = str  # type: ignore[assignment,method-assign]  # keep the function names' case
    config.read(config_path)
    entries = dict(config["Components"])
    assert set(entries) == {entry.partition(":")[2] for entry in factory.STEP_FUNCTIONS}
    for name, shim in entries.items():
        assert Path(shim).parent == config_path.parent.resolve() and Path(shim).name == f"{name}.py"
    # Only the shims sit on the executor's sys.path entry: no module of the package can shadow another.
    assert sorted(p.name for p in config_path.parent.iterdir()) == sorted(
        [*(f"{n}.py" for n in entries), "kfp_config.ini"]
    )
    with pytest.raises(ValueError, match="no such step function"):
        factory.write_executor_config(tmp_path / "bad", ["components.deploy.component:no_such_component"])


def _executor_input(compiled: dict[str, Any], out: Path, **values: Any) -> dict[str, Any]:
    """What the KFP launcher hands the deploy step: every parameter (defaults from the IR), output paths."""
    definitions = compiled["components"]["comp-deploy-component"]["inputDefinitions"]["parameters"]
    parameters = {name: d["defaultValue"] for name, d in definitions.items() if "defaultValue" in d}
    parameters.update(values)
    return {
        "inputs": {"parameterValues": parameters},
        "outputs": {
            "artifacts": {
                "manifest": {
                    "artifacts": [
                        {"name": "manifest", "type": {"schemaTitle": "system.Artifact"}, "uri": str(out / "manifest")}
                    ]
                }
            },
            "parameters": {"Output": {"outputFile": str(out / "Output")}},
            "outputFile": str(out / "executor_output.json"),
        },
    }


def test_containerized_step_runs_as_its_container_would(compiled: dict[str, Any], tmp_path: Path) -> None:
    """The deploy step's IR command, run in the image's working directory layout: the executor finds the
    function through kfp_config.ini, gets its parameters and writes its outputs where KFP looks for them."""
    workdir = factory.write_executor_config(tmp_path / "opt-tsr-kfp").parent
    container = compiled["deploymentSpec"]["executors"]["exec-deploy-component"]["container"]
    out = tmp_path / "outputs"
    out.mkdir()
    payload = _executor_input(
        compiled, out, model_uri=URI, mode="manifest", deployment_mode="Knative", canary_traffic_percent=25
    )
    args = [json.dumps(payload) if a == "{{$}}" else a for a in container["args"]]
    command = [sys.executable, *container["command"][1:]]  # python3 of the image = this venv's python
    env = {**os.environ, "TSR_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([*command, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "No existing KFP Config" not in done.stderr
    manifest = yaml.safe_load((out / "manifest").read_text())
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert manifest["spec"]["predictor"]["containers"][0]["env"][0]["value"] == URI
    reported = json.loads((out / "executor_output.json").read_text())  # what the launcher reads back
    assert reported["parameterValues"] == {"Output": ""}  # manifest mode: no endpoint
    assert reported["artifacts"]["manifest"]["artifacts"][0]["uri"] == str(out / "manifest")

    # Without the config (a wrong WORKDIR in the image) the step fails and says what it looked for.
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    failed = subprocess.run([*command, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "kfp_config.ini" in failed.stderr
