"""The replica-mix search space over exact MIG packing: buckets, mixes and their moves.

GPUs that are interchangeable form a :class:`Bucket` (the empty GPUs of one model
in one tenant group, or a class of partly used GPUs with the same layout); its
cost is the fewest GPUs that hold its instance counts, computed exactly by
:mod:`~conspirator.operator.placement.packing`.  Each job gets candidate
mixes (:class:`Mix`) that cover its demand (:func:`candidate_mixes`); a
:class:`MixSearch` holds the mix each job takes and the moves of a local search
(``insert``, ``remove``, ``take``).  :func:`build_search` builds one from a cluster.
The ``mixpack`` policy searches it by ruin and recreate, ``lpdive`` starts it from
an LP dive.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from conspirator.operator.placement.cluster import ClusterState, GpuState
from conspirator.operator.placement.common import SHARED, job_groups, slot_cost
from conspirator.operator.placement.gpus import GpuModel
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.layouts import completions
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, E1_GPU, E2_UNMET
from conspirator.operator.placement.packing import (
    INFEASIBLE,
    PatternSearch,
    PatternSet,
    counter,
)
from conspirator.operator.placement.throughput import ThroughputTable


@dataclass(slots=True)
class Bucket:
    """Interchangeable GPUs (one model, one tenant group) and the instance counts they hold."""

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
        """Fewest GPUs of the bucket that hold ``counts`` (``INFEASIBLE``: none)."""
        if self.fn is None:
            self.fn = counter(self.model)
        if self.search is not None:
            n = self.search.count(counts)
            return n if n <= len(self.gpus) else INFEASIBLE
        return self.fn(counts)


@dataclass(frozen=True, slots=True)
class Mix:
    """One way to cover a job's demand: replicas per (bucket, profile)."""

    entries: tuple[tuple[int, int, int], ...]  # (bucket, profile index, replicas)
    thr: tuple[float, ...]  # throughput of one replica, per entry
    share: float  # resource share of the whole mix (GPUs' worth)
    adds: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (bucket, counts added), per bucket


@dataclass(slots=True)
class SearchJob:
    """A job in the search: its unmet demand and its candidate mixes, by increasing share."""

    job: Job
    demand: float
    mixes: list[Mix]
    weight: float
    size: float  # share of the cheapest mix
    flex: int = 0  # GPU models its mixes use (fewer: placed earlier)
    targets: list[tuple[int, int, float, float]] = field(default_factory=list)
    index: dict[tuple[tuple[int, int, int], ...], int] = field(default_factory=dict)


@dataclass(slots=True)
class MixSearch:
    """The buckets, the jobs and the mix each job takes (``choice``), with the moves on them."""

    buckets: list[Bucket]
    jobs: list[SearchJob]
    capacity: dict[str, int]  # model -> empty GPUs
    pool_used: dict[str, int] = field(default_factory=dict)
    choice: list[int] = field(default_factory=list)  # mix index per job, -1 unplaced
    members: list[set[int]] = field(default_factory=list)  # bucket -> jobs in it
    e1: float = E1_GPU
    e2: float = E2_UNMET
    blink: float = 0.0  # chance to skip a mix when reinserting (diversification)

    def objective(self) -> float:
        """The paper's objective of the current choice."""
        gpus = sum(b.used for b in self.buckets if b.pool)
        unmet = sum(j.weight for j, c in zip(self.jobs, self.choice, strict=True) if c < 0)
        return self.e1 * gpus + self.e2 * unmet

    # --- moves ----------------------------------------------------------------------------

    def added_cost(self, mix: Mix) -> float | None:
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

    def take(self, j: int, k: int) -> None:
        """Give job ``j`` (placed nowhere) its mix ``k``."""
        self._apply(j, k, +1)
        self.choice[j] = k

    def remove(self, j: int) -> None:
        """Place job ``j`` nowhere."""
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
            d = self.added_cost(mix)
            if d is None:
                continue
            key = (self.e1 * d, mix.share)
            if key < best_key:
                best_key, best_k = key, k
                if d == 0:
                    break  # no later mix adds fewer GPUs or less share
        if best_k >= 0:
            self.take(j, best_k)


def candidate_mixes(targets: list[tuple[int, int, float, float]], demand: float,
                    slack: float, depth: int, max_replicas: int, model_of: Sequence[str],
                    max_mixes: int = 64) -> list[Mix]:
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
    out = [Mix(((b, p, n),), (thr,), n * share) for (b, p), (n, thr, share) in kept]
    two: list[Mix] = []
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
                two.append(Mix(((a[0], a[1], n1), (c[0], c[1], n2)), (ta, tc), share))
    two.sort(key=lambda m: (m.share, m.entries))
    out += two[:max(0, max_mixes - len(out))]
    out.sort(key=lambda m: (m.share, m.entries))
    return out


def with_adds(mix: Mix, buckets: Sequence[Bucket]) -> Mix:
    """``mix`` with the counts it adds to each bucket (what ``MixSearch`` moves use)."""
    per: dict[int, list[int]] = {}
    for b_i, p_i, n in mix.entries:
        vec = per.setdefault(b_i, [0] * len(buckets[b_i].counts))
        vec[p_i] += n
    return Mix(mix.entries, mix.thr, mix.share, tuple((b, tuple(v)) for b, v in per.items()))


def _buckets(state: ClusterState, models: Sequence[GpuModel], groups: Sequence[str]
             ) -> tuple[list[Bucket], dict[tuple[str, str], list[int]], dict[str, int]]:
    """The buckets of ``state``, their indices per (model, group), empty GPUs per model."""
    buckets: list[Bucket] = []
    by_mg: dict[tuple[str, str], list[int]] = defaultdict(list)
    capacity: dict[str, int] = {}
    for m in models:
        empty = [g for g in state.gpus if g.model.name == m.name and g.empty]
        capacity[m.name] = len(empty)
        zero = (0,) * len(m.planning_profiles)
        for t in groups:
            by_mg[(m.name, t)].append(len(buckets))
            buckets.append(Bucket(m, t, empty, True, zero))
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
            buckets.append(Bucket(m, grp, members, False, zero,
                                  search=PatternSearch(pats, m.planning_profiles),
                                  completions=pats))
    return buckets, by_mg, capacity


def _targets(job: Job, models: Sequence[GpuModel], table: ThroughputTable,
             groups: Sequence[str], buckets: Sequence[Bucket],
             by_mg: dict[tuple[str, str], list[int]]) -> list[tuple[int, int, float, float]]:
    """(bucket, profile index, throughput, share) of every slot ``job`` may take."""
    targets: list[tuple[int, int, float, float]] = []
    if job.model not in table.models:
        return targets
    for m in models:
        for p_i, prof in enumerate(m.planning_profiles):
            opt = table.best(job, m, prof)
            if opt is None:
                continue
            share = slot_cost(m, prof)
            for t in job_groups(job, groups):
                for b_i in by_mg.get((m.name, t), ()):
                    b = buckets[b_i]
                    if b.completions is not None and not any(
                            c[p_i] for c in b.completions.counts):
                        continue
                    if not b.pool and not all(
                            g.admits(job) for g in b.gpus):
                        continue
                    targets.append((b_i, p_i, opt.throughput_rps, share))
    return targets


def build_search(state: ClusterState, jobs: Sequence[Job], table: ThroughputTable, *,
                 slack: float, depth: int, max_mixes: int, e1: float = E1_GPU,
                 e2: float = E2_UNMET, blink: float = 0.0) -> MixSearch:
    """The buckets of ``state`` and every job's candidate mixes, nothing chosen yet.

    ``slack``, ``depth`` and ``max_mixes`` are :func:`candidate_mixes`'; ``e1``,
    ``e2`` and ``blink`` go to the :class:`MixSearch`.
    """
    models = sorted(state.models().values(), key=lambda m: m.name)
    groups = [SHARED, *sorted({j.tenant for j in jobs if j.dedicated_gpu}
                              | {i.tenant for g in state.gpus for i in g.instances
                                 if i.dedicated})]
    buckets, by_mg, capacity = _buckets(state, models, groups)
    model_of = [b.model.name for b in buckets]
    sjobs: list[SearchJob] = []
    for job in jobs:
        demand = max(0.0, job.demand_rps - state.served_rps(job.id))
        targets = _targets(job, models, table, groups, buckets, by_mg)
        mixes = candidate_mixes(targets, demand, slack, depth, 256, model_of,
                                max_mixes) if demand > 0 else []
        mixes = [with_adds(mx, buckets) for mx in mixes]
        size = mixes[0].share if mixes else 0.0
        flex = len({model_of[b] for mx in mixes for b, _, _ in mx.entries})
        sjobs.append(SearchJob(job, demand, mixes, job.weight, size, flex, targets,
                               {mx.entries: k for k, mx in enumerate(mixes)}))
    s = MixSearch(buckets, sjobs, capacity, e1=e1, e2=e2, blink=blink)
    s.pool_used = {m.name: 0 for m in models}
    s.choice = [-1] * len(sjobs)
    s.members = [set() for _ in buckets]
    return s


__all__ = ["Bucket", "Mix", "MixSearch", "SearchJob", "build_search", "candidate_mixes",
           "with_adds"]
