"""API version ``conspirator.io/v1alpha1``: InferenceJob, GPUNode, ModelProfile,
SchedulingPolicy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conspirator.api.v1alpha1.common import (
    API_VERSION,
    GROUP,
    MIG_CAPABLE_MODELS,
    NON_MIG_MODELS,
    VERSION,
    WHOLE,
    ApiModel,
    Condition,
    ConditionStatus,
    CRDInfo,
    GPUModel,
    ObjectMeta,
    PrinterColumn,
    set_condition,
)
from conspirator.api.v1alpha1.gpunode import (
    DPUStatus,
    GPULayout,
    GPUNode,
    GPUNodeSpec,
    GPUNodeStatus,
    GPUStatus,
    MigInstanceSpec,
    MigInstanceStatus,
    valid_start,
)
from conspirator.api.v1alpha1.inferencejob import (
    AutoscalingStatus,
    ClientEndpoint,
    ConditionType,
    DataPath,
    Demand,
    DType,
    InferenceJob,
    InferenceJobSpec,
    InferenceJobStatus,
    Isolation,
    JobPhase,
    MigrationPolicy,
    ModelSpec,
    ObservedLoad,
    ReplicaStatus,
    Scaling,
    ScalingMode,
    profile_summary,
)
from conspirator.api.v1alpha1.modelprofile import (
    ModelProfile,
    ModelProfileSpec,
    ModelProfileStatus,
    ObservedEntry,
    ProfileEntry,
)
from conspirator.api.v1alpha1.schedulingpolicy import (
    Fairness,
    GPUPower,
    GPUPrice,
    NodeLabel,
    Objective,
    PreemptionPolicy,
    SchedulingPolicy,
    SchedulingPolicySpec,
    SchedulingPolicyStatus,
    TenantWeight,
)

Resource = InferenceJob | GPUNode | ModelProfile | SchedulingPolicy
"""Any object of this API version."""

KINDS: tuple[type[InferenceJob] | type[GPUNode] | type[ModelProfile] | type[SchedulingPolicy],
             ...] = (
    InferenceJob,
    GPUNode,
    ModelProfile,
    SchedulingPolicy,
)
"""Every kind, in the order the CRDs and the docs list them."""


def load(obj: Mapping[str, Any]) -> Resource:
    """Validate a manifest (a dict as read from YAML or JSON) as the kind it names.

    Raises ``ValueError`` for another group/version or an unknown kind, and
    ``pydantic.ValidationError`` for an object the schema refuses.
    """
    api_version = obj.get("apiVersion")
    if api_version != API_VERSION:
        raise ValueError(f"apiVersion must be {API_VERSION!r}, got {api_version!r}")
    kind = obj.get("kind")
    for cls in KINDS:
        if cls.crd.kind == kind:
            return cls.model_validate(obj)
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(c.crd.kind for c in KINDS)}")


__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "MIG_CAPABLE_MODELS",
    "NON_MIG_MODELS",
    "VERSION",
    "WHOLE",
    "ApiModel",
    "AutoscalingStatus",
    "CRDInfo",
    "ClientEndpoint",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "DPUStatus",
    "DType",
    "DataPath",
    "Demand",
    "Fairness",
    "GPULayout",
    "GPUModel",
    "GPUNode",
    "GPUNodeSpec",
    "GPUNodeStatus",
    "GPUPower",
    "GPUPrice",
    "GPUStatus",
    "InferenceJob",
    "InferenceJobSpec",
    "InferenceJobStatus",
    "Isolation",
    "JobPhase",
    "MigInstanceSpec",
    "MigInstanceStatus",
    "MigrationPolicy",
    "ModelProfile",
    "ModelProfileSpec",
    "ModelProfileStatus",
    "ModelSpec",
    "NodeLabel",
    "ObjectMeta",
    "Objective",
    "ObservedEntry",
    "ObservedLoad",
    "PreemptionPolicy",
    "PrinterColumn",
    "ProfileEntry",
    "ReplicaStatus",
    "Resource",
    "Scaling",
    "ScalingMode",
    "SchedulingPolicy",
    "SchedulingPolicySpec",
    "SchedulingPolicyStatus",
    "TenantWeight",
    "load",
    "profile_summary",
    "set_condition",
    "valid_start",
]
