"""The kopf handlers: thin, they hand objects to the :class:`Controller`.

* InferenceJob create / update / resume: decide, return when the decision is written
  (a failure raises ``kopf.TemporaryError``, so kopf retries);
* InferenceJob delete (finalizer ``conspirator.io/release``): return once the job's
  instances and workers are released and its key is out of the agents' token Secret;
* before a job is decided its token Secret is made (:mod:`~conspirator.operator.datapath`),
  so its first status already names it (:meth:`Controller.job_changed` does both);
* GPUNode, ModelProfile and worker Deployment watch events: update the controller's
  view and ask for a pass;
* the global re-plan is not a kopf timer: kopf timers are per object and put a
  finalizer on it (a GPUNode could then not be deleted while the operator is down);
  it is a loop in :mod:`~conspirator.operator.runner` that acts only while this replica
  is the active peer;
* a liveness probe reports the planner's state.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from conspirator.api.v1alpha1 import GROUP, VERSION
from conspirator.operator.controller import Controller, PassError
from conspirator.operator.views import FINALIZER, LABEL_MANAGED_BY, MANAGED_BY

JOBS = "inferencejobs"
NODES = "gpunodes"
PROFILES = "modelprofiles"


def _meta(body: kopf.Body) -> tuple[str, str]:
    return str(body.metadata.namespace or ""), str(body.metadata.name or "")


def connection_info(cfg: Any, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """kopf's credentials from a loaded ``kubernetes.client.Configuration``."""
    header = cfg.get_api_key_with_prefix("BearerToken") or \
        cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = ((None, None) if not parts else (None, parts[0]) if len(parts) == 1
                     else (parts[0], parts[1]))
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        username=cfg.username or None, password=cfg.password or None,
        scheme=scheme, token=token, certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file, trust_env=settings.networking.trust_env)


def configure(settings: kopf.OperatorSettings, controller: Controller) -> None:
    """kopf settings the operator relies on."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="conspirator.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="conspirator.io", key="last-handled-configuration")
    # Our own Events say what happened; kopf's per-handler ones only for trouble.
    settings.posting.level = logging.WARNING
    settings.peering.lifetime = controller.settings.peering_lifetime
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 120
    settings.execution.max_workers = 4
    # Bounded per-object workers: a burst of arrivals waits in kopf's queues, not as a
    # thousand concurrent handler calls (each holding its object, diff and patch).
    settings.queueing.worker_limit = controller.settings.max_handlers
    settings.queueing.idle_timeout = 1.0


async def on_job_changed(controller: Controller, body: kopf.Body) -> None:
    """InferenceJob create / update / resume."""
    ns, _name = _meta(body)
    if not controller.in_scope(ns):
        return
    try:
        await controller.job_changed(body)
    except PassError as e:
        raise kopf.TemporaryError(str(e), delay=e.delay) from e


async def on_job_deleted(controller: Controller, body: kopf.Body, retry: int) -> None:
    """InferenceJob deletion (the finalizer)."""
    ns, _name = _meta(body)
    if not controller.in_scope(ns):
        return
    try:
        await controller.job_deleted(body, retry)
    except PassError as e:
        raise kopf.TemporaryError(str(e), delay=e.delay) from e


def on_watch_event(controller: Controller, kind: str, event: kopf.RawEvent,
                   body: kopf.Body) -> None:
    """Any watch event: the cache learns of it, then a pass soon."""
    ns, name = _meta(body)
    cache = controller.cache
    gone = event["type"] == "DELETED"
    if kind == JOBS:
        if gone:
            controller.job_gone(ns, name)
        return
    if kind == NODES:
        cache.forget_node(name) if gone else cache.observe_node(body)
    elif kind == PROFILES:
        cache.forget_profile(name) if gone else cache.observe_profile(body)
    else:
        cache.forget_worker(ns, name) if gone else cache.observe_worker(body)
    controller.nudge()


def build_registry(controller: Controller, kube_config: Any) -> kopf.OperatorRegistry:
    """A kopf registry with every handler bound to ``controller``; kopf logs in with
    ``kube_config`` (the operator's own ``kubernetes.client.Configuration``)."""
    reg = kopf.OperatorRegistry()

    @kopf.on.login(registry=reg)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same credentials as the operator's own client (--kubeconfig or in-cluster).
        return connection_info(kube_config, settings)

    @kopf.on.startup(registry=reg)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, controller)

    @kopf.on.create(GROUP, VERSION, JOBS, registry=reg, id="place")
    @kopf.on.update(GROUP, VERSION, JOBS, registry=reg, id="place")
    @kopf.on.resume(GROUP, VERSION, JOBS, registry=reg, id="place")
    async def job_changed(body: kopf.Body, **_: Any) -> None:
        await on_job_changed(controller, body)

    @kopf.on.delete(GROUP, VERSION, JOBS, registry=reg, id="release")
    async def job_deleted(body: kopf.Body, retry: int = 0, **_: Any) -> None:
        await on_job_deleted(controller, body, retry)

    @kopf.on.event(GROUP, VERSION, JOBS, registry=reg)
    async def job_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        on_watch_event(controller, JOBS, event, body)

    @kopf.on.event(GROUP, VERSION, NODES, registry=reg)
    async def node_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        on_watch_event(controller, NODES, event, body)

    @kopf.on.event(GROUP, VERSION, PROFILES, registry=reg)
    async def profile_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        on_watch_event(controller, PROFILES, event, body)

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY},
                   registry=reg)
    async def worker_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        on_watch_event(controller, "deployments", event, body)

    @kopf.on.probe(registry=reg, id="planner")
    async def planner_probe(**_: Any) -> dict[str, Any]:
        return controller.health()

    return reg
