"""The operator's controller: one planner, fed by the kopf handlers, acting through the API.

How it works
------------
* **Observation.**  kopf handlers hand every InferenceJob, GPUNode, ModelProfile and
  worker Deployment they see to ``observe_*``/``forget_*``, which update an in-memory
  :class:`~conspirator.operator.views.Snapshot` and mark what changed as *dirty*.
  Handlers never touch the plan.
* **Passes.**  All decisions happen in *passes*, one at a time (an ``asyncio.Lock``):
  concurrent requests coalesce into one pass, so a burst of arrivals is handled in a
  few passes, each placing every waiting job.  A pass

  1. (re)builds the engine's state when needed: GPUs from the GPUNode inventories,
     then the reservations, in arrival order, through
     :func:`~conspirator.operator.translate.restore`, which refuses any replica that
     would double-book a slice;
  2. releases deleted jobs, re-validates changed ones, places waiting jobs one by one
     (the policy's greedy path: one arrival at a time), or, for the periodic global
     re-plan, runs :func:`~conspirator.operator.replan.replan` (MILP and greedy);
  3. writes, in this order: the statuses whose reservation changed (the reservation is
     durable before anything depends on it), the GPUNode specs, the worker
     Deployments of the nodes whose GPUNode status shows the instances, the other
     statuses, then Events.
* **The store is the API server.**  Reservations live in ``InferenceJob.status.replicas``.
  The first pass after a start (and every re-plan) lists everything and rebuilds the
  plan from them, so a restarted operator converges to the plan it had.  A failed
  write aborts the pass and forces such a resync.  Deployment names are deterministic,
  so nothing is created twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from conspirator.api.v1alpha1 import InferenceJobStatus, JobPhase
from conspirator.operator import manifests
from conspirator.operator.kube import ConflictError, Kube, NotFoundError
from conspirator.operator.metrics import Metrics
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.replan import ReplanResult, replan
from conspirator.operator.settings import Settings
from conspirator.operator.status import Outcome, render, same_status
from conspirator.operator.translate import (
    Cluster,
    TableInfo,
    block_in_use,
    build_cluster,
    build_table,
    desired_spec,
    engine_job,
    layout_applied,
    layout_diff,
    place,
    restore,
    spec_key,
    unknown_model_message,
)
from conspirator.operator.views import (
    ANNOTATION_NODE,
    ANNOTATION_TEMPLATE_HASH,
    JobView,
    NodeView,
    ProfileView,
    Replica,
    Snapshot,
    WorkerView,
    job_key,
    newer,
)

log = logging.getLogger("conspirator.operator")

JobEvent = tuple[str, str, str, bool]
"""(job key, reason, message, warning)."""


class PassError(RuntimeError):
    """A pass could not complete; handlers waiting on it retry."""


@dataclass(slots=True)
class Work:
    """What one pass looks at: a frozen copy of the snapshot and the dirty sets."""

    jobs: dict[str, JobView]
    nodes: dict[str, NodeView]
    profiles: dict[str, ProfileView]
    workers: dict[str, WorkerView]
    spec_dirty: set[str]
    status_dirty: set[str]
    nodes_dirty: set[str]
    rebuild: bool
    capacity: bool
    replan: bool = False


@dataclass(slots=True)
class Changes:
    """What the decision step changed (computed off the event loop)."""

    reserved: dict[str, list[Replica]] = field(default_factory=dict)
    """Job key -> new reservation (empty list: released), for jobs whose replicas change."""
    old_nodes: set[str] = field(default_factory=set)
    events: list[JobEvent] = field(default_factory=list)
    replan: ReplanResult | None = None
    render: set[str] = field(default_factory=set)
    """Jobs whose status must be re-rendered."""


class Controller:
    """See the module docstring."""

    def __init__(self, settings: Settings, kube: Kube, metrics: Metrics | None = None,
                 policy: PlacementPolicy | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics or Metrics()
        self.policy: PlacementPolicy = policy or ConspiratorPolicy(
            time_limit_s=settings.milp_time_limit)
        self.snap = Snapshot()
        self.plan: dict[str, list[Replica]] = {}
        self.reasons: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.cluster: Cluster | None = None
        self._recorded: dict[str, list[Any]] | None = None
        self._table: TableInfo | None = None
        self._table_key: tuple[tuple[str, str], ...] | None = None
        self._synced = False
        self._spec_dirty: set[str] = set()
        self._status_dirty: set[str] = set()
        self._nodes_dirty: set[str] = set()
        self._rebuild = True
        self._capacity = True
        self._lock = asyncio.Lock()
        self._requested = 0
        self._completed = 0
        self._last_error: str | None = None
        self._errors: dict[str, str] = {}
        self._bg: asyncio.Task[None] | None = None
        self._pass_started: float | None = None
        self._last_pass = 0.0
        self._last_replan = time.monotonic()
        self._by_node: dict[str, set[str]] = {}
        self._uid_key: dict[str, str] = {}
        self._last_unplaced: dict[str, str] = {}
        self._written_spec: dict[str, list[Any]] = {}
        self._replay: list[tuple[str, Any]] | None = None
        self._posting: set[asyncio.Task[None]] = set()
        self._scope = set(settings.namespaces)
        self.token_secrets: dict[str, str] = {}
        """Job key -> name of its token Secret, once the data path made or found it."""

    # --- observation (event loop; never touches the plan) ----------------------------

    def in_scope(self, namespace: str) -> bool:
        return not self._scope or namespace in self._scope

    def _log(self, kind: str, payload: Any) -> None:
        """Remember what arrives while a sync lists everything, to replay it after."""
        if self._replay is not None:
            self._replay.append((kind, payload))

    def observe_job(self, body: Mapping[str, Any]) -> str | None:
        self._log("job", body)
        try:
            view = JobView.from_body(body)
        except ValidationError as e:
            meta = body.get("metadata") or {}
            log.warning("InferenceJob %s/%s not understood: %s", meta.get("namespace"),
                        meta.get("name"), e)
            return None
        if not self.in_scope(view.namespace):
            return None
        old = self.snap.jobs.get(view.key)
        if old is not None and old.uid == view.uid and \
                not newer(view.resource_version, old.resource_version):
            return view.key
        self.snap.jobs[view.key] = view
        self._uid_key[view.uid] = view.key
        if old is None or old.uid != view.uid or old.generation != view.generation \
                or old.deleting != view.deleting:
            self._spec_dirty.add(view.key)
        return view.key

    def forget_job(self, namespace: str, name: str) -> None:
        self._log("-job", (namespace, name))
        key = job_key(namespace, name)
        view = self.snap.jobs.pop(key, None)
        if view is not None:
            self._uid_key.pop(view.uid, None)
        self.token_secrets.pop(key, None)
        self._spec_dirty.add(key)

    def observe_node(self, body: Mapping[str, Any]) -> None:
        self._log("node", body)
        try:
            view = NodeView.from_body(body)
        except ValidationError as e:
            log.warning("GPUNode %s not understood: %s", (body.get("metadata") or {}).get("name"),
                        e)
            return
        old = self.snap.nodes.get(view.name)
        if old is not None and not newer(view.resource_version, old.resource_version):
            return
        self.snap.nodes[view.name] = view
        if old is None or old.dpu != view.dpu:
            # Where clients connect and DataPathReady follow the node's agent.
            self._status_dirty |= self._by_node.get(view.name, set())
        if old is None or old.inventory_key() != view.inventory_key():
            self._rebuild = True
            self._capacity = True
        if old is None or old.gpus != view.gpus or \
                self._written_spec.get(view.name) != spec_key(view.spec):
            self._nodes_dirty.add(view.name)

    def forget_node(self, name: str) -> None:
        self._log("-node", name)
        if self.snap.nodes.pop(name, None) is not None:
            self._rebuild = True
            self._capacity = True
            self._nodes_dirty.add(name)

    def observe_profile(self, body: Mapping[str, Any]) -> None:
        self._log("profile", body)
        try:
            view = ProfileView.from_body(body)
        except ValidationError as e:
            log.warning("ModelProfile %s not understood: %s",
                        (body.get("metadata") or {}).get("name"), e)
            return
        self.snap.profiles[view.name] = view

    def forget_profile(self, name: str) -> None:
        self._log("-profile", name)
        self.snap.profiles.pop(name, None)

    def observe_worker(self, body: Mapping[str, Any]) -> None:
        self._log("worker", body)
        view = WorkerView.from_body(body)
        old = self.snap.workers.get(view.key)
        if old is not None and not newer(view.resource_version, old.resource_version):
            return
        self.snap.workers[view.key] = view
        key = self._uid_key.get(view.job_uid)
        if key is not None and (old is None or old.ready != view.ready):
            self._status_dirty.add(key)

    def forget_worker(self, namespace: str, name: str) -> None:
        self._log("-worker", (namespace, name))
        view = self.snap.workers.pop(f"{namespace}/{name}", None)
        if view is not None and view.job_uid in self._uid_key:
            self._status_dirty.add(self._uid_key[view.job_uid])

    # --- the data path's view (operator/datapath.py) ---------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced

    def live_jobs(self) -> dict[str, JobView] | None:
        """Jobs served and not being deleted, by key; None until everything was listed."""
        if not self._synced:
            return None
        return {k: v for k, v in self.snap.jobs.items() if not v.deleting}

    def token_changed(self, key: str, secret: str | None) -> None:
        """The job's token Secret exists (its name) or is gone (None): re-render its status."""
        if secret is None:
            if self.token_secrets.pop(key, None) is None:
                return
        elif self.token_secrets.get(key) == secret:
            return
        else:
            self.token_secrets[key] = secret
        if key in self.snap.jobs:
            self._status_dirty.add(key)
            self.nudge()

    def has_work(self) -> bool:
        return bool(self._spec_dirty or self._status_dirty or self._nodes_dirty
                    or self._rebuild or not self._synced or self._table_changed())

    # --- requests ---------------------------------------------------------------------

    async def job_changed(self, body: Mapping[str, Any]) -> None:
        """A job was created, changed or seen at start: decide, and return when done."""
        key = self.observe_job(body)
        if key is not None:
            self._spec_dirty.add(key)
            await self.reconcile(key)

    async def job_deleted(self, body: Mapping[str, Any]) -> None:
        """A job is being deleted: return once its instances and workers are released."""
        key = self.observe_job(body)
        if key is None:
            return
        self._spec_dirty.add(key)
        await self.reconcile(key)
        if key in self.plan:
            raise PassError(f"{key}: reservation not released yet")

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
        """The global re-plan: resync, re-plan the movable jobs, write what changed."""
        self._last_replan = time.monotonic()
        async with self._lock:
            await self._pass(replan=True)

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
                    raise
                finally:
                    self._completed = target
        if self._last_error is not None:
            raise PassError(self._last_error)
        if key is not None and key in self._errors:
            raise PassError(self._errors[key])

    def health(self) -> dict[str, Any]:
        """For the liveness probe: raises if a pass has been stuck for ten minutes."""
        now = time.monotonic()
        if self._pass_started is not None and now - self._pass_started > 600:
            stuck = now - self._pass_started
            raise RuntimeError(f"a reconciliation pass has run for {stuck:.0f} s")
        return {
            "synced": self._synced,
            "jobs": len(self.snap.jobs),
            "placed": len(self.plan),
            "gpuNodes": len(self.snap.nodes),
            "secondsSinceLastPass": round(now - self._last_pass, 1) if self._last_pass else None,
        }

    # --- a pass -----------------------------------------------------------------------

    def _table_changed(self) -> bool:
        return self._table_key != self._profiles_key(self.snap.profiles)

    def _profiles_key(self, profiles: Mapping[str, ProfileView]) -> tuple[tuple[str, str], ...]:
        return (*sorted((p.name, p.resource_version) for p in profiles.values()),
                ("~defaults", str(self.settings.default_profiles)))

    def _take(self, replan: bool) -> Work:
        table_changed = self._table_changed()
        work = Work(
            jobs=dict(self.snap.jobs), nodes=dict(self.snap.nodes),
            profiles=dict(self.snap.profiles), workers=dict(self.snap.workers),
            spec_dirty=self._spec_dirty, status_dirty=self._status_dirty,
            nodes_dirty=self._nodes_dirty,
            rebuild=self._rebuild or table_changed or self.cluster is None,
            capacity=self._capacity or table_changed, replan=replan,
        )
        self._spec_dirty, self._status_dirty, self._nodes_dirty = set(), set(), set()
        self._rebuild = self._capacity = False
        return work

    def _give_back(self, work: Work) -> None:
        self._spec_dirty |= work.spec_dirty
        self._status_dirty |= work.status_dirty
        self._nodes_dirty |= work.nodes_dirty
        self._rebuild = True
        self._capacity = True

    async def _sync(self) -> None:
        """List everything from the API server; the next decision rebuilds the plan."""
        self._replay = []
        try:
            jobs, nodes, profiles, workers = await asyncio.gather(
                self.kube.list_jobs(), self.kube.list_nodes(), self.kube.list_profiles(),
                self.kube.list_workers())
        finally:
            replay, self._replay = self._replay, None
        snap = Snapshot()
        self.snap = snap
        self._uid_key = {}
        for b in jobs:
            self.observe_job(b)
        for b in nodes:
            self.observe_node(b)
        for b in profiles:
            self.observe_profile(b)
        for b in workers:
            self.observe_worker(b)
        for kind, payload in replay:  # what watch events said while the lists were read
            if kind == "job":
                self.observe_job(payload)
            elif kind == "-job":
                self.forget_job(*payload)
            elif kind == "node":
                self.observe_node(payload)
            elif kind == "-node":
                self.forget_node(payload)
            elif kind == "profile":
                self.observe_profile(payload)
            elif kind == "-profile":
                self.forget_profile(payload)
            elif kind == "worker":
                self.observe_worker(payload)
            elif kind == "-worker":
                self.forget_worker(*payload)
        self._recorded = {k: list(v.replicas) for k, v in snap.jobs.items()}
        self.plan = {}
        self.cluster = None
        self._spec_dirty = set(snap.jobs)
        self._status_dirty = set()
        self._nodes_dirty = set(snap.nodes)
        self._rebuild = True
        self._capacity = True
        self._synced = True
        log.info("synced: %d InferenceJobs, %d GPUNodes, %d ModelProfiles, %d workers",
                 len(snap.jobs), len(snap.nodes), len(snap.profiles), len(snap.workers))

    async def _pass(self, replan: bool = False) -> None:
        t0 = time.monotonic()
        self._pass_started = t0
        if not self._synced or replan:
            await self._sync()
        work = self._take(replan)
        self._errors = {}
        try:
            changes = await asyncio.to_thread(self._decide, work)
            await self._act(work, changes)
        except Exception:
            self._give_back(work)
            self._synced = False
            self.metrics.api_errors.labels("pass").inc()
            raise
        finally:
            self._pass_started = None
        self._last_pass = time.monotonic()
        self.metrics.passes.inc()
        self.metrics.pass_duration.observe(self._last_pass - t0)

    # --- deciding (worker thread; the plan is only touched here, under the lock) -------

    def _table_for(self, work: Work) -> TableInfo:
        key = self._profiles_key(work.profiles)
        if self._table is None or key != self._table_key:
            self._table = build_table(work.profiles.values(),
                                      use_defaults=self.settings.default_profiles)
            self._table_key = key
            for c in self._table.conflicts:
                log.warning("%s", c)
        return self._table

    def _decide(self, work: Work) -> Changes:
        ch = Changes()
        info = self._table_for(work)
        table = info.table
        live = {k: v for k, v in work.jobs.items() if not v.deleting}
        ordered = sorted(live.values(), key=lambda v: v.order)
        before = {k: list(v) for k, v in self.plan.items()}

        if work.rebuild:
            recorded = self._recorded
            self._recorded = None
            fresh = build_cluster(work.nodes.values())
            for msg in fresh.skipped:
                log.warning("GPU left out of planning: %s", msg)
            entries = []
            for v in ordered:
                if recorded is not None:
                    statuses = recorded.get(v.key, [])
                else:
                    statuses = [r.to_status() for r in self.plan.get(v.key, [])]
                if statuses:
                    entries.append((engine_job(v), statuses))
            restored = restore(fresh, entries, table)
            blocked = block_in_use(fresh)
            if blocked:
                log.info("%d instance(s) in use outside any reservation are not planned over",
                         len(blocked))
                log.debug("in use outside reservations: %s", "; ".join(blocked))
            self.plan = restored.kept
            if recorded is not None:
                # Compare with what the statuses said (same slots: unchanged).
                before = {k: [] for k in recorded}
                for k, statuses in recorded.items():
                    if k in self.plan and sorted(_status_slot(x) for x in statuses) == \
                            sorted(_replica_slot(r) for r in self.plan[k]):
                        before[k] = list(self.plan[k])
            for k, whys in restored.dropped.items():
                ch.events.append((k, "ReplicasReleased",
                                  f"released {len(whys)} replica(s): {'; '.join(whys)}", True))
            for k, n in restored.trimmed.items():
                ch.events.append((k, "ReplicasReleased", (
                    f"released {n} replica(s) the demand no longer needs "
                    f"({self._profiles(self.plan.get(k, []))} kept)"), False))
            self.cluster = fresh
            ch.render |= set(live)
            work.capacity = True
        assert self.cluster is not None
        cluster: Cluster = self.cluster

        # Deleted jobs give their instances back.
        for k in list(self.plan):
            if k not in live:
                cluster.state.release(k)
                del self.plan[k]
                work.capacity = True
        for k in list(self.failures):
            if k not in live:
                self.failures.pop(k)
        for k in list(self.reasons):
            if k not in live:
                self.reasons.pop(k)

        # Changed jobs: keep what still fits their spec, give back the surplus.
        if not work.rebuild:
            for k in sorted(work.spec_dirty, key=lambda k: live[k].order if k in live else ()):
                if k not in live or k not in self.plan:
                    continue
                old = self.plan[k]
                cluster.state.release(k)
                job = engine_job(live[k])
                if not info.knows(job.model):
                    del self.plan[k]
                    work.capacity = True
                    continue
                res = restore(cluster, [(job, [r.to_status() for r in old])], table)
                self.plan[k] = res.kept.get(k, [])
                if not self.plan[k]:
                    del self.plan[k]
                if res.dropped.get(k):
                    ch.events.append((k, "ReplicasReleased",
                                      f"released {len(res.dropped[k])} replica(s): "
                                      f"{'; '.join(res.dropped[k])}", True))
                if self.plan.get(k) != old:
                    work.capacity = True

        # Waiting jobs, one at a time, in arrival order.
        candidates = [v for v in ordered
                      if (work.capacity or v.key in work.spec_dirty or v.key not in self.plan)
                      and not self._served(v)]
        for v in candidates:
            job = engine_job(v)
            if not info.knows(job.model):
                self.failures[v.key] = unknown_model_message(job.model, info)
                self.reasons.pop(v.key, None)
                if self._last_unplaced.get(v.key) != self.failures[v.key]:
                    ch.events.append((v.key, "UnknownModel", self.failures[v.key], True))
                    self._last_unplaced[v.key] = self.failures[v.key]
                self.metrics.placement_attempts.labels("arrival", "failed").inc()
                ch.render.add(v.key)
                continue
            self.failures.pop(v.key, None)
            if v.key not in work.spec_dirty and not work.capacity and v.key in self.reasons:
                continue
            placed = place(self.policy, cluster, job, table)
            self.metrics.placement_duration.labels("arrival").observe(placed.seconds)
            self.metrics.placement_attempts.labels(
                "arrival", "placed" if placed.ok else "unplaced").inc()
            if placed.replicas:
                self.plan[v.key] = placed.replicas
            if placed.ok:
                self.reasons.pop(v.key, None)
                self._last_unplaced.pop(v.key, None)
            else:
                reason = placed.reason or "not placed"
                self.reasons[v.key] = reason
                if self._last_unplaced.get(v.key) != reason:
                    ch.events.append((v.key, "Unplaceable", f"cannot be placed: {reason}", True))
                    self._last_unplaced[v.key] = reason
            ch.render.add(v.key)

        # The periodic global re-plan.
        if work.replan:
            movable = {v.key: v.job.spec.migration.disruption_budget or 1
                       for v in ordered if v.job.spec.migration.allowed}
            pending = [engine_job(v) for v in ordered
                       if not self._served(v) and v.key not in self.failures]
            result = replan(cluster, movable, pending, self.policy, table,
                            self.settings.max_migrations)
            ch.replan = result
            self.metrics.placement_duration.labels("replan").observe(result.seconds)
            self.metrics.replans.labels("accepted" if result.accepted else "kept").inc()
            log.info("global re-plan (%.2f s): %s", result.seconds, result.note)
            if result.accepted:
                for k, reps in result.changed.items():
                    if reps:
                        self.plan[k] = reps
                        self.reasons.pop(k, None)
                    else:
                        self.plan.pop(k, None)
                self.metrics.migrations.inc(result.migrations)
                for k, n in result.moved.items():
                    ch.events.append((k, "Migrating", self._move_text(before.get(k, []),
                                      self.plan.get(k, []), n, result), False))
                # Rebuild the engine state from the new reservations.
                fresh = build_cluster(work.nodes.values())
                restore(fresh, [(engine_job(live[k]), [r.to_status() for r in self.plan[k]])
                                  for k in sorted(self.plan, key=lambda k: live[k].order)],
                        table)
                block_in_use(fresh)
                self.cluster = cluster = fresh

        moved = ch.replan.moved if ch.replan is not None and ch.replan.accepted else {}
        for k in set(before) | set(self.plan):
            if before.get(k, []) != self.plan.get(k, []):
                ch.reserved[k] = list(self.plan.get(k, []))
                ch.old_nodes |= {r.node for r in before.get(k, [])}
                ch.render.add(k)
                if self.plan.get(k) and k in live and k not in moved:
                    reps = self.plan[k]
                    total = sum(r.throughput_rps for r in reps)
                    ch.events.append((k, "Placed", (
                        f"placed {len(reps)} replica(s) ({self._profiles(reps)}) on "
                        f"{', '.join(sorted({r.node for r in reps}))}: {total:.0f} of "
                        f"{live[k].job.spec.demand.requests_per_second:g} requests/s"), False))
        self._by_node = {}
        for k, reps in self.plan.items():
            for r in reps:
                self._by_node.setdefault(r.node, set()).add(k)
        self.metrics.gpus_in_use.set(cluster.gpus_in_use())
        self.metrics.gpus_total.set(len(cluster.state.gpus))
        self.metrics.pending_jobs.set(sum(1 for v in live.values() if not self._served(v)))
        return ch

    def _served(self, v: JobView) -> bool:
        reps = self.plan.get(v.key)
        return bool(reps) and demand_met(sum(r.throughput_rps for r in reps or []),
                                         v.job.spec.demand.requests_per_second)

    @staticmethod
    def _profiles(reps: Iterable[Replica]) -> str:
        counts: dict[str, int] = {}
        for r in reps:
            counts[r.profile] = counts.get(r.profile, 0) + 1
        return ",".join(f"{n}x{p}" for p, n in sorted(counts.items(),
                                                      key=lambda kv: (-kv[1], kv[0])))

    @staticmethod
    def _move_text(old: list[Replica], new: list[Replica], n: int, res: ReplanResult) -> str:
        gone = [r for r in old if r.slot not in {x.slot for x in new}]
        came = [r for r in new if r.slot not in {x.slot for x in old}]
        def fmt(rs: list[Replica]) -> str:
            return ", ".join(f"{r.profile}@{r.start} on {r.node}/GPU {r.gpu_index}"
                             for r in rs) or "-"
        return (f"global re-plan moves {n} replica(s): {fmt(gone)} -> {fmt(came)} "
                f"({res.note})")

    # --- acting (event loop) -----------------------------------------------------------

    async def _act(self, work: Work, ch: Changes) -> None:
        now = datetime.now(UTC)
        jobs = work.jobs
        live = {k: v for k, v in jobs.items() if not v.deleting}

        # 1. Reservations first: a layout or a worker never exists for an unrecorded one.
        first = [k for k in sorted(ch.reserved) if k in live]
        await self._write_statuses(first, work, now)

        # 2. Layouts.
        nodes = set(work.nodes_dirty) | ch.old_nodes | {
            r.node for reps in ch.reserved.values() for r in reps}
        if work.rebuild:
            nodes |= set(work.nodes)
        await _gather(self._write_layout(name, work, ch, now) for name in sorted(nodes))

        # 3. Workers, for jobs whose nodes show their instances.
        check = set(ch.reserved) | work.status_dirty | work.spec_dirty | ch.render
        for name in work.nodes_dirty:
            check |= self._by_node.get(name, set())
        if work.rebuild:
            check |= set(jobs)
        await self._ensure_workers(sorted(check), jobs, ch, now)

        # 4. Statuses that changed (phase, conditions).
        await self._write_statuses(sorted(k for k in check if k in live), work, now)

        # 5. Events.
        self._post([manifests.job_event(jobs[k], reason, message, warning, now)
                    for k, reason, message, warning in ch.events if k in jobs])
        self._update_gauges()

    async def _write_layout(self, name: str, work: Work, ch: Changes, now: datetime) -> None:
        live = work.jobs
        node = self.snap.nodes.get(name)
        if node is None:
            return
        reps = [r for k in self._by_node.get(name, ()) for r in self.plan[k]]
        want = desired_spec(node, reps)
        self._written_spec[name] = spec_key(want)
        if spec_key(want) == spec_key(node.spec):
            return
        old_sets = {g.index: {(i.profile, i.start) for i in g.instances}
                    for g in node.spec.gpus}
        changed_gpus = sum(1 for g in want.gpus
                           if {(i.profile, i.start) for i in g.instances}
                           != old_sets.get(g.index, set()))
        try:
            body = await self.kube.patch_node_spec(name, want.to_k8s())
        except NotFoundError:
            return
        except Exception:
            self.metrics.api_errors.labels("GPUNode").inc()
            raise
        self.observe_node(body)
        self.metrics.mig_reconfigurations.inc(changed_gpus)
        diff = layout_diff(node, want)
        if diff:
            text = "; ".join(c.describe() for c in diff)
            self._post([manifests.event(
                None, kind="GPUNode", name=name, namespace="", uid=str(
                    (body.get("metadata") or {}).get("uid", "")),
                reason="Repartitioning", message=f"new MIG layout: {text}", now=now)])
            for k in sorted(self._by_node.get(name, ())):
                if k in ch.reserved and k in live and not live[k].deleting:
                    mine = [r for r in self.plan[k] if r.node == name]
                    if not layout_applied(self.snap.nodes.get(name), mine):
                        ch.events.append((k, "Repartitioning", (
                            f"waiting for {name} to repartition: {text}"), False))

    def _post(self, events: list[dict[str, Any]]) -> None:
        """Post Events in the background: the pass (and the handlers) need not wait."""
        if not events:
            return
        task = asyncio.create_task(_gather(self.kube.post_event(e) for e in events))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def _write_statuses(self, keys: list[str], work: Work, now: datetime) -> None:
        index = self._worker_index()

        async def one(k: str) -> None:
            view = self.snap.jobs.get(k)
            if view is None or view.deleting:
                return
            new = render(view, self._outcome(k, work, index), self.snap.nodes, now)
            if same_status(view.job.status, new):
                return
            patch: dict[str, Any] = new.to_k8s()
            old = view.job.status.to_k8s() if view.job.status else {}
            for field_name in old:
                patch.setdefault(field_name, None)
            try:
                body = await self.kube.patch_job_status(view.namespace, view.name, patch)
            except NotFoundError:
                self.forget_job(view.namespace, view.name)
                return
            except Exception as e:
                self.metrics.api_errors.labels("InferenceJob").inc()
                self._errors[k] = f"status of {k} not written: {e}"
                raise
            self.observe_job(body)

        await _gather(one(k) for k in keys)

    def _worker_index(self) -> dict[str, list[WorkerView]]:
        by_uid: dict[str, list[WorkerView]] = {}
        for w in self.snap.workers.values():
            by_uid.setdefault(w.job_uid, []).append(w)
        return by_uid

    def _outcome(self, k: str, work: Work, index: Mapping[str, list[WorkerView]]) -> Outcome:
        reps = self.plan.get(k, [])
        view = work.jobs.get(k) or self.snap.jobs[k]
        applied: dict[str, bool] = {}
        for node in {r.node for r in reps}:
            applied[node] = layout_applied(self.snap.nodes.get(node),
                                           [r for r in reps if r.node == node])
        workers: dict[tuple[str, str], tuple[int, int]] = {}
        for w in index.get(view.uid, []):
            if not w.deleting:
                workers[(w.node, w.profile)] = (min(w.ready_replicas, w.replicas), w.replicas)
        source = ""
        if self._table is not None:
            source = self._table.sources.get(view.job.spec.model.name, "")
        return Outcome(replicas=reps, reason=self.reasons.get(k), failure=self.failures.get(k),
                       applied=applied, workers=workers, source=source,
                       token_secret=self.token_secrets.get(k))

    async def _ensure_workers(self, keys: list[str], jobs: Mapping[str, JobView], ch: Changes,
                              now: datetime) -> None:
        by_uid = self._worker_index()
        tasks: list[Awaitable[None]] = []
        for k in keys:
            view = jobs.get(k) or self.snap.jobs.get(k)
            if view is None:
                continue
            existing = {(w.node, w.profile): w for w in by_uid.get(view.uid, [])}
            groups = manifests.worker_groups(self.plan.get(k, [])) if not view.deleting else {}
            for (node, profile), w in existing.items():
                if (node, profile) not in groups and not w.deleting:
                    tasks.append(self._delete_worker(w))
            for (node, profile), count in groups.items():
                mine = [r for r in self.plan[k] if r.node == node]
                if not layout_applied(self.snap.nodes.get(node), mine):
                    continue
                group = [r for r in mine if r.profile == profile]
                body = manifests.deployment(
                    view, node, profile, count,
                    throughput=sum(r.throughput_rps for r in group) / max(1, len(group)))
                tasks.append(self._put_worker(view, body, existing.get((node, profile)), ch))
            # Deployments of an older job of the same name (its uid differs).
            for n, p in groups:
                old = self.snap.workers.get(
                    f"{view.namespace}/{manifests.worker_name(view.name, n, p)}")
                if old is not None and old.job_uid != view.uid and not old.deleting:
                    tasks.append(self._delete_worker(old))
        await _gather(tasks)

    async def _delete_worker(self, w: WorkerView) -> None:
        try:
            await self.kube.delete_deployment(w.namespace, w.name, w.uid or None)
        except ConflictError:
            return
        self.snap.workers[w.key] = dataclasses.replace(w, deleting=True)

    async def _put_worker(self, view: JobView, body: dict[str, Any], existing: WorkerView | None,
                          ch: Changes) -> None:
        want_hash = body["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH]
        if existing is not None and existing.template_hash == want_hash:
            return
        try:
            if existing is None:
                try:
                    got = await self.kube.create_deployment(body)
                    ch.events.append((view.key, "WorkersCreated", (
                        f"Deployment {body['metadata']['name']}: {body['spec']['replicas']} "
                        f"worker(s) on {body['metadata']['annotations'][ANNOTATION_NODE]}"
                    ), False))
                except ConflictError:
                    got = await self.kube.read_deployment(body["metadata"]["namespace"],
                                                          body["metadata"]["name"])
                    current = WorkerView.from_body(got)
                    if current.job_uid != view.uid:
                        return  # an older job's; deleted when seen
                    if current.template_hash != want_hash:
                        got = await self.kube.update_deployment(body, current.resource_version)
            else:
                got = await self.kube.update_deployment(body, existing.resource_version)
        except (ConflictError, NotFoundError):
            self._status_dirty.add(view.key)  # look again next pass
            return
        except Exception:
            self.metrics.api_errors.labels("Deployment").inc()
            raise
        self.observe_worker(got)

    def _update_gauges(self) -> None:
        phases: dict[str, int] = {p.value: 0 for p in JobPhase}
        for v in self.snap.jobs.values():
            st: InferenceJobStatus | None = v.job.status
            if st is not None and st.phase is not None:
                phases[st.phase.value] += 1
        for p, n in phases.items():
            self.metrics.jobs.labels(p).set(n)
        self.metrics.workers.set(sum(1 for w in self.snap.workers.values() if not w.deleting))


def _status_slot(rs: Any) -> tuple[str, str, str, int]:
    return (rs.node, rs.gpu_uuid or "", rs.mig_profile, rs.start_slice or 0)


def _replica_slot(r: Replica) -> tuple[str, str, str, int]:
    return (r.node, r.gpu_uuid, r.profile, r.start)


async def _gather(aws: Iterable[Awaitable[None]]) -> None:
    """Await all; re-raise the first failure once every call has finished."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


Factory = Callable[[Settings], Controller]
