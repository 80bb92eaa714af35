"""Run the operator: kopf with the handlers, the re-plan loop, metrics, peering."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os

import kopf

from conspirator.operator import peering
from conspirator.operator.controller import Controller
from conspirator.operator.datapath import DataPath, resync_loop
from conspirator.operator.handlers import build_registry
from conspirator.operator.kube import Kube, load_client
from conspirator.operator.metrics import Metrics, serve
from conspirator.operator.scrape import parse, scrape_loop
from conspirator.operator.settings import Settings, operator_namespace

log = logging.getLogger("conspirator.operator")


async def replan_loop(controller: Controller, active: peering.ActiveCheck, interval: float
                      ) -> None:
    """Every ``interval`` seconds, the global re-plan, if this replica is the active one."""
    while True:
        await asyncio.sleep(interval)
        try:
            if not await active():
                log.debug("re-plan skipped: another replica is active")
                continue
            await controller.replan()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("global re-plan failed: %s", e)


def limit_malloc_arenas(n: int = 2) -> None:
    """Fewer glibc malloc arenas: the API thread pool otherwise fragments memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM in the main thread)."""
    limit_malloc_arenas()
    api = load_client(settings.kubeconfig, settings.api_concurrency)
    kube = Kube(api, settings.api_concurrency, settings.namespaces)
    metrics = Metrics()
    if settings.metrics_port:
        serve(metrics, settings.metrics_port, settings.bind_address)
    controller = Controller(settings, kube, metrics)
    own_namespace = operator_namespace(settings, os.environ)
    datapath = DataPath(kube, controller, own_namespace, settings.agent_tokens_secret)
    controller.tokens = datapath
    registry = build_registry(controller, api.configuration)

    standalone = settings.standalone
    namespaces = tuple(settings.namespaces)
    if not standalone and not await asyncio.to_thread(peering.crd_installed, api, namespaces):
        log.warning("the kopf peering CRD (%s) is not installed: running standalone; apply "
                    "operator/deploy/peering.yaml to run several replicas",
                    peering.crd_name(namespaces))
        standalone = True
    if not standalone:
        await asyncio.to_thread(peering.ensure_object, api, settings.peering, namespaces)
    priority = settings.priority if settings.priority is not None else \
        peering.default_priority()
    identity = peering.own_identity(os.environ)

    async def active() -> bool:
        if standalone:
            return True
        return await asyncio.to_thread(peering.is_active, api, settings.peering, identity,
                                       priority, namespaces)

    tasks = []
    if settings.replan_interval > 0:
        tasks.append(asyncio.create_task(
            replan_loop(controller, active, settings.replan_interval), name="replan"))
    if settings.observe_interval > 0:
        controller.cache.scraping = True  # migrations wait for the agents' count
        tasks.append(asyncio.create_task(
            scrape_loop(lambda: controller.snap.nodes, settings.agent_metrics_port,
                        settings.observe_interval, parse, controller.observe_load, active),
            name="observe-load"))
    tasks.append(asyncio.create_task(
        resync_loop(datapath, active, settings.token_resync_interval,
                    lambda: controller.synced), name="token-resync"))
    liveness = (f"http://{settings.bind_address}:{settings.liveness_port}/healthz"
                if settings.liveness_port else None)
    log.info("conspirator operator: %s, peering %s (priority %d), liveness %s, metrics %s, "
             "agent tokens %s",
             "namespaces " + ",".join(settings.namespaces) if settings.namespaces
             else "all namespaces",
             "off" if standalone else settings.peering, priority, liveness or "off",
             f":{settings.metrics_port}/metrics" if settings.metrics_port else "off",
             f"Secret {own_namespace}/{settings.agent_tokens_secret}"
             if settings.agent_tokens_secret else "off")
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=standalone,
            peering_name=None if standalone else settings.peering,
            priority=priority,
            identity=peering.kopf_identity(identity),
            liveness_endpoint=liveness,
            stop_flag=stop,
        )
    finally:
        for t in tasks:
            t.cancel()
        kube.close()
