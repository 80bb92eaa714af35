"""LP diving on the pattern model: integral replica counts without branch and bound.

Steps 1 and 2 of ``lpdive`` (:mod:`~conspirator.operator.placement.lpdive`): the
pattern model (:func:`~conspirator.operator.placement.pattern.build_problem` /
:func:`~conspirator.operator.placement.pattern.formulate`) is passed to HiGHS
relaxed, then jobs are fixed to rounded replica counts, a batch at a time, the LP
re-solved warm after each batch.  :func:`lp_dive` returns the counts per job
(:class:`DiveResult`); packing them into GPUs is the caller's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import highspy
import numpy as np

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.common import slot_cost
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.lpmodel import LinearModel, new_highs
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, E1_GPU, E2_UNMET
from conspirator.operator.placement.pattern import build_problem, formulate
from conspirator.operator.placement.throughput import ThroughputTable

Target = tuple[str, str, str]  # (GPU model, profile, tenant group)

_EPS = 1e-6


@dataclass(slots=True)
class _DiveJob:
    index: int  # job index in the MILP problem
    delta: int  # column of delta
    cols: list[int]  # y columns
    keys: list[Target]
    thr: list[float]  # throughput per replica, capped at the demand
    share: list[float]  # share of a GPU per replica (tie-break)
    need: float


@dataclass(slots=True)
class DiveResult:
    """Integral replica counts per job id (an empty dict: the job is left unmet)."""

    counts: dict[str, dict[Target, int]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # job ids in the order they were fixed
    lp_value: float = math.nan  # the root LP (a lower bound on the MILP)
    solves: int = 0  # LP solves, the root included


class _Lp:
    """The relaxed MILP in HiGHS, with bound changes and warm re-solves."""

    def __init__(self, md: LinearModel, time_limit_s: float) -> None:
        self.h = new_highs(time_limit_s)
        self.h.passModel(md.to_highs(relax=True))
        self.lower = np.asarray(md.lower, dtype=np.float64)
        self.upper = np.asarray(md.upper, dtype=np.float64)
        self.solves = 0

    def solve(self) -> bool:
        self.h.run()
        self.solves += 1
        return bool(self.h.getModelStatus() == highspy.HighsModelStatus.kOptimal)

    def set(self, cols: Sequence[int], lo: Sequence[float], hi: Sequence[float]) -> None:
        if not cols:
            return
        idx = np.asarray(cols, dtype=np.int32)
        self.h.changeColsBounds(len(cols), idx, np.asarray(lo, dtype=np.float64),
                                np.asarray(hi, dtype=np.float64))

    def restore(self, cols: Sequence[int]) -> None:
        self.set(cols, [float(self.lower[c]) for c in cols], [float(self.upper[c]) for c in cols])


def _cap_rows(md: LinearModel, y_cols: set[int]) -> dict[int, int]:
    """y column -> its slot-capacity row (the ``<= 0`` row it appears in with +1)."""
    out: dict[int, int] = {}
    for r in range(len(md.row_lo)):
        if md.row_hi[r] != 0.0 or md.row_lo[r] != -math.inf:
            continue
        for k in range(md.row_start[r], md.row_start[r + 1]):
            c = md.row_index[k]
            if c in y_cols and md.row_value[k] == 1.0:
                out[c] = r
    return out


def _candidates(dj: _DiveJob, x: Sequence[float], price: Sequence[float],
                limit: int = 6) -> list[tuple[float, list[int]]]:
    """Integral count vectors covering the job, cheapest first at the LP's slot prices."""
    n = len(dj.cols)
    floor = [math.floor(x[c] + _EPS) for c in dj.cols]
    rest = dj.need - sum(f * t for f, t in zip(floor, dj.thr, strict=True))
    vecs: list[list[int]] = []
    if rest <= 0:
        vecs.append(floor)
    else:
        for k in range(n):
            v = list(floor)
            v[k] += math.ceil(rest / dj.thr[k] - 1e-9)
            vecs.append(v)
    for k in range(n):
        v = [0] * n
        v[k] = math.ceil(dj.need / dj.thr[k] - 1e-9)
        vecs.append(v)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[float, list[int]]] = []
    for v in vecs:
        key = tuple(v)
        if key in seen:
            continue
        seen.add(key)
        cost = sum(c * (price[col] + 1e-3 * s)
                   for c, col, s in zip(v, dj.cols, dj.share, strict=True))
        out.append((cost, v))
    out.sort(key=lambda cv: (cv[0], cv[1]))
    return out[:limit]


def _closeness(dj: _DiveJob, x: Sequence[float], v: Sequence[int]) -> float:
    """Share of the rounded vector's throughput the LP already has (1: nothing to add)."""
    have = sum(min(x[c], n) * t for c, n, t in zip(dj.cols, v, dj.thr, strict=True))
    want = sum(n * t for n, t in zip(v, dj.thr, strict=True))
    return have / want if want > 0 else 1.0


def lp_dive(state: ClusterState, jobs: Sequence[Job], table: ThroughputTable, *,
            batch: float = 0.25, time_limit_s: float = 10.0, e1: float = E1_GPU,
            e2: float = E2_UNMET) -> DiveResult | None:
    """Integral replica counts for ``jobs`` around ``state`` by diving on the MILP's LP.

    ``None`` when an LP is not solved within ``time_limit_s`` (in all).  The
    counts are not packed: that is the caller's (:class:`LpDiveHeuristic`).
    """
    deadline = time.perf_counter() + time_limit_s
    pb = build_problem(state, jobs, table, replan=False, budget=None, e1=e1, e2=e2)
    formulate(pb)
    md = pb.model
    lp = _Lp(md, time_limit_s)
    if not lp.solve():
        return None
    out = DiveResult(lp_value=float(lp.h.getInfo().objective_function_value))
    by_job: dict[int, _DiveJob] = {}
    for i, dcol in pb.vars.delta.items():
        need = pb.demand[i] * (1.0 - DEMAND_TOLERANCE)
        by_job[i] = _DiveJob(i, dcol, [], [], [], [], need)
    models = pb.state.models()
    for (i, mname, pname, t), col in sorted(pb.vars.y.items()):
        dj = by_job[i]
        dj.cols.append(col)
        dj.keys.append((mname, pname, t))
        dj.thr.append(min(pb.options[i][(mname, pname)], dj.need))
        m = models[mname]
        prof = next(p for p in m.planning_profiles if p.name == pname)
        dj.share.append(slot_cost(m, prof))
    cap = _cap_rows(md, set(pb.vars.y.values()))
    unfixed = set(by_job)

    def fix(dj: _DiveJob, v: Sequence[int] | None) -> None:
        """Fix ``dj`` to counts ``v`` (``None``: unmet)."""
        cols = [*dj.cols, dj.delta]
        vals = ([0.0] * len(dj.cols) + [1.0]) if v is None else [float(n) for n in v] + [0.0]
        lp.set(cols, vals, vals)

    def record(dj: _DiveJob, v: Sequence[int] | None) -> None:
        jid = pb.jobs[dj.index].id
        out.order.append(jid)
        out.counts[jid] = {} if v is None else {
            k: n for k, n in zip(dj.keys, v, strict=True) if n > 0}
        unfixed.discard(dj.index)

    def unmet_mass() -> float:
        x = lp.h.getSolution().col_value
        return sum(float(x[dj.delta]) for dj in by_job.values())

    def solve_within(ref: float) -> bool:
        """Re-solve; ``True`` when feasible and no job became (more) unmet."""
        return lp.solve() and unmet_mass() <= ref + 1e-6

    while unfixed:
        if time.perf_counter() > deadline:
            return None
        sol = lp.h.getSolution()
        x = list(sol.col_value)
        rd = sol.row_dual
        price = [0.0] * len(x)
        for col, r in cap.items():
            price[col] = max(0.0, -float(rd[r]))
        frac: list[tuple[float, int, list[tuple[float, list[int]]]]] = []
        for i in sorted(unfixed):
            dj = by_job[i]
            dv = x[dj.delta]
            ys = [x[c] for c in dj.cols]
            if dv > 1.0 - _EPS:
                fix(dj, None)
                record(dj, None)
            elif dv < _EPS and all(abs(y - round(y)) < _EPS for y in ys):
                v = [round(y) for y in ys]
                fix(dj, v)
                record(dj, v)
            else:
                cands = _candidates(dj, x, price)
                frac.append((_closeness(dj, x, cands[0][1]), i, cands))
        if not frac:
            break
        frac.sort(key=lambda f: (-f[0], f[1]))
        chosen = frac[:max(1, math.ceil(batch * len(frac)))]
        ref = unmet_mass()
        for _, i, cands in chosen:
            fix(by_job[i], cands[0][1])
        if solve_within(ref):
            for _, i, cands in chosen:
                record(by_job[i], cands[0][1])
            continue
        # Undo the batch; fix its surest job alone, then re-price the rest.
        for _, i, _ in chosen:
            dj = by_job[i]
            lp.restore([*dj.cols, dj.delta])
        lp.solve()
        _, i, cands = chosen[0]
        dj = by_job[i]
        done = False
        for _, v in cands[:3]:
            fix(dj, v)
            if solve_within(ref):
                record(dj, v)
                done = True
                break
            lp.restore([*dj.cols, dj.delta])
        if done:
            continue
        lp.solve()
        got = _dive_job(lp, dj, partial(solve_within, ref))
        if got is None:  # the LP may trade this job against others
            got = _dive_job(lp, dj, lp.solve)
        fix(dj, got)
        record(dj, got)
        if not lp.solve():
            return None
    out.solves = lp.solves
    return out


def _dive_job(lp: _Lp, dj: _DiveJob, good: Callable[[], bool]) -> list[int] | None:
    """Serve one job by rounding its replica counts one at a time (``None``: unmet).

    Used when no whole-vector rounding of the job keeps the LP feasible: ``delta``
    is fixed to 0, then the count with the largest fractional part is rounded up
    (down when up is infeasible), re-solving after each step.  The LP is left as
    it was when the job cannot be served.
    """
    cols = [*dj.cols, dj.delta]
    lp.set([dj.delta], [0.0], [0.0])
    if not good():
        lp.restore(cols)
        lp.solve()
        return None
    while True:
        x = lp.h.getSolution().col_value
        ys = [float(x[c]) for c in dj.cols]
        fr = [(y - math.floor(y + _EPS), k) for k, y in enumerate(ys)]
        open_ = [(f, k) for f, k in fr if _EPS < f < 1.0 - _EPS]
        if not open_:
            return [round(y) for y in ys]
        _, k = max(open_)
        lo = float(math.ceil(ys[k]))
        lp.set([dj.cols[k]], [lo], [float(lp.upper[dj.cols[k]])])
        if good():
            continue
        lp.set([dj.cols[k]], [float(lp.lower[dj.cols[k]])], [lo - 1.0])
        if not good():
            lp.restore(cols)
            lp.solve()
            return None


__all__ = ["DiveResult", "Target", "lp_dive"]
