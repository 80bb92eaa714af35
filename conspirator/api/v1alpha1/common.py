"""Pieces shared by every kind of ``conspirator.io/v1alpha1``.

The models here are the single source of the API: the CRD YAML under ``crds/``
is generated from them (``python -m conspirator.api.crdgen``).  Field names are
snake_case in Python and camelCase on the wire.

Checks that the API server makes through CEL (``x-kubernetes-validations``) are
declared next to the model with :func:`cel` and repeated as Python validators,
so that an object the API server refuses is refused by ``model_validate`` too
(transition rules, which compare with the stored object, are the exception:
only the API server can check them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP: Final = "conspirator.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "conspirator.io/v1alpha1"
CATEGORY: Final = "conspirator"

# Regular expressions shared by the models (the same text goes into the CRD's
# ``pattern``; keep them to the subset both Rust's and Go's engines read alike).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A Kubernetes DNS label (RFC 1123): namespaces, tenants."""
MODEL_NAME = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
"""A model name in the profile catalog: lower case, digits, ``-``, ``_``, ``.``."""
MIG_PROFILE = r"^[1-7]g\.[0-9]+gb(\+me)?$"
"""A MIG GPU-instance profile name such as ``1g.10gb`` or ``1g.10gb+me``."""
WHOLE = "whole"
"""Pseudo-profile of a whole GPU (a non-MIG GPU, or a MIG-capable one with MIG off)."""
PROFILE_OR_WHOLE = r"^(whole|[1-7]g\.[0-9]+gb(\+me)?)$"
"""A MIG profile name, or ``whole``."""
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

MAX_GPUS_PER_NODE = 16
MAX_MIG_INSTANCES = 7
MAX_MEMORY_SLICES = 8


class GPUModel(StrEnum):
    """GPU models the placement engine knows (names as in its catalog)."""

    A100_40GB = "A100-40GB"
    A100_80GB = "A100-80GB"
    H100_80GB = "H100-80GB"
    H100_94GB = "H100-94GB"
    H200_141GB = "H200-141GB"
    A30_24GB = "A30-24GB"
    T4 = "T4"
    P100 = "P100"
    V100M16 = "V100M16"
    V100M32 = "V100M32"
    A10 = "A10"
    L4 = "L4"


GPUModelName = Annotated[GPUModel, Field(strict=False)]
"""A :class:`GPUModel` field that accepts the plain string (as YAML and JSON carry it)."""

MIG_CAPABLE_MODELS: frozenset[GPUModel] = frozenset(
    {
        GPUModel.A100_40GB,
        GPUModel.A100_80GB,
        GPUModel.H100_80GB,
        GPUModel.H100_94GB,
        GPUModel.H200_141GB,
        GPUModel.A30_24GB,
    }
)
NON_MIG_MODELS: tuple[GPUModel, ...] = tuple(m for m in GPUModel if m not in MIG_CAPABLE_MODELS)


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry (a CEL rule checked by the API server)."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def k8s_extra(**extra: Any) -> dict[str, Any]:
    """Schema keywords for the CRD, e.g. ``k8s_extra(list_type="set")``.

    ``list_type``, ``list_map_keys`` and ``validations`` become
    ``x-kubernetes-list-type``, ``x-kubernetes-list-map-keys`` and
    ``x-kubernetes-validations``; ``default`` is copied as it is (used for
    ``default: {}`` on optional objects, so that the API server applies the
    defaults of their fields too).
    """
    names = {
        "list_type": "x-kubernetes-list-type",
        "list_map_keys": "x-kubernetes-list-map-keys",
        "validations": "x-kubernetes-validations",
        "default": "default",
    }
    unknown = set(extra) - set(names)
    if unknown:
        raise TypeError(f"unknown CRD schema keywords: {sorted(unknown)}")
    return {names[k]: v for k, v in extra.items()}


class ApiModel(BaseModel):
    """Base of every API model: strict types, camelCase aliases, unknown fields refused.

    Strict means the types the API server enforces: ``"5"`` is no integer and
    ``1`` no boolean.  Enum and timestamp fields are lax so that plain strings
    (as found in YAML and JSON) are accepted.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API server wants it: camelCase, no ``None`` fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(StrEnum):
    """Status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """The standard ``metav1.Condition``: one aspect of the object's current state."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE)
    """Type of condition in CamelCase, e.g. ``Ready``."""
    status: ConditionStatus = Field(strict=False)
    """``True``, ``False`` or ``Unknown``."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the condition was set from."""
    last_transition_time: datetime = Field(strict=False)
    """When the condition last changed from one status to another (RFC 3339)."""
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON)
    """Programmatic identifier of the reason for the last transition, in CamelCase."""
    message: str = Field(max_length=32768)
    """Human-readable details about the transition; may be empty."""


def set_condition(
    conditions: list[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Add or update the condition ``type`` in place, the way Kubernetes controllers do.

    ``lastTransitionTime`` changes only when the status changes.  Returns True
    when anything changed (so the caller knows whether to write the status).
    """
    stamp = (now or datetime.now(UTC)).replace(microsecond=0)
    new = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=stamp,
    )
    for i, old in enumerate(conditions):
        if old.type != type:
            continue
        if old.status == status:
            new = new.model_copy(update={"last_transition_time": old.last_transition_time})
        if new == old:
            return False
        conditions[i] = new
        return True
    conditions.append(new)
    return True


CONDITIONS_EXTRA = k8s_extra(list_type="map", list_map_keys=["type"])


def conditions_field(description: str) -> Any:
    """A ``conditions`` list: a list-map keyed by ``type``, at most 16 entries."""
    return Field(
        default_factory=list,
        max_length=16,
        description=description,
        json_schema_extra=CONDITIONS_EXTRA,
    )


class ObjectMeta(BaseModel):
    """The fields of ``metav1.ObjectMeta`` this project reads; others are kept as they are."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", strict=False
    )

    name: str | None = None
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str | None = None


@dataclass(frozen=True, slots=True)
class CRDInfo:
    """What the CRD of a kind needs beyond the schema of its spec and status."""

    kind: str
    plural: str
    singular: str
    scope: str
    short_names: tuple[str, ...]
    spec_model: type[ApiModel]
    status_model: type[ApiModel]
    printer_columns: tuple[PrinterColumn, ...] = ()
    categories: tuple[str, ...] = (CATEGORY,)
    spec_required: bool = True

    @property
    def name(self) -> str:
        """The CRD's ``metadata.name``: ``<plural>.<group>``."""
        return f"{self.plural}.{GROUP}"


AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp")
