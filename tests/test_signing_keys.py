"""The model-signing keys an operator makes (docs/operator-guide.md section 6, docs/cluster.md step 2c) are keys
tsr.core.signing signs and verifies with, in the objects and under the names the pipeline, the chart and the
manifests mount.

The unit test makes the key pair with `cryptography` in the formats the documented openssl commands write (a
SEC1 "EC PRIVATE KEY" PEM, a SubjectPublicKeyInfo "PUBLIC KEY" PEM); the integration test runs the documented
block itself: openssl as written, kubectl with `--dry-run=client -o yaml` (no cluster), then the objects'
data laid out as the kubelet mounts them, and a model signed and verified through the pods' environment.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsr.core.signing import (
    ENV_PUBLIC_KEY,
    ENV_SIGNING_KEY,
    SignatureError,
    Trust,
    sign_directory,
    signing_key,
    verify_directory,
)
from tsr.kube.inference_service import InferenceServiceSpec, build_inference_service
from tsr.kube.render import to_manifest_dict
from tsr.kube.spec import (
    DEFAULT_NAMESPACE,
    SIGNING_KEY_DIR,
    SIGNING_KEY_PATH,
    SIGNING_PUBLIC_CONFIG_MAP,
    SIGNING_PUBLIC_CONFIG_MAP_KEY,
    SIGNING_PUBLIC_KEY_DIR,
    SIGNING_PUBLIC_KEY_PATH,
    SIGNING_SECRET,
    SIGNING_SECRET_KEY,
)
from tsr.local.checkout import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "operator-guide.md"
CLUSTER_DOC = REPO_ROOT / "docs" / "cluster.md"
KUBECTL = REPO_ROOT / ".tools" / "bin" / "kubectl"


def guide_commands() -> list[list[str]]:
    """The bash block of the operator guide's "Model signing keys" section, comments dropped."""
    text = GUIDE.read_text()
    section = text[text.index("## 6. Model signing keys") :]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start : section.index("```", start)].replace("\\\n", " ")
    return [words for line in block.splitlines() if (words := shlex.split(line, comments=True))]


def model_dir(root: Path) -> Path:
    """A directory with a version's kinds of files: signing hashes every file, whatever it holds."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"arch": "tiny", "num_classes": 43}')
    (root / "model.safetensors").write_bytes(os.urandom(4096))
    (root / "model-card.json").write_text('{"name": "gtsrb-classifier"}')
    return root


def test_the_documented_block_uses_the_names_the_cluster_mounts() -> None:
    """The guide's kubectl lines create exactly the objects and keys that tsr/kube/spec.py names (the names the
    compiled pipeline, the chart and the manifests mount), and cluster.md repeats the guide's key lines."""
    commands = guide_commands()
    creates = [c for c in commands if c[0] == "kubectl"]
    assert [c[3:] for c in creates] == [
        ["create", "secret", "generic", SIGNING_SECRET, f"--from-file={SIGNING_SECRET_KEY}"],
        ["create", "configmap", SIGNING_PUBLIC_CONFIG_MAP, f"--from-file={SIGNING_PUBLIC_CONFIG_MAP_KEY}"],
    ]
    assert all(c[1:3] == ["-n", DEFAULT_NAMESPACE] for c in creates)
    assert f"{SIGNING_KEY_DIR}/{SIGNING_SECRET_KEY}" == SIGNING_KEY_PATH
    assert f"{SIGNING_PUBLIC_KEY_DIR}/{SIGNING_PUBLIC_CONFIG_MAP_KEY}" == SIGNING_PUBLIC_KEY_PATH
    cluster = CLUSTER_DOC.read_text()
    for words in commands:
        if words[0] in ("openssl", "kubectl"):
            assert " ".join(words) in cluster, f"docs/cluster.md step 2c lacks: {' '.join(words)}"


def test_a_key_pair_in_openssls_formats_signs_and_verifies(tmp_path: Path) -> None:
    """`openssl ecparam -name prime256v1 -genkey -noout` writes a SEC1 PEM, `openssl ec -pubout` an SPKI PEM:
    the register step signs with the first, readers verify with the second; tampering and another key fail."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def key_pair(name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        private, public = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        assert private.read_text().split("\n", 1)[0].endswith("BEGIN EC PRIVATE KEY-----")  # SEC1, as openssl writes
        assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
        return private, public

    private, public = key_pair("operator")
    _, other_public = key_pair("other")
    model = model_dir(tmp_path / "model")
    sign_directory(model, private)
    assert verify_directory(model, "v1", Trust(public_key=public)) is True
    with pytest.raises(SignatureError, match="another key"):
        verify_directory(model, "v1", Trust(public_key=other_public, allow_unsigned=True))
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(SignatureError, match=r"model\.safetensors"):
        verify_directory(model, "v1", Trust(public_key=public, allow_unsigned=True))


def run_key_command(words: list[str], cwd: Path) -> dict[str, Any] | None:
    """One line of the documented key block, run here as an operator would (kubectl client-side only): the
    object a `kubectl create` line makes, None for openssl/rm. A command this does not know fails the test.
    docs/cluster.md's walk-through (tests/test_readme_cluster.py) runs its key lines through this too."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "KUBECONFIG": str(cwd / "none")}
    if words[0] == "openssl":
        if shutil.which("openssl") is None:
            pytest.fail("openssl not found: the documented key commands need it")
        done = subprocess.run(words, cwd=cwd, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return None
    if words[0] == "kubectl" and "create" in words:
        argv = [str(KUBECTL), *words[1:], "--dry-run=client", "-o", "yaml"]
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        obj: dict[str, Any] = yaml.safe_load(done.stdout)
        return obj
    if words[0] == "rm":
        for name in words[1:]:
            (cwd / name).unlink()
        return None
    pytest.fail(f"a key command the test does not know: {' '.join(words)}")


def mount(obj: dict[str, Any], directory: Path) -> Path:
    """A Secret's or ConfigMap's data as the kubelet mounts it: one file per key."""
    directory.mkdir(parents=True)
    for key, value in obj["data"].items():
        data = base64.b64decode(value) if obj["kind"] == "Secret" else value.encode()
        (directory / key).write_bytes(data)
    return directory


def test_the_documented_commands_make_keys_the_pods_sign_and_verify_with(tmp_path: Path) -> None:
    work = tmp_path / "operator"
    work.mkdir()
    objects = {}
    for words in guide_commands():
        obj = run_key_command(words, work)
        if obj is not None:
            objects[obj["kind"]] = obj
    assert not (work / SIGNING_SECRET_KEY).exists(), "the block ends by removing the local private key"
    secret, config_map = objects["Secret"], objects["ConfigMap"]
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (SIGNING_SECRET, DEFAULT_NAMESPACE)
    assert (config_map["metadata"]["name"], config_map["metadata"]["namespace"]) == (
        SIGNING_PUBLIC_CONFIG_MAP,
        DEFAULT_NAMESPACE,
    )
    assert set(secret["data"]) == {SIGNING_SECRET_KEY} and set(config_map["data"]) == {SIGNING_PUBLIC_CONFIG_MAP_KEY}
    assert "PRIVATE KEY" not in config_map["data"][SIGNING_PUBLIC_CONFIG_MAP_KEY]

    # The register step's pod: the Secret mounted at SIGNING_KEY_DIR, TSR_SIGNING_KEY as the compiled IR sets it.
    root = tmp_path / "pod"
    mount(secret, root / SIGNING_KEY_DIR.lstrip("/"))
    register_env = {ENV_SIGNING_KEY: str(root / SIGNING_KEY_PATH.lstrip("/")), "TSR_STATE_DIR": str(tmp_path / "s")}
    model = model_dir(tmp_path / "model")
    sign_directory(model, signing_key(register_env))
    assert not (tmp_path / "s" / "signing").exists(), "signed with the mounted key, not a generated one"

    # The predictor's pod: the ConfigMap at SIGNING_PUBLIC_KEY_DIR and the env build_inference_service sets.
    mount(config_map, root / SIGNING_PUBLIC_KEY_DIR.lstrip("/"))
    spec = InferenceServiceSpec(name="m", namespace=DEFAULT_NAMESPACE, storage_uri="s3://models/m/v1")
    container = to_manifest_dict(build_inference_service(spec))["spec"]["predictor"]["containers"][0]
    predictor_env = {e["name"]: e["value"] for e in container["env"]}
    predictor_env[ENV_PUBLIC_KEY] = str(root / predictor_env[ENV_PUBLIC_KEY].lstrip("/"))
    trust = Trust.from_env(predictor_env)
    assert trust.require_signed_dirs and not trust.allow_unsigned
    assert verify_directory(model, "/mnt/models", trust) is True
    (model / "config.json").write_text('{"arch": "tiny", "num_classes": 42}')
    with pytest.raises(SignatureError, match=r"config\.json"):
        verify_directory(model, "/mnt/models", trust)
