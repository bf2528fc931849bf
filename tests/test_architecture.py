"""The layering contracts of `.importlinter` (run by `make lint`) hold, and they can fail.

Each negative case copies the packages into a temporary directory, adds one deliberate violation,
and runs the real `lint-imports` on the copy: an upward import, a step importing another step,
the predictor importing the Kubernetes layer, and an import cycle between two sibling modules.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tsr", "components", "pipelines", "serving", "benchmarks")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / ".importlinter")],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy(REPO_ROOT / ".importlinter", root / ".importlinter")
    return root


def test_the_tree_keeps_every_contract(tree_copy: Path) -> None:
    result = _lint(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("tsr/core/_violation.py", "import tsr.kube.rollout\n", "Layers"),
        ("tsr/kube/_violation.py", "from components.deploy import deploy\n", "Layers"),
        ("components/train/_violation.py", "from components.ingest import ingest\n", "never import each other"),
        ("serving/_violation.py", "import tsr.local.demo\n", "predictor depends on the core library only"),
        ("tsr/core/_cycle.py", "import tsr.core.dataset\n", "No import cycles"),
    ],
)
def test_a_deliberate_violation_fails(tree_copy: Path, module: str, source: str, contract: str) -> None:
    path = tree_copy / module
    extra: list[Path] = [path]
    path.write_text(source)
    if module.endswith("_cycle.py"):  # close the loop: dataset imports the module that imports it
        dataset = tree_copy / "tsr/core/dataset.py"
        original = dataset.read_text()
        dataset.write_text(original + "\nimport tsr.core._cycle  # noqa\n")
    try:
        result = _lint(tree_copy)
    finally:
        for p in extra:
            p.unlink()
        if module.endswith("_cycle.py"):
            dataset.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
