"""The `tsr` command as a user runs it: a real process, real MinIO, JSON on stdout, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsr.core.config import StoreConfig
from tsr.core.registry import Registry
from tsr.local.checkout import REPO_ROOT

TSR = str(Path(sys.executable).parent / "tsr")


def run_tsr(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [TSR, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_evaluate_contract_on_a_model_directory(tiny_model_dir: Path, gtsrb_small: Path) -> None:
    result = run_tsr("evaluate", "--model", str(tiny_model_dir), "--data", str(gtsrb_small), "--split", "test")
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"accuracy", "macro_f1", "n", "ece"} <= set(line) and 0.0 <= line["ece"] <= 1.0
    assert line["n"] == sum(1 for _ in (gtsrb_small / "gtsrb" / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))
    assert 0.0 <= line["accuracy"] <= 1.0


def test_evaluate_champion_from_minio(tiny_model_dir: Path, gtsrb_small: Path, minio: StoreConfig) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish("gtsrb-classifier", tiny_model_dir, {})
    registry.set_alias("gtsrb-classifier", version)
    by_alias = run_tsr("evaluate", "--model", "champion", "--data", str(gtsrb_small), env=minio.env())
    by_uri = run_tsr(
        "evaluate", "--model", f"s3://models/gtsrb-classifier/{version}", "--data", str(gtsrb_small), env=minio.env()
    )
    a, b = json.loads(by_alias.stdout.splitlines()[-1]), json.loads(by_uri.stdout.splitlines()[-1])
    assert a["accuracy"] == b["accuracy"] and a["model"] == f"s3://models/gtsrb-classifier/{version}"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("s3://", "has no bucket name"),
        ("gs://models/x/y", "unknown URI scheme"),
        ("/definitely/not/here", "no such directory"),
    ],
)
def test_bad_model_argument_fails_clearly(model: str, message: str, gtsrb_small: Path) -> None:
    result = run_tsr("evaluate", "--model", model, "--data", str(gtsrb_small), check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_data_argument_fails_clearly(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run_tsr("evaluate", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope"), check=False)
    assert result.returncode != 0 and "does not exist" in result.stderr


def test_models_list_json(tiny_model_dir: Path, minio: StoreConfig) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish("gtsrb-classifier", tiny_model_dir, {"metrics": {"validation": {"accuracy": 0.5}}})
    registry.set_alias("gtsrb-classifier", version)
    rows = json.loads(run_tsr("models", "list", "--json", env=minio.env()).stdout)
    assert len(rows) == 1
    # The original five keys keep their meaning; the others (macro_f1, variant, lineage...) were added later.
    assert {k: rows[0][k] for k in ("version", "champion", "accuracy", "arch", "uri")} == {
        "version": version,
        "champion": True,
        "accuracy": 0.5,
        "arch": None,
        "uri": f"s3://models/gtsrb-classifier/{version}",
    }
    assert rows[0]["aliases"] == ["champion"] and rows[0]["macro_f1"] is None


def test_help_lists_the_commands() -> None:
    out = run_tsr("--help").stdout
    for command in ("evaluate", "serve", "pipeline", "models", "demo", "store"):
        assert command in out


def test_rollout_commands_refuse_bad_input_and_missing_clusters(tmp_path: Path) -> None:
    """Invalid combinations fail before any cluster access; no cluster is a clear one-line error, not a trace."""
    env = {"KUBECONFIG": str(tmp_path / "none"), "TSR_STATE_DIR": str(tmp_path / "state")}
    uri = "s3://models/gtsrb-classifier/20261123-000000-000000"
    bad = run_tsr("deploy", uri, "--canary-percent", "10", env=env, check=False)
    assert bad.returncode == 2 and "needs deployment_mode 'Knative'" in " ".join(bad.stderr.split())
    for args in (("deploy", uri, "--timeout", "1"), ("promote",), ("rollback",)):
        done = run_tsr(*args, "--kube-config", str(tmp_path / "none"), env=env, check=False)
        assert done.returncode == 1, args
        assert "no Kubernetes cluster configured" in " ".join(done.stderr.split()), done.stderr
        assert "Traceback" not in done.stderr


def test_backend_report_is_json() -> None:
    import platform

    import torch

    report = json.loads(run_tsr("backend").stdout)
    assert report["machine"] == platform.machine()
    assert report["mkldnn_available"] == torch.backends.mkldnn.is_available()


def test_evaluate_refuses_an_unsigned_version_unless_allowed(
    tiny_model_dir: Path, gtsrb_small: Path, minio: StoreConfig, tmp_path: Path
) -> None:
    registry = Registry.from_config(minio)
    version = registry.publish("gtsrb-classifier", tiny_model_dir, {}, sign=False)  # a pre-signing version
    uri = f"s3://models/gtsrb-classifier/{version}"
    # This checkout's code (the venv's `tsr` may be installed from another one) and a cache of this test's own.
    env = {**minio.env(), "PYTHONPATH": str(REPO_ROOT), "TSR_STATE_DIR": str(tmp_path / "state")}
    refused = run_tsr("evaluate", "--model", uri, "--data", str(gtsrb_small), env=env, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"refusing {uri}: unsigned" in refused.stderr, refused.stderr
    allowed = run_tsr("evaluate", "--model", uri, "--data", str(gtsrb_small), "--allow-unsigned", env=env)
    assert json.loads(allowed.stdout.splitlines()[-1])["model"] == uri
    assert "UNSIGNED" in allowed.stderr, allowed.stderr[-2000:]
