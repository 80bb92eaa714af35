"""What the node daemon reads and writes in the API server, behind a small interface.

:class:`NodeAPI` is what the daemon needs: its ``GPUNode`` (spec in, status out), Events,
the pods bound to its node, and, in kwok mode, the Node's capacity.  :class:`KubeNodeAPI`
implements it with the ``kubernetes`` client; the unit tests use an in-memory one.

Permissions the daemon needs (the chart's ClusterRole): ``gpunodes`` get/list/watch/create
and ``gpunodes/status`` patch; ``pods`` list/watch (and patch, kwok mode: the device
assignment annotation); ``nodes`` get (and ``nodes/status`` patch, kwok mode); ``events``
create.
"""

from __future__ import annotations

import abc
import json
import logging
import threading
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from conspirator.api.v1alpha1 import GPUNode, GPUNodeStatus
from conspirator.api.v1alpha1.common import GROUP, VERSION
from conspirator.mig import RESOURCE_PREFIX

log = logging.getLogger(__name__)

PLURAL = "gpunodes"
EVENT_NAMESPACE = "default"
COMPONENT = "conspirator-node-daemon"
DEVICES_ANNOTATION = "conspirator.io/mig-devices"
"""Pod annotation: the devices given to the pod, JSON ``{resource: [device ids]}``."""
WHOLE_GPU_RESOURCE = "conspirator.io/mig-whole"
"""A whole GPU (non-MIG, or MIG off), as the operator requests it (``migProfile: whole``)."""


@dataclass(frozen=True)
class PodInfo:
    """A pod bound to this node, as far as the daemon cares."""

    uid: str
    namespace: str
    name: str
    phase: str = "Pending"
    deleting: bool = False
    requests: dict[str, int] = field(default_factory=dict)
    """``conspirator.io/*`` resources the pod's containers ask for (limits), summed."""
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Literal environment values of the pod's containers, by variable."""

    @property
    def alive(self) -> bool:
        """Still holds its devices: not finished (its containers may still run while
        it is being deleted)."""
        return self.phase not in ("Succeeded", "Failed")

    def assigned(self) -> dict[str, list[str]]:
        raw = self.annotations.get(DEVICES_ANNOTATION)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): [str(x) for x in v] for k, v in data.items() if isinstance(v, list)}


def pod_info(pod: dict[str, Any]) -> PodInfo:
    """A pod as the API returns it (camelCase dict) to :class:`PodInfo`."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    def ours(c: dict[str, Any]) -> dict[str, int]:
        res = c.get("resources") or {}
        out = {}
        # Extended resources have limits equal to requests; either names the devices.
        for name, qty in {**(res.get("requests") or {}), **(res.get("limits") or {})}.items():
            if name.startswith(RESOURCE_PREFIX) or name == WHOLE_GPU_RESOURCE:
                try:
                    out[name] = int(str(qty))
                except ValueError:
                    continue
        return out

    requests: dict[str, int] = {}
    for c in spec.get("containers") or []:
        for name, n in ours(c).items():
            requests[name] = requests.get(name, 0) + n
    for c in spec.get("initContainers") or []:  # init containers run one at a time
        for name, n in ours(c).items():
            requests[name] = max(requests.get(name, 0), n)
    env: dict[str, tuple[str, ...]] = {}
    for c in spec.get("containers") or []:
        for var in c.get("env") or []:
            if isinstance(var, dict) and isinstance(var.get("value"), str):
                env[str(var.get("name"))] = (*env.get(str(var.get("name")), ()), var["value"])
    return PodInfo(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        phase=str((pod.get("status") or {}).get("phase") or "Pending"),
        deleting=meta.get("deletionTimestamp") is not None,
        requests={k: v for k, v in requests.items() if v > 0},
        annotations=dict(meta.get("annotations") or {}),
        labels=dict(meta.get("labels") or {}),
        env=env,
    )


class NodeAPI(abc.ABC):
    """The API-server side of one node daemon."""

    @abc.abstractmethod
    def read(self) -> GPUNode:
        """This node's GPUNode (created, empty, when missing)."""

    @abc.abstractmethod
    def write_status(self, status: GPUNodeStatus) -> None:
        """Replace the GPUNode's status."""

    @abc.abstractmethod
    def event(self, type_: str, reason: str, message: str) -> None:
        """Record an Event on the GPUNode."""

    @abc.abstractmethod
    def pods(self) -> list[PodInfo]:
        """Pods bound to this node."""

    @abc.abstractmethod
    def annotate_pod(self, pod: PodInfo, key: str, value: str) -> None:
        """Set an annotation on a pod."""

    @abc.abstractmethod
    def set_capacity(self, counts: dict[str, tuple[int, int]]) -> None:
        """kwok mode: the Node's capacity and allocatable of these resources (others of
        ours are removed)."""

    def watch(self, wake: Callable[[], None], stop: threading.Event) -> None:  # noqa: B027
        """Call ``wake`` when the GPUNode or a pod of the node changes (until ``stop``)."""


class KubeNodeAPI(NodeAPI):
    """:class:`NodeAPI` on the API server, through the ``kubernetes`` client."""

    def __init__(self, node: str, kubeconfig: str | None = None) -> None:
        from kubernetes import client, config

        if kubeconfig:
            api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        else:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
        self.node = node
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._uid: str | None = None
        self._node_uid: str | None = None

    # ---- GPUNode --------------------------------------------------------------------


    def serves_resource_v1(self) -> bool:
        """The API server serves ``resource.k8s.io/v1`` (DRA, Kubernetes 1.34+)."""
        from kubernetes import client

        groups = client.ApisApi(self.api).get_api_versions().groups or []
        return any(g.name == "resource.k8s.io" and any(v.version == "v1" for v in g.versions)
                   for g in groups)
    def _node_owner(self) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        if self._node_uid is None:
            try:
                meta = self.core.read_node(self.node).metadata
                self._node_uid = str(meta.uid if meta is not None else "")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return []
        return [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self._node_uid}]

    def read(self) -> GPUNode:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = cast(dict[str, Any], self.custom.get_cluster_custom_object(
                GROUP, VERSION, PLURAL, self.node))
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUNode",
                    "metadata": {"name": self.node, "ownerReferences": self._node_owner(),
                                 "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
                    "spec": {}}
            try:
                obj = cast(dict[str, Any], self.custom.create_cluster_custom_object(
                    GROUP, VERSION, PLURAL, body))
                log.info("created GPUNode %s", self.node)
            except ApiException as exc2:
                if exc2.status != 409:
                    raise
                obj = cast(dict[str, Any], self.custom.get_cluster_custom_object(
                    GROUP, VERSION, PLURAL, self.node))
        node = GPUNode.model_validate({k: v for k, v in obj.items() if k != "status"})
        self._uid = node.metadata.uid
        if obj.get("status"):
            node.status = GPUNodeStatus.model_validate(obj["status"])
        return node

    def write_status(self, status: GPUNodeStatus) -> None:
        body = {"status": status.to_k8s()}
        # A merge patch replaces lists whole (gpus, conditions): the status is ours alone.
        self.custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, self.node, body)

    def event(self, type_: str, reason: str, message: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        now = datetime.now(UTC)
        ev = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{self.node}.{uuidlib.uuid4().hex[:12]}",
                                         namespace=EVENT_NAMESPACE),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="GPUNode", name=self.node,
                uid=self._uid),
            reason=reason, message=message[:1024], type=type_,
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component=COMPONENT, host=self.node),
            reporting_component=COMPONENT, reporting_instance=self.node,
        )
        try:
            self.core.create_namespaced_event(EVENT_NAMESPACE, ev)
        except ApiException as exc:  # an Event is best effort
            log.warning("event %s not recorded: %s", reason, exc)

    # ---- pods -----------------------------------------------------------------------

    def pods(self) -> list[PodInfo]:
        resp: Any = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}", _preload_content=False)
        data = json.loads(resp.data)
        return [pod_info(p) for p in data.get("items") or []]

    def annotate_pod(self, pod: PodInfo, key: str, value: str) -> None:
        self.core.patch_namespaced_pod(pod.name, pod.namespace,
                                       {"metadata": {"annotations": {key: value}}})

    # ---- kwok mode ------------------------------------------------------------------

    def set_capacity(self, counts: dict[str, tuple[int, int]]) -> None:
        st = self.core.read_node(self.node).status
        cap = dict((st.capacity if st else None) or {})
        alloc = dict((st.allocatable if st else None) or {})
        new_cap: dict[str, str | None] = {}
        new_alloc: dict[str, str | None] = {}
        for name in set(cap) | set(alloc):
            if (name.startswith(RESOURCE_PREFIX) or name == WHOLE_GPU_RESOURCE) and \
                    name not in counts:
                new_cap[name] = None
                new_alloc[name] = None
        for name, (c, a) in counts.items():
            if cap.get(name) != str(c):
                new_cap[name] = str(c)
            if alloc.get(name) != str(a):
                new_alloc[name] = str(a)
        if not new_cap and not new_alloc:
            return
        body = {"status": {"capacity": new_cap, "allocatable": new_alloc}}
        # A strategic merge patch of the status: null removes a resource.
        self.core.patch_node_status(self.node, body)
        log.info("node %s capacity: %s", self.node, counts)

    # ---- watches --------------------------------------------------------------------

    def watch(self, wake: Callable[[], None], stop: threading.Event) -> None:
        for target in (self._watch_gpunode, self._watch_pods):
            threading.Thread(target=self._loop, args=(target, wake, stop), daemon=True,
                             name=target.__name__).start()

    def _loop(self, target: Callable[[Callable[[], None], threading.Event], None],
              wake: Callable[[], None], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                target(wake, stop)
            except Exception as exc:  # the API server restarts, connections drop
                log.debug("watch %s: %s", target.__name__, exc)
                stop.wait(1.0)

    def _watch_gpunode(self, wake: Callable[[], None], stop: threading.Event) -> None:
        from kubernetes import watch

        w = watch.Watch()  # type: ignore[no-untyped-call]
        for _ in w.stream(  # type: ignore[no-untyped-call]
                self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                field_selector=f"metadata.name={self.node}", timeout_seconds=30):
            wake()
            if stop.is_set():
                w.stop()  # type: ignore[no-untyped-call]

    def _watch_pods(self, wake: Callable[[], None], stop: threading.Event) -> None:
        from kubernetes import watch

        w = watch.Watch()  # type: ignore[no-untyped-call]
        for _ in w.stream(  # type: ignore[no-untyped-call]
                self.core.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={self.node}", timeout_seconds=30):
            wake()
            if stop.is_set():
                w.stop()  # type: ignore[no-untyped-call]


__all__ = [
    "DEVICES_ANNOTATION",
    "WHOLE_GPU_RESOURCE",
    "KubeNodeAPI",
    "NodeAPI",
    "PodInfo",
    "pod_info",
]
