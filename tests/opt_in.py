"""Test tiers that run only when asked for (tests/images/, tests/node/): one rule for both conftests.

Such a tier needs things `make test` does not build (images of several GB, a node), so a plain `pytest`
deselects it; naming its marker (`-m images`, `-m node`) or its folder (or a file in it) selects it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def asked_for(config: pytest.Config, marker: str, folder: Path) -> bool:
    """True when the run names the marker in `-m` or a path inside `folder`."""
    if marker in (config.getoption("markexpr", "") or ""):
        return True
    invocation_dir = config.invocation_params.dir
    return any((invocation_dir / arg.split("::", 1)[0]).resolve().is_relative_to(folder) for arg in config.args)


def mark_and_deselect(config: pytest.Config, items: list[pytest.Item], marker: str, folder: Path) -> None:
    """Mark every test under `folder` with `marker`, and deselect them unless the run asked for them."""
    ours = [item for item in items if item.path.resolve().is_relative_to(folder)]
    for item in ours:
        item.add_marker(getattr(pytest.mark, marker))
    if ours and not asked_for(config, marker, folder):
        selected = set(map(id, ours))
        items[:] = [item for item in items if id(item) not in selected]
        config.hook.pytest_deselected(items=ours)
