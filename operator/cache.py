"""The observation cache: what the operator last saw of every object, and what changed.

kopf handlers and the start-up listing feed it through ``observe_*``/``forget_*``; they
never touch the plan.  Each call updates the :class:`~conspirator.operator.views.Snapshot`
and marks what the next pass must look at:

* ``spec_dirty``: jobs that arrived, left, changed generation or started deleting;
* ``status_dirty``: jobs whose status may render differently (a worker became ready,
  their node's DPU agent changed, their token Secret appeared);
* ``nodes_dirty``: GPUNodes whose layout may need writing;
* ``rebuild``/``capacity``: the GPU inventory changed, so the engine's state is rebuilt
  and every waiting job is tried again.

A pass takes the dirty sets with :meth:`ObservationCache.take` (a :class:`Work` value) and
gives them back with :meth:`ObservationCache.give_back` if it fails.  While a resync lists
everything, the watch events that arrive are recorded as calls and replayed on top of the
listing (:meth:`ObservationCache.recording`, :meth:`ObservationCache.load`), so nothing a
watch said in between is lost.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from conspirator.api.v1alpha1 import AutoscalingStatus, ObservedLoad
from conspirator.operator.translate import SpecKey, spec_key
from conspirator.operator.views import (
    JobView,
    NodeView,
    ProfileView,
    Snapshot,
    WorkerView,
    job_key,
    newer,
)

log = logging.getLogger("conspirator.operator")


@dataclass(slots=True)
class Work:
    """What one pass looks at: a copy of the snapshot's maps and the dirty sets."""

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
    registered: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)
    """Job key -> (replicas the DPU agents count ready, monotonic time of that scrape)."""
    scraping: bool = False
    """Whether the operator scrapes the DPU agents (else ``registered`` stays empty)."""
    now_s: float = dataclasses.field(default_factory=time.monotonic)
    """When the pass took its work (monotonic seconds)."""

    @property
    def live(self) -> dict[str, JobView]:
        """Jobs not being deleted, by key."""
        return {k: v for k, v in self.jobs.items() if not v.deleting}


class ObservationCache:
    """See the module docstring."""

    def __init__(self, namespaces: Iterable[str] = ()) -> None:
        self.snap = Snapshot()
        self.spec_dirty: set[str] = set()
        self.status_dirty: set[str] = set()
        self.nodes_dirty: set[str] = set()
        self.rebuild = True
        self.capacity = True
        self.jobs_on_node: Mapping[str, set[str]] = {}
        """Node name -> keys of the jobs with a replica there (set after each decision)."""
        self.written_spec: dict[str, SpecKey] = {}
        """Node name -> :func:`~conspirator.operator.translate.spec_key` of the layout the
        writer last decided for it (a node whose spec differs is dirty)."""
        self.token_secrets: dict[str, str] = {}
        """Job key -> name of its token Secret, once the data path made or found it."""
        self.planned: dict[str, float] = {}
        """Job key -> the rate the autoscaler decided to plan for (``Auto`` jobs); it wins
        over the ``status.autoscaling`` of bodies that predate the decision."""
        self.loads: dict[str, ObservedLoad] = {}
        """Job key -> the load the DPU agents last reported (``status.observed``)."""
        self.autoscaling: dict[str, AutoscalingStatus] = {}
        """Job key -> the autoscaler's last decision (``status.autoscaling``)."""
        self.registered: dict[str, tuple[int, float]] = {}
        """Job key -> (replicas the DPU agents count ready, monotonic time of the scrape)."""
        self.scraping = False
        """Whether something scrapes the DPU agents and feeds ``registered``."""
        self.replica_pods: dict[str, dict[str, str]] = {}
        """Job key -> replica identity at the agents (device id, see ``report_of``) -> the
        worker pod (``namespace/name``) holding it, from the last scrape that saw the job."""
        self.migrating: set[str] = set()
        """Jobs with retiring replicas (set after each decision): a change of their count
        at the agents is worth a pass (the old replicas may go)."""
        self._uid_key: dict[str, str] = {}
        self._scope = set(namespaces)
        self._replay: list[Callable[[], object]] | None = None

    # --- jobs -------------------------------------------------------------------------

    def in_scope(self, namespace: str) -> bool:
        return not self._scope or namespace in self._scope

    def key_of_uid(self, uid: str) -> str | None:
        return self._uid_key.get(uid)

    def _record(self, call: Callable[[], object]) -> None:
        if self._replay is not None:
            self._replay.append(call)

    def observe_job(self, body: Mapping[str, Any]) -> str | None:
        """The job's key, or None if it is not understood or not served here."""
        self._record(functools.partial(self.observe_job, body))
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
        planned = self.planned.get(view.key)
        if planned is not None and view.planned_rps != planned and (old is None or
                                                                   old.uid == view.uid):
            view = dataclasses.replace(view, planned_rps=planned)
        self.snap.jobs[view.key] = view
        self._uid_key[view.uid] = view.key
        if old is None or old.uid != view.uid or old.generation != view.generation \
                or old.deleting != view.deleting:
            self.spec_dirty.add(view.key)
        return view.key

    def forget_job(self, namespace: str, name: str) -> None:
        self._record(functools.partial(self.forget_job, namespace, name))
        key = job_key(namespace, name)
        view = self.snap.jobs.pop(key, None)
        if view is not None:
            self._uid_key.pop(view.uid, None)
        self.token_secrets.pop(key, None)
        self.planned.pop(key, None)
        self.loads.pop(key, None)
        self.autoscaling.pop(key, None)
        self.registered.pop(key, None)
        self.replica_pods.pop(key, None)
        self.spec_dirty.add(key)

    def set_planned(self, key: str, rps: float, status: AutoscalingStatus) -> bool:
        """The autoscaler plans job ``key`` for ``rps`` now (the next pass re-places it)."""
        view = self.snap.jobs.get(key)
        if view is None or view.deleting:
            return False
        self.planned[key] = rps
        self.autoscaling[key] = status
        self.snap.jobs[key] = dataclasses.replace(view, planned_rps=rps)
        self.spec_dirty.add(key)
        return True

    def observe_load(self, key: str, load: ObservedLoad, render: bool) -> None:
        """The agents' latest figures for job ``key``; ``render``: worth a status write."""
        if key not in self.snap.jobs:
            return
        self.loads[key] = load
        if render:
            self.status_dirty.add(key)

    def observe_registered(self, key: str, replicas: int, now_s: float) -> None:
        """The DPU agents count ``replicas`` ready replicas of job ``key`` (a scrape at
        ``now_s``); a migrating job gets a pass."""
        if key not in self.snap.jobs:
            return
        self.registered[key] = (replicas, now_s)
        if key in self.migrating:  # rare, and the rule also counts the time waited
            self.status_dirty.add(key)

    def token_changed(self, key: str, secret: str | None) -> bool:
        """Record the job's token Secret (None: gone); whether its status must re-render."""
        if secret is None:
            if self.token_secrets.pop(key, None) is None:
                return False
        elif self.token_secrets.get(key) == secret:
            return False
        else:
            self.token_secrets[key] = secret
        if key not in self.snap.jobs:
            return False
        self.status_dirty.add(key)
        return True

    # --- GPU nodes, profiles, workers -------------------------------------------------

    def observe_node(self, body: Mapping[str, Any]) -> None:
        self._record(functools.partial(self.observe_node, body))
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
            self.status_dirty |= self.jobs_on_node.get(view.name, set())
        if old is None or old.inventory_key() != view.inventory_key():
            self.rebuild = True
            self.capacity = True
        if old is None or old.gpus != view.gpus or \
                self.written_spec.get(view.name) != spec_key(view.spec):
            self.nodes_dirty.add(view.name)

    def forget_node(self, name: str) -> None:
        self._record(functools.partial(self.forget_node, name))
        if self.snap.nodes.pop(name, None) is not None:
            self.rebuild = True
            self.capacity = True
            self.nodes_dirty.add(name)

    def observe_profile(self, body: Mapping[str, Any]) -> None:
        self._record(functools.partial(self.observe_profile, body))
        try:
            view = ProfileView.from_body(body)
        except ValidationError as e:
            log.warning("ModelProfile %s not understood: %s",
                        (body.get("metadata") or {}).get("name"), e)
            return
        self.snap.profiles[view.name] = view

    def forget_profile(self, name: str) -> None:
        self._record(functools.partial(self.forget_profile, name))
        self.snap.profiles.pop(name, None)

    def observe_worker(self, body: Mapping[str, Any]) -> None:
        self._record(functools.partial(self.observe_worker, body))
        view = WorkerView.from_body(body)
        old = self.snap.workers.get(view.key)
        if old is not None and not newer(view.resource_version, old.resource_version):
            return
        self.snap.workers[view.key] = view
        key = self._uid_key.get(view.job_uid)
        if key is not None and (old is None or old.ready != view.ready):
            self.status_dirty.add(key)

    def forget_worker(self, namespace: str, name: str) -> None:
        self._record(functools.partial(self.forget_worker, namespace, name))
        view = self.snap.workers.pop(f"{namespace}/{name}", None)
        if view is not None and view.job_uid in self._uid_key:
            self.status_dirty.add(self._uid_key[view.job_uid])

    def mark_worker_deleting(self, view: WorkerView) -> None:
        self.snap.workers[view.key] = dataclasses.replace(view, deleting=True)

    # --- passes -----------------------------------------------------------------------

    def has_dirt(self) -> bool:
        return bool(self.spec_dirty or self.status_dirty or self.nodes_dirty or self.rebuild)

    def take(self, *, replan: bool = False, rebuild: bool = False) -> Work:
        """The pass's work (``rebuild``: rebuild the engine state anyway); the dirty sets
        start empty again."""
        work = Work(
            jobs=dict(self.snap.jobs), nodes=dict(self.snap.nodes),
            profiles=dict(self.snap.profiles), workers=dict(self.snap.workers),
            spec_dirty=self.spec_dirty, status_dirty=self.status_dirty,
            nodes_dirty=self.nodes_dirty, rebuild=self.rebuild or rebuild,
            capacity=self.capacity, replan=replan, registered=dict(self.registered),
            scraping=self.scraping)
        self.spec_dirty, self.status_dirty, self.nodes_dirty = set(), set(), set()
        self.rebuild = self.capacity = False
        return work

    def give_back(self, work: Work) -> None:
        """A failed pass: its work is still to do, on a rebuilt engine state."""
        self.spec_dirty |= work.spec_dirty
        self.status_dirty |= work.status_dirty
        self.nodes_dirty |= work.nodes_dirty
        self.rebuild = True
        self.capacity = True

    @contextmanager
    def recording(self) -> Iterator[list[Callable[[], object]]]:
        """Record every observe/forget call made inside, for :meth:`load` to replay."""
        calls: list[Callable[[], object]] = []
        self._replay = calls
        try:
            yield calls
        finally:
            self._replay = None

    def load(self, jobs: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]],
             profiles: Iterable[Mapping[str, Any]], workers: Iterable[Mapping[str, Any]],
             replay: Iterable[Callable[[], object]] = ()) -> None:
        """Start over from a full listing, then replay the calls recorded while it was read.

        Every job counts as changed and every node as dirty; the engine state is rebuilt.
        """
        self.snap = Snapshot()
        self._uid_key = {}
        for b in jobs:
            self.observe_job(b)
        for b in nodes:
            self.observe_node(b)
        for b in profiles:
            self.observe_profile(b)
        for b in workers:
            self.observe_worker(b)
        for call in replay:  # what watch events said while the lists were read
            call()
        self.spec_dirty = set(self.snap.jobs)
        self.status_dirty = set()
        self.nodes_dirty = set(self.snap.nodes)
        self.rebuild = True
        self.capacity = True
