"""The Conspirator policy: exact where it is fast, greedy where it must be instant.

* A single arriving job is placed by the greedy (sub-millisecond; it never moves
  anything), so an arrival never waits on a solver.
* A batch of jobs and every global re-plan run both the exact pattern MILP (with a
  time limit) and the greedy on copies of the state; the better plan by the
  paper's objective wins (ties: fewer migrations).  The MILP's aggregated
  formulation solves clusters of hundreds of GPUs and jobs to optimality in about a
  second (benchmarks/results/mig/mig_gap*.md), so the greedy's plan is only taken
  when the MILP runs out of time.
* When the MILP stops without proving optimality, the replica-mix search
  (``mixpack.py``) runs too and competes on the same terms: on the seeded
  instances it lands within a few GPUs of the optimum where the greedy is ~20%
  off, but it is not faster than the MILP there, so it is the fallback, not the
  first choice (docs/mig-track.md).  It minimises GPUs only, so it does not run
  under a priced objective or on a cluster with spot GPUs.
* ``plan`` (a :class:`PlanPolicy`) is the objective both the MILP and the greedy
  optimise, and what their plans are compared on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.objective import score
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy
from conspirator.operator.placement.throughput import ThroughputTable

Run = Callable[[ClusterState], Decision]


class ConspiratorPolicy:
    name = "conspirator"

    def __init__(self, time_limit_s: float = 10.0, plan: PlanPolicy = DEFAULT_POLICY) -> None:
        self.plan = plan
        self.greedy = GreedyHeuristic(plan=plan)
        self.milp = MilpPolicy(time_limit_s=time_limit_s, plan=plan)
        self.mixpack = MixPackHeuristic(time_limit_s=time_limit_s)

    def _fallback(self, state: ClusterState, run: Run) -> Run | None:
        if self.plan.objective != "gpus" or any(g.spot or g.down for g in state.gpus):
            return None
        return run

    def place(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable) -> Decision:
        if len(jobs) <= 1:
            return self._named(self.greedy.place(state, jobs, table))
        return self._best(state, jobs,
                          lambda s: self.greedy.place(s, jobs, table),
                          lambda s: self.milp.place(s, jobs, table),
                          fallback=self._fallback(state,
                                                  lambda s: self.mixpack.place(s, jobs, table)))

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision:
        return self._best(state, jobs,
                          lambda s: self.greedy.replan(s, jobs, table, migration_budget),
                          lambda s: self.milp.replan(s, jobs, table, migration_budget),
                          budget=migration_budget,
                          fallback=self._fallback(state, lambda s: self.mixpack.replan(
                              s, jobs, table, migration_budget)))

    def _best(self, state: ClusterState, jobs: Sequence[Job], *runs: Run,
              budget: int | None = None, fallback: Run | None = None) -> Decision:
        """The best plan of ``runs``; ``fallback`` joins when the MILP proved nothing."""
        everyone = {**state.jobs, **{j.id: j for j in jobs}}.values()
        served = {jid for jid in state.jobs if state.served_rps(jid) > 0}
        best: tuple[tuple[int, float, int], ClusterState, Decision] | None = None
        solve = 0.0
        todo = list(runs)
        proven = False
        while todo:
            run = todo.pop(0)
            trial = state.copy()
            dec = run(trial)
            proven = proven or bool(dec.optimal)
            if not todo and not proven and fallback is not None:
                todo.append(fallback)
                fallback = None
            solve += dec.solve_seconds
            # A plan that drops a running job loses to one that keeps it, whatever it saves.
            dropped = sum(1 for jid in served if jid in dec.unplaced_ids())
            key = (dropped, score(trial, everyone, policy=self.plan).value, dec.migrations)
            if budget is not None and dec.migrations > budget and best is not None:
                continue  # over the disruption budget: only ever a last resort
            if best is None or key < best[0] or (budget is not None
                                                 and best[2].migrations > budget):
                best = (key, trial, dec)
        assert best is not None
        _, chosen, dec = best
        state.adopt(chosen)
        dec.solve_seconds = solve
        return self._named(dec)

    def _named(self, dec: Decision) -> Decision:
        dec.policy = self.name
        return dec
