"""``ModelProfile``: the heterogeneity matrix of one model.

Measured throughput and p99 latency per (GPU model, MIG profile, batch size).
The chart ships defaults; throughput observed by running workers may refine
them (``status.observed``).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from conspirator.api.v1alpha1.common import (
    AGE_COLUMN,
    API_VERSION,
    MODEL_NAME,
    NON_MIG_MODELS,
    PROFILE_OR_WHOLE,
    WHOLE,
    ApiModel,
    CRDInfo,
    GPUModelName,
    ObjectMeta,
    PrinterColumn,
    cel,
    k8s_extra,
)

_NON_MIG_LIST = ", ".join(f"'{m.value}'" for m in NON_MIG_MODELS)
_WHOLE_ON_NON_MIG = cel(
    f"!(self.gpuModel in [{_NON_MIG_LIST}]) || self.migProfile == 'whole'",
    "GPU models without MIG take migProfile: whole",
    field_path=".migProfile",
)


class ProfileEntry(ApiModel):
    """Throughput and latency of the model on one (GPU model, MIG profile, batch size)."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=[_WHOLE_ON_NON_MIG]))

    gpu_model: GPUModelName
    """GPU model."""
    mig_profile: str = Field(max_length=32, pattern=PROFILE_OR_WHOLE)
    """MIG profile of that GPU model, or ``whole`` for the whole GPU."""
    batch_size: int = Field(ge=1, le=4096)
    """Batch size the numbers were measured at."""
    throughput: float = Field(gt=0, le=10_000_000)
    """Requests per second one instance serves."""
    p99_latency_ms: float = Field(gt=0, le=600_000)
    """99th percentile request latency at that throughput, in milliseconds."""

    @model_validator(mode="after")
    def _whole_on_non_mig(self) -> ProfileEntry:
        if self.gpu_model in NON_MIG_MODELS and self.mig_profile != WHOLE:
            raise ValueError(_WHOLE_ON_NON_MIG["message"])
        return self

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.gpu_model.value, self.mig_profile, self.batch_size)


_ENTRY_KEYS = ["gpuModel", "migProfile", "batchSize"]


def _unique_keys(entries: list[ProfileEntry]) -> None:
    seen: set[tuple[str, str, int]] = set()
    for e in entries:
        if e.key in seen:
            raise ValueError(f"duplicate entry for {e.key}")
        seen.add(e.key)


class ModelProfileSpec(ApiModel):
    """Measured throughput and latency of one model."""

    model: str = Field(min_length=1, max_length=63, pattern=MODEL_NAME)
    """Model name, as InferenceJobs name it in ``spec.model.name``."""
    entries: list[ProfileEntry] = Field(
        min_length=1,
        max_length=1024,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=_ENTRY_KEYS),
    )
    """One entry per (gpuModel, migProfile, batchSize); no duplicates."""

    @model_validator(mode="after")
    def _unique(self) -> ModelProfileSpec:
        _unique_keys(self.entries)
        return self


class ObservedEntry(ProfileEntry):
    """Throughput and latency observed on running workers."""

    samples: int = Field(default=0, ge=0)
    """Number of measurement windows averaged."""
    last_updated: datetime | None = Field(default=None, strict=False)
    """When the entry was last refined."""


class ModelProfileStatus(ApiModel):
    """Refinements from running workers, written by the operator."""

    observed: list[ObservedEntry] = Field(
        default_factory=list,
        max_length=1024,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=_ENTRY_KEYS),
    )
    """Observed entries; where present, they take precedence over ``spec.entries``."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` this status was computed from."""


class ModelProfile(ApiModel):
    """The heterogeneity matrix of one model: throughput per GPU model, profile and batch."""

    api_version: Literal["conspirator.io/v1alpha1"] = API_VERSION
    kind: Literal["ModelProfile"] = "ModelProfile"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelProfileSpec
    status: ModelProfileStatus | None = None

    crd: ClassVar[CRDInfo]


ModelProfile.crd = CRDInfo(
    kind="ModelProfile",
    plural="modelprofiles",
    singular="modelprofile",
    scope="Cluster",
    short_names=("mp",),
    spec_model=ModelProfileSpec,
    status_model=ModelProfileStatus,
    printer_columns=(
        PrinterColumn("Model", "string", ".spec.model", "Model name"),
        AGE_COLUMN,
    ),
)
