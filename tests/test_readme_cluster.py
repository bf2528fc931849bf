"""The cluster section of docs/cluster.md (linked from the README), command by command, as a platform
engineer copies it.

Each command of its code block runs here as written, with the reader's own values in place of the
`<placeholders>`, against what can run on these machines: `make -n images` (no Docker engine),
`helm template` for `helm install` (no cluster), real MinIO for `tsr store upload`, the real
compiler, the real `kfp.Client` against the loopback KFP API (tests/pipelines/kfp_fake.py) for
submit/schedule, and `tsr deploy/promote/rollback` up to the point where they need an API server
(their arguments must be accepted: exit 1 "no cluster", never 2). kubectl/curl lines are checked
for the names they use. A command the test does not know fails it, so the document cannot grow an
unchecked step, and what one step produces (service account, bucket, image) is what the next uses.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import Client
from typer.testing import CliRunner

from tests.helm.test_chart import helm
from tests.pipelines.kfp_fake import API, FakeKfp
from tests.test_signing_keys import run_key_command
from tsr.cli import app
from tsr.core.config import StoreConfig
from tsr.core.registry import DEFAULT_MODEL_NAME
from tsr.core.store import open_store
from tsr.kube.inference_service import SIGNING_PUBLIC_CONFIG_MAP, SIGNING_SECRET, isvc_name
from tsr.local.checkout import REPO_ROOT

CLUSTER_DOC = REPO_ROOT / "docs" / "cluster.md"
VERSION = "20261123-140501-3fa2c1"
# What a reader writes in place of each placeholder.
PLACEHOLDERS = {
    "<your kube-prometheus-stack release>": "kps",
    "<version>": VERSION,
}


def cluster_commands() -> list[list[str]]:
    """The section's bash block as argument lists: continuations joined, comments dropped."""
    text = CLUSTER_DOC.read_text()
    section = text[text.index("## Cluster: Kubeflow Pipelines + KServe") :]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start : section.index("```", start)].replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        for placeholder, value in PLACEHOLDERS.items():
            line = line.replace(placeholder, value)
        assert not re.search(r"<[a-z][^>]*>", line), f"docs/cluster.md placeholder the test does not know: {line}"
        words = shlex.split(line.rstrip(" &"), comments=True)
        if words:
            commands.append(words)
    return commands


def test_the_block_is_what_this_test_walks() -> None:
    assert "(docs/cluster.md)" in (REPO_ROOT / "README.md").read_text(), "the README must link the cluster path"
    heads = [" ".join(c[:3]) for c in cluster_commands()]
    assert heads[:2] == ["make images REGISTRY=ghcr.io/you", "helm install tsr-platform"], heads
    assert any(h.startswith(".venv/bin/tsr pipeline submit") for h in heads)
    assert any(h.startswith(".venv/bin/tsr deploy") for h in heads)


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def _params(words: list[str]) -> dict[str, str]:
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--param")


def _tsr(env: dict[str, str], words: list[str]) -> Any:
    assert words[0] == ".venv/bin/tsr"
    return CliRunner().invoke(app, words[1:], env=env)


@pytest.fixture
def isolated_kfp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "TSR_DEBUG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)


def test_every_command_of_the_cluster_section_works_as_written(
    gtsrb_small: Path, minio: StoreConfig, tmp_path: Path, isolated_kfp: None
) -> None:
    env = {
        **minio.env(),
        "TSR_STATE_DIR": str(tmp_path / "state"),
        "KUBECONFIG": str(tmp_path / "no-cluster-kubeconfig"),
    }
    archive = tmp_path / "gtsrb-train-32.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(gtsrb_small / "gtsrb", arcname="gtsrb")
    state: dict[str, Any] = {"signing": set()}
    keys = tmp_path / "operator-keys"  # where the reader runs openssl and kubectl create
    keys.mkdir()
    handled = 0
    with FakeKfp() as kfp:
        for words in cluster_commands():
            line = " ".join(words)
            if words[:2] == ["make", "images"]:
                dry = subprocess.run(["make", "-n", *words[1:]], cwd=REPO_ROOT, capture_output=True, text=True)
                assert dry.returncode == 0, dry.stderr
                registry, tag = (dict(w.split("=", 1) for w in words[2:])[k] for k in ("REGISTRY", "TAG"))
                for image in ("tsr-components", "tsr-predictor"):
                    assert (
                        f"-t {registry}/{image}:{tag} --push" in dry.stdout
                        and f"{registry}/{image}:{tag}" in dry.stdout
                    )
                state["images"] = {
                    "components": f"{registry}/tsr-components:{tag}",
                    "predictor": f"{registry}/tsr-predictor:{tag}",
                }
            elif words[:2] == ["helm", "install"]:
                args = [w for w in words[2:] if w != "--create-namespace"]
                rendered = [
                    d for d in yaml.safe_load_all(helm("template", *args, "--kube-version", "1.30.0").stdout) if d
                ]
                state["namespace"] = _option(words, "-n")
                binding = next(d for d in rendered if d["kind"] == "RoleBinding")
                state["runner"] = binding["subjects"][0]["name"]
                state["secrets"] = {d["metadata"]["name"] for d in rendered if d["kind"] == "Secret"}
                rule = next(d for d in rendered if d["kind"] == "PrometheusRule")
                assert rule["metadata"]["labels"]["release"] == "kps"
            elif words[1:4] == ["store", "upload", "gtsrb-train-32.tar.gz"]:
                result = _tsr(env, [*words[:3], str(archive), *words[4:]])
                assert result.exit_code == 0, result.output
                state["data"] = words[4]
                bucket, _, prefix = words[4].removeprefix("s3://").partition("/")
                assert open_store(minio, bucket).list(prefix + "/")
            elif words[:3] == [".venv/bin/python", "-m", "pipelines.compile"]:
                out = tmp_path / "tsr_training.yaml"
                done = subprocess.run(
                    [sys.executable, *words[1:], "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True
                )
                assert done.returncode == 0, done.stderr
                ir = next(yaml.safe_load_all(out.read_text()))
                images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
                assert images == {_option(words, "--image")} == {state["images"]["components"]}
                state["package"] = out
            elif words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = "token-from-" + value.strip(".") if value == "..." else value
            elif words[1:3] == ["pipeline", "submit"]:
                argv = [*words, "--package", str(state["package"])]
                argv[argv.index("--host") + 1] = kfp.url
                result = _tsr(env, argv)
                assert result.exit_code == 0, result.output
                assert result.stdout.strip().startswith(f"{kfp.url}/#/runs/details/")
                state["submit_flags"] = argv[3:]
                run = next(r for r in kfp.requests if (r.method, r.path) == ("POST", f"{API}/runs")).json()
                assert run["service_account"] == state["runner"], "submit must use the chart's runner account"
                params = run["runtime_config"]["parameters"]
                assert params == _params(words)
                assert params["data_source"] == state["data"] and params["namespace"] == state["namespace"]
                assert params["predictor_image"] == state["images"]["predictor"]
                assert all(r.headers.get("authorization") == f"Bearer {env['KFP_TOKEN']}" for r in kfp.requests)
            elif words[1:3] == ["pipeline", "schedule"]:
                same = words.index("...same")
                result = _tsr(env, [*words[:same], *state["submit_flags"]])
                assert result.exit_code == 0, result.output
                assert "/#/recurringrun/details/" in result.stdout
            elif words[0] == "openssl" or words[:4] == ["kubectl", "-n", state["namespace"], "create"]:
                made = run_key_command(words, keys)  # openssl as written, kubectl create --dry-run=client
                if made is not None:
                    state["signing"].add((made["kind"], made["metadata"]["name"], made["metadata"]["namespace"]))
            elif words[0] in ("kubectl", "curl"):
                name = isvc_name(DEFAULT_MODEL_NAME)
                assert name in line or f"/v1/models/{DEFAULT_MODEL_NAME}:predict" in line, line
                if "port-forward" in line:
                    assert f"svc/{name}-predictor" in line  # KServe's Service for the predictor
            elif words[1] in ("deploy", "promote", "rollback"):
                result = _tsr(env, words)
                # The arguments are accepted (a usage error is 2); what stops it is the missing cluster.
                assert result.exit_code == 1, result.output
                assert "cluster" in result.output.lower() or "kube" in result.output.lower(), result.output
            else:
                pytest.fail(f"docs/cluster.md cluster step not checked by this test: {line}")
            handled += 1
    assert handled == len(cluster_commands()) >= 12
    assert "tsr-s3-credentials" in state["secrets"]
    # the signing keys the compiled pipeline and the InferenceService mount, in the run's namespace
    assert state["signing"] == {
        ("Secret", SIGNING_SECRET, state["namespace"]),
        ("ConfigMap", SIGNING_PUBLIC_CONFIG_MAP, state["namespace"]),
    }
