"""The writer: a decision's changes to the API server, in the order the docs promise.

1. the statuses whose reservation changed (a reservation is durable before anything
   depends on it);
2. the GPUNode specs (layouts) of the nodes concerned;
3. the worker Deployments, only for jobs whose nodes report their instances;
4. the other statuses (phase, conditions);
5. Events, in the background (nothing waits for them).

Every write's answer is fed back to the :class:`~conspirator.operator.cache.ObservationCache`
so that the next pass sees what was written.  A failed write raises (after the other
writes of the same step finished); the controller then resyncs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from datetime import datetime
from typing import Any

from conspirator.api.v1alpha1 import InferenceJobStatus, JobPhase
from conspirator.operator import manifests
from conspirator.operator.cache import ObservationCache, Work
from conspirator.operator.kubeapi import ConflictError, KubeAPI, NotFoundError
from conspirator.operator.metrics import Metrics
from conspirator.operator.planner import Changes, Plan
from conspirator.operator.status import Outcome, render, same_status
from conspirator.operator.translate import (
    desired_spec,
    layout_applied,
    layout_diff,
    replica_ids,
    spec_key,
)
from conspirator.operator.views import (
    ANNOTATION_NODE,
    ANNOTATION_TEMPLATE_HASH,
    JobView,
    Replica,
    WorkerView,
)

LEAVING_COST = -1_000_000
"""``pod-deletion-cost`` of a pod whose instance was released (the default cost is 0)."""


class Writer:
    """See the module docstring."""

    def __init__(self, kube: KubeAPI, cache: ObservationCache, metrics: Metrics) -> None:
        self.kube = kube
        self.cache = cache
        self.metrics = metrics
        self.errors: dict[str, str] = {}
        """Job key -> why its status could not be written in the last pass."""
        self._posting: set[asyncio.Task[None]] = set()
        self.claim_templates: set[str] = set()
        """``namespace/name`` of the ResourceClaimTemplates known to exist."""

    async def write(self, work: Work, plan: Plan, ch: Changes, now: datetime) -> None:
        """The steps of the module docstring, in order."""
        self.errors = {}
        jobs = work.jobs
        live = work.live
        on_node = plan.jobs_on_node()
        # Which pods hold the instances that jobs give up, while the nodes still say
        # which device each instance is (the layouts below change that).
        leaving = self._leaving_pods(ch)

        # 1. Reservations first: a layout or a worker never exists for an unrecorded one.
        await self._statuses([k for k in sorted(ch.reserved) if k in live], work, plan, now)

        # 2. Layouts.
        nodes = set(work.nodes_dirty) | ch.old_nodes | {
            r.node for reps in ch.reserved.values() for r in reps}
        if ch.rebuilt:
            nodes |= set(work.nodes)
        await gather(self._layout(name, work, plan, on_node, ch, now) for name in sorted(nodes))

        # 3. Workers, for jobs whose nodes show their instances.
        check = set(ch.reserved) | work.status_dirty | work.spec_dirty | ch.render
        for name in work.nodes_dirty:
            check |= on_node.get(name, set())
        if ch.rebuilt:
            check |= set(jobs)
        await self._leave(leaving, plan)
        await self._workers(sorted(check), jobs, plan, ch)

        # 4. Statuses that changed (phase, conditions).
        await self._statuses(sorted(k for k in check if k in live), work, plan, now)

        # 5. Events.
        self.post([manifests.job_event(jobs[k], reason, message, warning, now)
                   for k, reason, message, warning in ch.events if k in jobs])
        self._gauges()

    # --- 1 and 4: statuses ----------------------------------------------------------------

    async def _statuses(self, keys: list[str], work: Work, plan: Plan, now: datetime) -> None:
        snap = self.cache.snap
        index = worker_index(snap.workers.values())

        async def one(k: str) -> None:
            view = snap.jobs.get(k)
            if view is None or view.deleting:
                return
            new = render(view, self.outcome(k, work, plan, index), snap.nodes, now)
            if same_status(view.job.status, new):
                return
            patch: dict[str, Any] = new.to_k8s()
            old = view.job.status.to_k8s() if view.job.status else {}
            for field_name in old:
                patch.setdefault(field_name, None)
            try:
                body = await self.kube.patch_job_status(view.namespace, view.name, patch)
            except NotFoundError:
                self.cache.forget_job(view.namespace, view.name)
                return
            except Exception as e:
                self.metrics.api_errors.labels("InferenceJob").inc()
                self.errors[k] = f"status of {k} not written: {e}"
                raise
            self.cache.observe_job(body)

        await gather(one(k) for k in keys)

    def outcome(self, k: str, work: Work, plan: Plan,
                index: Mapping[str, list[WorkerView]]) -> Outcome:
        """What the status of job ``k`` renders from."""
        snap = self.cache.snap
        reps = plan.reserved.get(k, [])
        view = work.jobs.get(k) or snap.jobs[k]
        applied = {node: layout_applied(snap.nodes.get(node), [r for r in reps if r.node == node])
                   for node in {r.node for r in reps}}
        workers: dict[tuple[str, str], tuple[int, int]] = {}
        for w in index.get(view.uid, []):
            if not w.deleting and w.worker_set == plan.worker_set(k):
                workers[(w.node, w.profile)] = (min(w.ready_replicas, w.replicas), w.replicas)
        source = plan.table.sources.get(view.job.spec.model.name, "") if plan.table else ""
        return Outcome(replicas=reps, reason=plan.reasons.get(k), failure=plan.failures.get(k),
                       applied=applied, workers=workers, source=source,
                       token_secret=self.cache.token_secrets.get(k),
                       observed=self.cache.loads.get(k),
                       autoscaling=self.cache.autoscaling.get(k),
                       retiring=plan.retiring.get(k, ()), worker_set=plan.worker_set(k),
                       retiring_set=plan.retiring_set(k))

    # --- 2: layouts -----------------------------------------------------------------------

    async def _layout(self, name: str, work: Work, plan: Plan, on_node: Mapping[str, set[str]],
                      ch: Changes, now: datetime) -> None:
        node = self.cache.snap.nodes.get(name)
        if node is None:
            return
        mine = sorted(on_node.get(name, ()))
        want = desired_spec(node, {k: plan.holding(k) for k in mine})
        self.cache.written_spec[name] = spec_key(want)
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
        self.cache.observe_node(body)
        self.metrics.mig_reconfigurations.inc(changed_gpus)
        diff = layout_diff(node, want)
        if not diff:
            return
        text = "; ".join(c.describe() for c in diff)
        self.post([manifests.event(
            None, kind="GPUNode", name=name, namespace="",
            uid=str((body.get("metadata") or {}).get("uid", "")),
            reason="Repartitioning", message=f"new MIG layout: {text}", now=now)])
        live = work.live
        for k in mine:
            if k in ch.reserved and k in live:
                reps = [r for r in plan.reserved[k] if r.node == name]
                if not layout_applied(self.cache.snap.nodes.get(name), reps):
                    ch.events.append((k, "Repartitioning", (
                        f"waiting for {name} to repartition: {text}"), False))

    # --- 3: workers -----------------------------------------------------------------------

    async def _workers(self, keys: list[str], jobs: Mapping[str, JobView], plan: Plan,
                       ch: Changes) -> None:
        snap = self.cache.snap
        by_uid = worker_index(snap.workers.values())
        tasks: list[Awaitable[None]] = []
        for k in keys:
            view = jobs.get(k) or snap.jobs.get(k)
            if view is None:
                continue
            # A Deployment being deleted (background propagation: gone in a moment) is
            # no Deployment to update: one of the same name is created anew.
            existing = {(w.node, w.profile, w.worker_set): w
                        for w in by_uid.get(view.uid, []) if not w.deleting}
            reps = plan.holding(k)  # retiring replicas keep their workers until they go
            live_set, old_set = plan.worker_set(k), plan.retiring_set(k)
            groups = manifests.worker_groups(
                plan.reserved.get(k, []), live_set, plan.retiring.get(k, []),
                old_set) if not view.deleting else {}
            for g, w in existing.items():
                if g not in groups and not w.deleting:
                    tasks.append(self._delete_worker(w))
            for (node, profile, wset), count in groups.items():
                mine = [r for r in reps if r.node == node]
                if not layout_applied(snap.nodes.get(node), mine):
                    continue
                old = existing.get((node, profile, wset))
                if wset != live_set:
                    # The old revision's workers of a rollout: their template stays (they
                    # serve until the new ones run); only their number follows the plan.
                    if old is not None and not old.deleting and old.replicas != count:
                        tasks.append(self._scale_worker(view, old, count))
                    continue
                group = [r for r in plan.reserved.get(k, []) + plan.retiring.get(k, [])
                         if r.node == node and r.profile == profile]
                nv = snap.nodes.get(node)
                dra = nv is not None and nv.dra
                # The workers' weight is set when their Deployment is made: a new estimate
                # (a learned profile, a re-plan) must not roll running workers, whose
                # weights stay in proportion (one profile per Deployment).
                weight = (old.throughput if old is not None and old.throughput is not None
                          else sum(r.throughput_rps for r in group) / max(1, len(group)))
                body = manifests.deployment(view, node, profile, count, throughput=weight,
                                            dra=dra, worker_set=wset)
                claims = manifests.claim_template(view, node, profile) if dra else None
                tasks.append(self._put_worker(view, body, old, ch, claims))
            # Deployments of an older job of the same name (its uid differs).
            for n, p, wset in groups:
                old = snap.workers.get(
                    f"{view.namespace}/{manifests.worker_name(view.name, n, p, wset)}")
                if old is not None and old.job_uid != view.uid and not old.deleting:
                    tasks.append(self._delete_worker(old))
        await gather(tasks)

    def _leaving_pods(self, ch: Changes) -> list[tuple[str, Replica, str]]:
        """(job key, released replica, its pod) for the pods the agents named."""
        out = []
        for k, reps in sorted(ch.leaving.items()):
            pods = self.cache.replica_pods.get(k, {})
            for r in reps:
                ids = replica_ids(r, self.cache.snap.nodes.get(r.node))
                pod = next((pods[i] for i in sorted(ids) if i in pods), None)
                if pod:
                    out.append((k, r, pod))
        return out

    async def _leave(self, leaving: list[tuple[str, Replica, str]], plan: Plan) -> None:
        """The pod of a released instance goes, not another one: marked cheapest where its
        Deployment shrinks (the ReplicaSet controller then removes it), deleted where the
        Deployment keeps its size (a move within one node and profile); nothing where the
        whole Deployment goes."""
        snap = self.cache.snap
        by_uid = worker_index(snap.workers.values())
        calls: list[Awaitable[None]] = []
        for k, r, pod in leaving:
            view = snap.jobs.get(k)
            if view is None:
                continue
            ns, _, name = pod.partition("/")
            # The pod's Deployment: the job's one of that node and profile or, during a
            # rollout (one in each worker set), the one whose name its pods' names begin
            # with (<deployment>-<hash>-<suffix>).
            candidates = [w for w in by_uid.get(view.uid, [])
                          if (w.node, w.profile) == (r.node, r.profile) and not w.deleting]
            if len(candidates) > 1:
                candidates = [w for w in candidates if name.startswith(w.name + "-")]
            current = max(candidates, key=lambda w: len(w.name), default=None)
            if current is None:
                continue
            want = manifests.worker_groups(
                plan.reserved.get(k, []), plan.worker_set(k), plan.retiring.get(k, []),
                plan.retiring_set(k)).get((r.node, r.profile, current.worker_set), 0)
            if want == 0:
                continue
            if want < current.replicas:
                calls.append(self.kube.set_pod_deletion_cost(ns, name, LEAVING_COST))
            else:
                calls.append(self.kube.delete_pod(ns, name))
        try:
            await gather(calls)
        except Exception:
            self.metrics.api_errors.labels("Pod").inc()
            raise

    async def _scale_worker(self, view: JobView, w: WorkerView, count: int) -> None:
        await self._write_worker(view, self.kube.scale_deployment(w.namespace, w.name, count,
                                                                  w.resource_version))

    async def _write_worker(self, view: JobView,
                            call: Awaitable[dict[str, Any] | None]) -> None:
        """One Deployment write: its answer goes to the cache; a conflict or a missing
        Deployment is looked at again next pass; anything else counts and raises."""
        try:
            got = await call
        except (ConflictError, NotFoundError):
            self.cache.status_dirty.add(view.key)  # look again next pass
            return
        except Exception:
            self.metrics.api_errors.labels("Deployment").inc()
            raise
        if got is not None:
            self.cache.observe_worker(got)

    async def _delete_worker(self, w: WorkerView) -> None:
        try:
            await self.kube.delete_deployment(w.namespace, w.name, w.uid or None)
        except ConflictError:
            return
        self.cache.mark_worker_deleting(w)

    async def _put_worker(self, view: JobView, body: dict[str, Any], existing: WorkerView | None,
                          ch: Changes, claims: dict[str, Any] | None = None) -> None:
        want_hash = body["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH]
        if existing is not None and existing.template_hash == want_hash:
            return
        await self._write_worker(view, self._create_or_update(view, body, existing, ch,
                                                              claims, want_hash))

    async def _create_or_update(self, view: JobView, body: dict[str, Any],
                                existing: WorkerView | None, ch: Changes,
                                claims: dict[str, Any] | None, want_hash: str
                                ) -> dict[str, Any] | None:
        """The Deployment created or updated (None: the name is an older job's, deleted
        when seen)."""
        if claims is not None:
            await self._put_claim_template(claims)
        if existing is not None:
            return await self.kube.update_deployment(body, existing.resource_version)
        try:
            got = await self.kube.create_deployment(body)
        except ConflictError:
            got = await self.kube.read_deployment(body["metadata"]["namespace"],
                                                  body["metadata"]["name"])
            current = WorkerView.from_body(got)
            if current.job_uid != view.uid:
                return None
            if current.template_hash != want_hash:
                got = await self.kube.update_deployment(body, current.resource_version)
            return got
        ch.events.append((view.key, "WorkersCreated", (
            f"Deployment {body['metadata']['name']}: {body['spec']['replicas']} "
            f"worker(s) on {body['metadata']['annotations'][ANNOTATION_NODE]}"), False))
        return got

    async def _put_claim_template(self, body: dict[str, Any]) -> None:
        """DRA mode: the workers' ResourceClaimTemplate, before the Deployment that names it
        (created once: its spec is the same for the job's life, and immutable)."""
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if key in self.claim_templates:
            return
        try:
            await self.kube.create_claim_template(body)
        except ConflictError:
            pass  # already there (a restart, another pass)
        except Exception:
            self.metrics.api_errors.labels("ResourceClaimTemplate").inc()
            raise
        self.claim_templates.add(key)

    # --- 5: events and gauges -------------------------------------------------------------

    def post(self, events: list[dict[str, Any]]) -> None:
        """Post Events in the background: the pass (and the handlers) need not wait."""
        if not events:
            return
        task = asyncio.create_task(gather(self.kube.post_event(e) for e in events))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    def _gauges(self) -> None:
        snap = self.cache.snap
        phases: dict[str, int] = {p.value: 0 for p in JobPhase}
        for v in snap.jobs.values():
            st: InferenceJobStatus | None = v.job.status
            if st is not None and st.phase is not None:
                phases[st.phase.value] += 1
        for p, n in phases.items():
            self.metrics.jobs.labels(p).set(n)
        self.metrics.workers.set(sum(1 for w in snap.workers.values() if not w.deleting))


def worker_index(workers: Iterable[WorkerView]) -> dict[str, list[WorkerView]]:
    """Job uid -> its worker Deployments."""
    by_uid: dict[str, list[WorkerView]] = {}
    for w in workers:
        by_uid.setdefault(w.job_uid, []).append(w)
    return by_uid


async def gather(aws: Iterable[Awaitable[None]]) -> None:
    """Await all; re-raise the first failure once every call has finished."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
