"""The MIG track under time-varying demand (``--demand-pattern diurnal|bursty``).

Event-driven like ``mig.py``, with one more kind of event: a *step* at every
multiple of the demand step, where the controller (``autoscale.py``) sees, for each
running job, the rate it offered over the step just ended, and acts.  Arrivals tell
the controller the job's rate at that moment (and its lifetime peak, which only
``static-peak`` uses); departures release the job; every ``replan_every_s`` the
controller's global re-plan runs with the migration budget.

Between two events nothing changes, and every step boundary is an event, so each
interval has one offered rate per job.  A job is served *partially*: an interval
counts as met for a job when the SLO-feasible throughput of its replicas (the
throughput table's, summed) covers its offered rate; SLO attainment is the met share
of all job-time.  GPU-hours integrate the GPUs holding at least one replica.
Reconfigurations are counted around every decision (``mig.reconfigurations``).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping, Sequence

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.simulator.autoscale import DemandController
from conspirator.operator.simulator.demand import DemandTrace
from conspirator.operator.simulator.mig import MigRunResult, reconfigurations
from conspirator.operator.simulator.mig_inputs import JobEvent, NodeSpec

DEPART, ARRIVE, STEP, REPLAN = 0, 1, 2, 3  # order at equal times


def run_demand(nodes: Sequence[NodeSpec], events: Sequence[JobEvent],
               controller: DemandController, traces: Mapping[str, DemandTrace], seed: int,
               step_s: float, replan_every_s: float = 3600.0,
               migration_budget: int | None = 8,
               progress: Callable[[int], None] | None = None,
               observer: Callable[[float, ClusterState], None] | None = None) -> MigRunResult:
    """Run ``events`` under ``traces`` with ``controller``.

    ``observer``, if given, is called after every decision with the time and the state
    (tests use it to check invariants).
    """
    state = ClusterState.from_nodes((n.name, n.model, n.gpus) for n in nodes)
    res = MigRunResult(controller.name, seed, len(events))
    by_id = {e.job.id: e for e in events}
    queue: list[tuple[float, int, int, str]] = []
    for k, e in enumerate(events):
        heapq.heappush(queue, (e.arrival_s, ARRIVE, k, e.job.id))
        heapq.heappush(queue, (e.arrival_s + e.duration_s, DEPART, k, e.job.id))
    horizon = max((e.arrival_s + e.duration_s for e in events), default=0.0)
    k = 1
    while k * step_s < horizon:
        heapq.heappush(queue, (k * step_s, STEP, k, ""))
        k += 1
    t = replan_every_s
    while t < horizon:
        heapq.heappush(queue, (t, REPLAN, -1, ""))
        t += replan_every_s
    active: dict[str, DemandTrace] = {}
    missed: set[str] = set()  # jobs short of their offered rate at some time
    met: set[str] = set()  # jobs fully served at some time
    now = 0.0
    while queue:
        at, kind, k, jid = heapq.heappop(queue)
        dt = at - now
        if dt > 0:
            res.gpu_hours += state.gpus_used() * dt / 3600.0
            for j, tr in active.items():
                res.job_seconds += dt
                if demand_met(state.served_rps(j), tr.rate_at(now)):
                    res.job_seconds_met += dt
                    met.add(j)
                else:
                    missed.add(j)
        now = at
        before = controller.layout(state)
        busy_before = {g.uid for g in state.gpus if g.instances}
        if kind == ARRIVE:
            ev, tr = by_id[jid], traces[jid]
            active[jid] = tr
            t0 = time.perf_counter()
            controller.arrive(state, ev.job, tr.rate_at(now), tr.peak_rps, now)
            res.decisions_ms.append((time.perf_counter() - t0) * 1000.0)
        elif kind == DEPART:
            active.pop(jid, None)
            controller.depart(state, jid)
            if progress:
                progress(1)
        elif kind == STEP:
            # What each running job offered over the step that just ended (k - 1).
            controller.step(state, now, {j: tr.rate_in_step(k - 1) for j, tr in active.items()})
        else:
            t0 = time.perf_counter()
            res.migrations += controller.replan(state, migration_budget)
            res.replans_ms.append((time.perf_counter() - t0) * 1000.0)
        busy_after = {g.uid for g in state.gpus if g.instances}
        res.reconfigurations += reconfigurations(before, controller.layout(state),
                                                 busy_before, busy_after)
        res.peak_gpus = max(res.peak_gpus, len(busy_after))
        if kind == STEP or (kind == ARRIVE and not res.series):
            offered = sum(tr.rate_at(now) for tr in active.values())
            provisioned = sum(state.served_rps(j) for j in active)
            res.series.append((now, offered, provisioned, len(busy_after)))
        if observer:
            observer(now, state)
    res.slo_miss_jobs = len(missed)
    res.never_served_jobs = len(missed - met)
    return res
