"""Parse-level checks of the two Dockerfiles, .dockerignore, `make images` and the GitHub workflows.

No Docker engine is needed (or available in CI's test job): these read the files the way the
builder would and pin down the properties the images must keep. The workflows are checked with
the real actionlint (built by `make actionlint`) and structurally with PyYAML.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.factory import DEFAULT_COMPONENT_IMAGE
from tsr.kube.inference_service import DEFAULT_PREDICTOR_IMAGE
from tsr.local.checkout import REPO_ROOT

COMPONENTS_DOCKERFILE = REPO_ROOT / "components" / "Dockerfile"
SERVING_DOCKERFILE = REPO_ROOT / "serving" / "Dockerfile"
DOCKERFILES = {"tsr-components": COMPONENTS_DOCKERFILE, "tsr-predictor": SERVING_DOCKERFILE}
STORAGE_INITIALIZER_DOCKERFILE = REPO_ROOT / ".ci" / "images" / "storage-initializer" / "Dockerfile"
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL")
# name:tag with an exact x.y.z version in the tag, optionally @sha256:<digest>.
EXACT_REF = re.compile(r"^[a-z0-9][a-z0-9._/-]*:\d+\.\d+\.\d+[A-Za-z0-9._-]*(@sha256:[0-9a-f]{64})?$")


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str  # after substituting global ARG defaults
    name: str | None
    flags: list[str]
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def instructions(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped (parser directives are comments too)."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and not pending):
            continue
        if stripped.startswith("#"):  # a comment line inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation at the end of the Dockerfile"
    return result


def assignments(args: str) -> dict[str, str]:
    """`ENV`/`ARG`/`LABEL` arguments (`A=1 B="two words"` or `NAME` alone) as a dict."""
    values: dict[str, str] = {}
    for token in shlex.split(args):
        name, _, value = token.partition("=")
        values[name] = value
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for inst in instructions(path.read_text()):
        if inst.keyword == "FROM":
            words = inst.args.split()
            flags = [w for w in words if w.startswith("--")]
            rest = [w for w in words if not w.startswith("--")]
            name = rest[2] if len(rest) == 3 and rest[1].upper() == "AS" else None
            stages.append(Stage(image=substitute(rest[0], global_args), name=name, flags=flags))
        elif not stages:
            assert inst.keyword == "ARG", f"{path}: only ARG may come before the first FROM, got {inst.keyword}"
            global_args.update(assignments(inst.args))
        else:
            stages[-1].instructions.append(inst)
    return Dockerfile(global_args, stages)


def makefile_variables() -> dict[str, str]:
    found = re.findall(r"^([A-Z_]+) \?= (.+)$", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
    return dict(found)


def images_recipe() -> str:
    match = re.search(r"^images:.*?\n((?:\t.*\n?)+)", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
    assert match, "Makefile has no images target"
    return match.group(1)


def load_workflow(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert isinstance(on, dict)
    return on


def test_parser_joins_continuations_and_substitutes_global_args(tmp_path: Path) -> None:
    """The checks below are only as good as this parser: pin down the cases the Dockerfiles use."""
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11.14-slim-bookworm\n"
        "FROM --platform=$BUILDPLATFORM ${BASE} AS wheel\nRUN echo a \\\n# a comment inside\n && echo b\n"
        'FROM ${BASE}\nENV A=1 \\\n    B="two words"\nUSER 10001:10001\n'
    )
    dockerfile = parse_dockerfile(path)
    assert dockerfile.global_args == {"BASE": "python:3.11.14-slim-bookworm"}
    assert [(s.image, s.name, s.flags) for s in dockerfile.stages] == [
        ("python:3.11.14-slim-bookworm", "wheel", ["--platform=$BUILDPLATFORM"]),
        ("python:3.11.14-slim-bookworm", None, []),
    ]
    assert dockerfile.stages[0].all("RUN") == ["echo a  && echo b"]
    assert assignments(dockerfile.final.all("ENV")[0]) == {"A": "1", "B": "two words"}
    assert dockerfile.final.all("USER") == ["10001:10001"]


# --- Dockerfiles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_every_from_is_an_exact_tag(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder and a final stage"
    names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        if stage.image in names:
            continue
        assert "$" not in stage.image, f"{path}: FROM {stage.image} has no default"
        assert EXACT_REF.match(stage.image), f"{path}: FROM {stage.image} is not pinned to an exact x.y.z tag"
        assert not stage.image.split("@")[0].endswith(":latest")


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_final_stage_is_the_venv_only_and_non_root(path: Path) -> None:
    final = parse_dockerfile(path).final
    users = final.all("USER")
    assert users, f"{path}: the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path}: USER {users[-1]} must be a numeric non-root uid"
    for run in final.all("RUN"):
        assert not re.search(r"\bpip3?\s+install\b|\bpython3? -m pip\b", run), f"{path}: pip in the final stage"
        assert not re.search(r"\bapt-get\b|\bapk\b|\bgcc\b|\bmake\b", run), f"{path}: build tools in the final stage"
    copies = final.all("COPY")
    # the dependencies' venv, then the project's own files over it (the `app` stage), nothing else
    assert copies == ["--from=builder /opt/venv /opt/venv", "--from=app /opt/app/opt/venv /opt/venv"], (
        f"{path}: final stage COPY {copies}"
    )
    assert not final.all("ADD")
    env = {k: v for args in final.all("ENV") for k, v in assignments(args).items()}
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:"), "`python`/`python3` must be the venv's"
    assert env["HOME"].startswith("/"), "HOME must be set (to a writable directory)"
    assert final.all("WORKDIR")
    assert any(run.strip() == "python -m tsr.core.backend" for run in final.all("RUN")), (
        "backend report in the build log"
    )


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_a_code_change_leaves_the_dependency_layer_alone(path: Path) -> None:
    """The venv with torch is gigabytes: it must be built from the dependency list only, and every instruction
    that changes with each commit (the code, the revision label) must come after the final stage copies it."""
    dockerfile = parse_dockerfile(path)
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    sources = [c.split()[-2] for c in builder.all("COPY")]
    assert sources == ["requirements.lock", "/src/runtime-requirements.txt"], sources
    wheel = next(s for s in dockerfile.stages if s.name == "wheel")
    order = [(i.keyword, i.args) for i in wheel.instructions]
    listed = next(n for n, (k, a) in enumerate(order) if k == "RUN" and "runtime-requirements.txt" in a)
    first_code = next(n for n, (k, a) in enumerate(order) if k == "COPY" and a.startswith("tsr "))
    assert listed < first_code, "the dependency list must be written before the code is copied in"
    final = [(i.keyword, i.args) for i in dockerfile.final.instructions]
    venv = final.index(("COPY", "--from=builder /opt/venv /opt/venv"))
    changing = [n for n, (k, a) in enumerate(final) if k == "LABEL" or (k == "ARG" and a.startswith("REVISION"))]
    assert changing and min(changing) > venv, "the revision label must come after the venv layer"


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_no_secret_looking_env_or_arg(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    names = list(dockerfile.global_args)
    for stage in dockerfile.stages:
        for keyword in ("ENV", "ARG"):
            for args in stage.all(keyword):
                names.extend(assignments(args))
    for name in names:
        assert not any(word in name.upper() for word in SECRET_WORDS), f"{path}: {name} looks like a secret"


@pytest.mark.parametrize(("image", "path"), DOCKERFILES.items(), ids=DOCKERFILES.keys())
def test_labels_and_multi_platform_args(image: str, path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    labels = {k: v for args in dockerfile.final.all("LABEL") for k, v in assignments(args).items()}
    assert labels["org.opencontainers.image.title"] == image
    for key in ("source", "version", "revision", "licenses", "description"):
        assert f"org.opencontainers.image.{key}" in labels
    declared = {name for stage in dockerfile.stages for args in stage.all("ARG") for name in assignments(args)}
    assert {"TARGETPLATFORM", "BUILDPLATFORM"} <= declared
    # The pure-Python wheel is built natively; the venv stage (native wheels) runs on the target platform.
    wheel_stage = next(s for s in dockerfile.stages if s.name == "wheel")
    assert "--platform=$BUILDPLATFORM" in wheel_stage.flags
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    assert not builder.flags, "the builder must run on the target platform to install its native wheels"
    torch_index = {k: v for args in builder.all("ARG") for k, v in assignments(args).items()}["TORCH_INDEX_URL"]
    assert torch_index == "https://download.pytorch.org/whl/cpu"


def test_torch_pins_agree() -> None:
    """The Dockerfiles take torch/torchvision from requirements.lock: it must pin what pyproject pins."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    deps = {d.split("==")[0]: d.split("==")[1] for d in pyproject["project"]["dependencies"] if "==" in d}
    lock = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (REPO_ROOT / "requirements.lock").read_text(), re.M))
    assert lock == {"torch": deps["torch"], "torchvision": deps["torchvision"]}
    for path in DOCKERFILES.values():
        assert "grep -E '^(torch|torchvision)==' /tmp/requirements.lock" in path.read_text()


def test_predictor_runs_python_m_serving_with_writable_state_under_tmp() -> None:
    final = parse_dockerfile(SERVING_DOCKERFILE).final
    entrypoint = final.all("ENTRYPOINT")[-1]
    cmd = final.all("CMD")[-1]
    command = [*yaml.safe_load(entrypoint), *yaml.safe_load(cmd)]  # exec form is a JSON (so YAML) list
    assert command[:3] == ["python", "-m", "serving"]
    assert command[3:] == ["--model", "/mnt/models"]  # where KServe's storage-initializer puts the model
    env = {k: v for args in final.all("ENV") for k, v in assignments(args).items()}
    # Read-only root filesystem: only /tmp (an emptyDir) is writable.
    assert env["TSR_STATE_DIR"].startswith("/tmp/")
    assert env["HOME"].startswith("/tmp")


def test_component_image_has_python_on_path() -> None:
    final = parse_dockerfile(COMPONENTS_DOCKERFILE).final
    assert yaml.safe_load(final.all("CMD")[-1]) == ["python"]
    assert not final.all("ENTRYPOINT"), "KFP runs `sh -c ... python3 -m kfp...`; an ENTRYPOINT would wrap it"


def test_dockerignore_excludes_data_venv_state_git_and_keeps_the_sources() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns)

    def ignored(path: str) -> bool:
        # Docker's matcher: a pattern matches the path or one of its parents; `**/` matches any depth.
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            bare = pattern.removeprefix("**/")
            for prefix in prefixes:
                if fnmatch.fnmatchcase(prefix, pattern):
                    return True
                if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], bare):
                    return True
        return False

    for path in (
        "gtsrb-train-32.tar.gz",
        "data/gtsrb-train-32.tar.gz",
        ".venv/bin/python",
        ".state/minio/credentials.json",
        ".git/HEAD",
        ".tools/bin/minio",
        "tsr/__pycache__/config.cpython-311.pyc",
        "tests/conftest.py",
        "benchmarks/results/serving.json",
    ):
        assert ignored(path), f".dockerignore lets {path} into the build context"
    for dockerfile in DOCKERFILES.values():
        for inst in instructions(dockerfile.read_text()):
            if inst.keyword == "COPY" and not inst.args.startswith("--from"):
                for source in inst.args.split()[:-1]:
                    assert not ignored(source), f"{dockerfile} copies {source}, which .dockerignore excludes"
                    assert (REPO_ROOT / source).exists(), f"{dockerfile} copies {source}, which does not exist"


# --- make images and the image names the code refers to ------------------------------------------------------


def test_image_names_match_make_images() -> None:
    variables = makefile_variables()
    registry, tag = variables["REGISTRY"], variables["TAG"]
    assert registry == "ghcr.io/tsr-platform"
    assert variables["PLATFORMS"] == "linux/amd64,linux/arm64"
    expected = {"tsr-components": DEFAULT_COMPONENT_IMAGE, "tsr-predictor": DEFAULT_PREDICTOR_IMAGE}
    assert expected == {image: f"{registry}/{image}:{tag}" for image in DOCKERFILES}
    assert variables["COMPONENT_IMAGE"] == DEFAULT_COMPONENT_IMAGE
    recipe = images_recipe()
    assert "docker buildx version" in recipe, "a clear message when buildx is missing"
    for image, path in DOCKERFILES.items():
        dockerfile = path.relative_to(REPO_ROOT).as_posix()
        command = rf"docker buildx build --platform \$\(PLATFORMS\) .*-f {dockerfile} "
        command += rf"-t \$\(REGISTRY\)/{image}:\$\(TAG\) --push \."
        assert re.search(command, recipe), f"make images does not build {image} from {dockerfile}"


def test_base_image_is_the_same_everywhere() -> None:
    """Makefile, both Dockerfiles and the release workflow build on the same exact base tag."""
    base = makefile_variables()["PYTHON_IMAGE"]
    assert EXACT_REF.match(base) and "-slim-bookworm" in base
    for path in (*DOCKERFILES.values(), STORAGE_INITIALIZER_DOCKERFILE):
        assert parse_dockerfile(path).global_args["PYTHON_IMAGE"] == base
    assert load_workflow("images.yml")["env"]["PYTHON_IMAGE"] == base


def test_make_images_local_builds_the_same_dockerfiles_daemonless() -> None:
    """`make images-local` hands the Makefile's base and tag to .ci/images/build.sh, which builds the two
    Dockerfiles as they are (build arguments only) with buildah, plus the storage initializer."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    match = re.search(r"^images-local:.*?\n((?:\t.*\n?)+)", makefile, flags=re.M)
    assert match, "Makefile has no images-local target"
    assert "PYTHON_IMAGE=$(PYTHON_IMAGE)" in match.group(1) and ".ci/images/build.sh" in match.group(1)
    assert re.search(r"^\t@echo \"make images-local ", makefile, flags=re.M), "make help lists images-local"
    script = (REPO_ROOT / ".ci" / "images" / "build.sh").read_text()
    for image, path in DOCKERFILES.items():
        assert f"build {image} {path.relative_to(REPO_ROOT).as_posix()} . " in script
    for flag in ("--layers", "--isolation chroot", "--build-arg PYTHON_IMAGE=", "--build-arg TORCH_INDEX_URL="):
        assert flag in script


# --- GitHub Actions ---------------------------------------------------------------------------------------------


def actionlint_binary() -> Path:
    local = REPO_ROOT / ".tools" / "bin" / "actionlint"
    if local.is_file():
        return local
    found = shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint not found: run `make actionlint` (builds it into .tools/bin with go install)")
    return Path(found)


def test_actionlint_accepts_the_workflows() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "images.yml"}
    result = subprocess.run(
        [str(actionlint_binary()), "-no-color", *map(str, files)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_at_least_a_major_version() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        for job in load_workflow(path.name)["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert re.match(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})$", step["uses"]), step["uses"]


def test_ci_workflow_runs_make_test_with_the_gtsrb_archive() -> None:
    workflow = load_workflow("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(workflow))
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] in {"ubuntu-latest", "ubuntu-24.04", "ubuntu-22.04"}  # amd64 hosted runners
    uses = {step.get("uses", "").split("@")[0] for step in job["steps"]}
    assert {"actions/checkout", "actions/setup-python", "actions/setup-go", "actions/cache"} <= uses
    python = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert str(python["with"]["python-version"]) == "3.11"
    runs = [step.get("run", "") for step in job["steps"]]
    assert runs[-1].strip() == "make test"
    assert any("TSR_GTSRB_ARCHIVE=" in run for run in runs), "tests/conftest.py finds the archive through it"


def test_images_workflow_builds_natively_per_arch_and_merges_by_digest() -> None:
    workflow = load_workflow("images.yml")
    assert triggers(workflow)["push"]["tags"] == ["v*"]
    jobs = workflow["jobs"]
    matrix = jobs["build"]["strategy"]["matrix"]
    assert set(matrix["image"]) == set(DOCKERFILES)
    assert set(matrix["platform"]) == {"linux/amd64", "linux/arm64"}
    runners = {row["platform"]: row["runner"] for row in matrix["include"] if "runner" in row}
    assert runners == {"linux/amd64": "ubuntu-24.04", "linux/arm64": "ubuntu-24.04-arm"}
    dockerfiles = {row["image"]: row["dockerfile"] for row in matrix["include"] if "dockerfile" in row}
    assert dockerfiles == {image: path.relative_to(REPO_ROOT).as_posix() for image, path in DOCKERFILES.items()}
    build = next(s for s in jobs["build"]["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert "push-by-digest=true" in build["with"]["outputs"]
    assert jobs["merge"]["needs"] == "build"
    merge_runs = " ".join(step.get("run", "") for step in jobs["merge"]["steps"])
    assert "docker buildx imagetools create" in merge_runs
    assert jobs["build"]["permissions"]["packages"] == "write"


def test_component_image_carries_the_executor_config() -> None:
    """Containerized steps find their function through kfp_config.ini in the working directory
    (components/factory.py): the image writes it at build time exactly where its WORKDIR is."""
    from components.factory import EXECUTOR_DIR

    final = parse_dockerfile(DOCKERFILES["tsr-components"]).final
    assert final.all("WORKDIR")[-1] == EXECUTOR_DIR
    assert f"python -m components.factory {EXECUTOR_DIR}" in [run.strip() for run in final.all("RUN")]
    # written before USER, so the steps (uid 10001) cannot change which code runs
    lines = DOCKERFILES["tsr-components"].read_text().splitlines()
    write = next(i for i, line in enumerate(lines) if "components.factory" in line and line.startswith("RUN"))
    user = max(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert write < user


def test_image_sizes_sums_compressed_layers_per_platform(tmp_path: Path) -> None:
    """.ci/image-sizes.sh (the sizes in `make images` output and the release summary). No engine or
    registry runs here, so a stand-in `docker` answers `buildx imagetools inspect --raw <ref>` with
    OCI documents in the registry's format: an index with two platforms and an attestation manifest."""
    ref = "ghcr.io/you/tsr-predictor:0.1.0"
    digests = {"amd64": "sha256:" + "a" * 64, "arm64": "sha256:" + "b" * 64, "att": "sha256:" + "c" * 64}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"digest": digests["amd64"], "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": digests["arm64"], "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": digests["att"], "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    }

    def manifest(*sizes: int) -> dict[str, object]:
        layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": s} for s in sizes]
        return {"schemaVersion": 2, "layers": layers}

    answers = {
        ref: index,
        f"ghcr.io/you/tsr-predictor@{digests['amd64']}": manifest(30_000_000, 250_000_000, 1_234_567),
        f"ghcr.io/you/tsr-predictor@{digests['arm64']}": manifest(28_000_000, 199_950_000),
    }
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    docker = tmp_path / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"answers = json.load(open({str(tmp_path / 'answers.json')!r}))\n"
        "assert sys.argv[1:5] == ['buildx', 'imagetools', 'inspect', '--raw'], sys.argv\n"
        "print(json.dumps(answers[sys.argv[5]]))\n"
    )
    docker.chmod(0o755)
    env = {**os.environ, "PATH": f"{docker.parent}:{os.environ['PATH']}"}
    script = str(REPO_ROOT / ".ci" / "image-sizes.sh")
    done = subprocess.run([script, ref], env=env, capture_output=True, text=True, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith(f"| {ref}")]
    assert rows == [
        f"| {ref} | linux/amd64 | 281.2 MB | 3 |",
        f"| {ref} | linux/arm64 | 228 MB | 2 |",
    ]
    untagged = subprocess.run([script, "ghcr.io/you/tsr-predictor"], env=env, capture_output=True, text=True)
    assert untagged.returncode == 2 and "give a tag or digest" in untagged.stderr
