"""The greedy heuristic: heterogeneity- and MIG-aware, with consolidation.

The ``conspirator`` policy (``conspirator.py``) uses it for every single arrival and
as the fallback of global plans.

Per job, demand is covered replica by replica.  Each step picks the option
(GPU, profile, start) with the most *useful* throughput per share of a GPU,
``min(throughput, remaining demand) / slot_cost``, looking first at free
space on GPUs already in use (it costs no new GPU), then at empty GPUs.  The
last replica of a job is therefore the smallest slice that covers what is left,
which leaves holes other jobs can use.  Starts are chosen to block the fewest
other placements.

A batch is placed in order of priority, isolation, fewest usable GPU models and
size; when jobs are left out for lack of capacity, the batch is retried with them
first and the GPU models they need priced up (so flexible jobs move elsewhere).

``replan`` computes a fresh plan (then consolidation: the emptiest GPUs are
drained into holes elsewhere) and, under a migration budget, falls back to
draining GPUs of the current plan one by one while moves remain in the budget.

Measured against the exact MILP on seeded instances it uses about 20% more GPUs
(benchmarks/results/mig/mig_gap_*.md); its strength is speed on single arrivals.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from conspirator.operator.placement.cluster import ClusterState, GpuState, Instance
from conspirator.operator.placement.common import (
    Option,
    best_start,
    count_migrations,
    finish_job,
    job_options,
    record,
    replica_map,
)
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.gpus import GpuModel
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, score
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy
from conspirator.operator.placement.throughput import ThroughputTable


def _size(job: Job, options: Sequence[Option]) -> float:
    """Estimated GPUs a job needs at its most efficient option (for ordering)."""
    if not options:
        return 0.0
    eff = max(o.throughput / o.cost for o in options)
    return job.demand_rps / eff


class GreedyHeuristic:
    """The greedy (name ``greedy``): sub-millisecond arrivals, bounded-time batches."""

    name = "greedy"

    def __init__(self, consolidate: bool = True, retries: int = 6,
                 price_step: float = 1.5, plan: PlanPolicy = DEFAULT_POLICY) -> None:
        self.plan = plan
        self._scale = 1.0
        self.consolidate = consolidate
        self.retries = retries
        self.price_step = price_step
        self._prices: dict[str, float] = {}

    # --- public entry points ------------------------------------------------------------

    def place(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable) -> Decision:
        """Place ``jobs``; in a batch, jobs left out for lack of capacity go first in a retry.

        Greedy order matters when capacity is scarce (a flexible job may take the only
        GPUs a constrained one can use), so a batch is retried up to ``retries`` times
        with the jobs that failed moved to the front, keeping the best plan.
        """
        t0 = time.perf_counter()
        self._scale = self.plan.scale(state.gpus)
        models = list(state.models().values())
        opts = {j.id: job_options(j, models, table) for j in jobs}
        n_models = {j.id: len({o.model.name for o in opts[j.id]}) for j in jobs}
        order = sorted(jobs, key=lambda j: (-j.priority, not j.dedicated_gpu, n_models[j.id],
                                            -_size(j, opts[j.id])))
        if len(jobs) == 1 or not self.retries:
            dec = self._place_in_order(state, order, opts, models, table)
            dec.solve_seconds = time.perf_counter() - t0
            return dec
        base = state.copy()
        candidates: list[tuple[float, ClusterState, Decision]] = []
        trial = base.copy()
        dec = self._place_in_order(trial, order, opts, models, table)
        candidates.append((score(trial, jobs, policy=self.plan).value, trial, dec))
        prices: dict[str, float] = {}
        for _ in range(self.retries):
            failed = [j for j in order if j.id in dec.unplaced_ids() and opts[j.id]]
            if not failed:
                break
            # Scarce models get dearer, so flexible jobs move off them; the jobs
            # that failed go first.
            for m in {o.model.name for j in failed for o in opts[j.id]}:
                prices[m] = prices.get(m, 1.0) * self.price_step
            self._prices = prices
            order = failed + [j for j in order if j not in failed]
            trial = base.copy()
            dec = self._place_in_order(trial, order, opts, models, table)
            candidates.append((score(trial, jobs, policy=self.plan).value, trial, dec))
        self._prices = {}
        _, best, dec = min(candidates, key=lambda c: c[0])
        state.adopt(best)
        dec.solve_seconds = time.perf_counter() - t0
        return dec

    def _place_in_order(self, state: ClusterState, order: Sequence[Job],
                        opts: dict[str, list[Option]], models: Sequence[GpuModel],
                        table: ThroughputTable) -> Decision:
        dec = Decision(self.name)
        for job in order:
            self._place_job(state, job, opts[job.id], dec, models, table)
        return dec

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision:
        t0 = time.perf_counter()
        before = replica_map(state)
        everything = list({**state.jobs, **{j.id: j for j in jobs}}.values())
        # Candidate A: keep what runs, place the rest, drain GPUs within the budget.
        a = state.copy()
        dec_a = self.place(a, [j for j in everything if j.id not in a.jobs], table)
        moves_a = self._drain(a, table, budget=migration_budget)
        # Candidate B: a fresh plan, if its migrations fit the budget.
        b_state = state.copy()
        for jid in list(b_state.jobs):
            b_state.release(jid)
        dec_b = self.place(b_state, everything, table)
        if self.consolidate:
            self._drain(b_state, table, budget=None)
        moves_b = count_migrations(before, replica_map(b_state))
        # A fresh plan that leaves a running job unplaced is not taken, whatever it saves
        # (as in mixpack; found by the property test: B dropped a job for a new one).
        running = {jid for jid in state.jobs if state.served_rps(jid) > 0}
        pick_b = (migration_budget is None or moves_b <= migration_budget) and (
            running.isdisjoint(dec_b.unplaced_ids())) and (
            score(b_state, everything, policy=self.plan).value
            < score(a, everything, policy=self.plan).value
        )
        chosen, dec, moves = (b_state, dec_b, moves_b) if pick_b else (a, dec_a, moves_a)
        state.adopt(chosen)
        dec.migrations = moves
        dec.placed = []
        for g in state.gpus:
            for i in g.instances:
                record(dec, g, i)
        dec.solve_seconds = time.perf_counter() - t0
        return dec

    # --- one job ------------------------------------------------------------------------

    def _place_job(self, state: ClusterState, job: Job, options: Sequence[Option],
                   dec: Decision, models: Sequence[GpuModel], table: ThroughputTable,
                   exclude: GpuState | None = None, holes_only: bool = False) -> bool:
        added: list[tuple[GpuState, Instance]] = []
        remaining = job.demand_rps - state.served_rps(job.id)
        by_model: dict[str, list[Option]] = {}
        for o in options:
            by_model.setdefault(o.model.name, []).append(o)
        while remaining > job.demand_rps * DEMAND_TOLERANCE:
            pick = self._best_hole(state, job, by_model, remaining, exclude)
            if pick is None and not holes_only:
                pick = self._best_new(state, job, by_model, remaining)
            if pick is None:
                break
            gpu, opt, start = pick
            inst = state.assign(job, gpu, opt.profile, start, opt.throughput)
            added.append((gpu, inst))
            remaining -= opt.throughput
        return finish_job(state, job, dec, added, models, table)

    def _value(self, gpu: GpuState, opt: Option, remaining: float, opens: bool = False
               ) -> tuple[float, float]:
        """Useful throughput per unit of the objective: the option's share of what the GPU
        costs (gpus: its share of one GPU), plus what the instance itself costs.  ``opens``:
        the option opens an empty GPU, which a priced objective pays in full (its share
        alone would make a dearer GPU look cheap for a job that fills little of it)."""
        price = self._prices.get(opt.model.name, 1.0)
        share = 1.0 if opens else opt.cost
        cost = (share * self.plan.gpu_cost(gpu.model, gpu.spot, self._scale)
                + self.plan.instance_cost(gpu.model, opt.profile, self._scale)) * price
        return (min(opt.throughput, remaining) / cost, -cost)

    def _best_hole(self, state: ClusterState, job: Job, by_model: dict[str, list[Option]],
                   remaining: float, exclude: GpuState | None
                   ) -> tuple[GpuState, Option, int] | None:
        best: tuple[GpuState, Option, int] | None = None
        best_key: tuple[float, float, int] | None = None
        for g in state.gpus:
            if not g.instances or g is exclude or g.time_share_used:
                continue
            opts = by_model.get(g.model.name)
            if not opts or not g.admits(job):
                continue
            for o in opts:
                starts = g.free_starts(o.profile)
                if not starts:
                    continue
                v, c = self._value(g, o, remaining)
                # Prefer the fullest GPU among equals: it leaves the others' holes whole.
                key = (v, c, -g.free_slots)
                if best_key is None or key > best_key:
                    best_key = key
                    best = (g, o, best_start(g, o.profile, starts))
        return best

    def _best_new(self, state: ClusterState, job: Job, by_model: dict[str, list[Option]],
                  remaining: float) -> tuple[GpuState, Option, int] | None:
        best: tuple[GpuState, Option, int] | None = None
        best_key: tuple[float, float] | None = None
        seen: set[tuple[str, bool]] = set()
        for g in state.gpus:
            if g.instances or (g.model.name, g.spot) in seen or not g.admits(job):
                continue
            seen.add((g.model.name, g.spot))
            for o in by_model.get(g.model.name, ()):
                key = self._value(g, o, remaining, opens=self.plan.objective != "gpus")
                if best_key is None or key > best_key:
                    best_key = key
                    best = (g, o, best_start(g, o.profile, list(o.profile.starts)))
        return best

    # --- consolidation ------------------------------------------------------------------

    def _drain(self, state: ClusterState, table: ThroughputTable, budget: int | None) -> int:
        """Empty lightly used GPUs by moving their replicas into holes elsewhere.

        Returns the number of replicas moved.  A GPU is drained only when all of its
        replicas' demand fits elsewhere and the moves fit in ``budget``.
        """
        models = list(state.models().values())
        moved = 0
        improved = True
        while improved:
            improved = False
            used = sorted((g for g in state.gpus if g.instances),
                          key=lambda g: (g.model.slots - g.free_slots) / g.model.slots)
            for g in used:
                n = len(g.instances)
                if budget is not None and moved + n > budget:
                    continue
                if self._try_drain(state, g, table, models):
                    moved += n
                    improved = True
                    break
        return moved

    def _try_drain(self, state: ClusterState, gpu: GpuState, table: ThroughputTable,
                   models: Sequence[GpuModel]) -> bool:
        trial = state.copy()
        tg = trial.gpus[gpu.uid]
        jobs = {i.job_id: trial.jobs[i.job_id] for i in tg.instances}
        for i in list(tg.instances):
            trial.unassign(tg, i)
        scratch = Decision(self.name)
        for job in sorted(jobs.values(), key=lambda j: -j.demand_rps):
            opts = job_options(job, models, table)
            if not self._place_job(trial, job, opts, scratch, models, table, exclude=tg,
                                   holes_only=True):
                return False
        state.adopt(trial)
        return True
