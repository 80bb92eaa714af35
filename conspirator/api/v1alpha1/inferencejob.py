"""``InferenceJob``: serve a model at a request rate under a p99 latency SLO."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from conspirator.api.v1alpha1.common import (
    AGE_COLUMN,
    API_VERSION,
    DNS_LABEL,
    MODEL_NAME,
    PROFILE_OR_WHOLE,
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


class ModelSpec(ApiModel):
    """The model to serve and the worker image that serves it."""

    name: str = Field(min_length=1, max_length=63, pattern=MODEL_NAME)
    """Model name in the profile catalog (``spec.model`` of a ModelProfile), e.g. ``resnet50``."""
    image: str = Field(min_length=1, max_length=512)
    """Container image of the model worker."""
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=64)
    """Arguments passed to the worker container."""


class Demand(ApiModel):
    """What one job asks for: load, latency and memory."""

    requests_per_second: float = Field(gt=0, le=10_000_000)
    """Request rate to serve, summed over all replicas (requests/s)."""
    p99_latency_ms: float = Field(gt=0, le=600_000)
    """Latency SLO: 99th percentile of request latency, in milliseconds."""
    gpu_memory_gib: float = Field(gt=0, le=1024, alias="gpuMemoryGiB")
    """GPU memory one replica needs, in GiB (decides the smallest MIG profile that fits)."""


class Isolation(ApiModel):
    """Tenant isolation requirements."""

    dedicated_gpu: bool = Field(default=False, alias="dedicatedGPU")
    """When true, no other tenant's job shares a physical GPU with any replica of this job."""


_MIGRATION_RULE = cel(
    "self.allowed || !has(self.disruptionBudget)",
    "disruptionBudget may be set only when migration is allowed",
    field_path=".disruptionBudget",
)


class MigrationPolicy(ApiModel):
    """Whether the periodic global re-plan may move this job's replicas."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=[_MIGRATION_RULE]))

    allowed: bool = True
    """Replicas may be moved to other GPUs or profiles by a re-plan."""
    disruption_budget: int | None = Field(default=None, ge=1, le=1024)
    """At most this many replicas move at once (absent: 1).  Only with ``allowed: true``."""

    @model_validator(mode="after")
    def _budget_needs_allowed(self) -> MigrationPolicy:
        if not self.allowed and self.disruption_budget is not None:
            raise ValueError(_MIGRATION_RULE["message"])
        return self


class ScalingMode(StrEnum):
    """Who decides the capacity a job is planned for."""

    STATIC = "Static"
    """``demand.requestsPerSecond``, as written."""
    AUTO = "Auto"
    """The load the DPU agents observe; ``demand.requestsPerSecond`` is the first guess."""


_SCALING_RULES = [
    cel("!has(self.minRequestsPerSecond) || !has(self.maxRequestsPerSecond)"
        " || self.minRequestsPerSecond <= self.maxRequestsPerSecond",
        "minRequestsPerSecond must not exceed maxRequestsPerSecond",
        field_path=".minRequestsPerSecond"),
]


class Scaling(ApiModel):
    """How the capacity follows the load (HPA's conventions: a utilization target, a
    stabilization window per direction).

    The bounds are on the capacity planned, in requests/s, not on a replica count: with
    MIG re-slicing one large instance may replace several small ones, so a replica count
    says little about capacity.
    """

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=_SCALING_RULES))

    mode: ScalingMode = Field(default=ScalingMode.STATIC, strict=False)
    """``Static`` (default) or ``Auto``."""
    target_utilization_percent: int = Field(default=80, ge=10, le=100)
    """Auto: plan for the observed request rate divided by this share of capacity."""
    min_requests_per_second: float | None = Field(default=None, gt=0, le=10_000_000)
    """Auto: never plan for less (absent: no floor but one replica)."""
    max_requests_per_second: float | None = Field(default=None, gt=0, le=10_000_000)
    """Auto: never plan for more (absent: no ceiling)."""
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """Auto: scale out to the lowest recommendation of this window (0: at once)."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """Auto: scale in only to the highest recommendation of this window."""

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        lo, hi = self.min_requests_per_second, self.max_requests_per_second
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(_SCALING_RULES[0]["message"])
        return self


class DType(StrEnum):
    """Element type of the input tensor."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"
    UINT8 = "uint8"
    INT32 = "int32"
    INT64 = "int64"


MAX_DIM = 1 << 20
"""Largest dimension of an input tensor."""


ITEM_BYTES: dict[DType, int] = {
    DType.FLOAT32: 4, DType.FLOAT16: 2, DType.BFLOAT16: 2, DType.INT8: 1, DType.UINT8: 1,
    DType.INT32: 4, DType.INT64: 8,
}
"""Bytes of one element of each dtype."""

MAX_INPUT_BUFFER_BYTES = 141 << 30
"""Largest input buffer of one replica (``inputShape`` x dtype x ``maxBatch``): 141 GiB, the
memory of the largest GPU the placement knows (H200-141GB), which a replica's buffer could
never exceed (the API server refuses more, before anything is allocated anywhere)."""


def input_buffer_bytes(shape: Sequence[int], dtype: DType, max_batch: int) -> int:
    """Bytes of one replica's input buffer: ``maxBatch`` requests of ``shape`` x dtype."""
    n = ITEM_BYTES[dtype] * max_batch
    for d in shape:
        n *= d
    return n


def _buffer_rule() -> dict[str, str]:
    # CEL has no fold: the product of the (at most 8) dimensions, in doubles so that no
    # shape overflows int64 on its way to the comparison.
    dims = " * ".join(f"(size(self.inputShape) > {i} ? double(self.inputShape[{i}]) : 1.0)"
                      for i in range(8))
    sizes = " : ".join(f"self.dtype == '{t.value}' ? {b}.0" for t, b in ITEM_BYTES.items())
    return cel(
        f"{dims} * double(has(self.maxBatch) ? self.maxBatch : 32)"
        f" * (!has(self.dtype) ? 4.0 : {sizes} : 8.0) <= {float(MAX_INPUT_BUFFER_BYTES)}",
        f"the input buffer of one replica (inputShape x dtype x maxBatch) exceeds "
        f"{MAX_INPUT_BUFFER_BYTES >> 30} GiB, the memory of the largest GPU",
        field_path=".inputShape",
    )


_BUFFER_RULE = _buffer_rule()


class DataPath(ApiModel):
    """Shape of the request data the DPU agent writes into each replica's input buffer."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=[_BUFFER_RULE]))

    input_shape: list[Annotated[int, Field(ge=1, le=MAX_DIM)]] = Field(min_length=1, max_length=8)
    """Shape of one request's input tensor (without the batch dimension), e.g. ``[3, 224, 224]``."""
    dtype: DType = Field(default=DType.FLOAT32, strict=False)
    """Element type of the input tensor."""
    max_batch: int = Field(default=32, ge=1, le=4096)
    """Largest batch a worker runs; the input buffer holds this many requests.  The buffer
    (``maxBatch`` x ``inputShape`` x dtype) is at most 141 GiB, the largest GPU's memory."""

    @model_validator(mode="after")
    def _buffer_bounded(self) -> DataPath:
        if input_buffer_bytes(self.input_shape, self.dtype, self.max_batch) \
                > MAX_INPUT_BUFFER_BYTES:
            raise ValueError(_BUFFER_RULE["message"])
        return self


_TENANT_IMMUTABLE = cel(
    "has(self.tenant) == has(oldSelf.tenant)"
    " && (!has(self.tenant) || self.tenant == oldSelf.tenant)",
    "tenant is immutable",
    field_path=".tenant",
)


class InferenceJobSpec(ApiModel):
    """Desired state of an InferenceJob."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(validations=[_TENANT_IMMUTABLE]))

    model: ModelSpec
    """The model to serve."""
    demand: Demand
    """Load, latency SLO and memory per replica."""
    data_path: DataPath
    """Input tensor the DPU agent delivers to the workers."""
    allowed_accelerators: list[GPUModelName] | None = Field(
        default=None,
        min_length=1,
        max_length=len(GPUModel),
        json_schema_extra=k8s_extra(list_type="set"),
    )
    """GPU models this job may run on (absent: any).  No duplicates."""
    isolation: Isolation = Field(default_factory=Isolation, json_schema_extra=k8s_extra(default={}))
    """Isolation from other tenants."""
    tenant: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS_LABEL)
    """Tenant owning the job (absent: the job's namespace).  Immutable."""
    priority: int = Field(default=0, ge=0, le=1000)
    """Weight of unmet demand in the placement objective (higher is more important)."""
    migration: MigrationPolicy = Field(
        default_factory=MigrationPolicy, json_schema_extra=k8s_extra(default={})
    )
    """Whether and how fast re-planning may move this job's replicas."""
    scaling: Scaling = Field(default_factory=Scaling, json_schema_extra=k8s_extra(default={}))
    """Whether the observed load drives the capacity (``mode: Auto``)."""
    spot_tolerant: bool = False
    """The job may run on spot nodes, which the provider may take back at any time (the
    ``SchedulingPolicy``'s ``spotNodeLabels``); other jobs never run there."""

    @field_validator("allowed_accelerators")
    @classmethod
    def _unique(cls, models: list[GPUModel] | None) -> list[GPUModel] | None:
        if models is not None:
            seen: set[GPUModel] = set()
            for m in models:
                if m in seen:
                    raise ValueError(f"duplicate value {m.value!r}")
                seen.add(m)
        return models


class JobPhase(StrEnum):
    """Where a job is in its life."""

    PENDING = "Pending"
    """Accepted, not placed yet."""
    UNSCHEDULABLE = "Unschedulable"
    """No placement meets the demand with the GPUs there are."""
    PARTITIONING = "Partitioning"
    """Placed; waiting for the nodes to apply the MIG layouts."""
    STARTING = "Starting"
    """Layouts applied; workers starting."""
    RUNNING = "Running"
    """Workers ready; the data path is up."""
    DEGRADED = "Degraded"
    """Running below the demand (replicas lost or an SLO at risk)."""
    FAILED = "Failed"
    """Cannot run (bad image, model unknown to the profile catalog, ...)."""


class ConditionType(StrEnum):
    """Condition types of an InferenceJob."""

    PLACED = "Placed"
    PARTITIONED = "Partitioned"
    READY = "Ready"
    DATA_PATH_READY = "DataPathReady"


class ReplicaStatus(ApiModel):
    """Where one replica runs."""

    node: str = Field(min_length=1, max_length=253)
    """Node (and GPUNode) name."""
    gpu_uuid: str | None = Field(default=None, max_length=128, alias="gpuUUID")
    """UUID of the physical GPU."""
    gpu_model: str = Field(min_length=1, max_length=64)
    """GPU model, as in the placement catalog."""
    mig_profile: str = Field(max_length=32, pattern=PROFILE_OR_WHOLE)
    """MIG profile of the replica's GPU instance, or ``whole`` for a whole GPU."""
    start_slice: int | None = Field(default=None, ge=0, le=7)
    """First memory slice of the GPU instance (MIG placement start)."""
    device_id: str | None = Field(default=None, max_length=128, alias="deviceID")
    """Device id the device plugin advertises (the MIG device UUID on real GPUs)."""
    resource_claim_template: str | None = Field(default=None, max_length=253)
    """DRA mode: the ResourceClaimTemplate (in the job's namespace) whose claims the
    replica's worker pods get; its selector admits only the instances the plan reserved
    for the job."""
    worker_set: int | None = Field(default=None, ge=0, le=1, alias="workerSet")
    """Which of the job's two sets of worker Deployments runs the replica: absent or 0, the
    Deployments named ``<job>-<node>-<profile>``; 1, the same names ending in ``-b``.  A
    rollout of a new worker template (image, args, data path) starts its replicas in the
    other set while the old ones serve (make-before-break)."""


def profile_summary(replicas: Sequence[ReplicaStatus]) -> str:
    """The ``status.profiles`` text: ``<count>x<profile>`` by decreasing count, e.g.
    ``2x3g.40gb,1x1g.10gb`` (empty for no replica)."""
    counts = Counter(r.mig_profile for r in replicas)
    return ",".join(f"{n}x{p}" for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class ClientEndpoint(ApiModel):
    """A DPU agent that reaches some of the job's replicas (an agent dispatches only to the
    replicas on its own node)."""

    node: str = Field(min_length=1, max_length=253)
    """Node (and GPUNode) whose agent this is."""
    endpoint: str = Field(min_length=1, max_length=256)
    """``host:port`` of the agent (``GPUNode.status.dpu.agentEndpoint``)."""
    replicas: int = Field(ge=0, le=256)
    """The job's replicas on that node."""
    throughput: float | None = Field(default=None, ge=0)
    """Their estimated throughput, requests/s (clients may spread load in proportion)."""
    connected: bool = False
    """The node reports its agent connected (GPUNode condition ``DPUReady`` is True)."""


class ObservedLoad(ApiModel):
    """The load the DPU agents measured over their last window, summed over the agents
    that serve the job (p99: the worst agent's)."""

    offered_rps: float = Field(ge=0, alias="offeredRPS")
    """Requests arriving, per second."""
    served_rps: float = Field(ge=0, alias="servedRPS")
    """Responses returned, per second."""
    errors_per_second: float = Field(default=0.0, ge=0)
    """Requests answered with an error, per second."""
    p50_latency_ms: float | None = Field(default=None, ge=0)
    """Median latency at the agent (arrival to response), milliseconds."""
    p99_latency_ms: float | None = Field(default=None, ge=0)
    """99th percentile latency at the agent, milliseconds."""
    outstanding: int = Field(default=0, ge=0)
    """Requests in the replicas' input buffers at the scrape."""
    waiting: int = Field(default=0, ge=0)
    """Requests queued at the agents for a free slot at the scrape."""
    window_seconds: float = Field(default=0.0, ge=0)
    """Length of the agents' measurement window."""
    agents: int = Field(default=0, ge=0)
    """Agents that reported the job."""
    time: datetime = Field(strict=False)
    """When the operator read the agents."""


class AutoscalingStatus(ApiModel):
    """What the autoscaler last decided (Auto mode)."""

    planned_rps: float = Field(gt=0, alias="plannedRPS")
    """The request rate the placement is made for."""
    recommended_rps: float | None = Field(default=None, ge=0, alias="recommendedRPS")
    """The latest recommendation, before the stabilization windows."""
    last_scale_time: datetime | None = Field(default=None, strict=False)
    """When ``plannedRPS`` last changed."""
    reason: str | None = Field(default=None, max_length=1024)
    """Why, with the figures."""


class InferenceJobStatus(ApiModel):
    """Observed state of an InferenceJob, written by the operator."""

    phase: JobPhase | None = Field(default=None, strict=False)
    """Summary of the job's state."""
    replicas: list[ReplicaStatus] = Field(default_factory=list, max_length=256)
    """One entry per placed replica."""
    retiring: list[ReplicaStatus] = Field(default_factory=list, max_length=256)
    """Replicas the global re-plan moved away that still serve until the new ones run
    (make-before-break); their instances stay reserved for the job until then."""
    replica_count: int | None = Field(default=None, ge=0, le=256)
    """Number of replicas placed (``len(replicas)``, for ``kubectl get``)."""
    profiles: str | None = Field(default=None, max_length=256)
    """Summary of the replicas' profiles, e.g. ``2x3g.40gb,1x1g.10gb``."""
    estimated_throughput: float | None = Field(default=None, ge=0)
    """Throughput the placement is estimated to serve, in requests/s (from the ModelProfile)."""
    demand: float | None = Field(default=None, ge=0)
    """The demand (requests/s) the placement was made for."""
    conditions: list[Condition] = conditions_field(
        "Placed, Partitioned, Ready, DataPathReady (standard metav1.Condition shape)."
    )
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` this status was computed from."""
    client_endpoint: str | None = Field(default=None, max_length=256)
    """Where clients send requests (``host:port`` of the DPU agent): the first of
    ``clientEndpoints`` (a connected agent first, then the node with the most replicas)."""
    client_endpoints: list[ClientEndpoint] = Field(default_factory=list, max_length=256)
    """Every DPU agent that reaches some of the job's replicas, best first."""
    token_secret: str | None = Field(default=None, max_length=253)
    """Secret in the job's namespace whose key ``token`` is the job's data-path token
    (what a client proves to the DPU agent); absent until the operator created it."""
    message: str | None = Field(default=None, max_length=1024)
    """Human-readable detail on the phase."""
    observed: ObservedLoad | None = None
    """The load the DPU agents measure (absent until an agent reported the job)."""
    autoscaling: AutoscalingStatus | None = None
    """Auto mode: the capacity the autoscaler plans for, and why."""


class InferenceJob(ApiModel):
    """A model to serve at a request rate under a p99 latency SLO, for one tenant."""

    api_version: Literal["conspirator.io/v1alpha1"] = API_VERSION
    kind: Literal["InferenceJob"] = "InferenceJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceJobSpec
    status: InferenceJobStatus | None = None

    crd: ClassVar[CRDInfo]

    @property
    def tenant(self) -> str:
        """The effective tenant: ``spec.tenant``, else the namespace, else ``default``."""
        return self.spec.tenant or self.metadata.namespace or "default"


InferenceJob.crd = CRDInfo(
    kind="InferenceJob",
    plural="inferencejobs",
    singular="inferencejob",
    scope="Namespaced",
    short_names=("ij",),
    spec_model=InferenceJobSpec,
    status_model=InferenceJobStatus,
    printer_columns=(
        PrinterColumn("Phase", "string", ".status.phase", "Phase of the job"),
        PrinterColumn("Replicas", "integer", ".status.replicaCount", "Replicas placed"),
        PrinterColumn("Profiles", "string", ".status.profiles", "MIG profiles of the replicas"),
        PrinterColumn(
            "Throughput", "number", ".status.estimatedThroughput", "Estimated requests/s"
        ),
        PrinterColumn("Demand", "number", ".status.demand", "Demand planned for, requests/s"),
        PrinterColumn("Observed", "number", ".status.observed.offeredRPS",
                      "Observed request rate at the DPU agents, requests/s"),
        PrinterColumn("P99ms", "number", ".status.observed.p99LatencyMs",
                      "Observed p99 latency at the DPU agents, ms"),
        PrinterColumn("SLOms", "number", ".spec.demand.p99LatencyMs", "p99 latency SLO, ms",
                      priority=1),
        PrinterColumn("Scaling", "string", ".spec.scaling.mode", "Static or Auto", priority=1),
        PrinterColumn("Model", "string", ".spec.model.name", "Model name", priority=1),
        PrinterColumn("Tenant", "string", ".spec.tenant", "Tenant (empty: namespace)", priority=1),
        PrinterColumn(
            "Endpoint", "string", ".status.clientEndpoint", "DPU agent for clients", priority=1
        ),
        AGE_COLUMN,
    ),
)
