"""The MIG track: inference jobs arrive and depart on a MIG-capable cluster.

Event-driven.  On arrival the policy's incremental ``place`` runs (its wall time is
the decision latency); on departure the job's instances are released and waiting
jobs are retried; every ``replan_every_s`` the policy's ``replan`` runs with the
migration budget.  A job that is not fully served at arrival misses its SLO until
it is; its unserved time is reported.

Metrics per (policy, seed): GPU-hours (integral of GPUs in use), SLO-miss jobs and
job-hours waiting, SLO attainment (share of job-time fully served), reconfigurations
(:func:`reconfigurations`), migrations, decision latency p50/p99, and the MILP's
reported gap where the policy is the MILP.  Time-varying demand runs in
``mig_demand.py``.

Under a plan policy (``plan``) the run also integrates US$ and kWh and the tenants'
fair shares (``mig_meter.py``); spot nodes vanish and return (``mig_spot.py``), the
jobs that lose replicas there are re-placed at once, and wait when that fails.  A
running job that loses its service to a decision (preemption, fair share) counts as
a preemption and waits.  With fairness or preemption the periodic re-plan also sees
the waiting jobs.
"""

from __future__ import annotations

import functools
import heapq
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.rules import RuledPolicy
from conspirator.operator.placement.throughput import ThroughputTable
from conspirator.operator.simulator.mig_inputs import JobEvent, NodeSpec
from conspirator.operator.simulator.mig_meter import Meter
from conspirator.operator.simulator.mig_spot import SpotSpec, bring_up, interruptions, take_down

ARRIVE, DEPART, REPLAN = 1, 0, 2  # departures first at equal times: they free capacity
SPOT_UP, SPOT_DOWN = 3, 4

Layout = dict[int, Counter[tuple[str, int]]]
"""GPU uid -> its GPU instances as (profile, start): the MIG layout of each GPU."""


def instance_layout(state: ClusterState) -> Layout:
    """The layouts of the GPUs holding replicas (an instance exists while a replica uses it)."""
    return {g.uid: Counter((i.profile.name, i.start) for i in g.instances)
            for g in state.gpus if g.instances}


def reconfigurations(before: Layout, after: Layout, busy_before: set[int],
                     busy_after: set[int]) -> int:
    """GPU instances created or destroyed on GPUs that hold replicas before and after.

    That is a MIG layout change on a GPU in use: the other replicas there keep running
    while it is re-sliced.  Partitioning an idle GPU or freeing a GPU's last replicas
    is not counted.
    """
    n = 0
    for uid in busy_before & busy_after:
        old, new = before.get(uid, Counter()), after.get(uid, Counter())
        n += (old - new).total() + (new - old).total()
    return n


@dataclass(slots=True)
class MigRunResult:
    policy: str
    seed: int
    jobs: int
    gpu_hours: float = 0.0
    peak_gpus: int = 0
    slo_miss_jobs: int = 0
    never_served_jobs: int = 0
    waiting_job_hours: float = 0.0
    migrations: int = 0
    reconfigurations: int = 0
    job_seconds: float = 0.0  # time jobs were running (arrival to departure), summed
    job_seconds_met: float = 0.0  # of it, time their offered rate was fully served
    series: list[tuple[float, float, float, int]] = field(default_factory=list)
    """(time, offered rps, provisioned rps, GPUs in use) per demand step (demand runs)."""
    decisions_ms: list[float] = field(default_factory=list)  # arrivals
    replans_ms: list[float] = field(default_factory=list)  # periodic global re-plans
    mip_gaps: list[float] = field(default_factory=list)
    unplaced_reasons: dict[str, str] = field(default_factory=dict)
    cost_usd: float = 0.0
    energy_kwh: float = 0.0
    jain_fairness: float = 1.0
    fair_share_min: float = 1.0
    preemptions: int = 0
    spot_interruptions: int = 0  # replicas' jobs hit by a spot node taken back

    @property
    def slo_miss_pct(self) -> float:
        return 100.0 * self.slo_miss_jobs / self.jobs if self.jobs else 0.0

    @property
    def slo_attainment_pct(self) -> float:
        return 100.0 * self.job_seconds_met / self.job_seconds if self.job_seconds else 100.0

    def decision_pct(self, q: float) -> float:
        if not self.decisions_ms:
            return 0.0
        if len(self.decisions_ms) == 1:
            return self.decisions_ms[0]
        return statistics.quantiles(self.decisions_ms, n=100, method="inclusive")[int(q) - 1]


def run_mig(nodes: Sequence[NodeSpec], events: Sequence[JobEvent], policy: PlacementPolicy,
            table: ThroughputTable, seed: int, replan_every_s: float = 3600.0,
            migration_budget: int | None = 8,
            progress: Callable[[int], None] | None = None,
            plan: PlanPolicy = DEFAULT_POLICY, spot: SpotSpec | None = None,
            label: str | None = None) -> MigRunResult:
    state = ClusterState.from_nodes(((n.name, n.model, n.gpus) for n in nodes),
                                    spot_nodes=[n.name for n in nodes if n.spot])
    res = MigRunResult(label or policy.name, seed, len(events))
    meter = Meter(state, [e.job for e in events], table, plan)
    replan_waiting = plan.fairness or plan.preemption
    queue: list[tuple[float, int, int, str]] = []
    by_id = {e.job.id: e for e in events}
    for k, e in enumerate(events):
        heapq.heappush(queue, (e.arrival_s, ARRIVE, k, e.job.id))
    horizon = max((e.arrival_s + e.duration_s for e in events), default=0.0)
    t = 0.0
    while t + replan_every_s < horizon:
        t += replan_every_s
        heapq.heappush(queue, (t, REPLAN, -1, ""))
    spot_nodes = [n.name for n in nodes if n.spot]
    for down, up, node in interruptions(spot_nodes, spot or SpotSpec(), horizon, seed):
        heapq.heappush(queue, (down, SPOT_DOWN, -1, node))
        heapq.heappush(queue, (up, SPOT_UP, -1, node))
    waiting: dict[str, float] = {}  # job id -> since when it waits
    missed: set[str] = set()
    served_ever: set[str] = set()
    active: set[str] = set()
    now = 0.0

    def decide(fn: Callable[[], Decision]) -> Decision:
        t0 = time.perf_counter()
        out = fn()
        res.decisions_ms.append((time.perf_counter() - t0) * 1000.0)
        if out.mip_gap is not None:
            res.mip_gaps.append(out.mip_gap)
        return out

    def try_waiting() -> None:
        order = [by_id[j].job for j in waiting]
        if isinstance(policy, RuledPolicy):
            order = policy.retry_order(state, order, table)
        for job in order:
            jid = job.id
            dec = policy.place(state, [job], table)
            if jid not in dec.unplaced_ids():
                res.waiting_job_hours += (now - waiting.pop(jid)) / 3600.0
                served_ever.add(jid)

    def lost_service(why: str) -> None:
        """Running jobs no longer served (preempted, or hit by a spot node) wait."""
        for j in active:
            if j in waiting or demand_met(state.served_rps(j), by_id[j].job.demand_rps):
                continue
            waiting[j] = now
            missed.add(j)
            if why == "spot":
                res.spot_interruptions += 1
            else:
                res.preemptions += 1

    done = 0
    while queue:
        at, kind, _, jid = heapq.heappop(queue)
        meter.advance(state, active, at - now)
        res.gpu_hours += state.gpus_used() * (at - now) / 3600.0
        res.job_seconds += len(active) * (at - now)
        res.job_seconds_met += (len(active) - len(waiting)) * (at - now)
        now = at
        layout = instance_layout(state)
        if kind == SPOT_DOWN:
            hit = take_down(state, jid)
            for j in sorted(hit & active):
                policy.place(state, [by_id[j].job], table)
            lost_service("spot")
        elif kind == SPOT_UP:
            bring_up(state, jid)
            try_waiting()
        elif kind == ARRIVE:
            ev = by_id[jid]
            active.add(jid)
            heapq.heappush(queue, (now + ev.duration_s, DEPART, 0, jid))
            dec = decide(functools.partial(policy.place, state, [ev.job], table))
            unplaced = {u.job_id: u for u in dec.unplaced}
            if jid in unplaced:
                waiting[jid] = now
                missed.add(jid)
                res.unplaced_reasons[jid] = unplaced[jid].reason
            else:
                served_ever.add(jid)
        elif kind == DEPART:
            active.discard(jid)
            if jid in waiting:
                res.waiting_job_hours += (now - waiting.pop(jid)) / 3600.0
            state.release(jid)
            done += 1
            if progress:
                progress(1)
            try_waiting()
        else:
            jobs = [by_id[j].job for j in active if replan_waiting or j not in waiting]
            t0 = time.perf_counter()
            dec = policy.replan(state, jobs, table, migration_budget)
            res.replans_ms.append((time.perf_counter() - t0) * 1000.0)
            res.migrations += dec.migrations
            if dec.mip_gap is not None:
                res.mip_gaps.append(dec.mip_gap)
            try_waiting()
        lost_service("decision")
        after = instance_layout(state)
        res.reconfigurations += reconfigurations(layout, after, set(layout), set(after))
        res.peak_gpus = max(res.peak_gpus, state.gpus_used())
    res.cost_usd, res.energy_kwh = meter.cost_usd, meter.energy_kwh
    res.jain_fairness, res.fair_share_min = meter.jain(), meter.fair_share_min()
    res.slo_miss_jobs = len(missed)
    res.never_served_jobs = len(missed - served_ever)
    return res
