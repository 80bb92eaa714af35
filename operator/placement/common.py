"""Helpers shared by the MIG-track policies: options, costs, groups, reasons, decisions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from conspirator.operator.placement.cluster import ClusterState, GpuState, Instance
from conspirator.operator.placement.decision import Decision, ReplicaPlacement, Unplaced
from conspirator.operator.placement.gpus import GpuModel, MigProfile
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.placement.throughput import ReplicaOption, ThroughputTable

SHARED = ""
"""Key of the shared tenant group (tenant groups are otherwise tenant names)."""

SPOT = "spot:"
"""Prefix of the groups of spot GPUs (``spot:`` + the group), which host only
spot-tolerant jobs."""


def spot_group(group: str) -> str:
    return SPOT + group


def job_groups(job: Job, groups: Sequence[str]) -> list[str]:
    """Tenant groups whose GPUs may host ``job``: its tenant's only, when it is dedicated;
    their spot variants too when the job is spot-tolerant and ``groups`` has them."""
    base = [job.tenant] if job.dedicated_gpu else \
        [SHARED] + ([job.tenant] if job.tenant in groups else [])
    if job.spot_tolerant:
        base += [spot_group(g) for g in base if spot_group(g) in groups]
    return base


def slot_cost(model: GpuModel, profile: MigProfile) -> float:
    """Share of a GPU a profile takes: the larger of its memory and compute shares."""
    return max(profile.memory_slices / model.slots, profile.compute_slices / model.compute)


@dataclass(frozen=True, slots=True)
class Option:
    """One feasible (GPU model, profile) for a job, with its throughput and cost."""

    model: GpuModel
    replica: ReplicaOption
    cost: float

    @property
    def profile(self) -> MigProfile:
        return self.replica.profile

    @property
    def throughput(self) -> float:
        return self.replica.throughput_rps


def job_options(job: Job, models: Iterable[GpuModel], table: ThroughputTable) -> list[Option]:
    """Feasible options of ``job``; none when its model has no throughput profile."""
    if job.model not in table.models:
        return []
    out: list[Option] = []
    for m in models:
        for p in m.planning_profiles:
            r = table.best(job, m, p)
            if r is not None:
                out.append(Option(m, r, slot_cost(m, p)))
    return out


INSUFFICIENT_CAPACITY = "insufficient capacity"
"""How every capacity reason starts: the job has options, the free space does not hold it."""

NO_SOLUTION_IN_TIME = "no solution found within the time limit"
"""The reason of a solver that stopped without any plan (the MILP): no statement on the job."""


def unplaced_reason(job: Job, models: Iterable[GpuModel], table: ThroughputTable) -> str:
    """Why ``job`` (or the rest of its demand) is not placed: the one wording of every policy.

    It depends on the job, the cluster's GPU ``models`` and ``table`` only, never on the
    policy or on how far it got, so a job refused by any policy reads the same (and the
    operator announces it once).  A job with no feasible (GPU model, profile) gets what
    rules them all out (unknown model, no allowed GPU model, memory, SLO); one with
    options was refused for capacity.
    """
    models = list(models)
    options = job_options(job, models, table)
    if options:
        kinds = sorted({f"{o.model.name}/{o.profile.name}" for o in options})
        more = f" and {len(kinds) - 4} more" if len(kinds) > 4 else ""
        return (
            f"{INSUFFICIENT_CAPACITY}: {job.demand_rps:g} rps do not fit in the free space of "
            f"{', '.join(kinds[:4])}{more}"
            + ("; the job needs GPUs no other tenant uses" if job.dedicated_gpu else "")
        )
    if job.model not in table.models:
        return (f"model {job.model!r} has no throughput profile (known: "
                f"{', '.join(sorted(table.models))})")
    allowed = [m for m in models if job.allows(m.name)]
    names = ", ".join(sorted({m.name for m in allowed}))
    if not names:
        return (f"no GPU of an allowed model ({', '.join(sorted(job.allowed_gpus or ()))}) "
                f"exists in the cluster")
    if not any(p.memory_gib >= job.memory_gib for m in allowed for p in m.planning_profiles):
        return f"no profile on {names} has memory for {job.memory_gib:g} GiB"
    return (f"no profile on {names} offers {job.memory_gib:g} GiB and meets the p99 SLO of "
            f"{job.latency_slo_ms:g} ms for model {job.model}")


def best_start(gpu: GpuState, profile: MigProfile, starts: Sequence[int]) -> int:
    """The start that blocks the fewest other free placements (ties: the highest start).

    Placing small instances at the high end keeps the low starts, where the large
    profiles must begin, free.
    """
    if len(starts) == 1:
        return starts[0]
    free = [pl.mask for pl in gpu.model.placements
            if not pl.profile.media_extensions and not (pl.mask & gpu.used_mask)]
    best = starts[0]
    best_key: tuple[int, int] | None = None
    for s in starts:
        m = profile.mask(s)
        blocked = sum(1 for f in free if f & m)
        key = (blocked, -s)
        if best_key is None or key < best_key:
            best, best_key = s, key
    return best


def record(dec: Decision, gpu: GpuState, inst: Instance) -> None:
    dec.placed.append(ReplicaPlacement(
        job_id=inst.job_id, node=gpu.node, gpu_uid=gpu.uid, gpu_uuid=gpu.uuid,
        gpu_model=gpu.model.name, profile=inst.profile.name, start=inst.start,
        throughput_rps=inst.throughput_rps,
    ))


def finish_job(state: ClusterState, job: Job, dec: Decision, added: list[tuple[GpuState, Instance]],
               models: Iterable[GpuModel], table: ThroughputTable) -> bool:
    """All-or-nothing: keep ``added`` if the job's demand is met, else roll back and explain."""
    served = state.served_rps(job.id)
    if demand_met(served, job.demand_rps):
        for g, i in added:
            record(dec, g, i)
        return True
    for g, i in added:
        state.unassign(g, i)
    dec.unplaced.append(Unplaced(job.id, unplaced_reason(job, models, table),
                                 job.demand_rps - state.served_rps(job.id)))
    if not state.served_rps(job.id):
        state.jobs.pop(job.id, None)
    return False


def replica_map(state: ClusterState) -> dict[str, list[tuple[int, str, int]]]:
    """Job id -> sorted (gpu uid, profile, start) of its replicas."""
    out: dict[str, list[tuple[int, str, int]]] = {}
    for g in state.gpus:
        for i in g.instances:
            out.setdefault(i.job_id, []).append((g.uid, i.profile.name, i.start))
    for v in out.values():
        v.sort()
    return out


def count_migrations(before: dict[str, list[tuple[int, str, int]]],
                     after: dict[str, list[tuple[int, str, int]]]) -> int:
    """Replicas of jobs present before and after that no longer sit where they were."""
    moved = 0
    for job_id, old in before.items():
        new = list(after.get(job_id, ()))
        if job_id not in after:
            continue
        for r in old:
            if r in new:
                new.remove(r)
            else:
                moved += 1
    return moved
