"""The two Dockerfiles through BuildKit itself: .ci/dockerfile-check (built by `make tools`) parses them,
runs BuildKit's linter with every rule on (`docker build --check`) and converts them to LLB for amd64 and
arm64 with BuildKit's dockerfile2llb, no daemon needed. Base images cannot be pulled here, so the tool's
stand-in registry answers for any pinned reference; the image config checked below is the one BuildKit
computes from the Dockerfile, not a re-parse of its text (test_containers.py does that).
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tsr.kube.inference_service import DEFAULT_HTTP_PORT
from tsr.local.checkout import REPO_ROOT

BINARY = REPO_ROOT / ".tools" / "bin" / "dockerfile-check"
SOURCE = REPO_ROOT / ".ci" / "dockerfile-check"
IMAGES = {"tsr-components": "components/Dockerfile", "tsr-predictor": "serving/Dockerfile"}
PLATFORMS = ("linux/amd64", "linux/arm64")
# KServe's storage initializer, built from PyPI's kserve-storage by `make images-local` (.ci/images/build.sh).
STORAGE_INITIALIZER = ".ci/images/storage-initializer/Dockerfile"
BUILD_PLATFORM = "linux/amd64"  # what the tool converts on, like an amd64 CI runner
NON_ROOT_ID = "10001"

Report = dict[str, Any]


def dockerfile_check(*args: str, cwd: Path = REPO_ROOT) -> tuple[int, dict[str, Report], str]:
    """Run the tool: exit status, its JSON (one report per Dockerfile argument) and stderr.
    Its absence is a failure, not a skip, like helm/kustomize/actionlint; so is a stale build."""
    if not BINARY.is_file():
        pytest.fail(f"dockerfile-check not found at {BINARY}: run `make tools` (needs Go)")
    newest = max(p.stat().st_mtime for p in SOURCE.iterdir())
    if BINARY.stat().st_mtime < newest:
        pytest.fail(f"{BINARY} is older than {SOURCE}: rebuild it with `make tools`")
    proc = subprocess.run([str(BINARY), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode in (0, 1, 2), proc.stderr
    reports = json.loads(proc.stdout) if proc.returncode != 2 else {}
    return proc.returncode, reports, proc.stderr


@cache
def pinned_base() -> str:
    """The exact python tag `make images` builds on (the Makefile's PYTHON_IMAGE, as test_containers.py reads it)."""
    match = re.search(r"^PYTHON_IMAGE \?= (\S+)$", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
    assert match, "Makefile has no PYTHON_IMAGE"
    return match.group(1)


@cache
def checked() -> tuple[int, dict[str, Report], str]:
    """Both Dockerfiles for both platforms, once per session."""
    return dockerfile_check("--platform", ",".join(PLATFORMS), *IMAGES.values())


def final_image(name: str, platform: str) -> Report:
    _, reports, _ = checked()
    report = reports[IMAGES[name]]
    assert platform in report["platforms"], f"{IMAGES[name]} did not convert for {platform}: {report['errors']}"
    image: Report = report["platforms"][platform]
    return image


each_image = pytest.mark.parametrize("name", sorted(IMAGES))
each_platform = pytest.mark.parametrize("platform", PLATFORMS)


# --- the real Dockerfiles ---------------------------------------------------------------------------------------


def test_both_dockerfiles_lint_clean_and_convert_for_both_platforms() -> None:
    status, reports, stderr = checked()
    assert sorted(reports) == sorted(IMAGES.values())
    for path, report in reports.items():
        assert report["lint"] == [], f"{path}: BuildKit lint warnings:\n{stderr}"
        assert report["errors"] == [], f"{path}: parse/conversion errors:\n{stderr}"
        assert sorted(report["platforms"]) == sorted(PLATFORMS)
    assert status == 0, stderr


@each_image
@each_platform
def test_final_stage_runs_as_the_numeric_non_root_user(name: str, platform: str) -> None:
    user = final_image(name, platform)["user"]
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
    assert uid.isdigit() and gid.isdigit(), f"{name}: USER {user!r} is not numeric uid:gid"
    assert (uid, gid) == (NON_ROOT_ID, NON_ROOT_ID)


@each_image
@each_platform
def test_every_stage_is_built_on_the_pinned_base_for_the_right_platform(name: str, platform: str) -> None:
    image = final_image(name, platform)
    assert image["base"] == pinned_base()
    stages = {s["name"]: s for s in image["stages"]}
    assert list(stages) == ["wheel", "builder", "app", ""], image["stages"]
    # `app` (the project's wheel alone) continues the builder's venv; every other stage starts on the base
    assert stages.pop("app")["from"] == "builder"
    assert {s["from"] for s in stages.values()} == {"${PYTHON_IMAGE}"}
    assert {s["base"] for s in stages.values()} == {pinned_base()}
    # The pure-Python wheel is built once, natively; the venv and the final image are the target's.
    assert stages["wheel"]["platform"] == BUILD_PLATFORM
    assert stages["builder"]["platform"] == platform
    assert stages[""]["platform"] == platform
    assert image["labels"]["org.opencontainers.image.base.name"] == pinned_base()


@each_image
@each_platform
def test_venv_first_on_path_and_labels_name_the_image(name: str, platform: str) -> None:
    image = final_image(name, platform)
    env = dict(item.split("=", 1) for item in image["env"])
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["USER"] == env["LOGNAME"] == "tsr"  # getpass works for a runAsUser without a passwd entry
    assert env["HOME"].startswith("/")
    assert image["labels"]["org.opencontainers.image.title"] == name
    assert image["labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"


@each_platform
def test_predictor_runs_python_m_serving_on_the_inferenceservice_port(platform: str) -> None:
    image = final_image("tsr-predictor", platform)
    assert image["entrypoint"] == ["python", "-m", "serving"]
    assert image["cmd"] == ["--model", "/mnt/models"]  # where KServe's storage-initializer puts the model
    assert image["exposed_ports"] == [f"{DEFAULT_HTTP_PORT}/tcp"]
    health = image["healthcheck"]
    assert health["test"][0] == "CMD"
    assert f"http://127.0.0.1:{DEFAULT_HTTP_PORT}/v2/health/live" in " ".join(health["test"])
    assert (health["interval"], health["timeout"], health["retries"]) == ("30s", "5s", 3)
    env = dict(item.split("=", 1) for item in image["env"])
    assert image["workdir"] == "/tmp"
    assert env["TSR_STATE_DIR"].startswith("/tmp/")  # read-only root filesystem: state under the emptyDir


@each_platform
def test_component_image_runs_python_by_default(platform: str) -> None:
    image = final_image("tsr-components", platform)
    assert image["entrypoint"] is None  # KFP runs `sh -c ...`, never an entrypoint
    assert image["cmd"] == ["python"]
    assert image["exposed_ports"] == []
    assert "healthcheck" not in image


@cache
def storage_initializer() -> Report:
    status, reports, stderr = dockerfile_check("--platform", ",".join(PLATFORMS), STORAGE_INITIALIZER)
    assert status == 0, stderr
    report: Report = reports[STORAGE_INITIALIZER]
    return report


def test_storage_initializer_lints_clean_and_converts_for_both_platforms() -> None:
    report = storage_initializer()
    assert report["lint"] == [] and report["errors"] == []
    assert sorted(report["platforms"]) == sorted(PLATFORMS)


@each_platform
def test_storage_initializer_is_non_root_on_the_pinned_base_and_takes_src_dest(platform: str) -> None:
    image = storage_initializer()["platforms"][platform]
    assert image["user"] == "1000:1000"  # numeric, like KServe's own storage-initializer image
    assert image["base"] == pinned_base()
    assert {s["base"] for s in image["stages"]} == {pinned_base()}
    # The KServe controller appends `<src-uri> <dest-dir>` to the entrypoint.
    assert image["entrypoint"] == ["python", "/opt/storage-initializer/entrypoint.py"] and not image["cmd"]


def test_make_images_build_args_pin_the_base_by_digest() -> None:
    """`make images` passes PYTHON_IMAGE=<tag>@sha256:<digest>, VERSION and REVISION."""
    digested = f"{pinned_base()}@sha256:{'ab' * 32}"
    args = ["--build-arg", f"PYTHON_IMAGE={digested}", "--build-arg", "VERSION=9.9.9", "--build-arg", "REVISION=abc123"]
    status, reports, stderr = dockerfile_check("--platform", ",".join(PLATFORMS), *args, *IMAGES.values())
    assert status == 0, stderr
    for report in reports.values():
        for image in report["platforms"].values():
            assert image["base"] == digested
            assert {s["base"] for s in image["stages"]} == {digested}
            labels = image["labels"]
            assert labels["org.opencontainers.image.base.name"] == digested
            assert (labels["org.opencontainers.image.version"], labels["org.opencontainers.image.revision"]) == (
                "9.9.9",
                "abc123",
            )


# --- the tool catches what it should ----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    (tmp_path / "Dockerfile").write_text(text)
    return "Dockerfile"


def test_copy_from_an_undefined_stage_fails_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "FROM python:3.11.14-slim-bookworm AS builder\n"
        "RUN python -m venv /opt/venv\n"
        "FROM python:3.11.14-slim-bookworm\n"
        "COPY --from=buidler /opt/venv /opt/venv\n",
    )
    status, reports, stderr = dockerfile_check("--platform", ",".join(PLATFORMS), path, cwd=tmp_path)
    assert status == 1
    errors = reports[path]["errors"]
    assert {e["platform"] for e in errors} == set(PLATFORMS)
    for error in errors:
        assert error["line"] == 4
        assert "buidler" in error["message"] and "not found" in error["message"]
        assert "did you mean builder" in error["message"]  # BuildKit's own suggestion
    assert f"{path}:4: error:" in stderr


def test_lint_rules_name_the_rule_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "FROM python:3.11.14-slim-bookworm as Base\n"  # 1
        "ENV A 1\n"  # 2
        "from base\n"  # 3
        "WORKDIR app\n"  # 4
        "CMD python -V\n",  # 5
    )
    status, reports, stderr = dockerfile_check(path, cwd=tmp_path)
    assert status == 1
    found = {(w["rule"], w["line"]) for w in reports[path]["lint"]}
    assert found == {
        ("FromAsCasing", 1),
        ("StageNameCasing", 1),
        ("LegacyKeyValueFormat", 2),
        ("ConsistentInstructionCasing", 3),
        ("WorkdirRelativePath", 4),
        ("JSONArgsRecommended", 5),
    }
    assert f"{path}:3: ConsistentInstructionCasing:" in stderr
    # Lint warnings alone still convert: the image config is reported.
    assert reports[path]["errors"] == []
    assert reports[path]["platforms"]["linux/amd64"]["cmd"] == ["/bin/sh", "-c", "python -V"]


def test_a_check_skip_directive_does_not_hide_warnings(tmp_path: Path) -> None:
    text = "# syntax=docker/dockerfile:1\n# check=skip=all\nFROM python:3.11.14-slim-bookworm\nCMD python\n"
    path = write(tmp_path, text)
    status, reports, _ = dockerfile_check(path, cwd=tmp_path)
    assert status == 1
    assert [(w["rule"], w["line"]) for w in reports[path]["lint"]] == [("JSONArgsRecommended", 4)]


def test_syntax_error_fails_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "FROM python:3.11.14-slim-bookworm\nRUN true\nCOPPY . /src\n")
    status, reports, stderr = dockerfile_check(path, cwd=tmp_path)
    assert status == 1
    [error] = reports[path]["errors"]
    assert error["line"] == 3 and "unknown instruction" in error["message"].lower()
    assert reports[path]["platforms"] == {}
    assert f"{path}:3: error:" in stderr


def test_misspelt_platform_arg_fails(tmp_path: Path) -> None:
    path = write(tmp_path, "FROM --platform=$BUILDPLATFROM python:3.11.14-slim-bookworm\nRUN true\n")
    status, reports, _ = dockerfile_check(path, cwd=tmp_path)
    assert status == 1
    assert [(w["rule"], w["line"]) for w in reports[path]["lint"]] == [("UndefinedArgInFrom", 1)]
    [error] = reports[path]["errors"]
    assert error["line"] == 1 and "BUILDPLATFORM" in error["message"]  # "did you mean"


def test_unpinned_base_is_refused_by_the_stand_in_registry(tmp_path: Path) -> None:
    path = write(tmp_path, "FROM python\nRUN true\n")
    status, reports, _ = dockerfile_check(path, cwd=tmp_path)
    assert status == 1
    [error] = reports[path]["errors"]
    assert error["line"] == 1 and "not found" in error["message"]


@pytest.mark.parametrize("args", [[], ["--build-arg", "NOEQUALS", "Dockerfile"], ["--nope", "Dockerfile"]])
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    write(tmp_path, "FROM python:3.11.14-slim-bookworm\n")
    status, _, stderr = dockerfile_check(*args, cwd=tmp_path)
    assert status == 2
    assert stderr
