"""The operator's writes and listings, through the ``kubernetes`` client.

The client is synchronous; every call runs in a bounded thread pool so that the kopf
event loop never blocks on the API server.  Listings return plain dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from kubernetes import client, config

from conspirator.api.v1alpha1 import GROUP, VERSION
from conspirator.operator.kubeapi import ConflictError, NotFoundError
from conspirator.operator.views import LABEL_MANAGED_BY, MANAGED_BY, POD_DELETION_COST

log = logging.getLogger("conspirator.operator.kube")
T = TypeVar("T")

JOBS = "inferencejobs"
NODES = "gpunodes"
PROFILES = "modelprofiles"


def load_client(kubeconfig: str | None, pool_size: int) -> client.ApiClient:
    """An API client from ``kubeconfig``, else in-cluster config, else the default file."""
    if kubeconfig:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
    api.configuration.connection_pool_maxsize = max(4, pool_size * 2)
    # A fresh pool manager picks the new pool size up.
    api.rest_client = type(api.rest_client)(api.configuration)
    return api


def _wrap(e: client.ApiException) -> Exception:
    if e.status == 404:
        return NotFoundError(str(e.reason))
    if e.status == 409:
        return ConflictError(str(e.reason))
    return e


class Kube:
    """Async facade over the synchronous client (one thread pool per operator); the real
    :class:`~conspirator.operator.kubeapi.KubeAPI`."""

    def __init__(self, api: client.ApiClient, concurrency: int = 8,
                 namespaces: tuple[str, ...] = ()) -> None:
        self.api = api
        # Served namespaces (empty: all).  A namespace-scoped operator lists only these, so
        # its RBAC can be Roles in them instead of cluster-wide rules.
        self.namespaces = namespaces
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.pool = ThreadPoolExecutor(max_workers=concurrency,
                                       thread_name_prefix="conspirator-api")
        self.limit = asyncio.Semaphore(concurrency)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        async with self.limit:
            try:
                return await loop.run_in_executor(self.pool,
                                                  functools.partial(fn, *args, **kwargs))
            except client.ApiException as e:
                raise _wrap(e) from e

    # --- listings --------------------------------------------------------------------

    async def _list_custom(self, plural: str) -> list[dict[str, Any]]:
        r = cast(dict[str, Any], await self._run(self.custom.list_cluster_custom_object,
                                                 GROUP, VERSION, plural))
        return list(r["items"])

    async def list_jobs(self) -> list[dict[str, Any]]:
        if not self.namespaces:
            return await self._list_custom(JOBS)
        items: list[dict[str, Any]] = []
        for ns in self.namespaces:
            r = cast(dict[str, Any], await self._run(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, JOBS))
            items.extend(r["items"])
        return items

    async def list_nodes(self) -> list[dict[str, Any]]:
        return await self._list_custom(NODES)

    async def list_profiles(self) -> list[dict[str, Any]]:
        return await self._list_custom(PROFILES)

    async def list_workers(self) -> list[dict[str, Any]]:
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

        def call() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            if not self.namespaces:
                r: Any = self.apps.list_deployment_for_all_namespaces(
                    label_selector=selector, _preload_content=False)
                items = json.loads(r.data)["items"]
            for ns in self.namespaces:
                r = self.apps.list_namespaced_deployment(ns, label_selector=selector,
                                                         _preload_content=False)
                items.extend(json.loads(r.data)["items"])
            for d in items:  # list items carry no kind
                d.setdefault("apiVersion", "apps/v1")
                d.setdefault("kind", "Deployment")
            return items
        return await self._run(call)

    # --- writes ----------------------------------------------------------------------

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]
                               ) -> dict[str, Any]:
        """Merge-patch ``status`` (lists are replaced whole; ``None`` removes a field)."""
        r = await self._run(
            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace,
            JOBS, name, {"status": status})
        return cast(dict[str, Any], r)

    async def patch_profile_status(self, name: str, status: dict[str, Any]
                                   ) -> dict[str, Any]:
        r = await self._run(
            self.custom.patch_cluster_custom_object_status, GROUP, VERSION, PROFILES, name,
            {"status": status})
        return cast(dict[str, Any], r)

    async def patch_node_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        r = await self._run(
            self.custom.patch_cluster_custom_object, GROUP, VERSION, NODES, name,
            {"spec": spec})
        return cast(dict[str, Any], r)

    async def create_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            r: Any = self.apps.create_namespaced_deployment(
                body["metadata"]["namespace"], cast(Any, body), _preload_content=False)
            out: dict[str, Any] = json.loads(r.data)
            return out
        return await self._run(call)

    async def create_claim_template(self, body: dict[str, Any]) -> dict[str, Any]:
        """A ``resource.k8s.io/v1`` ResourceClaimTemplate (DRA mode)."""
        return cast(dict[str, Any], await self._run(
            self.custom.create_namespaced_custom_object, "resource.k8s.io", "v1",
            body["metadata"]["namespace"], "resourceclaimtemplates", body))

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            r: Any = self.apps.read_namespaced_deployment(name, namespace,
                                                          _preload_content=False)
            out: dict[str, Any] = json.loads(r.data)
            return out
        return await self._run(call)

    async def update_deployment(self, body: dict[str, Any], resource_version: str
                                ) -> dict[str, Any]:
        """Replace the Deployment's labels, annotations and spec (conflict-checked)."""
        meta = body["metadata"]
        patch = {
            "metadata": {"resourceVersion": resource_version, "labels": meta["labels"],
                         "annotations": meta["annotations"]},
            "spec": body["spec"],
        }

        def call() -> dict[str, Any]:
            r: Any = self.apps.patch_namespaced_deployment(
                meta["name"], meta["namespace"], patch,
                _content_type="application/merge-patch+json", _preload_content=False)
            out: dict[str, Any] = json.loads(r.data)
            return out
        return await self._run(call)

    async def scale_deployment(self, namespace: str, name: str, replicas: int,
                               resource_version: str) -> dict[str, Any]:
        patch = {"metadata": {"resourceVersion": resource_version},
                 "spec": {"replicas": replicas}}

        def call() -> dict[str, Any]:
            r: Any = self.apps.patch_namespaced_deployment(
                name, namespace, patch, _content_type="application/merge-patch+json",
                _preload_content=False)
            out: dict[str, Any] = json.loads(r.data)
            return out
        return await self._run(call)

    async def delete_deployment(self, namespace: str, name: str, uid: str | None = None
                                ) -> None:
        opts = client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=client.V1Preconditions(uid=uid) if uid else None)
        with contextlib.suppress(NotFoundError):
            await self._run(self.apps.delete_namespaced_deployment, name, namespace,
                            body=opts)

    async def set_pod_deletion_cost(self, namespace: str, name: str, cost: int) -> None:
        patch = {"metadata": {"annotations": {POD_DELETION_COST: str(cost)}}}
        with contextlib.suppress(NotFoundError):
            await self._run(self.core.patch_namespaced_pod, name, namespace, patch)

    async def delete_pod(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self._run(self.core.delete_namespaced_pod, name, namespace)

    # --- Secrets (the data path's tokens) ------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            r: Any = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
            out: dict[str, Any] = json.loads(r.data)
            return out
        return await self._run(call)

    async def create_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            r: Any = self.core.create_namespaced_secret(
                body["metadata"]["namespace"], cast(Any, body), _preload_content=False)
            out: dict[str, Any] = json.loads(r.data)
            return out
        return await self._run(call)

    async def replace_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT ``body``; its ``metadata.resourceVersion`` makes it conflict-checked."""
        def call() -> dict[str, Any]:
            meta = body["metadata"]
            r: Any = self.core.replace_namespaced_secret(
                meta["name"], meta["namespace"], cast(Any, body), _preload_content=False)
            out: dict[str, Any] = json.loads(r.data)
            return out
        return await self._run(call)

    async def post_event(self, body: dict[str, Any]) -> None:
        try:
            await self._run(self.core.create_namespaced_event,
                            body["metadata"]["namespace"], body)
        except Exception as e:  # events are best effort
            log.debug("event not posted: %s", e)
