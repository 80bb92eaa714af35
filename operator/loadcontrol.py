"""Closing the loop with the DPU agents: observed load -> status, autoscaling, profiles.

The scraper (:mod:`~conspirator.operator.scrape`) hands every round of agent reports to
:meth:`LoadControl.apply`, which, like the watch handlers, only feeds the cache:

1. each job's aggregated load becomes ``status.observed`` (written when it changed enough,
   :func:`~conspirator.operator.agentload.worth_writing`);
2. ``Auto`` jobs go through the autoscaler (:mod:`~conspirator.operator.autoscale`); a
   change sets the rate the job is planned for (``ObservationCache.set_planned``), posts a
   ``ScaledOut``/``ScaledIn`` Event with the figures and counts it; the next pass re-places
   the job (scale-out through the engine's incremental path, which may re-slice free GPUs;
   scale-in through the revalidation phase, which gives back what is no longer needed);
3. replicas whose window says something about their capacity (the job saturated, or the
   replica serving more than its entry) are throughput samples of the entry the plan used
   for them (:mod:`~conspirator.operator.refine`); an entry whose median moved is
   written to its ModelProfile's ``status.observed``, which re-plans with it.

Then it asks for a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from conspirator.api.v1alpha1 import WHOLE, AutoscalingStatus, ObservedEntry, ScalingMode
from conspirator.mig import gpu_model
from conspirator.operator import manifests
from conspirator.operator.agentload import AgentReport, aggregate, to_status, worth_writing
from conspirator.operator.autoscale import JobLoad, ScaleDecision, ScalerState, decide
from conspirator.operator.cache import ObservationCache
from conspirator.operator.kubeapi import KubeAPI
from conspirator.operator.metrics import Metrics
from conspirator.operator.placement.throughput import ThroughputTable
from conspirator.operator.refine import EntryKey, Refinement, Refiner, is_sample
from conspirator.operator.translate import engine_job, replica_ids
from conspirator.operator.views import JobView, ProfileView, Replica

log = logging.getLogger("conspirator.operator")


class PlanLike(Protocol):
    """What load control reads of the planner's :class:`~conspirator.operator.planner.Plan`."""

    @property
    def reserved(self) -> dict[str, list[Replica]]: ...

    def served(self, view: JobView) -> bool: ...


def entry_key(view: JobView, r: Replica, table: ThroughputTable) -> EntryKey | None:
    """The table entry the plan used for replica ``r`` of job ``view``."""
    try:
        gm = gpu_model(r.gpu_model)
        prof = gm.whole if r.profile == WHOLE else gm.profile(r.profile)
        opt = table.best(engine_job(view), gm, prof)
    except KeyError:
        return None
    if opt is None:
        return None
    return (view.job.spec.model.name, r.gpu_model, r.profile, opt.batch)


@dataclass(slots=True)
class RoundResult:
    """What one round changed (for tests and logs)."""

    rendered: list[str] = field(default_factory=list)
    decisions: dict[str, ScaleDecision] = field(default_factory=dict)
    refinements: list[Refinement] = field(default_factory=list)


class LoadControl:
    """See the module docstring."""

    def __init__(self, cache: ObservationCache, kube: KubeAPI, metrics: Metrics) -> None:
        self.cache = cache
        self.kube = kube
        self.metrics = metrics
        self.scalers: dict[str, ScalerState] = {}
        self.refiner = Refiner()
        self.profile_ids: dict[str, tuple[str, int]] = {}
        """Model -> (uid, generation) of the ModelProfile its samples were taken against:
        a recreated or re-measured profile starts learning afresh."""
        self.saturated_since: dict[str, float] = {}
        """Job key -> when its current run of saturated rounds began (monotonic s)."""
        self.posted: list[dict[str, Any]] = []
        """Events posted (kept for tests; bounded)."""

    async def apply(self, reports: Iterable[AgentReport], plan: PlanLike,
                    table: ThroughputTable | None, now_s: float, now: datetime) -> RoundResult:
        """One round of reports; ``now_s`` is monotonic seconds, ``now`` the wall time."""
        reports = list(reports)
        out = RoundResult()
        snap = self.cache.snap
        loads = aggregate(reports)
        events: list[dict[str, Any]] = []
        for key in [k for k in self.scalers if k not in snap.jobs]:
            del self.scalers[key]
        pods: dict[str, dict[str, str]] = {}
        for report in reports:
            for s in report.replicas:
                if s.pod:
                    pods.setdefault(s.job, {})[s.replica] = s.pod
        for key in loads:
            self.cache.replica_pods[key] = pods.get(key, {})
        for key, load in sorted(loads.items()):
            view = snap.jobs.get(key)
            if view is None or view.deleting:
                continue
            obs = to_status(load, now)
            render = worth_writing(self.cache.loads.get(key) or (
                view.job.status.observed if view.job.status else None), obs)
            self.cache.observe_load(key, obs, render)
            self.cache.observe_registered(key, load.replicas, now_s)
            if render:
                out.rendered.append(key)
            self._gauges(view, load)
            decision = self._scale(view, load, plan, now_s, now)
            if decision is not None:
                out.decisions[key] = decision
                events.append(manifests.job_event(view, decision.reason, decision.message,
                                                  False, now))
        if table is not None:
            self._sample(reports, loads, plan, table, now_s)
            out.refinements = await self._refine(now)
        if events:
            self.posted = (self.posted + events)[-100:]
            for e in events:
                await self.kube.post_event(e)
        return out

    # --- 2: autoscaling -------------------------------------------------------------------

    def _scale(self, view: JobView, load: JobLoad, plan: PlanLike, now_s: float,
               now: datetime) -> ScaleDecision | None:
        key = view.key
        scaling = view.job.spec.scaling
        if scaling.mode is not ScalingMode.AUTO:
            self.scalers.pop(key, None)
            return None
        state = self.scalers.get(key)
        if state is None:
            state = self.scalers[key] = ScalerState.start(view.demand_rps, now_s)
        d = decide(scaling, view.job.spec.demand.p99_latency_ms, load, state, now_s,
                   realised=plan.served(view))
        self.metrics.scaling_recommended.labels(view.namespace, view.name).set(
            state.history[-1][1])
        if d is None:
            return None
        status = AutoscalingStatus(plannedRPS=d.planned_rps, recommendedRPS=round(
            d.recommended_rps, 2), last_scale_time=now, reason=d.message[:1024])
        if not self.cache.set_planned(key, d.planned_rps, status):
            return None
        self.metrics.scaling_decisions.labels(d.direction).inc()
        self.metrics.scaling_planned.labels(view.namespace, view.name).set(d.planned_rps)
        log.info("%s: %s", key, d.message)
        return d

    def _gauges(self, view: JobView, load: JobLoad) -> None:
        m = self.metrics
        m.observed_rps.labels(view.namespace, view.name).set(load.offered_rps)
        if load.p99_ms is not None:
            m.observed_p99.labels(view.namespace, view.name).set(load.p99_ms / 1000.0)

    # --- 3: learned profiles --------------------------------------------------------------

    def _sample(self, reports: list[AgentReport], loads: Mapping[str, JobLoad],
                plan: PlanLike, table: ThroughputTable, now_s: float) -> None:
        snap = self.cache.snap
        # A window's throughput is the capacity only if the job was saturated all through
        # it: since the first of the consecutive saturated rounds, a window ago or more.
        for key, jl in loads.items():
            if jl.saturated:
                self.saturated_since.setdefault(key, now_s)
            else:
                self.saturated_since.pop(key, None)
        for key in [k for k in self.saturated_since if k not in loads]:
            del self.saturated_since[key]
        self._forget_stale(snap.profiles.values())
        in_force = {k: thr for k, (thr, _) in _in_force(snap.profiles.values()).items()}
        index: dict[tuple[str, str], Replica] = {}
        for key, reps in plan.reserved.items():
            for r in reps:
                for rid in replica_ids(r, snap.nodes.get(r.node)):
                    index[(key, rid)] = r
        for report in reports:
            for s in report.replicas:
                load = report.jobs.get(s.job)
                view = snap.jobs.get(s.job)
                rep = index.get((s.job, s.replica))
                if load is None or view is None or rep is None:
                    continue
                ek = entry_key(view, rep, table)
                since = self.saturated_since.get(s.job)
                full = since is not None and now_s - since >= load.window_s
                if ek is not None and is_sample(s.throughput_rps, in_force.get(ek), full):
                    self.refiner.add(ek, s.throughput_rps, capacity=full)

    def _forget_stale(self, profiles: Iterable[ProfileView]) -> None:
        """Drop the samples of models whose ModelProfile was recreated or whose spec changed
        (a new measurement), or that lost their ModelProfile."""
        current = {m: (pv.profile.metadata.uid or "", pv.profile.metadata.generation or 0)
                   for m, pv in _profiles_by_model(profiles).items()}
        stale = {m for m, ident in self.profile_ids.items() if current.get(m) != ident}
        if stale:
            self.refiner.forget([k for k in self.refiner.samples if k[0] in stale])
        self.profile_ids = current

    async def _refine(self, now: datetime) -> list[Refinement]:
        by_model = _profiles_by_model(self.cache.snap.profiles.values())
        refs = self.refiner.refinements(_in_force(by_model.values()), now)
        written: list[Refinement] = []
        for model in sorted({r.key[0] for r in refs}):
            pv = by_model[model]
            mine = [r for r in refs if r.key[0] == model]
            entries = {o.key: o for o in (pv.profile.status.observed if pv.profile.status
                                          else [])}
            for r in mine:
                _, gpu, prof, batch = r.key
                entries[(gpu, prof, batch)] = ObservedEntry.model_validate({
                    "gpuModel": gpu, "migProfile": prof, "batchSize": batch,
                    "throughput": r.throughput, "p99LatencyMs": r.p99_latency_ms,
                    "samples": r.samples, "lastUpdated": now})
            body = [e.to_k8s() for _, e in sorted(entries.items())]
            try:
                new = await self.kube.patch_profile_status(pv.name, {"observed": body})
            except Exception as e:
                self.metrics.api_errors.labels("ModelProfile").inc()
                log.warning("ModelProfile %s: refined throughput not written: %s", pv.name, e)
                continue
            self.cache.observe_profile(new)
            for r in mine:
                log.info("ModelProfile %s: %s %s batch %d refined %g -> %g req/s (%d samples)",
                         pv.name, r.key[1], r.key[2], r.key[3], r.previous, r.throughput,
                         r.samples)
                self.metrics.profile_refinements.inc()
            written.extend(mine)
        return written


def _in_force(profiles: Iterable[ProfileView]) -> dict[EntryKey, tuple[float, float]]:
    """Entry -> (throughput, p99 ms) the table plans with (observed over spec)."""
    out: dict[EntryKey, tuple[float, float]] = {}
    for model, pv in _profiles_by_model(profiles).items():
        for e in pv.profile.spec.entries:
            out[(model, *e.key)] = (e.throughput, e.p99_latency_ms)
        if pv.profile.status is not None:
            for o in pv.profile.status.observed:
                out[(model, *o.key)] = (o.throughput, o.p99_latency_ms)
    return out


def _profiles_by_model(profiles: Iterable[ProfileView]) -> dict[str, ProfileView]:
    """Model -> the ModelProfile planned from (the first by name, as ``build_table``)."""
    out: dict[str, ProfileView] = {}
    for pv in sorted(profiles, key=lambda p: p.name):
        out.setdefault(pv.model, pv)
    return out


__all__ = ["LoadControl", "RoundResult", "entry_key", "replica_ids"]
