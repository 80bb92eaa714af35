"""Replica-mix search over exact MIG packing (policy ``mixpack``): the batch heuristic.

The pattern MILP (``milp.py``) decides, per job, how many replicas to run on each
(GPU model, profile, tenant group) and pays for the fewest GPUs that hold those
counts.  This heuristic searches the same space without a solver:

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

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from conspirator.operator.placement.cluster import ClusterState, GpuState
from conspirator.operator.placement.common import (
    count_migrations,
    record,
    replica_map,
    slot_cost,
    unplaced_reason,
)
from conspirator.operator.placement.decision import Decision, Unplaced
from conspirator.operator.placement.gpus import GpuModel, Placement
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.layouts import completions
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, E1_GPU, E2_UNMET, score
from conspirator.operator.placement.packing import (
    INFEASIBLE,
    PatternSearch,
    PatternSet,
    counter,
    pack,
)
from conspirator.operator.placement.throughput import ThroughputTable

SHARED = ""


@dataclass(slots=True)
class _Bucket:
    model: GpuModel
    group: str
    gpus: list[GpuState]
    pool: bool  # empty GPUs (cost E1 each when used) or a class of partly used GPUs
    counts: tuple[int, ...]
    used: int = 0
    search: PatternSearch | None = None  # partly used GPUs: their completions
    completions: PatternSet | None = None
    fn: Callable[[tuple[int, ...]], int] | None = None

    def cost_of(self, counts: tuple[int, ...]) -> int:
        if self.fn is None:
            self.fn = counter(self.model)
        if self.search is not None:
            n = self.search.count(counts)
            return n if n <= len(self.gpus) else INFEASIBLE
        return self.fn(counts)


@dataclass(frozen=True, slots=True)
class _Mix:
    entries: tuple[tuple[int, int, int], ...]  # (bucket, profile index, replicas)
    thr: tuple[float, ...]  # throughput of one replica, per entry
    share: float  # resource share of the whole mix (GPUs' worth)
    adds: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (bucket, counts added), per bucket


@dataclass(slots=True)
class _Job:
    job: Job
    demand: float
    mixes: list[_Mix]
    weight: float
    size: float  # share of the cheapest mix
    flex: int = 0  # GPU models its mixes use (fewer: placed earlier)
    targets: list[tuple[int, int, float, float]] = field(default_factory=list)
    index: dict[tuple[tuple[int, int, int], ...], int] = field(default_factory=dict)


@dataclass(slots=True)
class _Search:
    buckets: list[_Bucket]
    jobs: list[_Job]
    capacity: dict[str, int]  # model -> empty GPUs
    pool_used: dict[str, int] = field(default_factory=dict)
    choice: list[int] = field(default_factory=list)  # mix index per job, -1 unplaced
    members: list[set[int]] = field(default_factory=list)  # bucket -> jobs in it
    e1: float = E1_GPU
    e2: float = E2_UNMET
    blink: float = 0.0  # chance to skip a mix when reinserting (diversification)

    def objective(self) -> float:
        gpus = sum(b.used for b in self.buckets if b.pool)
        unmet = sum(j.weight for j, c in zip(self.jobs, self.choice, strict=True) if c < 0)
        return self.e1 * gpus + self.e2 * unmet

    # --- moves ----------------------------------------------------------------------------

    def _delta(self, mix: _Mix) -> float | None:
        """Added cost of ``mix`` (GPUs), or ``None`` when it does not fit."""
        extra = 0
        per_model: dict[str, int] = {}
        for b_i, vec in mix.adds:
            b = self.buckets[b_i]
            new = tuple(x + y for x, y in zip(b.counts, vec, strict=True))
            cost = b.cost_of(new)
            if cost >= INFEASIBLE:
                return None
            d = cost - b.used
            if b.pool and d:
                name = b.model.name
                per_model[name] = per_model.get(name, 0) + d
                if self.pool_used[name] + per_model[name] > self.capacity[name]:
                    return None
                extra += d
        return float(extra)

    def _apply(self, j: int, k: int, sign: int) -> None:
        mix = self.jobs[j].mixes[k]
        for b_i, vec in mix.adds:
            b = self.buckets[b_i]
            b.counts = tuple(x + sign * y for x, y in zip(b.counts, vec, strict=True))
            new_used = b.cost_of(b.counts)
            if b.pool:
                self.pool_used[b.model.name] += new_used - b.used
            b.used = new_used
            if sign > 0:
                self.members[b_i].add(j)
            else:
                self.members[b_i].discard(j)

    def remove(self, j: int) -> None:
        k = self.choice[j]
        if k >= 0:
            self._apply(j, k, -1)
            self.choice[j] = -1

    def insert(self, j: int, rng: random.Random | None = None) -> None:
        """Give job ``j`` its cheapest mix (fewest added GPUs, then least share)."""
        jb = self.jobs[j]
        best_k = -1
        best_key = (self.e2 * jb.weight, 0.0)  # leaving it unmet
        for k, mix in enumerate(jb.mixes):  # by increasing share
            if rng is not None and rng.random() < self.blink:
                continue
            d = self._delta(mix)
            if d is None:
                continue
            key = (self.e1 * d, mix.share)
            if key < best_key:
                best_key, best_k = key, k
                if d == 0:
                    break  # no later mix adds fewer GPUs or less share
        if best_k >= 0:
            self._apply(j, best_k, +1)
            self.choice[j] = best_k


def _allowed_groups(job: Job, groups: Sequence[str]) -> list[str]:
    if job.dedicated_gpu:
        return [job.tenant]
    return [SHARED] + ([job.tenant] if job.tenant in groups else [])


def _mixes(targets: list[tuple[int, int, float, float]], demand: float, slack: float,
           depth: int, max_replicas: int, model_of: Sequence[str],
           max_mixes: int = 64) -> list[_Mix]:
    """Candidate mixes over ``targets`` = (bucket, profile index, throughput, share).

    Pure mixes (``n`` replicas of one target) are kept when their share is within
    ``slack`` of the cheapest pure mix on the same GPU model (every model keeps its
    own good mixes: the best model may be full).  Two-target mixes take ``n1`` of a
    kept target, ``n1`` short of its pure count by at most ``depth``, and cover the
    rest with another kept target; they are kept when no mix of the same two targets
    needs fewer of both and neither pure mix needs fewer replicas.
    """
    need = demand * (1.0 - DEMAND_TOLERANCE)
    pure: dict[tuple[int, int], tuple[int, float, float]] = {}  # (b, p) -> (n, thr, share)
    for b, p, thr, share in targets:
        n = math.ceil(need / thr - 1e-9)
        if n <= max_replicas:
            pure[(b, p)] = (n, thr, share)
    cheapest: dict[str, float] = {}
    for (b, _), (n, _, share) in pure.items():
        cheapest[model_of[b]] = min(cheapest.get(model_of[b], math.inf), n * share)
    kept = [(bp, v) for bp, v in pure.items()
            if v[0] * v[2] <= cheapest[model_of[bp[0]]] * (1.0 + slack) + 1e-9]
    out = [_Mix(((b, p, n),), (thr,), n * share) for (b, p), (n, thr, share) in kept]
    two: list[_Mix] = []
    pairs: dict[tuple[tuple[int, int], tuple[int, int]], list[tuple[int, int]]] = {}
    for a, (na, ta, _) in kept:
        for n1 in range(max(1, na - depth), na):
            rest = need - n1 * ta
            for c, (nc, tc, _) in kept:
                if c == a:
                    continue
                n2 = math.ceil(rest / tc - 1e-9)
                if n2 >= nc or n1 + n2 > max_replicas:
                    continue
                key, val = ((a, c), (n1, n2)) if a < c else ((c, a), (n2, n1))
                pairs.setdefault(key, []).append(val)
    for (a, c), vals in pairs.items():
        _, ta, sa = pure[a]
        _, tc, sc = pure[c]
        for n1, n2 in set(vals):
            if any((m1, m2) != (n1, n2) and m1 <= n1 and m2 <= n2 for m1, m2 in vals):
                continue
            share = n1 * sa + n2 * sc
            limit = max(cheapest[model_of[a[0]]], cheapest[model_of[c[0]]]) * (1.0 + slack)
            if share <= limit + 1e-9:
                two.append(_Mix(((a[0], a[1], n1), (c[0], c[1], n2)), (ta, tc), share))
    two.sort(key=lambda m: (m.share, m.entries))
    out += two[:max(0, max_mixes - len(out))]
    out.sort(key=lambda m: (m.share, m.entries))
    return out


def _with_adds(mix: _Mix, buckets: Sequence[_Bucket]) -> _Mix:
    per: dict[int, list[int]] = {}
    for b_i, p_i, n in mix.entries:
        vec = per.setdefault(b_i, [0] * len(buckets[b_i].counts))
        vec[p_i] += n
    return _Mix(mix.entries, mix.thr, mix.share, tuple((b, tuple(v)) for b, v in per.items()))


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

    def _build(self, state: ClusterState, jobs: Sequence[Job],
               table: ThroughputTable) -> _Search:
        models = sorted(state.models().values(), key=lambda m: m.name)
        groups = [SHARED, *sorted({j.tenant for j in jobs if j.dedicated_gpu}
                                  | {i.tenant for g in state.gpus for i in g.instances
                                     if i.dedicated})]
        buckets: list[_Bucket] = []
        by_mg: dict[tuple[str, str], list[int]] = defaultdict(list)
        capacity: dict[str, int] = {}
        for m in models:
            empty = [g for g in state.gpus if g.model.name == m.name and g.empty]
            capacity[m.name] = len(empty)
            zero = (0,) * len(m.planning_profiles)
            for t in groups:
                by_mg[(m.name, t)].append(len(buckets))
                buckets.append(_Bucket(m, t, empty, True, zero))
            classes: dict[tuple[tuple[tuple[str, int], ...], str], list[GpuState]] = \
                defaultdict(list)
            for g in state.gpus:
                if g.model.name != m.name or g.empty or g.time_share_used:
                    continue
                ded = {i.tenant for i in g.instances if i.dedicated}
                tenants = g.tenants()
                if ded:
                    if len(tenants) != 1:
                        continue
                    grp = next(iter(tenants))
                else:
                    grp = SHARED
                key = tuple(sorted((i.profile.name, i.start) for i in g.instances))
                classes[(key, grp)].append(g)
            for (_, grp), members in classes.items():
                comps = completions(m, members[0].placements())
                pats = PatternSet.of(comps)
                if not pats.counts:
                    continue
                by_mg[(m.name, grp)].append(len(buckets))
                buckets.append(_Bucket(m, grp, members, False, zero,
                                       search=PatternSearch(pats, m.planning_profiles),
                                       completions=pats))
        model_of = [b.model.name for b in buckets]
        sjobs: list[_Job] = []
        for job in jobs:
            demand = max(0.0, job.demand_rps - state.served_rps(job.id))
            targets: list[tuple[int, int, float, float]] = []
            if job.model in table.models:
                for m in models:
                    for p_i, prof in enumerate(m.planning_profiles):
                        opt = table.best(job, m, prof)
                        if opt is None:
                            continue
                        share = slot_cost(m, prof)
                        for t in _allowed_groups(job, groups):
                            for b_i in by_mg.get((m.name, t), ()):
                                b = buckets[b_i]
                                if b.completions is not None and not any(
                                        c[p_i] for c in b.completions.counts):
                                    continue
                                if not b.pool and not all(
                                        g.admits_tenant(job.tenant, job.dedicated_gpu)
                                        for g in b.gpus):
                                    continue
                                targets.append((b_i, p_i, opt.throughput_rps, share))
            mixes = _mixes(targets, demand, self.slack, self.depth, 256, model_of,
                           self.max_mixes) if demand > 0 else []
            mixes = [_with_adds(mx, buckets) for mx in mixes]
            size = mixes[0].share if mixes else 0.0
            flex = len({model_of[b] for mx in mixes for b, _, _ in mx.entries})
            sjobs.append(_Job(job, demand, mixes, job.weight, size, flex, targets,
                              {mx.entries: k for k, mx in enumerate(mixes)}))
        s = _Search(buckets, sjobs, capacity, e1=self.e1, e2=self.e2, blink=self.blink)
        s.pool_used = {m.name: 0 for m in models}
        s.choice = [-1] * len(sjobs)
        s.members = [set() for _ in buckets]
        return s

    def _start(self, s: _Search, state: ClusterState, jobs: Sequence[Job],
               table: ThroughputTable) -> bool:
        """Hook for a starting solution (``lpdive``); ``False``: build one greedily."""
        return False

    def _search(self, s: _Search, started: bool = False) -> None:
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
                        s._apply(j, k, +1)
                        s.choice[j] = k
        if s.choice != best_choice:
            for j in range(n):
                s.remove(j)
            for j in range(n):
                if best_choice[j] >= 0:
                    s._apply(j, best_choice[j], +1)
                    s.choice[j] = best_choice[j]

    def _ruin(self, s: _Search, rng: random.Random, live: list[int]) -> list[int]:
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
        s = self._build(state, jobs, table)
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
