"""A solution of the pattern model written into the cluster: concrete GPUs and start slices.

:func:`decode` turns the counts of a
:class:`~conspirator.operator.placement.lpmodel.Solution` of a
:class:`~conspirator.operator.placement.pattern.PatternProblem` into instances
(``state.assign``; in ``replan`` the replicas it removes are unassigned first);
:func:`unplaced_jobs` lists the jobs it leaves unmet, with the reason.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from conspirator.operator.placement.cluster import GpuState
from conspirator.operator.placement.common import NO_SOLUTION_IN_TIME, unplaced_reason
from conspirator.operator.placement.decision import ReplicaPlacement, Unplaced
from conspirator.operator.placement.gpus import MigProfile, Placement
from conspirator.operator.placement.lpmodel import Solution
from conspirator.operator.placement.objective import DEMAND_TOLERANCE
from conspirator.operator.placement.pattern import GpuClass, PatternProblem


def decode(pb: PatternProblem, sol: Solution) -> tuple[list[ReplicaPlacement], int]:
    """Write ``sol`` into ``pb.state``: the replicas placed (``replan``: the whole plan)
    and the existing replicas no longer where they were."""
    state, v = pb.state, pb.vars
    val = sol.values

    def r(c: int) -> int:
        return round(val[c])

    # Which existing replicas are kept (replan).
    kept: set[int] = set()
    for (ei, _t), c in v.keep.items():
        if r(c) >= 1:
            kept.add(ei)
    before = Counter(
        (i.job_id, g.uid, i.profile.name, i.start) for g in state.gpus for i in g.instances
    )
    # GPUs in keep mode (replan) and their group
    keep_mode: dict[int, tuple[int, str]] = {}  # gpu uid -> (config index, group)
    for (ci, cj, t), c in v.n.items():
        cl = pb.classes[ci]
        if cl.keep and r(c) >= 1:
            keep_mode[cl.gpus[0].uid] = (cj, t)
    if pb.replan:
        for ei, ex in enumerate(pb.existing):
            if ei not in kept:
                state.unassign(ex.gpu, ex.inst)
        # Jobs being replanned take their new definition.
        for job in pb.jobs:
            if job.id in state.jobs:
                state.jobs[job.id] = job

    slots: dict[tuple[str, str, str], list[tuple[GpuState, Placement]]] = defaultdict(list)
    freed: dict[int, list[Placement]] = defaultdict(list)  # gpu uid -> slots of removed replicas
    for ei, ex in enumerate(pb.existing):
        if ei not in kept and ex.inst.profile in ex.gpu.model.planning_profiles:
            freed[ex.gpu.uid].append(Placement(ex.inst.profile, ex.inst.start))

    def open_gpus(ci: int, cl: GpuClass, members: Iterable[GpuState]) -> None:
        it = iter(members)
        for cj, conf in enumerate(cl.configs):
            for t in cl.groups:
                col = v.n.get((ci, cj, t))
                if col is None:
                    continue
                for _ in range(r(col)):
                    g = next(it)
                    extra = freed.get(g.uid, []) if cl.keep else []
                    for pl in (*conf.placements, *extra):
                        slots[(cl.model.name, pl.profile.name, t)].append((g, pl))

    # Existing GPUs first (their slots cost nothing more), then the pool.
    for ci, cl in enumerate(pb.classes):
        if not cl.pool:
            open_gpus(ci, cl, cl.gpus)
    for ci, cl in enumerate(pb.classes):
        if cl.pool:
            open_gpus(ci, cl, [g for g in cl.gpus if g.empty and g.uid not in keep_mode])
    for lst in slots.values():
        lst.reverse()  # pop() takes them in the order added

    placed: list[ReplicaPlacement] = []
    for (i, mname, pname, t), c in sorted(v.y.items()):
        n = r(c)
        if n <= 0 or r(v.delta[i]) >= 1:
            continue
        job = pb.jobs[i]
        thr = pb.options[i][(mname, pname)]
        for _ in range(n):
            g, pl = slots[(mname, pname, t)].pop()
            profile: MigProfile = pl.profile
            state.assign(job, g, profile, pl.start, thr)
            placed.append(ReplicaPlacement(job.id, g.node, g.uid, g.uuid, g.model.name,
                                           profile.name, pl.start, thr))
    after = Counter(
        (i.job_id, g.uid, i.profile.name, i.start) for g in state.gpus for i in g.instances
    )
    migrations = sum((before - after).values())
    if pb.replan:  # the whole plan, as the other policies report a replan
        placed = [
            ReplicaPlacement(i.job_id, g.node, g.uid, g.uuid, g.model.name, i.profile.name,
                             i.start, i.throughput_rps)
            for g in state.gpus for i in g.instances
        ]
    return placed, migrations



def unplaced_jobs(pb: PatternProblem, sol: Solution | None) -> list[Unplaced]:
    """The jobs ``sol`` leaves unmet (``None``: every job with demand), with the reason."""
    out: list[Unplaced] = []
    models = list(pb.state.models().values())
    for i, job in enumerate(pb.jobs):
        if i in pb.vars.delta:
            if sol is not None and round(sol.values[pb.vars.delta[i]]) < 1:
                continue
            if sol is None and pb.replan and \
                    pb.state.served_rps(job.id) >= job.demand_rps * (1.0 - DEMAND_TOLERANCE):
                continue  # no plan in time: the state, and this job's service, are unchanged
        elif pb.demand[i] <= job.demand_rps * DEMAND_TOLERANCE:
            continue
        served = pb.state.served_rps(job.id)
        unmet = max(0.0, job.demand_rps - served)
        if sol is None and pb.options[i]:
            reason = NO_SOLUTION_IN_TIME
        else:
            reason = unplaced_reason(job, models, pb.table)
        out.append(Unplaced(job.id, reason, unmet))
    return out



__all__ = ["decode", "unplaced_jobs"]
