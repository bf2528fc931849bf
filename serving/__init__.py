"""KServe predictor for the GTSRB classifier (see serving/README.md).

`import kserve` parses `sys.argv` (kserve's `model_server` module calls `parse_known_args`
at import) and exits on an argument it finds ambiguous; under `tsr serve --model X` it would
also read `--model` as its own `--model_name`. kserve is therefore imported here, first, with
the caller's arguments hidden; every ModelServer setting is passed explicitly in `server.py`.
"""

from __future__ import annotations

import sys

_argv = sys.argv
sys.argv = _argv[:1]
try:
    import kserve  # noqa: F401
finally:
    sys.argv = _argv
del _argv
