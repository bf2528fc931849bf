"""The core library: dataset format, GTSRB specifics, preprocessing, models, registry/store, config, drift.

Everything else builds on it; it imports nothing of the platform above it (make lint checks).
"""
