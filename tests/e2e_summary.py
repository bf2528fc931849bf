"""The one JSON line `make cluster-e2e` ends with: the predictor's summary with the pipeline steps' under `steps`.

Each test of the node tier writes its own summary under .state/cluster-e2e/ (`recorded`), pass or fail (a failed
one says how far it got); this joins them. A missing file means that test did not run: its part is null.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tsr.local.checkout import REPO_ROOT

SUMMARIES = REPO_ROOT / ".state" / "cluster-e2e"


@contextmanager
def recorded(name: str, summary: dict[str, Any], folder: Path = SUMMARIES) -> Iterator[dict[str, Any]]:
    """Yield `summary` to fill; on the way out, pass or fail, write it as `name` in `folder` and print it."""
    try:
        yield summary
    finally:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(summary) + "\n")
        print("\n" + json.dumps(summary))


def _read(name: str) -> dict[str, Any] | None:
    path = SUMMARIES / name
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    summary: dict[str, Any] = _read("predictor-e2e.json") or {"predictor": None}
    summary["steps"] = _read("pipeline-steps.json")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
