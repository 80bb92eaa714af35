"""What the operator knows about the cluster, as plain typed values.

The controller keeps one :class:`JobView` per InferenceJob, one :class:`NodeView` per
GPUNode and one :class:`WorkerView` per worker Deployment, parsed from the objects the
API server sends (watch events or listings).  Everything here is pure: dicts in,
frozen values out; no I/O.

A placement of one replica is a :class:`Replica`; the set of replicas of a job is its
*reservation* of GPU instances.  Reservations live in ``InferenceJob.status.replicas``
(the API server is the store), so an operator that restarts reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conspirator.api.v1alpha1 import (
    WHOLE,
    GPUNode,
    GPUNodeSpec,
    InferenceJob,
    ModelProfile,
    ReplicaStatus,
    ScalingMode,
)

MANAGED_BY = "conspirator-operator"
"""Value of ``app.kubernetes.io/managed-by`` on everything the operator creates."""
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB_UID = "conspirator.io/job-uid"
LABEL_JOB = "conspirator.io/job"
LABEL_WORKER = "conspirator.io/worker"
ANNOTATION_NODE = "conspirator.io/node"
ANNOTATION_PROFILE = "conspirator.io/profile"
ANNOTATION_TEMPLATE_HASH = "conspirator.io/template-hash"
ANNOTATION_WORKER_SET = "conspirator.io/worker-set"
"""Which of the job's two sets of worker Deployments a Deployment is in (0 or 1)."""
ANNOTATION_REVISION = "conspirator.io/worker-revision"
"""What of the job's spec the Deployment's pods run (a new one is a rollout)."""
POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
"""Pod annotation the ReplicaSet controller reads on scale-down (cheapest pod goes first)."""
FINALIZER = "conspirator.io/release"
"""Finalizer on every InferenceJob: its GPU instances are released before it goes."""


def job_key(namespace: str, name: str) -> str:
    """The key of a job in the operator and the placement engine: ``namespace/name``."""
    return f"{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica of a job on one GPU instance (or one whole non-MIG GPU)."""

    node: str
    gpu_index: int
    gpu_uuid: str
    gpu_model: str
    profile: str
    start: int
    throughput_rps: float

    @property
    def slot(self) -> tuple[str, int, str, int]:
        """(node, GPU index, profile, start): where the replica sits, without throughput."""
        return (self.node, self.gpu_index, self.profile, self.start)

    def to_status(self, device_id: str | None = None, claim_template: str | None = None,
                  worker_set: int = 0) -> ReplicaStatus:
        return ReplicaStatus(
            node=self.node,
            gpuUUID=self.gpu_uuid,
            gpu_model=self.gpu_model,
            mig_profile=self.profile,
            start_slice=self.start,
            deviceID=device_id,
            resource_claim_template=claim_template,
            workerSet=worker_set or None,
        )


def sort_replicas(replicas: list[Replica]) -> list[Replica]:
    return sorted(replicas, key=lambda r: (r.node, r.gpu_index, r.start, r.profile))


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A GPU instance that exists on a GPU (from ``GPUNode.status``)."""

    profile: str
    start: int
    uuid: str | None = None
    in_use: bool = False


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU of a node's inventory (from ``GPUNode.status``)."""

    node: str
    index: int
    uuid: str
    model: str
    memory_gib: float
    mig_capable: bool
    mig_enabled: bool
    instances: tuple[InstanceInfo, ...] = ()

    def instance(self, profile: str, start: int) -> InstanceInfo | None:
        for i in self.instances:
            if i.profile == profile and i.start == start:
                return i
        return None


DPU_READY = "DPUReady"
"""GPUNode condition: the node's DPU agent accepted the node daemon's registry
(docs/deviceplugin.md: ``AgentConnected``; False: ``NoDPU``, ``AgentNotConnected``)."""


@dataclass(frozen=True, slots=True)
class DpuInfo:
    """A node's DPU and data-path agent (``GPUNode.status.dpu`` and ``DPUReady``)."""

    present: bool = False
    endpoint: str | None = None
    """``host:port`` clients connect to."""
    ready: bool | None = None
    """The ``DPUReady`` condition (None: not reported)."""
    reason: str = ""

    @property
    def connected(self) -> bool:
        return self.ready is True

    @property
    def missing(self) -> bool:
        """No DPU agent at all on the node (as opposed to one not connected)."""
        if self.connected:
            return False
        if self.ready is False:
            return self.reason == "NoDPU"
        return not self.present and not self.endpoint


@dataclass(frozen=True, slots=True)
class NodeView:
    """A GPUNode: its inventory (status) and the layout the operator last asked for (spec)."""

    name: str
    gpus: tuple[GpuInfo, ...]
    spec: GPUNodeSpec
    generation: int
    observed_generation: int | None
    resource_version: str = ""
    dpu: DpuInfo = field(default_factory=DpuInfo)
    """The node's DPU agent, as the node daemon reports it."""
    dra: bool = False
    """The node daemon allocates through DRA (``GPUNode.status.allocation: DRA``): workers
    there get ResourceClaims instead of extended resources."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeView:
        gn = GPUNode.model_validate(_plain(body))
        name = gn.metadata.name or ""
        gpus: list[GpuInfo] = []
        status = gn.status
        for g in sorted(status.gpus if status else [], key=lambda g: g.index):
            gpus.append(GpuInfo(
                node=name, index=g.index, uuid=g.uuid, model=g.model,
                memory_gib=g.memory_gib, mig_capable=g.mig_capable, mig_enabled=g.mig_enabled,
                instances=tuple(
                    InstanceInfo(i.profile, i.start, i.uuid, i.in_use)
                    for i in sorted(g.instances, key=lambda i: i.start)
                ),
            ))
        dpu = DpuInfo()
        if status is not None:
            cond = next((c for c in status.conditions if c.type == DPU_READY), None)
            dpu = DpuInfo(
                present=bool(status.dpu and status.dpu.present),
                endpoint=(status.dpu.agent_endpoint or None) if status.dpu else None,
                ready=None if cond is None else cond.status.value == "True",
                reason=cond.reason if cond is not None else "",
            )
        return cls(
            name=name,
            gpus=tuple(gpus),
            spec=gn.spec,
            generation=gn.metadata.generation or 0,
            observed_generation=status.observed_generation if status else None,
            resource_version=gn.metadata.resource_version or "",
            dpu=dpu,
            dra=status is not None and status.allocation == "DRA",
        )

    def gpu(self, index: int) -> GpuInfo | None:
        for g in self.gpus:
            if g.index == index:
                return g
        return None

    def inventory_key(self) -> tuple[tuple[object, ...], ...]:
        """What planning depends on: the GPUs and the instances in use (not the others)."""
        return tuple(
            (g.index, g.uuid, g.model, g.memory_gib, g.mig_capable,
             tuple((i.profile, i.start) for i in g.instances if i.in_use))
            for g in self.gpus
        )


@dataclass(frozen=True, slots=True)
class JobView:
    """An InferenceJob as the operator sees it."""

    key: str
    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    """``metadata.creationTimestamp`` as RFC 3339 text (orders arrivals)."""
    deleting: bool
    job: InferenceJob
    replicas: tuple[ReplicaStatus, ...] = ()
    """The reservation recorded in ``status.replicas`` (read back after a restart)."""
    retiring: tuple[ReplicaStatus, ...] = ()
    """Moved replicas still serving (``status.retiring``, make-before-break)."""
    resource_version: str = ""
    planned_rps: float | None = None
    """``Auto`` scaling: the rate the autoscaler plans for (``status.autoscaling``, or the
    controller's newer decision); None for ``Static`` jobs."""

    @property
    def demand_rps(self) -> float:
        """The request rate the job is planned for: the autoscaler's in ``Auto`` mode once
        it decided, else ``spec.demand.requestsPerSecond``."""
        if self.planned_rps is not None and self.job.spec.scaling.mode is ScalingMode.AUTO:
            return self.planned_rps
        return self.job.spec.demand.requests_per_second

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView:
        ij = InferenceJob.model_validate(_plain(body))
        meta = ij.metadata
        namespace = meta.namespace or "default"
        name = meta.name or ""
        created = meta.creation_timestamp.isoformat() if meta.creation_timestamp else ""
        return cls(
            key=job_key(namespace, name),
            namespace=namespace,
            name=name,
            uid=meta.uid or "",
            generation=meta.generation or 0,
            created=created,
            deleting=meta.deletion_timestamp is not None,
            job=ij,
            replicas=tuple(ij.status.replicas) if ij.status else (),
            retiring=tuple(ij.status.retiring) if ij.status else (),
            resource_version=meta.resource_version or "",
            planned_rps=(ij.status.autoscaling.planned_rps
                         if ij.status is not None and ij.status.autoscaling is not None
                         and ij.spec.scaling.mode is ScalingMode.AUTO else None),
        )

    @property
    def order(self) -> tuple[int, str, str]:
        """Arrival order: higher priority first, then older first, then by key."""
        return (-self.job.spec.priority, self.created, self.key)


def _template_throughput(spec: Mapping[str, Any]) -> float | None:
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    for c in containers[:1]:
        for e in c.get("env") or []:
            if e.get("name") == "CONSPIRATOR_THROUGHPUT":
                try:
                    return float(e.get("value"))
                except (TypeError, ValueError):
                    return None
    return None


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker Deployment the operator created."""

    name: str
    namespace: str
    job_uid: str
    node: str
    profile: str
    replicas: int
    ready_replicas: int
    template_hash: str
    deleting: bool
    uid: str = ""
    resource_version: str = ""
    throughput: float | None = None
    """The ``CONSPIRATOR_THROUGHPUT`` its pod template gives the workers (their weight at
    the agent's dispatcher)."""
    worker_set: int = 0
    """Which of the job's two sets of worker Deployments it is in."""
    revision: str = ""
    """The job's worker revision its pods run ("": made by an operator that did not say)."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkerView:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        generation = int(meta.get("generation") or 0)
        observed = int(status.get("observedGeneration") or 0)
        want = int(spec["replicas"]) if spec.get("replicas") is not None else 1
        # Count ready replicas only once the Deployment controller has seen this spec
        # and rolled it out: older pods do not count for a newer template.
        fresh = observed >= generation
        ready = min(int(status.get("readyReplicas") or 0),
                    int(status.get("updatedReplicas") or 0)) if fresh else 0
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            job_uid=str(labels.get(LABEL_JOB_UID, "")),
            node=str(annotations.get(ANNOTATION_NODE, "")),
            profile=str(annotations.get(ANNOTATION_PROFILE, "")),
            replicas=want,
            ready_replicas=ready,
            template_hash=str(annotations.get(ANNOTATION_TEMPLATE_HASH, "")),
            deleting=meta.get("deletionTimestamp") is not None,
            uid=str(meta.get("uid", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            throughput=_template_throughput(spec),
            worker_set=1 if str(annotations.get(ANNOTATION_WORKER_SET, "0")) == "1" else 0,
            revision=str(annotations.get(ANNOTATION_REVISION, "")),
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ready(self) -> bool:
        return not self.deleting and self.ready_replicas >= self.replicas


@dataclass(frozen=True, slots=True)
class ProfileView:
    """A ModelProfile, reduced to what the throughput table needs."""

    name: str
    profile: ModelProfile
    resource_version: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ProfileView:
        mp = ModelProfile.model_validate(_plain(body))
        return cls(name=mp.metadata.name or "", profile=mp,
                   resource_version=mp.metadata.resource_version or "")

    @property
    def model(self) -> str:
        return self.profile.spec.model


@dataclass(slots=True)
class Snapshot:
    """Everything the operator read from the API server, by key."""

    jobs: dict[str, JobView] = field(default_factory=dict)
    nodes: dict[str, NodeView] = field(default_factory=dict)
    profiles: dict[str, ProfileView] = field(default_factory=dict)
    workers: dict[str, WorkerView] = field(default_factory=dict)


def newer(rv: str, than: str) -> bool:
    """Whether resourceVersion ``rv`` is at least as new as ``than``.

    Resource versions are opaque, but the API server's are etcd revisions (integers);
    anything else counts as newer so that the cache never gets stuck.
    """
    try:
        return int(rv) >= int(than)
    except ValueError:
        return True


def is_whole(profile: str) -> bool:
    return profile == WHOLE


_OBJECT_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an object the API models read, as plain dicts.

    kopf hands bodies as read-only mappings; the API models refuse unknown
    top-level fields, and the status of a fresh object may be absent or empty.
    """
    out: dict[str, Any] = {}
    for k in _OBJECT_KEYS:
        v = body.get(k)
        if v is None:
            continue
        if k == "metadata":
            # Not needed, and the bulk of a stored object: managedFields, kopf's diff base.
            v = {mk: mv for mk, mv in v.items() if mk not in _DROPPED_META}
            if "annotations" in v:
                v["annotations"] = {ak: av for ak, av in v["annotations"].items()
                                    if not ak.startswith(_DROPPED_ANNOTATIONS)}
        out[k] = _thaw(v)
    if out.get("status") == {}:
        out.pop("status")
    return out


_DROPPED_META = frozenset({"managedFields"})
_DROPPED_ANNOTATIONS = ("conspirator.io/last-handled-configuration", "kubectl.kubernetes.io/")


def _thaw(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _thaw(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_thaw(x) for x in v]
    return v
