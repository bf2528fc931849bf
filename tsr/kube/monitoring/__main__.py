"""`python -m tsr.kube.monitoring [--out DIR]`: regenerate manifests/monitoring from the Python sources."""

from __future__ import annotations

import sys

from tsr.kube.monitoring.generate import main

if __name__ == "__main__":
    sys.exit(main())
