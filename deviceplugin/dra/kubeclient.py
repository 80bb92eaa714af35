"""The API-server side of the DRA driver, through the ``kubernetes`` client:
ResourceClaims read and this node's ResourceSlices listed and written.

Both go through ``CustomObjectsApi`` on group ``resource.k8s.io`` version ``v1`` with plain
dicts rather than the typed ``ResourceV1Api``: a typed model drops the fields its client
release does not know (``sharedCounters``, ``consumesCounters`` are alpha in 1.35), and the
slices are built and diffed as dicts anyway.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from conspirator.deviceplugin.dra.slices import DRIVER

GROUP = "resource.k8s.io"
VERSION = "v1"
SLICES = "resourceslices"
CLAIMS = "resourceclaims"


class KubeClaimReader:
    """:class:`~.claims.ClaimReader` on the API server."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CLAIMS, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj if isinstance(obj, dict) else None


class KubeSliceClient:
    """:class:`~.publish.SliceClient` on the API server: the slices of ``node`` and driver
    ``conspirator.io`` (listed by field selector ``spec.nodeName`` and ``spec.driver``)."""

    def __init__(self, api_client: Any, node: str, driver: str = DRIVER) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.node = node
        self.driver = driver

    def list(self) -> list[dict[str, Any]]:
        out = self.custom.list_cluster_custom_object(
            GROUP, VERSION, SLICES,
            field_selector=f"spec.nodeName={self.node},spec.driver={self.driver}")
        items = out.get("items", []) if isinstance(out, dict) else []
        return [i for i in items if isinstance(i, dict)]

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_cluster_custom_object(GROUP, VERSION, SLICES, body)

    def replace(self, body: dict[str, Any]) -> None:
        self.custom.replace_cluster_custom_object(GROUP, VERSION, SLICES,
                                                  body["metadata"]["name"], body)

    def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, SLICES, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def keeps_counters(api_client: Any, counter_slice: dict[str, Any]) -> bool:
    """Whether the API server keeps a ResourceSlice's ``sharedCounters`` (the
    DRAPartitionableDevices feature gate: an API server without it drops the field
    silently).  Writes ``counter_slice`` under a probe name and pool, reads what was
    stored, deletes it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    body = copy.deepcopy(counter_slice)
    name = body["metadata"]["name"] = body["metadata"]["name"][:240] + "-probe"
    body["metadata"].pop("resourceVersion", None)
    body["spec"]["pool"]["name"] = body["spec"]["pool"]["name"] + "-probe"
    stored: Any
    try:
        stored = custom.create_cluster_custom_object(GROUP, VERSION, SLICES, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        custom.delete_cluster_custom_object(GROUP, VERSION, SLICES, name)
        stored = custom.create_cluster_custom_object(GROUP, VERSION, SLICES, body)
    try:
        return bool(((stored or {}).get("spec") or {}).get("sharedCounters"))
    finally:
        with contextlib.suppress(ApiException):
            custom.delete_cluster_custom_object(GROUP, VERSION, SLICES, name)


__all__ = ["KubeClaimReader", "KubeSliceClient", "keeps_counters"]
