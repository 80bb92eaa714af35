"""The project's segment planner: an exact MILP over segment counts and A100 MIG layouts.

Variables (HiGHS, :mod:`~conspirator.operator.placement.lpmodel`):

* ``x[m, g]`` (integer): instances of ``g`` GPCs serving model ``m``, each running the
  admissible segment of that size that serves the most
  (:meth:`~conspirator.operator.placement.segments.SegmentTable.best_per_size`; a
  planner that counts GPUs never gains by a weaker segment on the same instance);
* ``y[k]`` (integer): GPUs cut into layout ``k``, one per Pareto-maximal multiset of
  the A100-80GB's 1g.10gb/2g.20gb/3g.40gb/4g.40gb/7g.80gb instances that
  :func:`conspirator.mig.check_layout` accepts (real start slices,
  :mod:`~conspirator.operator.placement.layouts`).

Rows: ``sum_g x[m, g] * T[m, g] >= rate[m]`` per model; ``sum_m x[m, g] <= sum_k y[k] *
count[k, g]`` per size (a GPU may leave slots of its layout empty: any subset of a
valid layout is valid).  Objective: GPUs, then (weight below one GPU in total) GPCs.
The optimum is the fewest GPUs any plan under these rules needs, and HiGHS's dual bound
is a proven lower bound when the time limit stops it first.  Decoding gives every
GPU its layout's concrete start slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from conspirator.mig import GpuModel, gpu_model
from conspirator.operator.placement.layouts import Layout, all_layouts, pareto_maximal
from conspirator.operator.placement.lpmodel import INF, LinearModel, solve
from conspirator.operator.placement.segments import (
    A100_80GB,
    A100_80GB_PROFILES,
    GPCS_OF_PROFILE,
    Demand,
    PlacedSegment,
    Segment,
    SegmentPlan,
    SegmentTable,
)

SIZES: tuple[int, ...] = tuple(sorted(A100_80GB_PROFILES))


def segment_layouts(model: GpuModel) -> tuple[Layout, ...]:
    """Pareto-maximal layouts of ``model`` over the profiled profiles only."""
    names = set(A100_80GB_PROFILES.values())
    return pareto_maximal(
        lay for lay in all_layouts(model)
        if all(pl.profile.name in names for pl in lay.placements)
    )


@dataclass(frozen=True, slots=True)
class _Column:
    model: str
    segment: Segment
    var: int


def plan_milp(table: SegmentTable, demands: list[Demand], mps: bool = True,
              time_limit_s: float = 60.0) -> SegmentPlan:
    """The fewest A100-80GB GPUs that serve every servable demand (see the module doc)."""
    gpu = gpu_model(A100_80GB)
    lays = segment_layouts(gpu)
    md = LinearModel()
    cols: list[_Column] = []
    unserved: list[str] = []
    upper = 0
    rows: list[list[tuple[int, float]]] = []
    rates: list[float] = []
    options: list[tuple[Demand, dict[int, Segment]]] = []
    for d in demands:
        best = table.best_per_size(d.model, d.slo_ms, mps)
        if not best or d.rate_rps <= 0:
            if d.rate_rps > 0:
                unserved.append(d.model)
            continue
        options.append((d, best))
        upper += min(math.ceil(d.rate_rps / s.throughput_rps) for s in best.values())
    # Weight of one GPC: below one GPU even if every slot of every GPU were used.
    eps = 1.0 / (2.0 * 7.0 * (upper + 1))
    for d, best in options:
        terms: list[tuple[int, float]] = []
        for g, s in sorted(best.items()):
            j = md.var(0, math.ceil(d.rate_rps / s.throughput_rps), cost=eps * g)
            cols.append(_Column(d.model, s, j))
            terms.append((j, s.throughput_rps))
        rows.append(terms)
        rates.append(d.rate_rps)
    for terms, rate in zip(rows, rates, strict=True):
        md.row(terms, rate, INF)
    ys = [md.var(0, upper, cost=1.0) for _ in lays]
    for g in SIZES:
        prof = A100_80GB_PROFILES[g]
        terms = [(c.var, 1.0) for c in cols if c.segment.gpcs == g]
        terms += [(y, -float(lay.count(prof, gpu))) for y, lay in zip(ys, lays, strict=True)]
        md.row(terms, -INF, 0.0)
    if not cols:
        return SegmentPlan((), tuple(unserved), 0, True)
    sol = solve(md, time_limit_s)
    if sol is None:
        raise RuntimeError("the segment MILP found no plan within its time limit")
    counts = {c.var: round(sol.values[c.var]) for c in cols}
    lower = math.floor(sol.bound - 0.5 + 1e-9) + 1 if math.isfinite(sol.bound) else 0
    placed = _decode(lays, [round(sol.values[y]) for y in ys], cols, counts)
    return SegmentPlan(placed, tuple(unserved), max(lower, 0), sol.optimal)


def _decode(lays: tuple[Layout, ...], copies: list[int], cols: list[_Column],
            counts: dict[int, int]) -> tuple[PlacedSegment, ...]:
    queue: dict[int, list[tuple[str, Segment]]] = {g: [] for g in SIZES}
    for c in cols:
        queue[c.segment.gpcs].extend([(c.model, c.segment)] * counts[c.var])
    out: list[PlacedSegment] = []
    index = 0
    for lay, n in zip(lays, copies, strict=True):
        for _ in range(n):
            used = False
            for pl in lay.placements:
                waiting = queue[GPCS_OF_PROFILE[pl.profile.name]]
                if waiting:
                    model, seg = waiting.pop()
                    out.append(PlacedSegment(index, pl.start, model, seg))
                    used = True
            index += used
    left = sum(len(v) for v in queue.values())
    if left:
        raise AssertionError(f"{left} segment(s) found no slot: the MILP's rows are wrong")
    return tuple(out)


__all__ = ["SIZES", "plan_milp", "segment_layouts"]
