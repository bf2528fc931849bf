"""Local-machine tooling: the demo, the monitoring loop, the embedded MinIO/Prometheus, process helpers,
the local predictor process. The top layer: nothing else in the platform imports it (make lint checks).
"""
