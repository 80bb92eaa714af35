"""The policies of the MIG track under time-varying demand (``--demand-pattern``).

Each is a *controller* driven by the simulator (``mig_demand.py``): it is told of
arrivals (with the job's rate at that moment), departures, and, at every demand step,
the rate each running job offered over the previous step (no controller sees the
future, except ``static-peak``, which is told each job's peak by design).  It changes
the :class:`ClusterState` only through the placement engine's API.

``conspirator``
    Autoscaling on top of the project's policy.  Recommendation per job and step:
    ``observed / target_utilization``; the capacity aimed at is the largest
    recommendation made within the last ``window_s`` seconds (the HPA's scale-down
    stabilization; scale-out is immediate).  Scale-out places the missing demand with
    the policy's incremental ``place`` (the greedy for a single job: the smallest
    slices that cover it, in holes of used GPUs first, free GPUs re-sliced as needed);
    if that does not fit, it tries the bare observed rate, then leaves the job short.
    Scale-in releases whole replicas while the rest still covers the aim: first those
    whose GPU they leave empty, then the largest.  The job's definition in the state
    carries the aim as its demand, so the periodic global ``replan`` (migration budget)
    re-plans every job at its current aim and consolidates.
``static-peak``
    Each job is placed at arrival, by the same policy, for its peak rate over its
    lifetime; nothing changes until it departs (no scaling, no re-plan).  A job that
    does not fit at arrival is retried at every step.
``hpa-replicas``
    Kubernetes' HPA on fixed MIG layouts: see :class:`HpaReplicas`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, deque
from collections.abc import Mapping
from typing import Protocol

from conspirator.operator.placement.cluster import ClusterState, GpuState
from conspirator.operator.placement.common import slot_cost
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.gpus import GpuModel, MigProfile
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.throughput import ThroughputTable
from conspirator.operator.simulator.mig import Layout, instance_layout

DEMAND_POLICIES = ("conspirator", "static-peak", "hpa-replicas")


class DemandController(Protocol):
    name: str

    def arrive(self, state: ClusterState, job: Job, rate_rps: float, peak_rps: float,
               now: float) -> None: ...

    def depart(self, state: ClusterState, job_id: str) -> None: ...

    def step(self, state: ClusterState, now: float, observed: Mapping[str, float]) -> None: ...

    def replan(self, state: ClusterState, budget: int | None) -> int: ...

    def layout(self, state: ClusterState) -> Layout: ...


class _Window:
    """The recommendations of one job within the stabilization window."""

    def __init__(self) -> None:
        self.recs: deque[tuple[float, float]] = deque()

    def add(self, now: float, rec: float, window_s: float) -> float:
        """Record ``rec`` at ``now``; the largest recommendation in ``[now - window_s, now]``."""
        self.recs.append((now, rec))
        while self.recs and self.recs[0][0] < now - window_s - 1e-9:
            self.recs.popleft()
        return max(r for _, r in self.recs)


class ConspiratorAutoscaler:
    name = "conspirator"

    def __init__(self, table: ThroughputTable, target: float = 0.8, window_s: float = 300.0,
                 policy: PlacementPolicy | None = None, resize: float = 0.25) -> None:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target utilization must be in (0, 1], got {target}")
        self.table = table
        self.target = target
        self.window_s = window_s
        self.policy = policy or ConspiratorPolicy()
        self.resize = resize  # try a smaller replica mix when capacity exceeds aim * (1 + it)
        self.jobs: dict[str, Job] = {}  # running jobs, demand = current aim
        self.windows: dict[str, _Window] = {}

    def arrive(self, state: ClusterState, job: Job, rate_rps: float, peak_rps: float,
               now: float) -> None:
        self.windows[job.id] = w = _Window()
        self._aim(state, job, w.add(now, rate_rps / self.target, self.window_s), rate_rps)

    def depart(self, state: ClusterState, job_id: str) -> None:
        state.release(job_id)
        self.jobs.pop(job_id, None)
        self.windows.pop(job_id, None)

    def step(self, state: ClusterState, now: float, observed: Mapping[str, float]) -> None:
        # Largest jobs first: they are the hardest to fit when capacity is short.
        for jid in sorted(observed, key=lambda j: -observed[j]):
            rate = observed[jid]
            aim = self.windows[jid].add(now, rate / self.target, self.window_s)
            self._aim(state, self.jobs[jid], aim, rate)

    def aim(self, job_id: str) -> float:
        return self.jobs[job_id].demand_rps

    def _aim(self, state: ClusterState, job: Job, aim: float, floor: float) -> None:
        job = dataclasses.replace(job, demand_rps=aim)
        self.jobs[job.id] = job
        served = state.served_rps(job.id)
        if not demand_met(served, aim):
            for want in (aim, floor):
                if not demand_met(served, want) and self._place(
                        state, dataclasses.replace(job, demand_rps=want)):
                    break
        else:
            self._shrink(state, job.id, aim)
            if self.resize and not demand_met(aim * (1.0 + self.resize), state.served_rps(job.id)):
                self._resize(state, job)
        if job.id in state.jobs:
            state.redefine(job)

    def _place(self, state: ClusterState, job: Job) -> bool:
        dec = self.policy.place(state, [job], self.table)
        return job.id not in dec.unplaced_ids()

    @staticmethod
    def _shrink(state: ClusterState, job_id: str, aim: float) -> None:
        served = state.served_rps(job_id)
        while True:
            # Only replicas the rest can do without; empties a GPU first, then the largest.
            spare = [(len(g.instances) == 1, i.throughput_rps, -g.uid, g, i)
                     for g, i in state.replicas(job_id)
                     if demand_met(served - i.throughput_rps, aim)]
            if not spare:
                return
            *_, g, i = max(spare, key=lambda c: c[:3])
            state.release_replica(job_id, g.uid, i.start)
            served -= i.throughput_rps

    def _resize(self, state: ClusterState, job: Job) -> None:
        """Swap the job's costliest replica for what ``place`` picks for the rest of its aim.

        Kept only when the job then takes a smaller share of GPUs without using more
        GPUs (the new replicas are started before the old one stops); otherwise undone.
        """
        reps = list(state.replicas(job.id))
        if not reps:
            return
        cost0, used0 = _share(state, job.id), state.gpus_used()
        g, old = max(reps, key=lambda r: (slot_cost(r[0].model, r[1].profile), r[0].uid))
        kept = {(h.uid, i.start) for h, i in reps} - {(g.uid, old.start)}
        state.release_replica(job.id, g.uid, old.start)
        if self._place(state, job):
            if state.gpus_used() <= used0 and _share(state, job.id) < cost0 - 1e-9:
                return
            for h, i in list(state.replicas(job.id)):
                if (h.uid, i.start) not in kept:
                    state.release_replica(job.id, h.uid, i.start)
        state.assign(job, g, old.profile, old.start, old.throughput_rps)

    def replan(self, state: ClusterState, budget: int | None) -> int:
        dec = self.policy.replan(state, list(self.jobs.values()), self.table, budget)
        return dec.migrations

    def layout(self, state: ClusterState) -> Layout:
        return instance_layout(state)


def _share(state: ClusterState, job_id: str) -> float:
    """The GPU share the job's replicas take (``slot_cost`` summed)."""
    return sum(slot_cost(g.model, i.profile) for g, i in state.replicas(job_id))


class StaticPeak:
    name = "static-peak"

    def __init__(self, table: ThroughputTable, policy: PlacementPolicy | None = None) -> None:
        self.table = table
        self.policy = policy or ConspiratorPolicy()
        self.waiting: dict[str, Job] = {}

    def arrive(self, state: ClusterState, job: Job, rate_rps: float, peak_rps: float,
               now: float) -> None:
        job = dataclasses.replace(job, demand_rps=peak_rps)
        if not self._place(state, job):
            self.waiting[job.id] = job

    def _place(self, state: ClusterState, job: Job) -> bool:
        return job.id not in self.policy.place(state, [job], self.table).unplaced_ids()

    def depart(self, state: ClusterState, job_id: str) -> None:
        state.release(job_id)
        self.waiting.pop(job_id, None)

    def step(self, state: ClusterState, now: float, observed: Mapping[str, float]) -> None:
        for jid, job in list(self.waiting.items()):
            if self._place(state, job):
                del self.waiting[jid]

    def replan(self, state: ClusterState, budget: int | None) -> int:
        return 0  # provisioned once, never changed

    def layout(self, state: ClusterState) -> Layout:
        return instance_layout(state)


def repeated_layout(model: GpuModel, profile: MigProfile) -> tuple[int, ...]:
    """Starts of the most copies of ``profile`` that fit together on one GPU, lowest first."""
    if not model.mig_capable:
        return (profile.starts[0] if profile.starts else 0,)
    mask, compute = 0, 0
    out: list[int] = []
    for s in profile.starts:
        m = profile.mask(s)
        if m & mask or compute + profile.compute_slices > model.compute or \
                len(out) >= profile.max_count:
            continue
        mask |= m
        compute += profile.compute_slices
        out.append(s)
    return tuple(out)


@dataclasses.dataclass(frozen=True, slots=True)
class _Fixed:
    job: Job
    model: str
    profile: MigProfile
    replica_rps: float


class HpaReplicas:
    """HPA-like replica scaling on fixed MIG layouts.

    At arrival the job's (GPU model, profile) is the one the project's ``place`` would
    give its first replica for ``rate / target`` on the current cluster (the most
    frequent profile among the replicas it chooses; ties: the fastest), and it never
    changes.  At every step ``desired = ceil(current * utilization / target)``, with
    ``utilization = observed / (current * replica throughput)``, i.e.
    ``ceil(observed / (replica throughput * target))``; scale-in uses the largest
    desired count within the stabilization window, scale-out is immediate.

    Layouts: a GPU is partitioned when a replica first needs it, into the most copies
    of that replica's profile that fit (``repeated_layout``), and only replicas of that
    (GPU model, profile) run there, any job's, under the usual tenant rules.  A GPU is
    re-partitioned only when no replica runs on it.  A new replica takes a free
    instance of a partitioned GPU (the fullest first), else an idle GPU already cut
    for its profile, else an idle GPU re-cut.  Scale-in removes replicas from the
    emptiest GPUs first.  No global re-plan (the HPA moves nothing).
    """

    name = "hpa-replicas"

    def __init__(self, table: ThroughputTable, target: float = 0.8, window_s: float = 300.0,
                 policy: PlacementPolicy | None = None) -> None:
        self.table = table
        self.target = target
        self.window_s = window_s
        self.policy = policy or ConspiratorPolicy()
        self.fixed: dict[str, _Fixed] = {}
        self.windows: dict[str, _Window] = {}
        self.partition: dict[int, tuple[MigProfile, tuple[int, ...]]] = {}
        self.recuts: list[tuple[int, int]] = []  # (GPU uid, replicas on it) per partitioning

    def arrive(self, state: ClusterState, job: Job, rate_rps: float, peak_rps: float,
               now: float) -> None:
        fixed = self._choose(state, dataclasses.replace(job, demand_rps=rate_rps / self.target))
        if fixed is None:
            return  # no GPU model can serve it at all
        self.fixed[job.id] = fixed
        self.windows[job.id] = w = _Window()
        self._scale(state, fixed, w.add(now, self._desired(fixed, rate_rps), self.window_s))

    def _choose(self, state: ClusterState, job: Job) -> _Fixed | None:
        for trial in (state.copy(), ClusterState((g.node, g.model) for g in state.gpus)):
            self.policy.place(trial, [job], self.table)
            reps = [(g.model.name, i.profile, i.throughput_rps)
                    for g, i in trial.replicas(job.id)]
            if reps:
                count = Counter((m, p.name) for m, p, _ in reps)
                m, p, thr = max(reps, key=lambda r: (count[(r[0], r[1].name)], r[2]))
                return _Fixed(job, m, p, thr)
        return None

    def _desired(self, fixed: _Fixed, observed: float) -> float:
        return float(max(1, math.ceil(observed / (fixed.replica_rps * self.target) - 1e-9)))

    def depart(self, state: ClusterState, job_id: str) -> None:
        state.release(job_id)
        self.fixed.pop(job_id, None)
        self.windows.pop(job_id, None)

    def step(self, state: ClusterState, now: float, observed: Mapping[str, float]) -> None:
        for jid in sorted(observed, key=lambda j: -observed[j]):
            fixed = self.fixed.get(jid)
            if fixed is not None:
                want = self.windows[jid].add(now, self._desired(fixed, observed[jid]),
                                             self.window_s)
                self._scale(state, fixed, want)

    def replicas(self, state: ClusterState, job_id: str) -> int:
        return sum(1 for _ in state.replicas(job_id))

    def _scale(self, state: ClusterState, fixed: _Fixed, want: float) -> None:
        jid = fixed.job.id
        n = self.replicas(state, jid)
        while n < want and self._add(state, fixed):
            n += 1
        while n > want:
            g, i = min(state.replicas(jid), key=lambda r: (len(r[0].instances), -r[0].uid))
            state.release_replica(jid, g.uid, i.start)
            n -= 1
        if jid in state.jobs:
            state.redefine(dataclasses.replace(fixed.job, demand_rps=n * fixed.replica_rps))

    def _add(self, state: ClusterState, fixed: _Fixed) -> bool:
        job, prof = fixed.job, fixed.profile
        best: tuple[tuple[int, int, int], GpuState, int] | None = None
        for g in state.gpus:
            if g.model.name != fixed.model:
                continue
            cut = self.partition.get(g.uid)
            if g.instances:
                if cut is None or cut[0].name != prof.name or \
                        not g.admits(job):
                    continue
                used = {i.start for i in g.instances}
                free = [s for s in cut[1] if s not in used]
                if free:
                    key = (0, len(free), g.uid)  # used GPUs, fullest first
                    if best is None or key < best[0]:
                        best = (key, g, free[-1])
                continue
            same = cut is not None and cut[0].name == prof.name
            key = (1 if same else 2, 0, g.uid)
            if best is None or key < best[0]:
                best = (key, g, -1)
        if best is None:
            return False
        _, g, start = best
        if start < 0:  # an idle GPU: (re-)partition it for this profile
            cut = self.partition.get(g.uid)
            if cut is None or cut[0].name != prof.name:
                self.recuts.append((g.uid, len(g.instances)))
                self.partition[g.uid] = (prof, repeated_layout(g.model, prof))
            start = self.partition[g.uid][1][-1]
        state.assign(job, g, prof, start, fixed.replica_rps)
        return True

    def replan(self, state: ClusterState, budget: int | None) -> int:
        return 0

    def layout(self, state: ClusterState) -> Layout:
        return {uid: Counter((p.name, s) for s in starts)
                for uid, (p, starts) in self.partition.items()}


def make_controller(name: str, table: ThroughputTable, target: float = 0.8,
                    window_s: float = 300.0, time_limit_s: float = 10.0) -> DemandController:
    """``time_limit_s``: the MILP's limit in the ``conspirator`` policy's batches and re-plans."""
    policy = ConspiratorPolicy(time_limit_s=time_limit_s)
    if name == "conspirator":
        return ConspiratorAutoscaler(table, target, window_s, policy)
    if name == "static-peak":
        return StaticPeak(table, policy)
    if name == "hpa-replicas":
        return HpaReplicas(table, target, window_s, policy)
    raise KeyError(f"unknown policy {name!r} under time-varying demand; known: "
                   f"{', '.join(DEMAND_POLICIES)}")
