"""Restricted sub-MIPs on top of ``lpdive`` (policy ``submip``): a matheuristic.

``lpdive`` (LP diving, exact packing, a short ruin-and-recreate) ends within a GPU
or two of the optimum; what it cannot do is trade several jobs' replica mixes at
once so that a whole GPU empties out.  HiGHS can, on a smaller problem.  This
engine works in the variables of the pattern MILP
(:mod:`~conspirator.operator.placement.pattern`: replica counts ``y`` per job, GPU
model, profile and tenant group; layout counts ``N`` per GPU class; ``delta`` per
unmet job):

1. **Incumbent.**  ``lpdive``'s plan (with a light polish), written as a vector of
   the MILP's variables: each used GPU becomes a layout of the model that
   dominates its instances.
2. **Root LP.**  Its value, rounded up to the objective's step, is a lower bound:
   an incumbent at that bound is optimal and the search stops.  Its reduced costs
   price every column.
3. **Restricted sub-MIPs.**  Every job stays free, but only the promising columns
   do: replica counts ``y`` and layout counts ``N`` that the LP or the incumbent
   uses, or whose reduced cost is at most ``threshold`` GPUs; the others are fixed
   to 0 (``layouts=False`` restricts the replica columns only).
   HiGHS solves that restricted MIP (one thread, warm-started from the incumbent,
   a time limit); a better plan becomes the incumbent.  The thresholds are tried
   in turn (``passes``, by default 0.05 then 0.25 GPU), each pass from the latest
   incumbent, until the bound is reached.  This is the reduced-cost fixing of
   exact codes used as a neighbourhood: with a threshold of at least ``incumbent
   - LP`` the restricted MIP would be the exact one (no column above it can be in
   a better plan); the small thresholds used here keep about a fifth of the
   columns (0.05) and half of them (0.25) at 200 jobs.
4. **Decoding.**  The MILP's own decoder writes the final vector into the cluster
   (real layouts and start slices).  When the incumbent cannot be written as a
   vector of the model, or nothing improves it, ``lpdive``'s plan is returned.

RINS neighbourhoods (fixing the jobs whose counts agree between the LP and the
incumbent) were tried first: they reach the same plans but each sub-MIP takes as
long as the whole MILP, because HiGHS solves these MILPs at the root node and the
RINS set keeps half of the jobs free (docs/mig-track.md).

``replan`` is ``mixpack``'s (a fresh plan against keeping what runs, within the
migration budget).  ``benchmarks/mig_gap.py`` measures it against the exact MILP.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import highspy

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.common import SHARED
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.lpdive import LpDiveHeuristic
from conspirator.operator.placement.lpmodel import LinearModel, Solution, new_highs, solve
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, E1_GPU, E2_UNMET, score
from conspirator.operator.placement.pattern import PatternProblem, build_problem, formulate
from conspirator.operator.placement.pattern_decode import decode, unplaced_jobs
from conspirator.operator.placement.throughput import ThroughputTable

_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class RootLp:
    values: list[float]
    reduced_costs: list[float]
    objective: float


def encode(pb: PatternProblem, before: ClusterState, after: ClusterState) -> list[float] | None:
    """The plan ``after`` (``before`` plus new instances) as values of ``pb``'s variables.

    Each GPU that gained instances becomes one GPU of its class using a layout
    (completion, for a GPU that already had instances) whose counts dominate the
    new ones, in the tenant group its instances imply.  ``None`` when that is not
    possible (an instance of ``before`` moved, or a replica without a variable) or
    the vector breaks a row of the model.
    """
    v = pb.vars
    x = [0.0] * len(pb.model.cost)
    class_of = {g.uid: ci for ci, cl in enumerate(pb.classes) for g in cl.gpus}
    index = {j.id: i for i, j in enumerate(pb.jobs)}
    for g0, g1 in zip(before.gpus, after.gpus, strict=True):
        old = Counter((i.job_id, i.profile.name, i.start) for i in g0.instances)
        new = []
        for inst in g1.instances:
            key = (inst.job_id, inst.profile.name, inst.start)
            if old[key] > 0:
                old[key] -= 1
            else:
                new.append(inst)
        if +old:
            return None
        if not new:
            continue
        ci = class_of.get(g0.uid)
        if ci is None:
            return None
        cl = pb.classes[ci]
        dedicated = {i.tenant for i in g1.instances if i.dedicated}
        group = next(iter(dedicated)) if len(dedicated) == 1 else SHARED
        if len(dedicated) > 1 or group not in cl.groups:
            return None
        names = [p.name for p in cl.model.planning_profiles]
        counts = [0] * len(names)
        for inst in new:
            i = index.get(inst.job_id)
            col = None if i is None else v.y.get((i, cl.model.name, inst.profile.name, group))
            if col is None:
                return None
            x[col] += 1.0
            counts[names.index(inst.profile.name)] += 1
        conf = next((cj for cj, c in enumerate(cl.configs)
                     if all(a <= b for a, b in zip(counts, c.counts, strict=True))), None)
        col = None if conf is None else v.n.get((ci, conf, group))
        if col is None:
            return None
        x[col] += 1.0
    for i, col in v.delta.items():
        job = pb.jobs[i]
        met = after.served_rps(job.id) >= job.demand_rps * (1.0 - DEMAND_TOLERANCE)
        x[col] = 0.0 if met else 1.0
    return x if feasible(pb.model, x) else None


def feasible(md: LinearModel, x: Sequence[float]) -> bool:
    """Whether ``x`` meets every bound, integrality and row of ``md`` (small tolerance)."""
    for j, val in enumerate(x):
        if not md.lower[j] - _EPS <= val <= md.upper[j] + _EPS:
            return False
        if md.integer[j] and abs(val - round(val)) > _EPS:
            return False
    for r in range(len(md.row_lo)):
        act = sum(md.row_value[k] * x[md.row_index[k]]
                  for k in range(md.row_start[r], md.row_start[r + 1]))
        tol = 1e-6 * max(1.0, abs(act))
        if act < md.row_lo[r] - tol or act > md.row_hi[r] + tol:
            return False
    return True


def value_of(md: LinearModel, x: Sequence[float]) -> float:
    """The model's objective at ``x``."""
    return md.objective_at(x)


def root_lp(md: LinearModel, time_limit_s: float) -> RootLp | None:
    """The LP relaxation of ``md`` (``None``: not solved to optimality in time)."""
    h = new_highs(time_limit_s)
    h.passModel(md.to_highs(relax=True))
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    sol = h.getSolution()
    return RootLp(list(sol.col_value), list(sol.col_dual),
                  float(h.getInfo().objective_function_value))


def solve_restricted(pb: PatternProblem, x: Sequence[float], zero: Sequence[int],
                     time_limit_s: float) -> list[float] | None:
    """``pb``'s MILP with the columns ``zero`` fixed to 0, warm-started from ``x``.

    The best plan HiGHS finds within the time limit, checked against the full
    model (``None``: none found).
    """
    md = pb.model
    sub = md.copy()
    for col in zero:
        sub.upper[col] = 0.0
    sol = solve(sub, time_limit_s, mip_abs_gap=pb.optimality_gap, start=list(x))
    if sol is None:
        return None
    vals = [float(round(val)) if md.integer[j] else float(val)
            for j, val in enumerate(sol.values)]
    return vals if feasible(md, vals) else None


class SubMipHeuristic(MixPackHeuristic):
    """``lpdive`` + restricted sub-MIPs solved by HiGHS (name ``submip``); see the module doc.

    ``passes``: reduced-cost thresholds (in GPUs, ``e1`` units) of the restricted
    MIPs, tried in order; ``sub_limit_s`` bounds each, ``time_limit_s`` the whole
    plan (the ``lpdive`` start included); ``polish`` is ``lpdive``'s.
    """

    name = "submip"

    def __init__(self, passes: Sequence[float] = (0.05, 0.25), sub_limit_s: float = 2.0,
                 polish: float = 1.0, layouts: bool = True, seed: int = 0,
                 time_limit_s: float = 10.0, e1: float = E1_GPU, e2: float = E2_UNMET) -> None:
        super().__init__(seed=seed, time_limit_s=time_limit_s, e1=e1, e2=e2)
        if sub_limit_s <= 0:
            raise ValueError("sub_limit_s must be > 0")
        self.passes = tuple(passes)
        self.layouts = layouts
        self.sub_limit_s = sub_limit_s
        self.start = LpDiveHeuristic(polish=polish, seed=seed, time_limit_s=time_limit_s,
                                     e1=e1, e2=e2)
        self.stats: dict[str, float] = {}

    def _plan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable
              ) -> Decision:
        deadline = time.perf_counter() + self.time_limit_s
        start_state = state.copy()
        start_dec = self.start.place(start_state, jobs, table)
        start_dec.policy = self.name
        pb = build_problem(state, jobs, table, replan=False, budget=None, e1=self.e1,
                                 e2=self.e2)
        formulate(pb)
        md = pb.model
        x = encode(pb, state, start_state)
        root = root_lp(md, max(1e-3, deadline - time.perf_counter())) if x else None
        self.stats = {"sub_mips": 0, "improved": 0}
        if x is None or root is None:
            state.adopt(start_state)
            return start_dec
        value = value_of(md, x)
        bound = pb.round_bound(root.objective)
        self.stats.update(start_value=value, bound=bound)
        improved = False
        for threshold in self.passes:
            left = deadline - time.perf_counter()
            if value <= bound + _EPS or left <= 0:
                break
            cols = [*pb.vars.y.values(), *pb.vars.n.values()] if self.layouts \
                else list(pb.vars.y.values())
            zero = [c for c in cols
                    if root.values[c] <= _EPS and x[c] < 0.5
                    and root.reduced_costs[c] > threshold * self.e1]
            sub = solve_restricted(pb, x, zero, min(self.sub_limit_s, left))
            self.stats["sub_mips"] += 1
            if sub is not None and value_of(md, sub) < value - _EPS:
                x, value, improved = sub, value_of(md, sub), True
                self.stats["improved"] += 1
        self.stats["value"] = value
        if not improved:
            state.adopt(start_state)
            return start_dec
        sol = Solution(x, value, bound, value <= bound + _EPS)
        dec = Decision(self.name)
        dec.placed, _ = decode(pb, sol)
        dec.unplaced = unplaced_jobs(pb, sol)
        dec.objective = score(state, pb.jobs, self.e1, self.e2).value
        if value <= bound + _EPS:
            dec.optimal, dec.mip_gap = True, 0.0
        return dec


__all__ = ["RootLp", "SubMipHeuristic", "encode", "feasible", "root_lp", "solve_restricted",
           "value_of"]
