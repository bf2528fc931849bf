"""`python -m tsr.cli`: the same command as `tsr`."""

import sys

from tsr.cli import app

sys.exit(app())  # pragma: no cover
