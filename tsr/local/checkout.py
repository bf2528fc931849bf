"""The checkout this package was imported from, for development tooling only (the demo, the generators,
benchmarks, tests): installed from a wheel it points into site-packages, so the library never uses it."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
