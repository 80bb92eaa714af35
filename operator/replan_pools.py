"""The global re-plan's decomposition into pools: pure.

A re-plan of 10,000 jobs on 8,000 GPUs as one problem is far over any time budget (the
greedy's drain tries every lightly used GPU against every hole, the MILP grows with the
jobs); consolidation is local anyway (replicas move into holes of the same GPU model).  So
the re-plan splits the cluster it may touch into *pools*:

1. GPUs are grouped by GPU model, then cut by node (in name order) into chunks of at most
   ``size`` *used* GPUs, an empty GPU counting for ``EMPTY_WEIGHT`` of one (a node is never
   split; the solvers' time grows with the replicas to place, not with empty GPUs);
2. a job with replicas in two chunks joins them (union-find): a job is re-planned whole,
   in one pool; where that would make a pool of more than ``MERGE_LIMIT`` times ``size``
   used GPUs, the job is *held* instead: its GPUs, and transitively those of every job on
   them, sit this re-plan out (:attr:`Split.held`);
3. each waiting job goes to the pool, among those of a model it allows, with the most free
   slices left (counted down by the job's smallest possible footprint, one slice);
4. pools are ordered by what a re-plan can gain there: pools with waiting jobs first, then
   the most free slices on used GPUs (fragmentation), then by their first GPU.

Each pool has a :func:`fingerprint`: a re-plan that kept a pool's plan need not solve the
same pool again (the warm start of the next periodic re-plan).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.jobs import Job

POOL_GPUS = 24
"""Used GPUs per pool (before jobs that span chunks merge them): the MILP and the greedy's
drain solve a pool of this size in about a second (benchmarks/operator_replan.py)."""
EMPTY_WEIGHT = 0.125
MERGE_LIMIT = 2


@dataclass(slots=True)
class Pool:
    gpus: list[int] = field(default_factory=list)
    """Uids (in the state that was split) of the pool's GPUs, in order."""
    pending: list[Job] = field(default_factory=list)
    """Waiting jobs the pool may place."""
    free_on_used: int = 0
    """Free slices on the pool's used GPUs (what consolidation can win)."""


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def chunks(state: ClusterState, size: int) -> list[list[int]]:
    """Step 1: GPU uids by model, then by node in name order, at most ``size`` used GPUs per
    chunk (an empty one weighs ``EMPTY_WEIGHT``; a node over ``size`` is a chunk alone)."""
    by_model: dict[str, dict[str, list[int]]] = {}
    for g in state.gpus:
        by_model.setdefault(g.model.name, {}).setdefault(g.node, []).append(g.uid)
    out: list[list[int]] = []
    for model in sorted(by_model):
        cur: list[int] = []
        weight = 0.0
        for node in sorted(by_model[model]):
            uids = by_model[model][node]
            w = sum(1.0 if state.gpus[u].instances else EMPTY_WEIGHT for u in uids)
            if cur and weight + w > size:
                out.append(cur)
                cur, weight = [], 0.0
            cur.extend(uids)
            weight += w
        if cur:
            out.append(cur)
    return out


@dataclass(slots=True)
class Split:
    pools: list[Pool]
    held: set[int]
    """Uids of the GPUs left out because a job spans pools that would grow too large."""


def split(state: ClusterState, pending: Sequence[Job], size: int = POOL_GPUS) -> Split:
    """The pools of ``state`` and ``pending`` (see the module docstring), in order."""
    if size < 1:
        raise ValueError("size must be >= 1")
    parts = chunks(state, size)
    chunk_of = {uid: c for c, uids in enumerate(parts) for uid in uids}
    parent = list(range(len(parts)))
    used = [sum(1 for u in uids if state.gpus[u].instances) for uids in parts]
    spanning: set[str] = set()
    for job_id in sorted(state.jobs):
        roots = sorted({_find(parent, chunk_of[g.uid]) for g, _ in state.replicas(job_id)})
        if len(roots) < 2:
            continue
        if sum(used[r] for r in roots) > MERGE_LIMIT * size:
            spanning.add(job_id)
            continue
        for r in roots[1:]:
            parent[r] = roots[0]
            used[roots[0]] += used[r]
    held = _closure(state, spanning)
    merged: dict[int, Pool] = {}
    for c, uids in enumerate(parts):
        keep = [u for u in uids if u not in held]
        if keep:
            merged.setdefault(_find(parent, c), Pool()).gpus.extend(keep)
    pools = [merged[k] for k in sorted(merged)]
    free: list[int] = []
    models: list[set[str]] = []
    for p in pools:
        p.gpus.sort()
        gs = [state.gpus[u] for u in p.gpus]
        p.free_on_used = sum(g.free_slots for g in gs if g.instances)
        free.append(sum(g.free_slots for g in gs))
        models.append({g.model.name for g in gs})
    for job in pending:
        fits = [i for i, ms in enumerate(models) if any(job.allows(m) for m in ms)]
        if not fits:
            continue
        best = max(fits, key=lambda i: (free[i], -i))
        pools[best].pending.append(job)
        free[best] -= 1
    pools.sort(key=lambda p: (not p.pending, -p.free_on_used, p.gpus[0] if p.gpus else -1))
    return Split(pools, held)


def _closure(state: ClusterState, jobs: set[str]) -> set[int]:
    """The GPUs of ``jobs`` and, transitively, of every job on one of them."""
    held: set[int] = set()
    todo = sorted(jobs)
    seen = set(todo)
    while todo:
        for g, _ in list(state.replicas(todo.pop())):
            if g.uid in held:
                continue
            held.add(g.uid)
            for inst in g.instances:
                if inst.job_id not in seen:
                    seen.add(inst.job_id)
                    todo.append(inst.job_id)
    return held


def sub_state(state: ClusterState, uids: Sequence[int]) -> ClusterState:
    """A new state with the GPUs ``uids`` of ``state`` and their replicas (uids renumbered
    from 0 in the order given; node names and GPU indexes kept)."""
    out = ClusterState()
    for uid in uids:
        g = state.gpus[uid]
        sg = out.add_gpu(g.node, g.model, g.index)
        for inst in g.instances:
            out.assign(state.jobs[inst.job_id], sg, inst.profile, inst.start,
                       inst.throughput_rps, inst.time_share)
    return out


def fingerprint(state: ClusterState, pending: Sequence[Job], budget: int) -> int:
    """A hash of everything a pool's re-plan depends on: its GPUs and their instances, the
    definitions of its jobs, the waiting jobs and the migration budget."""
    gpus = tuple((g.node, g.index, g.model.name,
                  tuple(sorted((i.job_id, i.profile.name, i.start, i.throughput_rps)
                               for i in g.instances)))
                 for g in state.gpus)
    jobs = tuple(sorted(state.jobs.values(), key=lambda j: j.id))
    return hash((gpus, jobs, tuple(sorted(pending, key=lambda j: j.id)), budget))
