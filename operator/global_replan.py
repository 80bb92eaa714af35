"""The periodic global re-plan under each job's migration policy: pure.

The engine's ``replan`` takes one migration budget for the whole cluster and may move
any job.  InferenceJobs say more: ``migration.allowed: false`` pins a job, and
``migration.disruptionBudget`` (default 1) caps how many of its replicas move at once.
So the operator

1. *freezes* every GPU that holds a pinned job or an instance it did not place, and,
   transitively, every GPU of a job that also sits on a frozen GPU (a job is re-planned
   whole or not at all); the re-plan sees only the other GPUs and their jobs, plus the
   jobs still waiting for a placement;
2. splits the rest into pools (:mod:`~conspirator.operator.replan_pools`: by GPU model and
   node, joined where a job spans them) and runs ``policy.replan`` on each, most promising
   first, with the cluster-wide cap (at most the sum of the budgets) less what earlier pools
   moved, until a deadline;
3. accepts a pool's plan only if every job moves at most its own budget, no job that was
   served loses its service, and the objective (GPUs used, weighted unmet demand)
   improves; otherwise it retries once with the smallest budget among the jobs (which
   no job can exceed), and else keeps the current plan.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from conspirator.operator import replan_pools
from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import demand_met, score
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.throughput import ThroughputTable
from conspirator.operator.replan_pools import POOL_GPUS
from conspirator.operator.translate import EngineCluster
from conspirator.operator.views import Replica, sort_replicas

Slot = tuple[str, int, str, int]


@dataclass(slots=True)
class ReplanResult:
    """What a re-plan decided (``accepted`` false: keep the current plan)."""

    accepted: bool
    note: str
    changed: dict[str, list[Replica]] = field(default_factory=dict)
    """Job key -> its new replicas, for every job whose replicas change (moved or new)."""
    moved: dict[str, int] = field(default_factory=dict)
    """Job key -> replicas that leave their instance (migrations), jobs with moves only."""
    gpus_before: int = 0
    gpus_after: int = 0
    seconds: float = 0.0
    frozen_gpus: int = 0
    pools: int = 0
    solved: int = 0
    skipped: int = 0
    """Pools not solved again: kept by an earlier re-plan and unchanged since."""
    timed_out: int = 0
    """Pools not started before the deadline (they keep their plan)."""
    placed: int = 0
    held_gpus: int = 0
    """GPUs left out because a job spans pools (see ``replan_pools``)."""
    kept: set[int] = field(default_factory=set)
    """Fingerprints of the pools whose plan stays (for the next re-plan's ``known``)."""
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def migrations(self) -> int:
        return sum(self.moved.values())


def frozen_gpus(state: ClusterState, movable: Mapping[str, int]) -> set[int]:
    """Uids of the GPUs the re-plan must not touch (see the module docstring)."""
    frozen = {g.uid for g in state.gpus if any(i.job_id not in movable for i in g.instances)}
    where: dict[str, set[int]] = {}
    for g in state.gpus:
        for i in g.instances:
            where.setdefault(i.job_id, set()).add(g.uid)
    changed = True
    while changed:
        changed = False
        for uids in where.values():
            if uids & frozen and not uids <= frozen:
                frozen |= uids
                changed = True
    return frozen


def _sub_state(cluster: EngineCluster, frozen: set[int]) -> ClusterState:
    sub = ClusterState()
    for g in cluster.state.gpus:
        if g.uid in frozen:
            continue
        sg = sub.add_gpu(g.node, g.model, g.index, spot=g.spot)
        for inst in g.instances:
            job = cluster.state.jobs[inst.job_id]
            sub.assign(job, sg, inst.profile, inst.start, inst.throughput_rps,
                       inst.time_share)
        sg.down = g.down
    return sub


def _slots(state: ClusterState) -> dict[str, list[Slot]]:
    out: dict[str, list[Slot]] = {}
    for g in state.gpus:
        for i in g.instances:
            out.setdefault(i.job_id, []).append((g.node, g.index, i.profile.name, i.start))
    return out


def _moves(before: Mapping[str, list[Slot]], after: Mapping[str, list[Slot]]) -> dict[str, int]:
    out = {}
    for job, old in before.items():
        if job not in after:
            continue
        left = Counter(old) - Counter(after[job])
        n = sum(left.values())
        if n:
            out[job] = n
    return out


def replan(cluster: EngineCluster, movable: Mapping[str, int], pending: Sequence[Job],
           policy: PlacementPolicy, table: ThroughputTable, max_migrations: int, *,
           pool_gpus: int = POOL_GPUS, deadline_s: float | None = None,
           known: frozenset[int] = frozenset()) -> ReplanResult:
    """Re-plan the movable part of ``cluster`` plus ``pending`` jobs; see the module doc.

    ``movable`` maps each job that may move to its disruption budget; every other job
    in ``cluster.state`` is pinned.  ``cluster`` itself is not changed (the caller may run
    this on a snapshot, off the planner's path).  The movable part is split into pools of
    about ``pool_gpus`` GPUs (:mod:`~conspirator.operator.replan_pools`), re-planned one
    after the other, most promising first, each with the migrations the earlier ones left;
    no pool starts after ``deadline_s`` seconds (the others keep their plan), and a pool
    whose fingerprint is in ``known`` (kept by an earlier re-plan, unchanged since) is not
    solved again.  ``ReplanResult.kept`` lists the fingerprints of the pools kept now.
    """
    t0 = time.perf_counter()
    frozen = frozen_gpus(cluster.state, movable)
    sub = _sub_state(cluster, frozen)
    cap = min(max_migrations, sum(movable[j] for j in sub.jobs))
    result = ReplanResult(False, "", gpus_before=cluster.state.gpus_used(),
                          gpus_after=cluster.state.gpus_used(), frozen_gpus=len(frozen))
    if not sub.gpus or (cap <= 0 and not pending):
        result.note = "nothing to re-plan"
        result.seconds = time.perf_counter() - t0
        return result
    parts = replan_pools.split(sub, pending, pool_gpus)
    pools = parts.pools
    result.pools = len(pools)
    result.held_gpus = len(parts.held)
    whys: Counter[str] = Counter()
    left = cap
    for pool in pools:
        if deadline_s is not None and time.perf_counter() - t0 > deadline_s:
            result.timed_out += 1
            continue
        part = replan_pools.sub_state(sub, pool.gpus)
        budgets = {j: movable[j] for j in part.jobs}
        budget = min(left, sum(budgets.values()))
        if budget <= 0 and not pool.pending:
            continue
        print_ = replan_pools.fingerprint(part, pool.pending, budget)
        if print_ in known:
            result.kept.add(print_)
            result.skipped += 1
            continue
        tp = time.perf_counter()
        out = _replan_part(cluster, part, budgets, pool.pending, policy, table, budget)
        result.solved += 1
        result.phases["pools"] = result.phases.get("pools", 0.0) + time.perf_counter() - tp
        if out.why:
            whys[out.why.split(" (")[0]] += 1
            result.kept.add(print_)
            continue
        left -= sum(out.moved.values())
        result.moved.update(out.moved)
        result.changed.update(out.changed)
        result.gpus_after -= out.gain
        result.placed += out.placed
    result.accepted = bool(result.changed)
    head = (f"{result.solved} of {result.pools} pool(s) solved, {result.skipped} unchanged "
            f"since kept, {result.timed_out} left for lack of time")
    if result.accepted:
        result.note = (f"GPUs in use {result.gpus_before} -> {result.gpus_after}, "
                       f"{result.migrations} replica(s) moved, {result.placed} waiting job(s) "
                       f"placed (budget {cap}; {head})")
    else:
        why = "; ".join(f"{w} in {n} pool(s)" for w, n in sorted(whys.items())) or \
            "no pool to solve"
        result.note = f"plan kept: {why} ({head})"
    result.seconds = time.perf_counter() - t0
    return result


@dataclass(slots=True)
class _Part:
    why: str = ""
    """Why the pool keeps its plan (empty: the pool's new plan is taken)."""
    changed: dict[str, list[Replica]] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    gain: int = 0
    placed: int = 0


def _replan_part(cluster: EngineCluster, sub: ClusterState, budgets: Mapping[str, int],
                 pending: Sequence[Job], policy: PlacementPolicy, table: ThroughputTable,
                 cap: int) -> _Part:
    """One pool: the policy's re-plan within ``cap`` migrations and each job's budget; the
    plan is taken only if no job moves more than its budget, no served job loses service
    and the objective improves (else retried once with the smallest budget)."""
    in_sub = set(sub.jobs)
    everyone = list(sub.jobs.values()) + list(pending)
    base = score(sub, everyone)
    before = _slots(sub)
    attempts = [cap] if not budgets or cap <= min(budgets.values()) else \
        [cap, min(budgets.values())]
    why = "no improvement"
    for budget in attempts:
        trial = sub.copy()
        policy.replan(trial, list(pending), table, budget)
        after = _slots(trial)
        moved = _moves(before, after)
        over = sorted(j for j, n in moved.items() if n > budgets.get(j, 0))
        lost = sorted(j for j in in_sub
                      if demand_met(sub.served_rps(j), sub.jobs[j].demand_rps)
                      and not demand_met(trial.served_rps(j), sub.jobs[j].demand_rps))
        new = score(trial, everyone)
        if over:
            why = "a job would move more replicas than its disruption budget"
            continue
        if lost:
            why = "a served job would lose service"
            continue
        if new.value >= base.value - 1e-9:
            why = "no improvement"
            break
        out = _Part(moved=moved, gain=sub.gpus_used() - trial.gpus_used())
        for job_id in sorted(set(after) | set(before)):
            if sorted(after.get(job_id, [])) == sorted(before.get(job_id, [])):
                continue
            reps = []
            for g, inst in trial.replicas(job_id):
                info = cluster.info[(g.node, g.index)]
                reps.append(Replica(g.node, g.index, info.uuid, g.model.name,
                                    inst.profile.name, inst.start, inst.throughput_rps))
            out.changed[job_id] = sort_replicas(reps)
        out.placed = sum(1 for j in pending if j.id in out.changed)
        return out
    return _Part(why=why)
