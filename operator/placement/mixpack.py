"""Replica-mix search over exact MIG packing (policy ``mixpack``): the batch heuristic.

The pattern MILP (``milp.py``) decides, per job, how many replicas to run on each
(GPU model, profile, tenant group) and pays for the fewest GPUs that hold those
counts.  This heuristic searches the same space without a solver (the buckets, mixes
and moves of steps 1 to 3 are :mod:`~conspirator.operator.placement.mixsearch`'s):

1. **Buckets.**  GPUs that are interchangeable form a bucket: the empty GPUs of one
   model in one tenant group (``shared``, or one per tenant with dedicated jobs),
   and every class of partly used GPUs (same model, layout and group).  The cost of
   a bucket is the fewest GPUs that hold its instance counts, computed *exactly* by
   :mod:`~conspirator.operator.placement.packing` (closed form for 8-slice MIG
   models; used GPUs cost nothing more but their free space is bounded).
2. **Mixes.**  Each job gets a short list of candidate *replica mixes* that cover
   its demand: ``n`` replicas of one (model, profile), and ``n1`` of one plus the
   fewest of another that cover the rest (which is how holes left by other jobs
   get used).  Mixes whose resource share (compute or memory, the larger) exceeds
   the job's cheapest by a margin are dropped, as are mixes dominated count by count.
3. **Construction.**  Jobs, largest first, each take the mix that adds the fewest
   GPUs (ties: least resource share) within every model's GPU count; a job whose
   every mix exceeds the capacity, or would cost more GPUs than its unmet-demand
   penalty, is left unplaced, as the MILP would.
4. **Ruin and recreate.**  Repeatedly remove the jobs of one bucket (the whole
   bucket or a random part of it) plus a few random jobs, reinsert them one by one
   in a randomised order with the same rule, and keep the result when the paper's
   objective is no worse (plateau moves allowed; the best plan is kept).  Seeded:
   the same input gives the same plan.
5. **Decoding.**  Each bucket's counts are packed into concrete layouts (real start
   slices) on its GPUs, and the job's replicas take the slots.

The result is checked against the exact MILP on the 40 seeded instances of
``benchmarks/mig_gap.py`` (``benchmarks/results/mig/mig_gap_*.md``;
docs/mig-track.md).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence

from conspirator.operator.placement.cluster import ClusterState, GpuState
from conspirator.operator.placement.common import (
    count_migrations,
    record,
    replica_map,
    unplaced_reason,
)
from conspirator.operator.placement.decision import Decision, Unplaced
from conspirator.operator.placement.gpus import Placement
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.mixsearch import MixSearch, build_search
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, E1_GPU, E2_UNMET, score
from conspirator.operator.placement.packing import pack
from conspirator.operator.placement.throughput import ThroughputTable


class MixPackHeuristic:
    """Replica-mix search over exact MIG packing (name ``mixpack``); see the module doc."""

    name = "mixpack"

    def __init__(self, iterations: int | None = None, seed: int = 0, slack: float = 0.6,
                 depth: int = 3, time_limit_s: float = 5.0, e1: float = E1_GPU,
                 e2: float = E2_UNMET, max_mixes: int = 64, blink: float = 0.0) -> None:
        self.max_mixes = max_mixes
        self.blink = blink
        self.iterations = iterations
        self.seed = seed
        self.slack = slack
        self.depth = depth
        self.time_limit_s = time_limit_s
        self.e1 = e1
        self.e2 = e2

    # --- public entry points --------------------------------------------------------------

    def place(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable) -> Decision:
        """Place ``jobs`` around what ``state`` already runs (nothing moves).

        A job that already has replicas is topped up to its demand.
        """
        t0 = time.perf_counter()
        unique = list({j.id: j for j in jobs}.values())
        dec = self._plan(state, unique, table)
        dec.solve_seconds = time.perf_counter() - t0
        return dec

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision:
        """Plan every job of ``state`` plus ``jobs`` afresh; adopt it if within the budget.

        The fresh plan is taken when its migrations fit ``migration_budget``, it
        serves every job that runs now and it scores better than keeping what runs
        and placing only the new jobs; otherwise the latter is kept.
        ``Decision.placed`` lists the whole plan.
        """
        if migration_budget is not None and migration_budget < 0:
            raise ValueError("migration_budget must be >= 0")
        t0 = time.perf_counter()
        before = replica_map(state)
        everything = list({**state.jobs, **{j.id: j for j in jobs}}.values())
        # Candidate A: keep what runs, place the others around it.
        a = state.copy()
        for j in jobs:
            if j.id in a.jobs and a.jobs[j.id] != j:
                a.release(j.id)  # a new definition: placed again
        dec_a = self._plan(a, [j for j in everything if not a.served_rps(j.id)], table)
        # Candidate B: a fresh plan.
        b = state.copy()
        for jid in list(b.jobs):
            b.release(jid)
        dec_b = self._plan(b, everything, table)
        moves_b = count_migrations(before, replica_map(b))
        # A fresh plan that leaves a running job unplaced is not taken, whatever it saves.
        running = {jid for jid in state.jobs if state.served_rps(jid) > 0}
        pick_b = (migration_budget is None or moves_b <= migration_budget) and (
            running.isdisjoint(dec_b.unplaced_ids())) and (
            score(b, everything).value < score(a, everything).value)
        chosen, dec = (b, dec_b) if pick_b else (a, dec_a)
        state.adopt(chosen)
        dec.migrations = count_migrations(before, replica_map(state))
        dec.placed = []
        for g in state.gpus:
            for i in g.instances:
                record(dec, g, i)
        dec.solve_seconds = time.perf_counter() - t0
        return dec

    # --- the search -------------------------------------------------------------------------

    def _start(self, s: MixSearch, state: ClusterState, jobs: Sequence[Job],
               table: ThroughputTable) -> bool:
        """Hook for a starting solution (``lpdive``); ``False``: build one greedily."""
        return False

    def _search(self, s: MixSearch, started: bool = False) -> None:
        rng = random.Random(self.seed)
        n = len(s.jobs)
        live = [j for j in range(n) if s.jobs[j].mixes]
        if not started:
            for j in sorted(live, key=lambda j: (s.jobs[j].flex, -s.jobs[j].size)):
                s.insert(j)
        if len(live) < 2:
            return
        iters = self.iterations if self.iterations is not None else 20 * len(live) + 200
        deadline = time.perf_counter() + self.time_limit_s
        cur = s.objective()
        best = cur
        best_choice = list(s.choice)
        for it in range(iters):
            if it % 16 == 0 and time.perf_counter() > deadline:
                break
            removed = self._ruin(s, rng, live)
            old = {j: s.choice[j] for j in removed}
            for j in removed:
                s.remove(j)
            order = sorted(removed, key=lambda j: (s.jobs[j].flex, -s.jobs[j].size))
            if rng.random() < 0.5:
                rng.shuffle(order)
            # Jobs left unplaced go first: they may need room the others can do without.
            order.sort(key=lambda j: old[j] >= 0)
            for j in order:
                s.insert(j, rng)
            new = s.objective()
            if new <= cur + 1e-9:
                cur = new
                if new < best - 1e-9:
                    best = new
                    best_choice = list(s.choice)
            else:  # undo
                for j in removed:
                    s.remove(j)
                for j, k in old.items():
                    if k >= 0:
                        s.take(j, k)
        if s.choice != best_choice:
            for j in range(n):
                s.remove(j)
            for j in range(n):
                if best_choice[j] >= 0:
                    s.take(j, best_choice[j])

    def _ruin(self, s: MixSearch, rng: random.Random, live: list[int]) -> list[int]:
        used = [b for b, bk in enumerate(s.buckets) if s.members[b] and bk.pool]
        waiting = [j for j in live if s.choice[j] < 0]
        if waiting and rng.random() < 0.5:  # clear room where a waiting job could go
            j = rng.choice(waiting)
            mine = {b for mx in s.jobs[j].mixes for b, _, _ in mx.entries}
            used = [b for b in used if b in mine] or used
        picked: set[int] = set()
        if used:
            b = rng.choice(used)
            members = sorted(s.members[b])
            if len(members) > 8 and rng.random() < 0.7:
                members = rng.sample(members, rng.randint(3, min(len(members), 12)))
            picked.update(members)
        extra = rng.randint(1, 4)
        picked.update(rng.sample(live, min(extra, len(live))))
        picked.update(j for j in live if s.choice[j] < 0)  # the unplaced get another try
        return sorted(picked)

    # --- decoding ---------------------------------------------------------------------------

    def _plan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable
              ) -> Decision:
        dec = Decision(self.name)
        s = build_search(state, jobs, table, slack=self.slack, depth=self.depth,
                         max_mixes=self.max_mixes, e1=self.e1, e2=self.e2, blink=self.blink)
        self._search(s, self._start(s, state, jobs, table))
        # Concrete slots per bucket: (gpu, placement) per profile index.
        slots: dict[tuple[int, int], list[tuple[GpuState, Placement]]] = defaultdict(list)
        taken: set[int] = set()
        for b_i, b in enumerate(s.buckets):
            if not any(b.counts):
                continue
            if b.pool:
                layouts = pack(b.model, b.counts)
                free = [g for g in b.gpus if g.uid not in taken]
                for g, pls in zip(free, layouts, strict=False):
                    taken.add(g.uid)
                    for pl in pls:
                        slots[(b_i, b.model.planning_profiles.index(pl.profile))].append((g, pl))
            else:
                assert b.search is not None and b.completions is not None
                need = list(b.counts)
                for g, pi in zip(b.gpus, b.search.cover(b.counts), strict=False):
                    for pl in b.completions.placements[pi]:
                        k = b.model.planning_profiles.index(pl.profile)
                        if need[k] > 0:
                            need[k] -= 1
                            slots[(b_i, k)].append((g, pl))
        for lst in slots.values():
            lst.reverse()
        models = list(state.models().values())
        for j, sj in enumerate(s.jobs):
            k = s.choice[j]
            job = sj.job
            if k < 0:
                if sj.demand <= job.demand_rps * DEMAND_TOLERANCE:
                    continue
                dec.unplaced.append(Unplaced(job.id, unplaced_reason(job, models, table),
                                             sj.demand))
                continue
            mix = sj.mixes[k]
            for (b_i, p_i, n), thr in zip(mix.entries, mix.thr, strict=True):
                for _ in range(n):
                    g, pl = slots[(b_i, p_i)].pop()
                    inst = state.assign(job, g, pl.profile, pl.start, thr)
                    record(dec, g, inst)
        dec.objective = score(state, [sj.job for sj in s.jobs]).value
        return dec


__all__ = ["MixPackHeuristic"]
