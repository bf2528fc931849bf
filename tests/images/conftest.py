"""The image tier: checks of the images `make images-local` built (tests/images/, `make images-test`).

They need those images (minutes to build, several GB), so a plain `pytest` / `make test` deselects them; they
run when asked for: by path (`pytest tests/images`) or by marker (`pytest -m images`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

IMAGES_DIR = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    if "images" in (config.getoption("markexpr", "") or ""):
        return True
    invocation_dir = config.invocation_params.dir
    for arg in config.args:
        path = (invocation_dir / arg.split("::", 1)[0]).resolve()
        if path.is_relative_to(IMAGES_DIR):
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.path.resolve().is_relative_to(IMAGES_DIR)]
    for item in ours:
        item.add_marker(pytest.mark.images)
    if ours and not _asked_for(config):
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]
