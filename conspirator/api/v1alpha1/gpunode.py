"""``GPUNode``: one per GPU node, named after the node.

The operator writes ``spec`` (the desired MIG layout of each GPU); the node
daemon applies it and writes ``status`` (inventory and actual state).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from conspirator.api.v1alpha1.common import (
    AGE_COLUMN,
    API_VERSION,
    MAX_GPUS_PER_NODE,
    MAX_MEMORY_SLICES,
    MAX_MIG_INSTANCES,
    MIG_PROFILE,
    ApiModel,
    Condition,
    CRDInfo,
    ObjectMeta,
    PrinterColumn,
    cel,
    conditions_field,
    k8s_extra,
)

OWNER = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
"""A reservation owner: a job's ``namespace/name``."""
OWNER_MAX = 63 + 1 + 253


def valid_start(profile: str, start: int) -> bool:
    """The start-position rule the CRD checks, by compute size of the profile.

    ``7g`` and ``4g`` start at slice 0, ``3g`` at 0 or 4, ``2g`` at 0, 2 or 4;
    ``1g`` anywhere in 0-6.  This is the part of the MIG rules that holds on
    every MIG-capable model; the node daemon checks the rest (memory size of
    each profile, overlaps, the A30's 4 slices) against the model's catalog.
    """
    if profile.startswith(("7g.", "4g.")):
        return start == 0
    if profile.startswith("3g."):
        return start in (0, 4)
    if profile.startswith("2g."):
        return start in (0, 2, 4)
    return 0 <= start <= MAX_MEMORY_SLICES - 2


_START_RULE = cel(
    "(self.profile.startsWith('7g.') || self.profile.startsWith('4g.')) ? self.start == 0"
    " : self.profile.startsWith('3g.') ? (self.start == 0 || self.start == 4)"
    " : self.profile.startsWith('2g.') ? (self.start == 0 || self.start == 2 || self.start == 4)"
    " : true",
    "start is not a valid start slice for this profile (7g and 4g: 0; 3g: 0 or 4; 2g: 0, 2 or 4)",
    field_path=".start",
)


class MigInstanceSpec(ApiModel):
    """One GPU instance of a desired layout: a profile at a start slice."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=[_START_RULE]))

    profile: str = Field(max_length=32, pattern=MIG_PROFILE)
    """MIG profile name, e.g. ``3g.40gb``."""
    start: int = Field(ge=0, le=MAX_MEMORY_SLICES - 2)
    """First memory slice; the instance occupies ``[start, start + size)``."""
    reserved_for: str | None = Field(default=None, max_length=OWNER_MAX, pattern=OWNER)
    """The job (``namespace/name``) the plan reserved this instance for.  In device-plugin
    mode the node daemon advertises it only under that job's resource
    (``conspirator.io/mig-<profile>-r<tag>``), which only the job's workers request."""

    @model_validator(mode="after")
    def _start_valid(self) -> MigInstanceSpec:
        if not valid_start(self.profile, self.start):
            raise ValueError(_START_RULE["message"])
        return self


_FULL_ALONE = cel(
    "!has(self.instances) || size(self.instances) == 1"
    " || !self.instances.exists(i, i.profile.startsWith('7g.'))",
    "a 7g instance takes the whole GPU and must be the only instance",
    field_path=".instances",
)
_INSTANCES_NEED_MIG = cel(
    "self.migEnabled || !has(self.instances) || size(self.instances) == 0",
    "instances require migEnabled: true",
    field_path=".instances",
)


def min_slices(profile: str) -> int:
    """The fewest memory slices an instance of ``profile`` occupies on any MIG-capable model,
    by compute size: ``7g`` 8, ``4g`` and ``3g`` 4, ``2g`` 2, ``1g`` 1 (``1g.20gb`` takes 2
    on an A100-80GB, the A30's ``4g`` its 4 slices: the node daemon checks those against the
    model's catalog)."""
    if profile.startswith("7g."):
        return MAX_MEMORY_SLICES
    if profile.startswith(("4g.", "3g.")):
        return 4
    if profile.startswith("2g."):
        return 2
    return 1


_MIN_SLICES_CEL = ("({p}.startsWith('7g.') ? 8 : ({p}.startsWith('4g.') || {p}.startsWith('3g.'))"
                   " ? 4 : {p}.startsWith('2g.') ? 2 : 1)")
_NO_OVERLAP = cel(
    "!has(self.instances) || self.instances.all(a, self.instances.all(b,"
    " a.start >= b.start || a.start + " + _MIN_SLICES_CEL.format(p="a.profile")
    + " <= b.start))",
    "two instances overlap: an instance occupies the memory slices [start, start + size)"
    " (size 8 for 7g, 4 for 4g and 3g, 2 for 2g, 1 or more for 1g), and the next"
    " instance starts inside them",
    field_path=".instances",
)


_WHOLE_RESERVATION = cel(
    "!has(self.reservedFor) || !has(self.instances) || size(self.instances) == 0",
    "reservedFor on a GPU reserves it whole: its instances carry their own reservedFor",
    field_path=".reservedFor",
)


class GPULayout(ApiModel):
    """Desired state of one GPU: MIG mode and the GPU instances it should hold."""

    model_config = ConfigDict(
        json_schema_extra=k8s_extra(validations=[_FULL_ALONE, _INSTANCES_NEED_MIG,
                                                   _WHOLE_RESERVATION, _NO_OVERLAP])
    )

    index: int = Field(ge=0, le=MAX_GPUS_PER_NODE - 1)
    """Index of the GPU on the node (as NVML numbers it)."""
    uuid: str | None = Field(default=None, max_length=128)
    """UUID of the GPU, when known; the node daemon refuses a layout whose UUID differs."""
    mig_enabled: bool = True
    """Desired MIG mode (``false``: the GPU is used whole)."""
    reserved_for: str | None = Field(default=None, max_length=OWNER_MAX, pattern=OWNER)
    """The job (``namespace/name``) the plan reserved this whole GPU for (a GPU used
    whole, without instances)."""
    instances: list[MigInstanceSpec] = Field(
        default_factory=list,
        max_length=MAX_MIG_INSTANCES,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["start"]),
    )
    """Desired GPU instances; at most one per start slice."""

    @model_validator(mode="after")
    def _layout_rules(self) -> GPULayout:
        starts = [i.start for i in self.instances]
        if len(set(starts)) != len(starts):
            raise ValueError("two instances have the same start slice")
        if any(i.profile.startswith("7g.") for i in self.instances) and len(self.instances) != 1:
            raise ValueError(_FULL_ALONE["message"])
        if not self.mig_enabled and self.instances:
            raise ValueError(_INSTANCES_NEED_MIG["message"])
        for a in self.instances:
            for b in self.instances:
                if a.start < b.start < a.start + min_slices(a.profile):
                    raise ValueError(_NO_OVERLAP["message"])
        if self.reserved_for is not None and self.instances:
            raise ValueError(_WHOLE_RESERVATION["message"])
        return self


class GPUNodeSpec(ApiModel):
    """Desired MIG layout of the node's GPUs, written by the operator."""

    gpus: list[GPULayout] = Field(
        default_factory=list,
        max_length=MAX_GPUS_PER_NODE,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["index"]),
    )
    """One entry per GPU whose layout the operator manages (GPUs not listed are left alone)."""

    @model_validator(mode="after")
    def _unique_index(self) -> GPUNodeSpec:
        indexes = [g.index for g in self.gpus]
        if len(set(indexes)) != len(indexes):
            raise ValueError("two GPUs have the same index")
        return self


class MigInstanceStatus(ApiModel):
    """One GPU instance that exists on the GPU."""

    profile: str = Field(max_length=32, pattern=MIG_PROFILE)
    """MIG profile name."""
    start: int = Field(ge=0, le=MAX_MEMORY_SLICES - 1)
    """First memory slice."""
    uuid: str | None = Field(default=None, max_length=128)
    """MIG device UUID (``MIG-...``), the device id advertised to the kubelet."""
    in_use: bool = False
    """A container holds the device; the node daemon never destroys an instance in use."""
    resource: str | None = Field(default=None, max_length=128)
    """The extended resource the device is advertised under (device-plugin mode): the
    owner's reserved resource, the profile's shared one, or none (a free instance on a GPU
    that holds reservations is offered to nobody)."""


_MIG_NEEDS_CAPABLE = cel(
    "self.migCapable || !self.migEnabled",
    "migEnabled requires migCapable",
    field_path=".migEnabled",
)


class GPUStatus(ApiModel):
    """Inventory and actual state of one GPU."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=[_MIG_NEEDS_CAPABLE]))

    index: int = Field(ge=0, le=MAX_GPUS_PER_NODE - 1)
    """Index of the GPU on the node."""
    uuid: str = Field(min_length=1, max_length=128)
    """GPU UUID (``GPU-...``)."""
    model: str = Field(min_length=1, max_length=64)
    """GPU model, as in the placement catalog (e.g. ``A100-80GB``)."""
    memory_gib: float = Field(ge=0, le=4096, alias="memoryGiB")
    """Total GPU memory, in GiB."""
    mig_capable: bool = False
    """The GPU supports MIG."""
    mig_enabled: bool = False
    """MIG mode is on."""
    instances: list[MigInstanceStatus] = Field(
        default_factory=list,
        max_length=MAX_MIG_INSTANCES,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["start"]),
    )
    """GPU instances that exist now."""

    @model_validator(mode="after")
    def _mig_rules(self) -> GPUStatus:
        if self.mig_enabled and not self.mig_capable:
            raise ValueError(_MIG_NEEDS_CAPABLE["message"])
        starts = [i.start for i in self.instances]
        if len(set(starts)) != len(starts):
            raise ValueError("two instances have the same start slice")
        return self


class DPUStatus(ApiModel):
    """The node's DPU/SmartNIC and its data-path agent."""

    present: bool = False
    """A DPU (or SmartNIC) was found on the node."""
    model: str | None = Field(default=None, max_length=64)
    """DPU model, e.g. ``BlueField-2``."""
    agent_endpoint: str | None = Field(default=None, max_length=256)
    """``host:port`` of the DPU agent (also set when the agent runs on host cores)."""


class GPUNodeStatus(ApiModel):
    """Inventory and actual state of the node, written by the node daemon."""

    gpus: list[GPUStatus] = Field(
        default_factory=list,
        max_length=MAX_GPUS_PER_NODE,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["index"]),
    )
    """The node's GPUs."""
    gpu_count: int | None = Field(default=None, ge=0, le=MAX_GPUS_PER_NODE)
    """Number of GPUs (``len(gpus)``, for ``kubectl get``)."""
    dpu: DPUStatus | None = None
    """The node's DPU and data-path agent."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` of the spec last applied."""
    allocation: Literal["DevicePlugin", "DRA"] | None = None
    """How pods get the node's devices: ``DRA`` (the daemon publishes ResourceSlices and
    prepares claims; the operator gives workers ResourceClaims) or ``DevicePlugin``
    (extended resources; the default when unset)."""
    conditions: list[Condition] = conditions_field(
        "Ready (daemon healthy), LayoutApplied (status matches spec), DPUReady."
    )


class GPUNode(ApiModel):
    """The GPUs of one node: desired MIG layout (spec) and inventory (status)."""

    api_version: Literal["conspirator.io/v1alpha1"] = API_VERSION
    kind: Literal["GPUNode"] = "GPUNode"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: GPUNodeSpec = Field(default_factory=GPUNodeSpec)
    status: GPUNodeStatus | None = None

    crd: ClassVar[CRDInfo]


GPUNode.crd = CRDInfo(
    kind="GPUNode",
    plural="gpunodes",
    singular="gpunode",
    scope="Cluster",
    short_names=("gn",),
    spec_model=GPUNodeSpec,
    status_model=GPUNodeStatus,
    spec_required=False,
    printer_columns=(
        PrinterColumn("GPUs", "integer", ".status.gpuCount", "Number of GPUs"),
        PrinterColumn("Model", "string", ".status.gpus[0].model", "Model of the first GPU"),
        PrinterColumn("DPU", "boolean", ".status.dpu.present", "A DPU is present"),
        PrinterColumn(
            "Ready",
            "string",
            '.status.conditions[?(@.type=="Ready")].status',
            "Node daemon ready",
        ),
        PrinterColumn(
            "Agent", "string", ".status.dpu.agentEndpoint", "DPU agent endpoint", priority=1
        ),
        AGE_COLUMN,
    ),
)
