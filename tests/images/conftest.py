"""The image tier: checks of the images `make images-local` built (tests/images/, `make images-test`).

They need those images (minutes to build, several GB), so a plain `pytest` / `make test` deselects them; they
run when asked for: by path (`pytest tests/images`) or by marker (`pytest -m images`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.opt_in import mark_and_deselect

IMAGES_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_and_deselect(config, items, "images", IMAGES_DIR)
