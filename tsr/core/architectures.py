"""Model architecture names, without torch: the platform's own `tsrnet` and torchvision's classifiers.

`tsr.core.models` builds them; this module only names and checks them, so a config that names an
architecture (the train step's `TrainConfig`) can be imported where torch is not wanted, such as the
`tsr` command line, which takes its option defaults from that config.
"""

from __future__ import annotations

DEFAULT_ARCH = "tsrnet"


def is_known_arch(arch: str) -> bool:
    """`tsrnet` or a `torchvision.models` classifier: checked where parameters arrive, not after ingest."""
    if arch == DEFAULT_ARCH:
        return True
    import torchvision  # late: seconds to import, and only needed for a torchvision name

    return arch in torchvision.models.list_models(module=torchvision.models)
