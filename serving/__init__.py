"""KServe predictor for the GTSRB classifier (see serving/README.md).

`import kserve` parses `sys.argv` (kserve's `model_server` module calls `parse_known_args`
at import) and exits on an argument it finds ambiguous; under `tsr serve --model X` it would
also read `--model` as its own `--model_name`. The first import of kserve after this package is
imported therefore runs with the caller's arguments hidden; every ModelServer setting is passed
explicitly in `server.py`.

kserve is not imported here: it takes over a second, and `serving.config` (the serving defaults,
which the `tsr` command line reads when it starts) needs neither it nor torch.
"""

from __future__ import annotations

import importlib.abc
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


class _ArgvHiddenLoader(importlib.abc.Loader):
    """Runs the real loader of the `kserve` package with `sys.argv` cut to the program name."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader  # kserve sees its own loader (resources, reload)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        argv = sys.argv
        sys.argv = argv[:1]
        try:
            self.loader.exec_module(module)
        finally:
            sys.argv = argv


class _HideArgvFromKserve(importlib.abc.MetaPathFinder):
    """Finds the `kserve` package as the other finders do, and hands it the loader above; once."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "kserve":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ArgvHiddenLoader(spec.loader)
                return spec  # type: ignore[no-any-return]
        return None


if "kserve" not in sys.modules and not any(isinstance(f, _HideArgvFromKserve) for f in sys.meta_path):
    sys.meta_path.insert(0, _HideArgvFromKserve())
