"""Between the API objects and the placement engine: pure functions, no I/O.

* :func:`build_table`: ModelProfile objects (and, for models without one, the engine's
  built-in defaults) to a :class:`ThroughputTable`;
* :func:`engine_job`: an InferenceJob to the engine's :class:`Job`;
* :func:`build_cluster`: GPUNode inventories to the engine's :class:`ClusterState`;
* :func:`rebuild_engine`: both of them and :func:`block_in_use`, the one way the operator
  (re)builds the engine's state;
* :func:`restore`: the reservations recorded in InferenceJob statuses back into that
  state, in arrival order, refusing any replica that would double-book a slice;
* :func:`place`: one arrival through the policy, as :class:`Replica` values;
* :func:`desired_spec`, :func:`layout_diff`, :func:`layout_applied`: GPUNode layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from conspirator.api.v1alpha1 import (
    GPULayout,
    GPUNodeSpec,
    MigInstanceSpec,
    ReplicaStatus,
)
from conspirator.operator.placement.cluster import ClusterState, GpuState, Instance
from conspirator.operator.placement.gpus import GpuModel, MigLayoutError, MigProfile, gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import DEMAND_TOLERANCE
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.throughput import (
    ThroughputRow,
    ThroughputTable,
    UnknownModelError,
    default_table,
)
from conspirator.operator.views import (
    GpuInfo,
    JobView,
    NodeView,
    ProfileView,
    Replica,
    is_whole,
    sort_replicas,
)

DEFAULTS_SOURCE = "built-in defaults"
"""``TableInfo.sources`` value of a model served from the engine's derived defaults."""
BLOCKED_PREFIX = "~in-use/"
"""Engine job id prefix of instances in use by something the operator did not place."""


# --- throughput -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TableInfo:
    """The throughput table and where each model's figures come from."""

    table: ThroughputTable
    sources: Mapping[str, str]
    """Model name -> ``ModelProfile/<name>`` or :data:`DEFAULTS_SOURCE`."""
    conflicts: tuple[str, ...] = ()
    """Messages about ModelProfiles ignored because another one names the same model."""

    def knows(self, model: str) -> bool:
        return model in self.sources


def build_table(profiles: Iterable[ProfileView], *, use_defaults: bool = True) -> TableInfo:
    """The throughput table the operator plans with.

    A model with a ModelProfile is planned from that object only: ``status.observed``
    entries override ``spec.entries`` with the same (GPU model, profile, batch).
    Several ModelProfiles naming one model: the first by object name wins (the others
    are reported in ``conflicts``).  With ``use_defaults``, models that have no
    ModelProfile but are among the engine's reference models use its derived defaults
    (docs/throughput-model.md); any other model is unknown.
    """
    rows: list[ThroughputRow] = []
    sources: dict[str, str] = {}
    conflicts: list[str] = []
    for pv in sorted(profiles, key=lambda p: p.name):
        model = pv.model
        if model in sources:
            conflicts.append(f"ModelProfile {pv.name} ignored: {sources[model]} already "
                             f"profiles model {model!r}")
            continue
        sources[model] = f"ModelProfile/{pv.name}"
        entries = {e.key: (e.throughput, e.p99_latency_ms) for e in pv.profile.spec.entries}
        if pv.profile.status is not None:
            for o in pv.profile.status.observed:
                entries[o.key] = (o.throughput, o.p99_latency_ms)
        for (gpu, prof, batch), (thr, lat) in sorted(entries.items()):
            rows.append(ThroughputRow(model, gpu, prof, batch, thr, lat))
    if use_defaults:
        defaults = default_table()
        for r in defaults:
            if r.model not in sources or sources[r.model] == DEFAULTS_SOURCE:
                sources[r.model] = DEFAULTS_SOURCE
                rows.append(r)
    return TableInfo(ThroughputTable(rows), sources, tuple(conflicts))


def unknown_model_message(model: str, info: TableInfo) -> str:
    known = ", ".join(sorted(info.sources)) or "none"
    return (f"model {model!r} has no ModelProfile and no built-in default throughput; "
            f"create a ModelProfile with spec.model: {model} (profiled models: {known})")


# --- jobs -------------------------------------------------------------------------------

def engine_job(view: JobView) -> Job:
    """The engine's view of an InferenceJob (its id is the ``namespace/name`` key)."""
    spec = view.job.spec
    allowed = (frozenset(m.value for m in spec.allowed_accelerators)
               if spec.allowed_accelerators else None)
    return Job(
        id=view.key,
        model=spec.model.name,
        demand_rps=view.demand_rps,
        latency_slo_ms=spec.demand.p99_latency_ms,
        memory_gib=spec.demand.gpu_memory_gib,
        tenant=view.job.tenant,
        dedicated_gpu=spec.isolation.dedicated_gpu,
        allowed_gpus=allowed,
        priority=spec.priority,
        max_batch=spec.data_path.max_batch,
    )


# --- the cluster ------------------------------------------------------------------------

@dataclass(slots=True)
class EngineCluster:
    """The engine's state of the cluster plus the maps back to the API's names."""

    state: ClusterState
    gpus: dict[tuple[str, int], GpuState] = field(default_factory=dict)
    info: dict[tuple[str, int], GpuInfo] = field(default_factory=dict)
    by_uuid: dict[str, tuple[str, int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """GPUs left out of planning, with the reason (unknown model, duplicate UUID)."""

    def replicas(self, job_id: str) -> list[Replica]:
        """The job's replicas in the state, as :class:`Replica` values (sorted)."""
        out = []
        for g, inst in self.state.replicas(job_id):
            info = self.info[(g.node, g.index)]
            out.append(Replica(g.node, g.index, info.uuid, g.model.name, inst.profile.name,
                               inst.start, inst.throughput_rps))
        return sort_replicas(out)

    def gpus_in_use(self) -> int:
        return self.state.gpus_used()


def build_cluster(nodes: Iterable[NodeView]) -> EngineCluster:
    """The engine's cluster from GPUNode inventories, in a deterministic order.

    GPUs are added by node name, then GPU index.  A GPU whose model the engine does not
    know, or whose UUID another GPU already reported, is left out (``skipped``).
    """
    cluster = EngineCluster(ClusterState())
    for node in sorted(nodes, key=lambda n: n.name):
        for info in node.gpus:
            try:
                model = gpu_model(info.model, None if info.mig_capable else info.memory_gib)
            except KeyError as e:
                cluster.skipped.append(f"{node.name} GPU {info.index}: {e.args[0]}")
                continue
            if info.uuid in cluster.by_uuid:
                cluster.skipped.append(
                    f"{node.name} GPU {info.index}: UUID {info.uuid} already reported by "
                    f"{cluster.by_uuid[info.uuid][0]}")
                continue
            g = cluster.state.add_gpu(node.name, model, info.index)
            cluster.gpus[(node.name, info.index)] = g
            cluster.info[(node.name, info.index)] = info
            cluster.by_uuid[info.uuid] = (node.name, info.index)
    return cluster


def profile_on(model: GpuModel, name: str) -> MigProfile | None:
    if not model.mig_capable:
        return model.whole if is_whole(name) else None
    if is_whole(name):
        return None
    try:
        return model.profile(name)
    except KeyError:
        return None


@dataclass(slots=True)
class Restored:
    """What :func:`restore` kept and dropped."""

    kept: dict[str, list[Replica]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """Job key -> why replicas were dropped (one message per replica)."""
    trimmed: dict[str, int] = field(default_factory=dict)
    """Job key -> replicas released because the job needs fewer now."""

    def drop(self, key: str, why: str) -> None:
        self.dropped.setdefault(key, []).append(why)


def restore(cluster: EngineCluster, jobs: Sequence[tuple[Job, Sequence[ReplicaStatus]]],
            table: ThroughputTable) -> Restored:
    """Put the recorded reservations back into ``cluster.state``, in the order given.

    A replica is kept only if its GPU is still there with the same model, its profile
    exists on that model, the job's current spec can still use it (memory, SLO, allowed
    GPUs, via ``table``) and it overlaps no replica kept before it: so the result never
    double-books a slice, whatever the statuses say.  A job left with more throughput
    than it needs gives back its smallest replicas while its demand stays met.
    """
    out = Restored()
    for job, statuses in jobs:
        kept: list[tuple[GpuState, Instance]] = []
        for rs in statuses:
            why = _restore_one(cluster, job, rs, table, kept)
            if why:
                out.drop(job.id, f"{rs.mig_profile}@{rs.start_slice or 0} on {rs.node}: {why}")
        n = _trim(cluster.state, job, kept)
        if n:
            out.trimmed[job.id] = n
        if kept and len(kept) > n:
            out.kept[job.id] = cluster.replicas(job.id)
    return out


def _restore_one(cluster: EngineCluster, job: Job, rs: ReplicaStatus, table: ThroughputTable,
                 kept: list[tuple[GpuState, Instance]]) -> str | None:
    where = cluster.by_uuid.get(rs.gpu_uuid or "")
    if where is None or where[0] != rs.node:
        return "the GPU is no longer in the node's inventory"
    gpu = cluster.gpus[where]
    if gpu.model.name != rs.gpu_model:
        return f"the GPU is now reported as {gpu.model.name}"
    prof = profile_on(gpu.model, rs.mig_profile)
    if prof is None:
        return f"{gpu.model.name} has no profile {rs.mig_profile}"
    start = rs.start_slice or 0
    try:
        opt = table.best(job, gpu.model, prof)
    except UnknownModelError:
        return f"model {job.model!r} is no longer profiled"
    if opt is None:
        return "it no longer meets the job's memory, latency SLO or allowed GPUs"
    try:
        inst = cluster.state.assign(job, gpu, prof, start, opt.throughput_rps)
    except MigLayoutError as e:
        return f"conflicts with a replica restored before it ({e})"
    kept.append((gpu, inst))
    return None


def _trim(state: ClusterState, job: Job, kept: list[tuple[GpuState, Instance]]) -> int:
    served = state.served_rps(job.id)
    need = job.demand_rps * (1.0 - DEMAND_TOLERANCE)
    n = 0
    for g, inst in sorted(kept, key=lambda gi: (gi[1].throughput_rps, -gi[0].uid, -gi[1].start)):
        if served - inst.throughput_rps >= need:
            state.unassign(g, inst)
            served -= inst.throughput_rps
            n += 1
    if n == len(kept):
        state.jobs.pop(job.id, None)
    return n


def block_in_use(cluster: EngineCluster) -> list[str]:
    """Mark instances in use that no reservation covers as taken (not plannable).

    Something the operator did not place holds them (a pod of a job that moved away, or
    a pod created by hand); planning over them would make the layout unappliable.
    They enter the engine's state as instances of a pseudo-job outside ``state.jobs``.
    """
    blocked = []
    for (node, index), info in sorted(cluster.info.items()):
        g = cluster.gpus[(node, index)]
        for inst in info.instances:
            if not inst.in_use:
                continue
            if any(i.profile.name == inst.profile and i.start == inst.start
                   for i in g.instances):
                continue
            prof = profile_on(g.model, inst.profile)
            if prof is None:
                continue
            try:
                g.add(Instance(f"{BLOCKED_PREFIX}{node}/{index}/{inst.start}", "~", prof,
                               inst.start, 0.0))
            except MigLayoutError:
                continue  # it overlaps a reservation: the layout waits for it to be freed
            blocked.append(f"{node} GPU {index}: {inst.profile}@{inst.start}")
    return blocked


@dataclass(slots=True)
class Rebuilt:
    """The engine's state rebuilt by :func:`rebuild_engine`."""

    cluster: EngineCluster
    restored: Restored
    blocked: list[str]
    """Instances in use outside any reservation (see :func:`block_in_use`)."""


def rebuild_engine(nodes: Iterable[NodeView],
                   reservations: Sequence[tuple[Job, Sequence[ReplicaStatus]]],
                   table: ThroughputTable,
                   before_blocking: Callable[[EngineCluster], object] | None = None
                   ) -> Rebuilt:
    """A fresh engine state: the GPUs of ``nodes``, the ``reservations`` put back in the
    order given (:func:`restore`), then ``before_blocking`` (the retiring replicas of
    migrations take their instances), then the instances in use that nothing reserved
    blocked."""
    cluster = build_cluster(nodes)
    restored = restore(cluster, reservations, table)
    if before_blocking is not None:
        before_blocking(cluster)
    return Rebuilt(cluster, restored, block_in_use(cluster))


# --- decisions --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Placed:
    """The outcome of placing one job: its replicas, or why it has none."""

    replicas: list[Replica]
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


def place(policy: PlacementPolicy, cluster: EngineCluster, job: Job,
          table: ThroughputTable) -> Placed:
    """Place (or top up) one job with ``policy.place``; ``cluster.state`` keeps the result."""
    dec = policy.place(cluster.state, [job], table)
    reasons = [u.reason for u in dec.unplaced if u.job_id == job.id]
    if not reasons:
        # The same surplus rule as restore(): a replan or restart then finds nothing to
        # give back, so the plan it rebuilds is the plan it had.
        _trim(cluster.state, job, list(cluster.state.replicas(job.id)))
    return Placed(cluster.replicas(job.id), reasons[0] if reasons else None, dec.solve_seconds)


# --- layouts ----------------------------------------------------------------------------

def desired_spec(node: NodeView, reserved: Mapping[str, Iterable[Replica]]) -> GPUNodeSpec:
    """The GPUNode spec that serves exactly the replicas of ``reserved`` (job key ->
    replicas; those on ``node`` count), each instance marked with the job it is reserved
    for.

    Every MIG-capable GPU of the inventory is listed, with MIG on and the reserved
    instances (an empty list frees the GPU); a GPU without MIG is listed only while a job
    holds it whole (``reservedFor`` on the GPU); entries of the current spec for GPUs the
    inventory does not report stay as they are (a GPUNode without status is never
    rewritten).
    """
    per_gpu: dict[int, list[MigInstanceSpec]] = {}
    whole: dict[int, str] = {}
    for key, replicas in reserved.items():
        for r in replicas:
            if r.node != node.name:
                continue
            if is_whole(r.profile):
                whole[r.gpu_index] = key
            else:
                per_gpu.setdefault(r.gpu_index, []).append(
                    MigInstanceSpec(profile=r.profile, start=r.start, reserved_for=key))
    gpus = []
    known = {g.index for g in node.gpus}
    for g in node.gpus:
        if not _mig_capable(g):
            if g.index in whole:
                gpus.append(GPULayout(index=g.index, uuid=g.uuid, mig_enabled=False,
                                      reserved_for=whole[g.index]))
            continue
        insts = sorted(per_gpu.get(g.index, []), key=lambda i: i.start)
        gpus.append(GPULayout(index=g.index, uuid=g.uuid, mig_enabled=True, instances=insts))
    # Entries for GPUs the inventory does not report are someone else's: kept as they are.
    gpus += [g for g in node.spec.gpus if g.index not in known]
    return GPUNodeSpec(gpus=sorted(gpus, key=lambda g: g.index))


def _mig_capable(g: GpuInfo) -> bool:
    try:
        return gpu_model(g.model).mig_capable
    except KeyError:
        return g.mig_capable


SpecKey = list[tuple[int, str, bool, str, tuple[tuple[str, int, str], ...]]]


def spec_key(spec: GPUNodeSpec) -> SpecKey:
    """A comparable form of a GPUNode spec (order of lists and defaults do not matter)."""
    return sorted(
        (g.index, g.uuid or "", g.mig_enabled, g.reserved_for or "",
         tuple(sorted((i.profile, i.start, i.reserved_for or "") for i in g.instances)))
        for g in spec.gpus
    )


@dataclass(frozen=True, slots=True)
class GpuChange:
    """How one GPU's instances must change to reach the desired layout."""

    index: int
    create: tuple[tuple[str, int], ...]
    destroy: tuple[tuple[str, int], ...]

    def describe(self) -> str:
        parts = [f"+{p}@{s}" for p, s in self.create] + [f"-{p}@{s}" for p, s in self.destroy]
        return f"GPU {self.index}: {' '.join(parts)}"


def layout_diff(node: NodeView, spec: GPUNodeSpec) -> list[GpuChange]:
    """Instances to create and to destroy on each GPU of ``spec`` (GPUs in order)."""
    out = []
    for layout in sorted(spec.gpus, key=lambda g: g.index):
        info = node.gpu(layout.index)
        have = {(i.profile, i.start) for i in info.instances} if info else set()
        want = {(i.profile, i.start) for i in layout.instances}
        create = tuple(sorted(want - have, key=lambda ps: (ps[1], ps[0])))
        destroy = tuple(sorted(have - want, key=lambda ps: (ps[1], ps[0])))
        if create or destroy:
            out.append(GpuChange(layout.index, create, destroy))
    return out


def layout_applied(node: NodeView | None, replicas: Iterable[Replica]) -> bool:
    """Whether every replica's instance exists on its GPU (per ``GPUNode.status``)."""
    for r in replicas:
        if node is None or r.node != node.name:
            return False
        g = node.gpu(r.gpu_index)
        if g is None or g.uuid != r.gpu_uuid:
            return False
        if not is_whole(r.profile) and g.instance(r.profile, r.start) is None:
            return False
    return True


def device_id(node: NodeView | None, r: Replica) -> str | None:
    """The MIG device UUID of a replica's instance, once the node reports it."""
    if node is None:
        return None
    g = node.gpu(r.gpu_index)
    if g is None:
        return None
    if is_whole(r.profile):
        return g.uuid
    inst = g.instance(r.profile, r.start)
    return inst.uuid if inst else None


def replica_ids(r: Replica, node: NodeView | None) -> set[str]:
    """Every identity an agent may report for replica ``r``: the device id the node daemon
    advertises for its instance (the MIG device UUID on real GPUs) and
    ``<GPU UUID>/<profile>/<start>``."""
    ids = {f"{r.gpu_uuid}/{r.profile}/{r.start}"}
    dev = device_id(node, r)
    if dev:
        ids.add(dev)
    return ids
