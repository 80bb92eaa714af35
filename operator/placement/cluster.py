"""The cluster as the MIG placement engine sees it: nodes, GPUs and instances.

A :class:`ClusterState` is the engine's working copy.  Policies mutate it while
they decide; callers that want to keep the original pass ``state.copy()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from conspirator.operator.placement.gpus import GpuModel, MigLayoutError, MigProfile, Placement
from conspirator.operator.placement.jobs import Job


@dataclass(frozen=True, slots=True)
class Instance:
    """A GPU instance (or a whole non-MIG GPU) serving one replica of one job."""

    job_id: str
    tenant: str
    profile: MigProfile
    start: int
    throughput_rps: float
    dedicated: bool = False
    time_share: float = 0.0
    """Fraction of the whole GPU's time for a time-sliced replica (no MIG); 0 for an instance."""

    @property
    def mask(self) -> int:
        return 0 if self.time_share else self.profile.mask(self.start)


@dataclass(slots=True)
class GpuState:
    """One physical GPU: its model, the instances on it and the resulting free space."""

    node: str
    index: int  # position of the GPU on its node
    model: GpuModel
    uid: int  # dense id in the cluster
    spot: bool = False  # a spot (preemptible) GPU: hosts only spot-tolerant jobs
    down: bool = False  # unavailable (a spot node taken back): hosts nothing new
    instances: list[Instance] = field(default_factory=list)
    used_mask: int = 0
    compute_used: int = 0
    time_share_used: float = 0.0
    memory_used_gib: float = 0.0  # by time-sliced replicas

    @property
    def uuid(self) -> str:
        return f"GPU-{self.node}-{self.index}"

    @property
    def empty(self) -> bool:
        return not self.instances

    @property
    def free_slots(self) -> int:
        return self.model.slots - self.used_mask.bit_count()

    @property
    def free_compute(self) -> int:
        return self.model.compute - self.compute_used

    def tenants(self) -> set[str]:
        return {i.tenant for i in self.instances}

    def admits_tenant(self, tenant: str, dedicated: bool) -> bool:
        """Whether a replica of ``tenant`` (dedicated or not) may join this GPU."""
        for inst in self.instances:
            if inst.tenant != tenant and (dedicated or inst.dedicated):
                return False
        return True

    def admits(self, job: Job) -> bool:
        """Whether a replica of ``job`` may join this GPU: tenancy and spot tolerance."""
        if self.down or (self.spot and not job.spot_tolerant):
            return False
        return self.admits_tenant(job.tenant, job.dedicated_gpu)

    def free_starts(self, profile: MigProfile) -> list[int]:
        """Start slices where ``profile`` fits next to the current instances."""
        if self.time_share_used or profile.compute_slices > self.free_compute:
            return []
        if sum(1 for i in self.instances if i.profile.name == profile.name) >= profile.max_count:
            return []
        return [s for s in profile.starts if not (profile.mask(s) & self.used_mask)]

    def add(self, inst: Instance) -> None:
        if inst.time_share:
            self._add_time_sliced(inst)
            return
        if self.time_share_used:
            raise MigLayoutError(f"{self.uuid} is time-sliced; it cannot also be partitioned")
        if inst.mask & self.used_mask or inst.profile.compute_slices > self.free_compute:
            raise MigLayoutError(
                f"{inst.profile.name}@{inst.start} does not fit on {self.uuid} "
                f"(used slices {self.used_mask:08b}, free compute {self.free_compute})"
            )
        if inst.start not in inst.profile.starts:
            raise MigLayoutError(f"{inst.profile.name} cannot start at {inst.start}")
        self.instances.append(inst)
        self.used_mask |= inst.mask
        self.compute_used += inst.profile.compute_slices

    def _add_time_sliced(self, inst: Instance) -> None:
        if self.used_mask:
            raise MigLayoutError(f"{self.uuid} is partitioned; it cannot also be time-sliced")
        if self.time_share_used + inst.time_share > 1.0 + 1e-9:
            raise MigLayoutError(f"{self.uuid} has only {1 - self.time_share_used:.3f} time left")
        if self.memory_used_gib + inst.profile.memory_gib > self.model.memory_gib + 1e-9:
            raise MigLayoutError(f"{self.uuid} lacks memory for another time-sliced replica")
        self.instances.append(inst)
        self.time_share_used += inst.time_share
        self.memory_used_gib += inst.profile.memory_gib

    def remove_job(self, job_id: str) -> list[Instance]:
        gone = [i for i in self.instances if i.job_id == job_id]
        if gone:
            self.instances = [i for i in self.instances if i.job_id != job_id]
            self._recount()
        return gone

    def remove(self, inst: Instance) -> None:
        self.instances.remove(inst)
        self._recount()

    def _recount(self) -> None:
        self.used_mask = 0
        self.compute_used = 0
        self.time_share_used = 0.0
        self.memory_used_gib = 0.0
        for i in self.instances:
            if i.time_share:
                self.time_share_used += i.time_share
                self.memory_used_gib += i.profile.memory_gib
            else:
                self.used_mask |= i.mask
                self.compute_used += i.profile.compute_slices

    def clone(self) -> GpuState:
        """A copy with its own instance list (instances and the model are frozen)."""
        return GpuState(self.node, self.index, self.model, self.uid, spot=self.spot,
                        down=self.down, instances=list(self.instances),
                        used_mask=self.used_mask, compute_used=self.compute_used,
                        time_share_used=self.time_share_used,
                        memory_used_gib=self.memory_used_gib)

    def placements(self) -> list[Placement]:
        return [Placement(i.profile, i.start) for i in self.instances]


class ClusterState:
    """All GPUs of a cluster and the jobs placed on them."""

    def __init__(self, gpus: Iterable[tuple[str, GpuModel]] = (),
                 spot_nodes: Iterable[str] = ()) -> None:
        self.gpus: list[GpuState] = []
        self.jobs: dict[str, Job] = {}
        self._where: dict[str, Counter[int]] = {}
        spot = set(spot_nodes)
        per_node: Counter[str] = Counter()
        for node, model in gpus:
            self.add_gpu(node, model, per_node[node], spot=node in spot)
            per_node[node] += 1

    @classmethod
    def from_nodes(cls, nodes: Iterable[tuple[str, GpuModel, int]],
                   spot_nodes: Iterable[str] = ()) -> ClusterState:
        """Build from ``(node name, GPU model, GPU count)`` triples; ``spot_nodes`` are
        the nodes of the spot pool."""
        return cls(((name, model) for name, model, count in nodes for _ in range(count)),
                   spot_nodes)

    def add_gpu(self, node: str, model: GpuModel, index: int, spot: bool = False) -> GpuState:
        g = GpuState(node=node, index=index, model=model, uid=len(self.gpus), spot=spot)
        self.gpus.append(g)
        return g

    def copy(self) -> ClusterState:
        """An independent copy: new containers and :class:`GpuState` values; the frozen
        values (GPU models, instances, jobs) are shared, which is what makes it cheap
        (a ``deepcopy`` of 800 GPUs took about 0.5 s; policies copy per trial)."""
        out = ClusterState()
        out.gpus = [g.clone() for g in self.gpus]
        out.jobs = dict(self.jobs)
        out._where = {k: Counter(v) for k, v in self._where.items()}
        return out

    def adopt(self, other: ClusterState) -> None:
        """Take over ``other``'s GPUs, jobs and replica index in place: a move, not a copy.

        ``self`` keeps its identity (whoever holds it sees the new plan) and ends up
        with ``other``'s very containers; ``other`` is left an empty cluster (no GPU,
        no job), so the two never share a list, dict or :class:`GpuState` and a later
        change to either does not reach the other.  Policies use it to make a trial
        copy (``state.copy()``) the result; copy first to keep ``other``'s contents.
        """
        if other is self:
            return
        self.gpus, self.jobs, self._where = other.gpus, other.jobs, other._where
        other.gpus, other.jobs, other._where = [], {}, {}

    # --- queries ------------------------------------------------------------------------

    def models(self) -> dict[str, GpuModel]:
        return {g.model.name: g.model for g in self.gpus}

    def gpus_used(self) -> int:
        return sum(1 for g in self.gpus if g.instances)

    def replicas(self, job_id: str) -> Iterator[tuple[GpuState, Instance]]:
        for uid in self._where.get(job_id, Counter()):
            g = self.gpus[uid]
            for inst in g.instances:
                if inst.job_id == job_id:
                    yield g, inst

    def served_rps(self, job_id: str) -> float:
        return sum(i.throughput_rps for _, i in self.replicas(job_id))

    def unmet_rps(self, job_id: str) -> float:
        return max(0.0, self.jobs[job_id].demand_rps - self.served_rps(job_id))

    # --- changes ------------------------------------------------------------------------

    def assign(self, job: Job, gpu: GpuState, profile: MigProfile, start: int,
               throughput_rps: float, time_share: float = 0.0) -> Instance:
        """Place one replica of ``job`` on ``gpu`` at ``profile``/``start``.

        ``time_share`` > 0 places a time-sliced replica on an unpartitioned GPU instead
        (the naive-sharing baseline); ``profile`` then gives its memory footprint.
        """
        if not gpu.admits_tenant(job.tenant, job.dedicated_gpu):
            raise MigLayoutError(f"{gpu.uuid} hosts another tenant; {job.id} needs isolation")
        if gpu.down:
            raise MigLayoutError(f"{gpu.uuid} is down")
        if gpu.spot and not job.spot_tolerant:
            raise MigLayoutError(f"{gpu.uuid} is a spot GPU; {job.id} is not spot-tolerant")
        inst = Instance(job.id, job.tenant, profile, start, throughput_rps, job.dedicated_gpu,
                        time_share)
        gpu.add(inst)
        self.jobs[job.id] = job
        self._where.setdefault(job.id, Counter())[gpu.uid] += 1
        return inst

    def unassign(self, gpu: GpuState, inst: Instance) -> None:
        gpu.remove(inst)
        where = self._where[inst.job_id]
        where[gpu.uid] -= 1
        if where[gpu.uid] <= 0:
            del where[gpu.uid]

    def release_replica(self, job_id: str, gpu_uid: int, start: int) -> Instance:
        """Remove the one replica of ``job_id`` at ``start`` on GPU ``gpu_uid`` (scale-in).

        The job keeps its other replicas; with none left it is forgotten, as after
        :meth:`release`.  Raises ``KeyError`` when no such replica exists.
        """
        gpu = self.gpus[gpu_uid]
        for inst in gpu.instances:
            if inst.job_id == job_id and inst.start == start:
                self.unassign(gpu, inst)
                if not self._where.get(job_id):
                    self._where.pop(job_id, None)
                    self.jobs.pop(job_id, None)
                return inst
        raise KeyError(f"job {job_id} has no replica at start {start} on {gpu.uuid}")

    def redefine(self, job: Job) -> None:
        """Replace the definition of a placed job (e.g. its demand after autoscaling).

        Its replicas stay as they are; a job not in the cluster is refused (``KeyError``),
        since a definition without replicas would be a job nobody placed.
        """
        if job.id not in self.jobs:
            raise KeyError(f"job {job.id} is not placed")
        self.jobs[job.id] = job

    def release(self, job_id: str) -> int:
        """Remove every replica of ``job_id``; returns how many were removed."""
        n = 0
        for uid in self._where.pop(job_id, Counter()):
            n += len(self.gpus[uid].remove_job(job_id))
        self.jobs.pop(job_id, None)
        return n
