"""The arm64 tier (`make arm64-smoke`): the arm64 images' code run under qemu-user emulation on this amd64 machine.

It needs the arm64 images (`make images-local PLATFORMS=linux/arm64`: tens of minutes under emulation, ~20 GB),
so a plain `pytest` / `make test` deselects it; it runs when asked for: by path (`pytest tests/arm64`) or by
marker (`pytest -m arm64`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.opt_in import mark_and_deselect

ARM64_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_and_deselect(config, items, "arm64", ARM64_DIR)
