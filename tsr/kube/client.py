"""Reaching a cluster: an API client from a kubeconfig or the in-cluster service account."""

from __future__ import annotations

import os

from kserve.constants.constants import KSERVE_GROUP, KSERVE_PLURAL_INFERENCESERVICE, KSERVE_V1BETA1_VERSION
from kubernetes import client as k8s

from tsr.kube.inference_service import DeployError


def kube_api_client(kube_config: str | None = None) -> k8s.ApiClient:
    """An API client from `kube_config`, else the in-cluster service account, else ~/.kube/config."""
    from kubernetes import config as k8s_config

    if kube_config is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass  # a half-mounted service account: try a kubeconfig instead
    try:
        return k8s_config.new_client_from_config(config_file=kube_config)
    except (k8s_config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = kube_config or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise DeployError(
            f"no Kubernetes cluster configured: not running in a pod and no usable kubeconfig at {where} ({exc})"
        ) from exc


def _isvc_args(namespace: str) -> tuple[str, str, str, str]:
    return (KSERVE_GROUP, KSERVE_V1BETA1_VERSION, namespace, KSERVE_PLURAL_INFERENCESERVICE)


def cluster_endpoint(name: str, namespace: str) -> str:
    """The predictor's in-cluster base URL; the `<isvc>-predictor` Service exists in both modes."""
    return f"http://{name}-predictor.{namespace}.svc.cluster.local"
