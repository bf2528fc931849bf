"""Turns the plain component functions into KFP components that run in the component image.

Every step runs in one image that already holds this package (built from the repo's
Dockerfile), so nothing is pip-installed at run time. KFP's `target_image` form is not
used because `kfp.local.SubprocessRunner` refuses it, and the same pipeline must run
locally; `base_image` + `install_kfp_package=False` gives the same containerized step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kfp import dsl

DEFAULT_COMPONENT_IMAGE = "ghcr.io/tsr-platform/tsr-components:0.1.0"


def containerized(func: Callable[..., Any], image: str) -> Any:
    return dsl.component(func, base_image=image, install_kfp_package=False)
