"""`python -m tsr.kube.monitoring --out DIR`: write the monitoring manifests from the Python sources.

`make monitoring` writes them into the checkout's manifests/monitoring.
"""

from __future__ import annotations

import sys

from tsr.kube.monitoring.generate import main

if __name__ == "__main__":
    sys.exit(main())
