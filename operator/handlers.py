"""The kopf handlers: thin, they hand objects to the :class:`Controller`.

* InferenceJob create / update / resume: decide, return when the decision is written
  (a failure raises ``kopf.TemporaryError``, so kopf retries);
* InferenceJob delete (finalizer ``conspirator.io/release``): return once the job's
  instances and workers are released and its key is out of the agents' token Secret;
* before a job is decided its token Secret is made (:mod:`~conspirator.operator.datapath`),
  so its first status already names it;
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
from conspirator.operator.datapath import DataPath, TokenUnusableError
from conspirator.operator.views import FINALIZER, LABEL_MANAGED_BY, MANAGED_BY

JOBS = "inferencejobs"
NODES = "gpunodes"
PROFILES = "modelprofiles"
RETRY_DELAY = 2.0
PENDING_DELAY = 10.0
"""Retry delay while a job's token Secret is unusable (an earlier job's, or no token)."""
TOKEN_DELETE_RETRIES = 3
"""A job being deleted waits at most this many retries for its key to leave the agents'
Secret (a stale key is harmless: the job has no replica left to reach, and the next write
drops it); then it goes anyway."""


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


def build_registry(controller: Controller, datapath: DataPath | None = None
                   ) -> kopf.OperatorRegistry:
    """A kopf registry with every handler bound to ``controller`` (and ``datapath``)."""
    reg = kopf.OperatorRegistry()

    @kopf.on.login(registry=reg)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same credentials as the operator's own client (--kubeconfig or in-cluster).
        return connection_info(controller.kube.api.configuration, settings)

    @kopf.on.startup(registry=reg)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, controller)

    @kopf.on.create(GROUP, VERSION, JOBS, registry=reg, id="place")
    @kopf.on.update(GROUP, VERSION, JOBS, registry=reg, id="place")
    @kopf.on.resume(GROUP, VERSION, JOBS, registry=reg, id="place")
    async def job_changed(body: kopf.Body, **_: Any) -> None:
        ns, _name = _meta(body)
        if not controller.in_scope(ns):
            return
        token_error: Exception | None = None
        if datapath is not None:
            # Seen first, so that the agents' Secret counts the job as live.
            key = controller.observe_job(body)
            view = controller.snap.jobs.get(key) if key is not None else None
            if view is not None:
                try:
                    await datapath.ensure(view)
                except Exception as e:  # placing the job need not wait for its token
                    token_error = e
        try:
            await controller.job_changed(body)
        except PassError as e:
            raise kopf.TemporaryError(str(e), delay=RETRY_DELAY) from e
        if token_error is not None:
            raise kopf.TemporaryError(
                f"token Secret: {token_error}",
                delay=PENDING_DELAY if isinstance(token_error, TokenUnusableError) else RETRY_DELAY,
            ) from token_error

    @kopf.on.delete(GROUP, VERSION, JOBS, registry=reg, id="release")
    async def job_deleted(body: kopf.Body, retry: int = 0, **_: Any) -> None:
        ns, name = _meta(body)
        if not controller.in_scope(ns):
            return
        try:
            await controller.job_deleted(body)
        except PassError as e:
            raise kopf.TemporaryError(str(e), delay=RETRY_DELAY) from e
        if datapath is not None:
            datapath.forget(f"{ns}/{name}")
            try:
                await datapath.sync()
            except Exception as e:
                if retry < TOKEN_DELETE_RETRIES:
                    raise kopf.TemporaryError(f"agent tokens Secret not updated: {e}",
                                              delay=RETRY_DELAY) from e
                logging.getLogger("conspirator.operator").warning(
                    "%s/%s released; its key stays in the agent tokens Secret until the next "
                    "write: %s", ns, name, e)

    @kopf.on.event(GROUP, VERSION, JOBS, registry=reg)
    async def job_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event["type"] == "DELETED":
            controller.forget_job(*_meta(body))
            controller.nudge()
            if datapath is not None:
                datapath.forget("/".join(_meta(body)))
                datapath.request()

    @kopf.on.event(GROUP, VERSION, NODES, registry=reg)
    async def node_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event["type"] == "DELETED":
            controller.forget_node(_meta(body)[1])
        else:
            controller.observe_node(body)
        controller.nudge()

    @kopf.on.event(GROUP, VERSION, PROFILES, registry=reg)
    async def profile_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event["type"] == "DELETED":
            controller.forget_profile(_meta(body)[1])
        else:
            controller.observe_profile(body)
        controller.nudge()

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY},
                   registry=reg)
    async def worker_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event["type"] == "DELETED":
            controller.forget_worker(*_meta(body))
        else:
            controller.observe_worker(body)
        controller.nudge()

    @kopf.on.probe(registry=reg, id="planner")
    async def planner_probe(**_: Any) -> dict[str, Any]:
        return controller.health()

    return reg
