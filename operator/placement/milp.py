"""The exact placement (policy ``milp``): the pattern MILP solved with HiGHS.

The model is :mod:`~conspirator.operator.placement.pattern`'s (replica counts per
job, GPU model, profile and tenant group; layout counts per GPU class; ``delta``
per unmet job); :mod:`~conspirator.operator.placement.pattern_decode` writes the
solution into the :class:`ClusterState` as concrete GPUs and start slices.

``replan`` is exact for plans in which a GPU either keeps its geometry or is
entirely re-partitioned; a plan that keeps some replicas of a GPU *and*
re-partitions the space freed around them is not represented (see
:meth:`MilpPolicy.replan`).  Among plans of equal objective, a second solve
(``prefer_fewer_moves``) minimises the replicas removed.

When ``E1``, ``E2`` and the job weights are integers the objective takes
multiples of ``gcd(E1, E2)``, so HiGHS stops as soon as the gap is below one
step; ``Decision.mip_gap`` is the relative gap to the dual bound rounded up to
that step, and ``Decision.optimal`` says the gap is zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.common import INSUFFICIENT_CAPACITY, SHARED
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.lpmodel import INF, LinearModel, Solution, solve
from conspirator.operator.placement.objective import E1_GPU, E2_UNMET
from conspirator.operator.placement.pattern import PatternProblem, build_problem, formulate
from conspirator.operator.placement.pattern_decode import decode, unplaced_jobs
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy
from conspirator.operator.placement.throughput import ThroughputTable


def _fewer_moves_model(pb: PatternProblem, value: float) -> LinearModel:
    """Phase 2 of ``replan``: fewest removed replicas among plans of objective <= ``value``."""
    md = pb.model
    out = md.copy()
    out.cost = [0.0] * len(md.cost)
    out.offset = float(pb.keepable)
    for c in pb.vars.keep.values():
        out.cost[c] = -1.0
    g = pb.granularity
    slack = 0.5 * g if g > 0 else 1e-6 * max(1.0, abs(value))
    out.row(((j, c) for j, c in enumerate(md.cost) if c), -INF, value - md.offset + slack)
    return out


class MilpPolicy:
    """Exact MIG placement (``name = "milp"``) through HiGHS.

    ``time_limit_s`` bounds each solve; when it is reached the best plan found is
    applied and ``Decision.optimal`` is ``False`` with the remaining gap in
    ``Decision.mip_gap``.
    """

    name = "milp"

    def __init__(self, time_limit_s: float = 60.0, mip_rel_gap: float = 0.0,
                 e1: float = E1_GPU, e2: float = E2_UNMET,
                 prefer_fewer_moves: bool = True, moves_time_share: float = 0.25,
                 plan: PlanPolicy = DEFAULT_POLICY) -> None:
        if time_limit_s <= 0:
            raise ValueError("time_limit_s must be > 0")
        self.time_limit_s = time_limit_s
        self.mip_rel_gap = mip_rel_gap
        self.e1 = e1
        self.e2 = e2
        self.plan = plan
        self.prefer_fewer_moves = prefer_fewer_moves
        self.moves_time_share = moves_time_share

    def place(self, state: ClusterState, jobs: Sequence[Job],
              table: ThroughputTable) -> Decision:
        """Place ``jobs`` without touching the instances already in ``state``.

        A job that already has replicas is topped up to its demand.
        ``Decision.placed`` lists the replicas created.
        """
        return self._run(state, jobs, table, replan=False, budget=None)

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision:
        """Re-solve every job of ``state.jobs`` plus ``jobs`` (new definitions win).

        At most ``migration_budget`` existing replicas that still meet their
        job's memory, SLO and allowed GPUs are removed from where they are
        (moved or dropped); replicas that no longer meet them are always
        removed and not counted against the budget.  A GPU either keeps its MIG
        geometry (kept replicas stay, removed ones free their slot for any job
        of the same profile, a completion may be added next to them) or is
        re-partitioned from scratch with all its replicas removed; plans that
        re-partition part of a GPU around replicas kept on it are not
        considered.  ``+me`` instances can be kept, their slots are not reused.

        Phase 1 minimises the paper objective (this is what ``optimal`` and
        ``mip_gap`` refer to); phase 2, given at most ``moves_time_share`` of the
        time limit, minimises the replicas removed among plans as good
        (``prefer_fewer_moves``).  ``Decision.placed`` lists every replica of
        the resulting plan, as the other policies' ``replan`` does;
        ``Decision.migrations`` counts the existing replicas no longer where
        they were.
        """
        if migration_budget is not None and migration_budget < 0:
            raise ValueError("migration_budget must be >= 0")
        return self._run(state, jobs, table, replan=True, budget=migration_budget)

    def _run(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
             replan: bool, budget: int | None) -> Decision:
        t0 = time.perf_counter()
        pb = build_problem(state, jobs, table, replan=replan, budget=budget, e1=self.e1,
                           e2=self.e2, plan=self.plan)
        formulate(pb)
        remaining = max(1e-3, self.time_limit_s - (time.perf_counter() - t0))
        sol = solve(pb.model, remaining, mip_rel_gap=self.mip_rel_gap,
                    mip_abs_gap=pb.optimality_gap)
        decision = Decision(policy=self.name)
        plan: Solution | None = sol
        if sol is not None:
            value = sol.objective
            bound = pb.round_bound(sol.bound)
            if replan and self.prefer_fewer_moves and pb.vars.keep:
                # Phase 2: among plans as good as this one, remove the fewest replicas.
                left = self.time_limit_s - (time.perf_counter() - t0)
                limit = min(left, max(1.0, self.moves_time_share * self.time_limit_s))
                if limit > 0:
                    sol2 = solve(_fewer_moves_model(pb, value), limit, mip_abs_gap=0.999,
                                  start=sol.values)
                    if sol2 is not None:
                        plan = sol2
            assert plan is not None
            value = pb.model.objective_at(plan.values)
            decision.placed, decision.migrations = decode(pb, plan)
            gap = max(0.0, value - bound) / max(abs(value), 1e-9) if math.isfinite(bound) \
                else math.inf
            decision.objective = value
            decision.mip_gap = gap if gap > 1e-9 else 0.0
            decision.optimal = decision.mip_gap == 0.0 or (sol.optimal and not self.mip_rel_gap)
        else:
            decision.optimal = False
        decision.unplaced = unplaced_jobs(pb, plan)
        decision.solve_seconds = time.perf_counter() - t0
        return decision



def lower_bound(state: ClusterState, jobs: Sequence[Job], table: ThroughputTable, *,
                replan: bool = False, migration_budget: int | None = None,
                time_limit_s: float = 60.0, e1: float = E1_GPU, e2: float = E2_UNMET) -> float:
    """LP-relaxation value of the model :class:`MilpPolicy` would solve (a lower bound)."""
    pb = build_problem(state, jobs, table, replan=replan, budget=migration_budget, e1=e1,
                       e2=e2)
    formulate(pb)
    sol = solve(pb.model, time_limit_s, relax=True)
    if sol is None:
        raise RuntimeError("LP relaxation not solved")
    return sol.objective


__all__ = ["INSUFFICIENT_CAPACITY", "SHARED", "MilpPolicy", "lower_bound"]

