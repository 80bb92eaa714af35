"""A plan policy's rules around any placement policy: preemption and the fair share.

:class:`RuledPolicy` wraps a :class:`PlacementPolicy` (which already optimises the
plan's objective) and adds, as numbered phases after it:

1. **Base plan.**  The wrapped policy's ``place`` or ``replan``.
2. **Fair share** (``replan``, ``PlanPolicy.fairness``, only when some job is left
   unmet, i.e. the cluster is oversubscribed).  The capacity the base plan serves is
   split by weighted max-min (:mod:`fairshare`); each tenant's jobs are admitted, by
   priority then running first then smallest, while they fit in its share; the running
   jobs not admitted are released, the wrapped policy re-plans the admitted ones, and
   the others are then placed where room is left (work-conserving).  The fair plan
   is taken when its lowest tenant ratio (served / fair share) is higher.
3. **Preemption** (``PlanPolicy.preemption``).  A job still unmet evicts running jobs
   of lower priority, lowest priority first, until it fits; the evicted jobs are then
   placed again where room is left, and those that find none are preempted.  If
   the job does not fit even so, nothing is evicted.

Every job ends up placed or in ``Decision.unplaced``; running jobs that lose their
replicas are listed in ``Decision.preempted``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.common import job_options, record
from conspirator.operator.placement.decision import Decision, Unplaced
from conspirator.operator.placement.fairshare import FairShares, served_size
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.placement.plan_policy import PlanPolicy
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.throughput import ThroughputTable

MAX_VICTIMS = 48  # running jobs one unmet job may try evicting
FAIR_GAIN = 1e-3  # the fair plan must raise the lowest ratio by more than this


def _running(state: ClusterState) -> set[str]:
    return {jid for jid, j in state.jobs.items() if demand_met(state.served_rps(jid),
                                                               j.demand_rps)}


class RuledPolicy:
    """``policy`` under ``plan``'s fairness and preemption rules (same name)."""

    def __init__(self, policy: PlacementPolicy, plan: PlanPolicy) -> None:
        self.inner = policy
        self.plan = plan
        self.name = policy.name

    def place(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable) -> Decision:
        t0 = time.perf_counter()
        before = _running(state)
        dec = self.inner.place(state, jobs, table)
        if self.plan.preemption:
            self._preempt(state, jobs, table, dec)
        return self._finish(state, before, dec, t0, whole_plan=False)

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision:
        t0 = time.perf_counter()
        before = _running(state)
        everything = list({**state.jobs, **{j.id: j for j in jobs}}.values())
        base = state.copy()
        dec = self.inner.replan(base, jobs, table, migration_budget)
        if self.plan.fairness and dec.unplaced:
            fair = state.copy()
            fdec = self._fair(fair, everything, base, table, migration_budget)
            shares = FairShares(everything, state.models().values(), table,
                                self.plan.tenant_weights)
            if min(shares.ratios(fair).values(), default=1.0) > \
                    min(shares.ratios(base).values(), default=1.0) + FAIR_GAIN:
                base, dec = fair, fdec
        state.adopt(base)
        if self.plan.preemption:
            self._preempt(state, everything, table, dec)
        return self._finish(state, before, dec, t0, whole_plan=True)

    # --- phase 2: the fair share ------------------------------------------------------

    def _fair(self, state: ClusterState, everything: Sequence[Job], base: ClusterState,
              table: ThroughputTable, budget: int | None) -> Decision:
        shares = FairShares(everything, state.models().values(), table,
                            self.plan.tenant_weights)
        fair = shares.shares(sum(shares.served(base).values()))
        running = set(state.jobs)
        capacity = sum(fair.values())
        queues: dict[str, list[Job]] = {}
        for j in everything:
            queues.setdefault(j.tenant, []).append(j)
        for js in queues.values():
            js.sort(key=lambda j: (-j.priority, j.id not in running, shares.sizes[j.id]),
                    reverse=True)  # pop() takes the first
        # Deficit round robin: the tenant furthest below its share admits its next job
        # while the capacity lasts.
        admitted: list[Job] = []
        used = dict.fromkeys(queues, 0.0)
        total = 0.0
        while True:
            live = [t for t, js in queues.items() if js and fair.get(t, 0.0) > 0]
            if not live:
                break
            t = min(live, key=lambda t: used[t] / fair[t])
            s = shares.sizes[queues[t][-1].id]
            if s <= 0 or total + s > capacity * (1 + 1e-6):
                queues.pop(t)
                continue
            admitted.append(queues[t].pop())
            used[t] += s
            total += s
        chosen = {j.id for j in admitted}
        rest = [j for j in everything if j.id not in chosen]
        for j in rest:
            if j.id in state.jobs:
                state.release(j.id)
        dec = self.inner.replan(state, admitted, table, budget)
        # Work conservation: the jobs outside their tenant's share take what is left,
        # the tenants furthest below their share first.
        served = shares.served(state)
        rest.sort(key=lambda j: (served[j.tenant] / fair[j.tenant] if fair[j.tenant] else 1.0,
                                 -j.priority, shares.sizes[j.id]))
        more = self.inner.place(state, rest, table)
        self._top_up(state, shares, fair, [j for j in rest if j.id in more.unplaced_ids()],
                     table)
        dec.unplaced = [u for u in dec.unplaced if u.job_id not in state.jobs] + more.unplaced
        return dec

    def _top_up(self, state: ClusterState, shares: FairShares, fair: dict[str, float],
                unmet: Sequence[Job], table: ThroughputTable) -> None:
        """A tenant still below its share gets part of the demand of its next unmet job
        (the job stays unplaced: its demand is not met, but what runs serves it)."""
        served = shares.served(state)
        for j in unmet:
            gap = fair[j.tenant] - served[j.tenant]
            size = shares.sizes[j.id]
            if gap <= 0.05 * size or size <= 0:
                continue
            part = replace(j, demand_rps=j.demand_rps * min(1.0, gap / size))
            trial = state.copy()
            if part.id not in self.inner.place(trial, [part], table).unplaced_ids():
                state.adopt(trial)
                served[j.tenant] += served_size(state, j, size)

    def retry_order(self, state: ClusterState, waiting: Sequence[Job],
                    table: ThroughputTable) -> list[Job]:
        """The order in which waiting jobs get capacity that frees up: with fairness, the
        tenants furthest below their fair share first (then priority, then smallest)."""
        if not self.plan.fairness:
            return list(waiting)
        jobs = list({**state.jobs, **{j.id: j for j in waiting}}.values())
        shares = FairShares(jobs, state.models().values(), table, self.plan.tenant_weights)
        served = shares.served(state)
        fair = shares.shares(sum(served.values()))
        return sorted(waiting, key=lambda j: (
            served[j.tenant] / fair[j.tenant] if fair[j.tenant] > 0 else 1.0, -j.priority,
            shares.sizes[j.id]))

    # --- phase 3: preemption ----------------------------------------------------------

    def _preempt(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
                 dec: Decision) -> None:
        unmet = {u.job_id for u in dec.unplaced}
        models = list(state.models().values())
        for job in sorted((j for j in jobs if j.id in unmet), key=lambda j: -j.priority):
            usable = {o.model.name for o in job_options(job, models, table)}
            ratio = self._ratios(state, job, table)
            victims = [state.jobs[jid] for jid in _running(state)
                       if state.jobs[jid].priority < job.priority and jid != job.id
                       and any(g.model.name in usable for g, _ in state.replicas(jid))
                       and self._may_evict(ratio, job, state.jobs[jid])]
            victims.sort(key=lambda v: (v.priority, -state.served_rps(v.id)))
            trial = state.copy()
            evicted: list[Job] = []
            placed = False
            for v in victims[:MAX_VICTIMS]:
                trial.release(v.id)
                evicted.append(v)
                attempt = trial.copy()
                if job.id not in self.inner.place(attempt, [job], table).unplaced_ids():
                    trial.adopt(attempt)
                    placed = True
                    break
            if not placed:
                continue
            self.inner.place(trial, evicted, table)
            state.adopt(trial)
            dec.unplaced = [u for u in dec.unplaced if u.job_id != job.id]
            for v in evicted:
                if not demand_met(state.served_rps(v.id), v.demand_rps):
                    dec.unplaced.append(Unplaced(v.id, f"preempted by {job.id} (priority "
                                                 f"{job.priority} > {v.priority})",
                                                 v.demand_rps - state.served_rps(v.id)))

    def _ratios(self, state: ClusterState, job: Job, table: ThroughputTable
                ) -> dict[str, float]:
        if not self.plan.fairness:
            return {}
        jobs = list({**state.jobs, job.id: job}.values())
        return FairShares(jobs, state.models().values(), table,
                          self.plan.tenant_weights).ratios(state)

    def _may_evict(self, ratio: dict[str, float], job: Job, victim: Job) -> bool:
        """With fairness, a job evicts only its own tenant's jobs or those of a tenant
        better served (relative to its fair share) than its own."""
        if not self.plan.fairness or victim.tenant == job.tenant:
            return True
        return ratio.get(victim.tenant, 1.0) > ratio.get(job.tenant, 1.0)

    def _finish(self, state: ClusterState, before: set[str], dec: Decision, t0: float,
                whole_plan: bool) -> Decision:
        now = _running(state)
        dec.preempted = sorted(before - now)
        for jid in dec.preempted:
            if jid not in dec.unplaced_ids():
                job = state.jobs.get(jid)
                dec.unplaced.append(Unplaced(jid, "preempted by the fair share",
                                             job.demand_rps if job else 0.0))
        if whole_plan:
            dec.placed = []
            for g in state.gpus:
                for i in g.instances:
                    record(dec, g, i)
        dec.unplaced = [u for u in dec.unplaced if u.job_id not in now]
        dec.solve_seconds = time.perf_counter() - t0
        dec.policy = self.name
        return dec
