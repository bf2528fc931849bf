"""Kubernetes objects and their rendering: InferenceService/RBAC/monitoring builders, the rollout engine,
kustomize and retrain-receiver rendering, one YAML writer. Used by the deploy step, the CLI and the generators.
"""
