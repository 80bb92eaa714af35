"""The operator's controller: the loop that ties the cache, the planner and the writer.

How it works
------------
* **Observation** (:mod:`~conspirator.operator.cache`).  kopf handlers hand every
  InferenceJob, GPUNode, ModelProfile and worker Deployment they see to the cache, which
  marks what changed as *dirty*.  Handlers never touch the plan.
* **Passes.**  All decisions happen in *passes*, one at a time (an ``asyncio.Lock``):
  concurrent requests coalesce into one pass, so a burst of arrivals is handled in a
  few passes, each placing every waiting job.  A pass

  1. takes the dirty sets from the cache (after listing everything, at the first pass
     and at every re-plan);
  2. runs :func:`~conspirator.operator.planner.decide` off the event loop: it returns a
     new :class:`~conspirator.operator.planner.Plan`, what changed and what to count;
  3. swaps the new plan in and has the :mod:`~conspirator.operator.writer` write the
     changes, in this order: the statuses whose reservation changed (the reservation is
     durable before anything depends on it), the GPUNode specs, the worker Deployments
     of the nodes whose GPUNode status shows the instances, the other statuses, then
     Events.
* **The store is the API server.**  Reservations live in ``InferenceJob.status.replicas``.
  The first pass after a start (and every re-plan) lists everything and rebuilds the
  plan from them, so a restarted operator converges to the plan it had.  A failed
  write aborts the pass and forces such a resync.  Deployment names are deterministic,
  so nothing is created twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from conspirator.operator import replan_job
from conspirator.operator.agentload import AgentReport
from conspirator.operator.cache import ObservationCache
from conspirator.operator.datapath import TokenUnusableError
from conspirator.operator.kubeapi import KubeAPI
from conspirator.operator.loadcontrol import LoadControl, RoundResult
from conspirator.operator.metrics import Metrics
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.planner import Decision, Inputs, Plan, decide, profiles_key
from conspirator.operator.scrape import RoundStats
from conspirator.operator.settings import Settings
from conspirator.operator.views import JobView, Snapshot
from conspirator.operator.writer import Writer

log = logging.getLogger("conspirator.operator")

RETRY_DELAY = 2.0
"""Seconds before kopf retries a job whose pass failed."""
PENDING_DELAY = 10.0
"""Retry delay while a job's token Secret is unusable (an earlier job's, or no token)."""
TOKEN_DELETE_RETRIES = 3
"""A job being deleted waits at most this many retries for its key to leave the agents'
Secret (a stale key is harmless: the job has no replica left to reach, and the next write
drops it); then it goes anyway."""


class PassError(RuntimeError):
    """A pass could not complete (or a job is not done yet); the handler retries later."""

    def __init__(self, message: str, delay: float = RETRY_DELAY) -> None:
        super().__init__(message)
        self.delay = delay


class Tokens(Protocol):
    """What the controller needs of :class:`~conspirator.operator.datapath.DataPath`."""

    async def ensure(self, view: JobView, check: bool = False) -> str | None: ...
    def forget(self, key: str) -> None: ...
    def request(self) -> None: ...
    async def sync(self, force: bool = False) -> bool: ...


class Controller:
    """See the module docstring."""

    def __init__(self, settings: Settings, kube: KubeAPI, metrics: Metrics | None = None,
                 policy: PlacementPolicy | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics or Metrics()
        self.inputs = Inputs(
            policy=policy or ConspiratorPolicy(time_limit_s=settings.milp_time_limit),
            use_default_profiles=settings.default_profiles,
            max_migrations=settings.max_migrations)
        self.cache = ObservationCache(settings.namespaces)
        self.plan = Plan()
        self.writer = Writer(kube, self.cache, self.metrics)
        self.tokens: Tokens | None = None
        """The data path's token Secrets, when the operator runs with one."""
        self._synced = False
        self._lock = asyncio.Lock()
        self._requested = 0
        self._completed = 0
        self._last_error: str | None = None
        self._bg: asyncio.Task[None] | None = None
        self._pass_started: float | None = None
        self._last_pass = 0.0
        self._last_replan = time.monotonic()
        self._replan_known: frozenset[int] = frozenset()
        """Fingerprints of the pools the last re-plan kept (not solved again unchanged)."""
        self.load = LoadControl(self.cache, kube, self.metrics)
        """Observed load, autoscaling and learned profiles (fed by the agents' scrapes)."""

    # --- what handlers call -----------------------------------------------------------

    @property
    def snap(self) -> Snapshot:
        return self.cache.snap

    def in_scope(self, namespace: str) -> bool:
        return self.cache.in_scope(namespace)

    async def job_changed(self, body: Mapping[str, Any]) -> None:
        """A job was created, changed or seen at start: make its token Secret, decide, and
        return when the decision is written.

        Raises :class:`PassError` if the pass failed or the token Secret could not be
        made (the job is placed anyway; its status names the Secret once it exists).
        """
        key = self.cache.observe_job(body)
        if key is None:
            return
        token_error: Exception | None = None
        view = self.cache.snap.jobs.get(key)
        if self.tokens is not None and view is not None:
            # Seen first, so that the agents' Secret counts the job as live.
            try:
                await self.tokens.ensure(view)
            except Exception as e:  # placing the job need not wait for its token
                token_error = e
        self.cache.spec_dirty.add(key)
        await self.reconcile(key)
        if token_error is not None:
            pending = isinstance(token_error, TokenUnusableError)
            raise PassError(f"token Secret: {token_error}",
                            PENDING_DELAY if pending else RETRY_DELAY) from token_error

    async def job_deleted(self, body: Mapping[str, Any], retry: int = 0) -> None:
        """A job is being deleted: return once its instances and workers are released and
        (with a data path) its key is out of the agents' Secret."""
        key = self.cache.observe_job(body)
        if key is None:
            return
        self.cache.spec_dirty.add(key)
        await self.reconcile(key)
        if key in self.plan.reserved:
            raise PassError(f"{key}: reservation not released yet")
        if self.tokens is None:
            return
        self.tokens.forget(key)
        try:
            await self.tokens.sync()
        except Exception as e:
            if retry < TOKEN_DELETE_RETRIES:
                raise PassError(f"agent tokens Secret not updated: {e}") from e
            log.warning("%s released; its key stays in the agent tokens Secret until the "
                        "next write: %s", key, e)

    def job_gone(self, namespace: str, name: str) -> None:
        """The job's object is deleted (a watch event)."""
        self.cache.forget_job(namespace, name)
        self.nudge()
        if self.tokens is not None:
            self.tokens.forget(f"{namespace}/{name}")
            self.tokens.request()

    # --- the data path's view (operator/datapath.py JobSource) ------------------------

    @property
    def synced(self) -> bool:
        return self._synced

    def live_jobs(self) -> dict[str, JobView] | None:
        """Jobs served and not being deleted, by key; None until everything was listed."""
        if not self._synced:
            return None
        return {k: v for k, v in self.cache.snap.jobs.items() if not v.deleting}

    def token_changed(self, key: str, secret: str | None) -> None:
        """The job's token Secret exists (its name) or is gone (None): re-render its status."""
        if self.cache.token_changed(key, secret):
            self.nudge()

    # --- the agents' load (operator/scrape.py) ----------------------------------------

    async def observe_load(self, reports: list[AgentReport],
                           stats: RoundStats | None = None) -> RoundResult:
        """A round of agent reports: statuses, autoscaling, profiles; then a pass if needed."""
        if stats is not None:
            self.metrics.agent_scrapes.labels("ok").inc(stats.ok)
            self.metrics.agent_scrapes.labels("error").inc(stats.failed)
            self.metrics.agent_scrape_duration.observe(stats.seconds)
        if not self._synced:
            return RoundResult()
        table = self.plan.table.table if self.plan.table is not None else None
        res = await self.load.apply(reports, self.plan, table, time.monotonic(),
                                    datetime.now(UTC))
        if res.rendered or res.decisions or res.refinements or \
                self.cache.migrating & self.cache.status_dirty:
            self.nudge()
        return res

    # --- passes -------------------------------------------------------------------------

    def _table_changed(self) -> bool:
        return self.plan.table_key != profiles_key(self.cache.snap.profiles,
                                                   self.inputs.use_default_profiles)

    def has_work(self) -> bool:
        return self.cache.has_dirt() or not self._synced or self._table_changed()

    def nudge(self) -> None:
        """Ask for a pass soon, without waiting for it (watch events)."""
        if self._bg is None or self._bg.done():
            self._bg = asyncio.create_task(self._background(), name="conspirator-planner")

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            try:
                await self.reconcile()
            except Exception as e:
                log.warning("reconciliation pass failed, retrying: %s", e)
                await asyncio.sleep(2.0)
            if not self.has_work():
                return

    async def replan(self) -> None:
        """The global re-plan, off the planner's path: a snapshot under the lock, the
        re-plan in a worker thread while passes go on, then a pass that re-validates the
        result against what changed meanwhile and commits what still fits (a conflict
        drops it; one retry on a fresh snapshot).  No relist: the cache is the watches'."""
        self._last_replan = time.monotonic()
        for _ in range(2):
            async with self._lock:
                if not self._synced or self.plan.engine is None or self.plan.table is None:
                    await self._pass()
                job = self._replan_job()
            result = await asyncio.to_thread(
                replan_job.run, job, self.inputs.policy, self.inputs.max_migrations,
                deadline_s=self.settings.replan_deadline, known=self._replan_known)
            self._replan_known = frozenset(result.kept)
            log.info("global re-plan (%.2f s, off the planner's path): %s", result.seconds,
                     result.note)
            async with self._lock:
                conflict = await self._pass(proposal=replan_job.Proposal(job.base, result))
            if not conflict:
                return
            self.metrics.replans.labels("conflict").inc()

    def _replan_job(self) -> replan_job.ReplanJob:
        plan, snap = self.plan, self.cache.snap
        assert plan.engine is not None and plan.table is not None
        ordered = sorted((v for v in snap.jobs.values() if not v.deleting),
                         key=lambda v: v.order)
        return replan_job.snapshot(plan.engine, plan.table.table, ordered,
                                   snap.nodes.values(), plan.reserved, plan.retiring,
                                   {v.key: plan.served(v) for v in ordered}, plan.failures,
                                   plan.rolling)

    async def reconcile(self, key: str | None = None) -> None:
        """Run a pass unless one that started after this call already completed."""
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._completed < ticket:
                target = self._requested
                try:
                    await self._pass()
                    self._last_error = None
                except Exception as e:
                    self._last_error = f"{type(e).__name__}: {e}"
                    raise PassError(self._last_error) from e
                finally:
                    self._completed = target
        if self._last_error is not None:
            raise PassError(self._last_error)
        if key is not None and key in self.writer.errors:
            raise PassError(self.writer.errors[key])

    def health(self) -> dict[str, Any]:
        """For the liveness probe: raises if a pass has been stuck for ten minutes."""
        now = time.monotonic()
        if self._pass_started is not None and now - self._pass_started > 600:
            stuck = now - self._pass_started
            raise RuntimeError(f"a reconciliation pass has run for {stuck:.0f} s")
        return {
            "synced": self._synced,
            "jobs": len(self.cache.snap.jobs),
            "placed": len(self.plan.reserved),
            "gpuNodes": len(self.cache.snap.nodes),
            "secondsSinceLastPass": round(now - self._last_pass, 1) if self._last_pass else None,
        }

    async def _sync(self) -> None:
        """List everything from the API server; the next decision rebuilds the plan."""
        with self.cache.recording() as replay:
            jobs, nodes, profiles, workers = await asyncio.gather(
                self.kube.list_jobs(), self.kube.list_nodes(), self.kube.list_profiles(),
                self.kube.list_workers())
        self.cache.load(jobs, nodes, profiles, workers, replay)
        snap = self.cache.snap
        self.plan = Plan.from_statuses(snap.jobs)
        self._synced = True
        log.info("synced: %d InferenceJobs, %d GPUNodes, %d ModelProfiles, %d workers",
                 len(snap.jobs), len(snap.nodes), len(snap.profiles), len(snap.workers))

    async def _pass(self, proposal: replan_job.Proposal | None = None) -> str:
        """One pass (with ``proposal``: commit that re-plan); returns why the proposal was
        dropped ('' if it was not)."""
        t0 = time.monotonic()
        self._pass_started = t0
        if not self._synced:
            await self._sync()
        work = self.cache.take(rebuild=self.plan.engine is None)
        try:
            decision = await asyncio.to_thread(decide, work, self.plan, self.inputs, proposal)
            self.plan = decision.plan
            self.cache.jobs_on_node = self.plan.jobs_on_node()
            self.cache.migrating = set(self.plan.retiring)
            self._count(decision)
            await self.writer.write(work, self.plan, decision.changes, datetime.now(UTC))
        except Exception:
            self.cache.give_back(work)
            self._synced = False
            self.metrics.api_errors.labels("pass").inc()
            raise
        finally:
            self._pass_started = None
        self._last_pass = time.monotonic()
        self.metrics.passes.inc()
        self.metrics.pass_duration.observe(self._last_pass - t0)
        return decision.changes.conflict

    def _count(self, decision: Decision) -> None:
        m, t = self.metrics, decision.tally
        for (kind, result), n in t.attempts.items():
            m.placement_attempts.labels(kind, result).inc(n)
        for kind, seconds in t.durations:
            m.placement_duration.labels(kind).observe(seconds)
        for outcome, n in t.replans.items():
            m.replans.labels(outcome).inc(n)
        if t.migrations:
            m.migrations.inc(t.migrations)
        m.gpus_in_use.set(t.gpus_in_use)
        m.gpus_total.set(t.gpus_total)
        m.pending_jobs.set(t.pending)
