"""Well-known label keys (Kubernetes', KServe's) and the platform's own labels: one spelling for every module.

The kubelet sets `kubernetes.io/os` and `kubernetes.io/arch` on every node; Kubernetes (>= 1.21) sets
`kubernetes.io/metadata.name` on every namespace; KServe puts `serving.kserve.io/inferenceservice: <name>`
on every object it creates for an InferenceService (predictor pods included). `PART_OF` marks every
object this platform creates (`app.kubernetes.io/part-of`, Kubernetes' recommended label).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

OS_LABEL = "kubernetes.io/os"
ARCH_LABEL = "kubernetes.io/arch"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PLATFORM = "tsr-platform"
# Read-only: spread it (`{**PART_OF, ...}`) or copy it (`dict(PART_OF)`) into an object's labels.
PART_OF: Mapping[str, str] = MappingProxyType({PART_OF_LABEL: PLATFORM})
