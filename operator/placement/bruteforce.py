"""Exhaustive optimum of the placement objective for tiny instances (tests only).

Independent of the MILP and of :mod:`~conspirator.operator.placement.layouts`:
for every GPU it enumerates every valid set of new MIG placements (through
:func:`~conspirator.operator.placement.gpus.check_layout` directly) and every
assignment of those instances to jobs, keeps the GPU's isolation rule, and
combines GPUs by dynamic programming over the (capped) throughput served per
job.  The result is the optimum of ``place``: existing instances stay, the jobs
passed in are placed.

Exponential: meant for about 3 GPUs and 4 jobs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from conspirator.operator.placement.cluster import ClusterState, GpuState
from conspirator.operator.placement.gpus import MigProfile, Placement, is_valid_layout
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, E1_GPU, E2_UNMET
from conspirator.operator.placement.throughput import ThroughputTable

_ROUND = 6


@dataclass(frozen=True, slots=True)
class BruteForceResult:
    """The optimal objective value and one optimal outcome."""

    objective: float
    gpus_used: int
    unmet: frozenset[str]


def _new_instance_sets(gpu: GpuState) -> Iterator[tuple[MigProfile, ...]]:
    """Every set of new instances (profiles only, each multiset once) that fits on ``gpu``."""
    model = gpu.model
    if not model.mig_capable:
        yield ()
        if gpu.empty:
            yield (model.whole,)
        return
    existing = gpu.placements()
    cands = [Placement(p, s) for p in model.planning_profiles for s in p.starts]
    seen: set[tuple[str, ...]] = set()

    def rec(k: int, chosen: list[Placement]) -> Iterator[tuple[MigProfile, ...]]:
        key = tuple(sorted(c.profile.name for c in chosen))
        if key not in seen:
            seen.add(key)
            yield tuple(c.profile for c in chosen)
        for j in range(k, len(cands)):
            chosen.append(cands[j])
            if is_valid_layout(model, [*existing, *chosen]):
                yield from rec(j + 1, chosen)
            chosen.pop()

    yield from rec(0, [])


def _gpu_options(gpu: GpuState, jobs: Sequence[Job], need: Sequence[float],
                 table: ThroughputTable) -> list[tuple[tuple[float, ...], bool]]:
    """Pareto-maximal (served vector, adds a newly used GPU) pairs for one GPU."""
    n = len(jobs)
    zero = tuple(0.0 for _ in range(n))
    found: dict[tuple[float, ...], bool] = {zero: False}
    base_tenants = {(i.tenant, i.dedicated) for i in gpu.instances}
    for profiles in _new_instance_sets(gpu):
        if not profiles:
            continue
        by_prof: dict[str, list[MigProfile]] = {}
        for p in profiles:
            by_prof.setdefault(p.name, []).append(p)
        per_profile: list[list[tuple[int, ...]]] = []
        thr: dict[tuple[int, str], float] = {}
        ok = True
        for name, ps in by_prof.items():
            feasible = []
            for k, job in enumerate(jobs):
                if job.model not in table.models or need[k] <= 0:
                    continue
                opt = table.best(job, gpu.model, ps[0])
                if opt is not None:
                    feasible.append(k)
                    thr[(k, name)] = opt.throughput_rps
            if not feasible:
                ok = False
                break
            per_profile.append(list(itertools.combinations_with_replacement(feasible, len(ps))))
        if not ok:
            continue
        names = list(by_prof)
        for combo in itertools.product(*per_profile):
            tenants = set(base_tenants)
            served = [0.0] * n
            for name, ks in zip(names, combo, strict=True):
                for k in ks:
                    served[k] += thr[(k, name)]
                    tenants.add((jobs[k].tenant, jobs[k].dedicated_gpu))
            if len({t for t, _ in tenants}) > 1 and any(d for _, d in tenants):
                continue
            vec = tuple(round(min(s, need[k]), _ROUND) for k, s in enumerate(served))
            found[vec] = False if vec == zero else gpu.empty
    vecs = list(found.items())
    keep = []
    for vec, used in vecs:
        dominated = any(
            other != vec and o_used <= used and all(a <= b for a, b in zip(vec, other, strict=True))
            for other, o_used in vecs
        )
        if not dominated:
            keep.append((vec, used))
    return keep


def brute_force(state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
                e1: float = E1_GPU, e2: float = E2_UNMET) -> BruteForceResult:
    """Optimal objective of placing ``jobs`` into ``state`` (existing instances stay)."""
    jobs = list(jobs)
    need = [
        round(max(0.0, j.demand_rps - state.served_rps(j.id)) * (1.0 - DEMAND_TOLERANCE), _ROUND)
        for j in jobs
    ]
    start = tuple(0.0 for _ in jobs)
    states: dict[tuple[float, ...], int] = {start: 0}
    for gpu in state.gpus:
        options = _gpu_options(gpu, jobs, need, table)
        nxt: dict[tuple[float, ...], int] = {}
        for vec, used in states.items():
            for add, add_used in options:
                v = tuple(round(min(a + b, need[k]), _ROUND)
                          for k, (a, b) in enumerate(zip(vec, add, strict=True)))
                u = used + int(add_used)
                if nxt.get(v, u + 1) > u:
                    nxt[v] = u
        states = nxt
    base = state.gpus_used()
    best: BruteForceResult | None = None
    for vec, used in states.items():
        unmet = frozenset(j.id for k, j in enumerate(jobs) if need[k] > 0 and vec[k] < need[k])
        value = e1 * (base + used) + e2 * sum(j.weight for j in jobs if j.id in unmet)
        if best is None or value < best.objective:
            best = BruteForceResult(value, base + used, unmet)
    assert best is not None
    return best


__all__ = ["BruteForceResult", "brute_force"]
