"""kopf peering: several operator replicas, one active.

kopf keeps a ``ClusterKopfPeering`` object (group ``kopf.dev``), or for an operator that
serves a list of namespaces a ``KopfPeering`` object of the same name in each of them,
whose status lists the live replicas with their priority; every replica pauses while a
live peer has a higher priority (or the same one).  By default a replica's priority falls
with its start time, so the replica that started first stays active and a restarted one
waits as a standby until the active one's keep-alives stop for ``--peering-lifetime``
seconds.

The global re-plan runs outside kopf's handlers, so it asks :func:`is_active` before
each run (a namespace-scoped replica must be active in every namespace it serves: the
priorities are the same in each, so the same replica wins everywhere); the handlers
themselves are paused by kopf.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from kopf._core.engines.peering import Identity
from kubernetes import client

log = logging.getLogger("conspirator.operator.peering")

GROUP = "kopf.dev"
VERSION = "v1"
PLURAL = "clusterkopfpeerings"
CRD_NAME = f"{PLURAL}.{GROUP}"
NAMESPACED_PLURAL = "kopfpeerings"
NAMESPACED_CRD_NAME = f"{NAMESPACED_PLURAL}.{GROUP}"

ActiveCheck = Callable[[], Awaitable[bool]]
"""Answers whether this replica is the active one now."""


def kopf_identity(text: str) -> Identity:
    """kopf's type for a peer's identity (a ``NewType`` of ``str``)."""
    return Identity(text)


def own_identity(env: Mapping[str, str], now: float | None = None) -> str:
    """This replica's name among its peers: its pod's name in a cluster (the chart sets
    ``POD_NAME`` from the downward API), so ``kubectl get kopfpeering -o yaml`` says which
    pod is active; elsewhere ``host@pid/start``.  (Under host network every pod's hostname
    is the node's, so the hostname alone would not tell the replicas apart.)"""
    pod = env.get("POD_NAME", "").strip()
    if pod:
        return pod
    started = int(time.time() if now is None else now)
    return f"{socket.gethostname()}@{os.getpid()}/{started}"


def default_priority(now: float | None = None) -> int:
    """Earlier start, higher priority (milliseconds, so two replicas hardly ever tie)."""
    return 10**13 - int((time.time() if now is None else now) * 1000)


def _parse(ts: str) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def is_active_in(status: Mapping[str, Any], identity: str, priority: int,
                 now: datetime | None = None) -> bool:
    """Whether no other live peer in a peering object's ``status`` outranks or ties us."""
    t = now or datetime.now(UTC)
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        seen = _parse(str(info.get("lastseen", "")))
        lifetime = int(info.get("lifetime", 60))
        if seen is None or seen + timedelta(seconds=lifetime) <= t:
            continue
        if int(info.get("priority", 0)) >= priority:
            return False
    return True


def crd_name(namespaces: Sequence[str] = ()) -> str:
    """The peering CRD an operator serving ``namespaces`` (none: all) needs."""
    return NAMESPACED_CRD_NAME if namespaces else CRD_NAME


def crd_installed(api: client.ApiClient, namespaces: Sequence[str] = ()) -> bool:
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.read_custom_resource_definition(crd_name(namespaces))
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _read(co: client.CustomObjectsApi, name: str, namespace: str | None) -> dict[str, Any]:
    if namespace is None:
        return cast(dict[str, Any], co.get_cluster_custom_object(GROUP, VERSION, PLURAL, name))
    return cast(dict[str, Any], co.get_namespaced_custom_object(
        GROUP, VERSION, namespace, NAMESPACED_PLURAL, name))


def _scopes(namespaces: Sequence[str]) -> list[str | None]:
    return list(namespaces) if namespaces else [None]


def ensure_object(api: client.ApiClient, name: str, namespaces: Sequence[str] = ()) -> None:
    """Create the peering object ``name`` (cluster-wide, or in each of ``namespaces``) where
    it does not exist (kopf does not).

    Read first: where the Helm chart made the objects, the operator needs no ``create``."""
    co = client.CustomObjectsApi(api)
    for ns in _scopes(namespaces):
        try:
            _read(co, name, ns)
            continue
        except client.ApiException as e:
            if e.status != 404:
                raise
        kind = "ClusterKopfPeering" if ns is None else "KopfPeering"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}}
        try:
            if ns is None:
                co.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
            else:
                co.create_namespaced_custom_object(GROUP, VERSION, ns, NAMESPACED_PLURAL, body)
            log.info("created %s %s%s", kind, f"{ns}/" if ns else "", name)
        except client.ApiException as e:
            if e.status != 409:
                raise


def is_active(api: client.ApiClient, name: str, identity: str, priority: int,
              namespaces: Sequence[str] = ()) -> bool:
    """Read the peering object(s): is this replica the one that works (in every namespace
    it serves)?"""
    co = client.CustomObjectsApi(api)
    for ns in _scopes(namespaces):
        try:
            obj = _read(co, name, ns)
        except client.ApiException as e:
            log.warning("cannot read the peering object %s%s: %s", f"{ns}/" if ns else "",
                        name, e.reason)
            return False
        if not is_active_in(obj.get("status") or {}, identity, priority):
            return False
    return True
