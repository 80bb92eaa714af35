"""``SchedulingPolicy``: what the placement plans optimise, cluster-wide.

The operator plans with the policy named ``default`` (absent: the paper's objective,
GPUs used, with no fairness rule and no preemption); the simulator reads the same
manifest (``conspirator simulate --track mig --policy-file``).  Prices and power
left out take the documented defaults (docs/scheduling-policy.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from conspirator.api.v1alpha1.common import (
    AGE_COLUMN,
    API_VERSION,
    DNS_LABEL,
    ApiModel,
    Condition,
    CRDInfo,
    GPUModel,
    GPUModelName,
    ObjectMeta,
    PrinterColumn,
    cel,
    conditions_field,
    k8s_extra,
)

DEFAULT_NAME = "default"
"""The SchedulingPolicy the operator plans with."""

SPOT_LABELS: tuple[tuple[str, str], ...] = (
    ("conspirator.io/pool", "spot"),
    ("cloud.google.com/gke-spot", "true"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
"""Node labels that mark a spot node when ``spotNodeLabels`` is absent."""


class Objective(StrEnum):
    """What a plan minimises (next to the weighted unmet demand)."""

    GPUS = "gpus"
    """GPUs in use (the paper's objective)."""
    COST = "cost"
    """US$ per hour of the GPUs in use, by GPU model and pool (on-demand or spot)."""
    ENERGY = "energy"
    """Watts: idle power of every powered GPU plus the power of the MIG slices in use."""


class PreemptionPolicy(StrEnum):
    """Whether a job that cannot be served may evict jobs of lower priority."""

    NEVER = "Never"
    PREEMPT_LOWER_PRIORITY = "PreemptLowerPriority"


class GPUPrice(ApiModel):
    """List prices of one GPU model, per GPU-hour."""

    gpu_model: GPUModelName
    """GPU model, as in the placement catalog."""
    on_demand_usd_per_hour: float = Field(gt=0, le=1000, alias="onDemandUSDPerHour")
    """On-demand price of one GPU for one hour (US$)."""
    spot_usd_per_hour: float = Field(gt=0, le=1000, alias="spotUSDPerHour")
    """Spot price of one GPU for one hour (US$); spot nodes may be taken back any time."""


_SLICE_RULE = cel("self.idleWatts < self.tdpWatts", "idleWatts must be below tdpWatts")


class GPUPower(ApiModel):
    """Power of one GPU model."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=[_SLICE_RULE]))

    gpu_model: GPUModelName
    """GPU model, as in the placement catalog."""
    idle_watts: float = Field(ge=0, le=5000)
    """Power of a powered GPU that runs nothing (a GPU holding no replica is powered off)."""
    tdp_watts: float = Field(gt=0, le=5000)
    """Board power at full load (TDP)."""
    slice_watts: float | None = Field(default=None, ge=0, le=5000)
    """Power of one compute slice in use (absent: ``(tdp - idle) / compute slices``; a
    GPU without MIG has one slice)."""

    @model_validator(mode="after")
    def _above_idle(self) -> GPUPower:
        if self.tdp_watts <= self.idle_watts:
            raise ValueError(_SLICE_RULE["message"])
        return self


class NodeLabel(ApiModel):
    """A node label (key and value)."""

    key: str = Field(min_length=1, max_length=317)
    value: str = Field(max_length=63)


class TenantWeight(ApiModel):
    """A tenant's weight in the fair share."""

    tenant: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    weight: float = Field(gt=0, le=1000)


class Fairness(ApiModel):
    """The fairness rule when the cluster is oversubscribed."""

    enabled: bool = False
    """Split what the cluster serves among tenants by weighted max-min share of demand met."""
    tenant_weights: list[TenantWeight] = Field(
        default_factory=list, max_length=1024,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["tenant"]),
    )
    """Weights of named tenants; the others weigh the mean ``1 + priority`` of their jobs."""


def _unique(items: list[GPUPrice] | list[GPUPower]) -> None:
    seen: set[GPUModel] = set()
    for it in items:
        if it.gpu_model in seen:
            raise ValueError(f"duplicate gpuModel {it.gpu_model.value!r}")
        seen.add(it.gpu_model)


class SchedulingPolicySpec(ApiModel):
    """The objective of the plans and the rules around them."""

    objective: Objective = Field(default=Objective.GPUS, strict=False)
    """``gpus`` (default), ``cost`` or ``energy``."""
    prices: list[GPUPrice] = Field(
        default_factory=list, max_length=len(GPUModel),
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["gpuModel"]),
    )
    """Prices per GPU model; models left out take the defaults."""
    power: list[GPUPower] = Field(
        default_factory=list, max_length=len(GPUModel),
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["gpuModel"]),
    )
    """Power per GPU model; models left out take the defaults."""
    spot_node_labels: list[NodeLabel] | None = Field(default=None, max_length=32)
    """Labels marking a spot node (any one matches; absent: ``conspirator.io/pool=spot``
    and the GKE, EKS and AKS spot labels).  Only jobs with ``spotTolerant: true`` run
    there."""
    fairness: Fairness = Field(default_factory=Fairness, json_schema_extra=k8s_extra(default={}))
    """The fairness rule for oversubscription."""
    preemption: PreemptionPolicy = Field(default=PreemptionPolicy.NEVER, strict=False)
    """``PreemptLowerPriority``: a job that cannot be served evicts running jobs of lower
    priority until it fits."""

    @field_validator("prices", "power")
    @classmethod
    def _unique_models(cls, v: list[GPUPrice] | list[GPUPower]) -> list[GPUPrice] | list[GPUPower]:
        _unique(v)
        return v

    def spot_labels(self) -> tuple[tuple[str, str], ...]:
        if self.spot_node_labels is None:
            return SPOT_LABELS
        return tuple((lb.key, lb.value) for lb in self.spot_node_labels)


class SchedulingPolicyStatus(ApiModel):
    """What the operator made of the policy."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the operator plans with."""
    conditions: list[Condition] = conditions_field("``Accepted``: the operator plans with it.")


class SchedulingPolicy(ApiModel):
    """The objective and rules of placement plans, cluster-wide."""

    api_version: Literal["conspirator.io/v1alpha1"] = API_VERSION
    kind: Literal["SchedulingPolicy"] = "SchedulingPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SchedulingPolicySpec = Field(default_factory=SchedulingPolicySpec)
    status: SchedulingPolicyStatus | None = None

    crd: ClassVar[CRDInfo]


SchedulingPolicy.crd = CRDInfo(
    kind="SchedulingPolicy",
    plural="schedulingpolicies",
    singular="schedulingpolicy",
    scope="Cluster",
    short_names=("sp",),
    spec_model=SchedulingPolicySpec,
    status_model=SchedulingPolicyStatus,
    spec_required=False,
    printer_columns=(
        PrinterColumn("Objective", "string", ".spec.objective", "What the plans minimise"),
        PrinterColumn("Fair", "boolean", ".spec.fairness.enabled", "Fair share rule"),
        PrinterColumn("Preemption", "string", ".spec.preemption", "Preemption policy"),
        AGE_COLUMN,
    ),
)
