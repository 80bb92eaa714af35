"""The Kubernetes API of Conspirator (group ``conspirator.io``).

Pydantic models of every custom resource; the CRD YAML under ``crds/`` is
generated from them by ``python -m conspirator.api.crdgen``.  This package
imports no component (operator, device plugin, DPU agent).
"""

from __future__ import annotations

from conspirator.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    GPUNode,
    InferenceJob,
    ModelProfile,
    Resource,
    SchedulingPolicy,
    load,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "GPUNode",
    "InferenceJob",
    "ModelProfile",
    "Resource",
    "SchedulingPolicy",
    "load",
]
