"""`python -m serving.monitoring [--out DIR]`: regenerate manifests/monitoring from the Python sources."""

from __future__ import annotations

import sys

from serving.monitoring.generate import main

if __name__ == "__main__":
    sys.exit(main())
