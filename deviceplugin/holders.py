"""Which pod holds which of our devices, as the kubelet knows it.

The kubelet's supported answer is its PodResources API (``List`` over the unix socket
``<kubelet root>/pod-resources/kubelet.sock``): every active pod's containers with the device
ids of each resource.  Older nodes, or a daemon without that socket mounted, fall back to the
device manager's checkpoint file (``device-plugins/kubelet_internal_checkpoint``), an internal
format the kubelet writes after each Allocate.  :class:`KubeletHolders` asks the API first
and reads the checkpoint only while the API cannot answer, saying so in the log once per
switch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from conspirator.deviceplugin.kube import WHOLE_GPU_RESOURCE, PodInfo
from conspirator.deviceplugin.podresources.v1 import api_pb2, api_pb2_grpc
from conspirator.mig import RESOURCE_PREFIX

log = logging.getLogger(__name__)

POD_RESOURCES_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
CHECKPOINT = "kubelet_internal_checkpoint"


@dataclass(frozen=True)
class Holder:
    """The pod a device is allocated to: the API names it, the checkpoint knows its UID."""

    namespace: str = ""
    name: str = ""
    uid: str = ""


class DeviceHolders(Protocol):
    def held(self) -> dict[str, Holder] | None:
        """Device id -> its pod, for our resources; None when the source cannot answer."""
        ...


def ours(resource: str) -> bool:
    return resource.startswith(RESOURCE_PREFIX) or resource == WHOLE_GPU_RESOURCE


class PodResourcesHolders:
    """The kubelet's PodResources API v1 ``List``."""

    def __init__(self, socket_path: Path = POD_RESOURCES_SOCKET, timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: grpc.Channel | None = None

    def _stub(self) -> api_pb2_grpc.PodResourcesListerStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        return api_pb2_grpc.PodResourcesListerStub(self._channel)

    def held(self) -> dict[str, Holder] | None:
        if not self.socket_path.is_socket():
            return None
        stub = self._stub()
        try:
            resp = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            log.debug("PodResources List failed: %s", e)
            self.close()  # a new kubelet makes a new socket: reconnect next time
            return None
        out: dict[str, Holder] = {}
        for pod in resp.pod_resources:
            for c in pod.containers:
                for d in c.devices:
                    if ours(d.resource_name):
                        for dev in d.device_ids:
                            out[dev] = Holder(namespace=pod.namespace, name=pod.name)
        return out

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class CheckpointHolders:
    """The kubelet device manager's checkpoint file (pod UID -> device ids)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def held(self) -> dict[str, Holder] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        out: dict[str, Holder] = {}
        entries = ((data.get("Data") or {}).get("PodDeviceEntries") or []) if isinstance(
            data, dict) else []
        for e in entries:
            if not isinstance(e, dict) or not ours(str(e.get("ResourceName", ""))):
                continue
            ids = e.get("DeviceIDs") or []
            flat = [x for v in ids.values() for x in v] if isinstance(ids, dict) else list(ids)
            for dev in flat:
                out[str(dev)] = Holder(uid=str(e.get("PodUID", "")))
        return out


class KubeletHolders:
    """PodResources first; the checkpoint while the API cannot answer."""

    def __init__(self, pod_resources: DeviceHolders, checkpoint: DeviceHolders) -> None:
        self.pod_resources = pod_resources
        self.checkpoint = checkpoint
        self.source = ""

    def held(self) -> dict[str, Holder] | None:
        found = self.pod_resources.held()
        source = "the kubelet's PodResources API"
        if found is None:
            found = self.checkpoint.held()
            source = "the kubelet's device-manager checkpoint (PodResources unavailable)"
        if found is not None and source != self.source:
            log.info("device holders from %s", source)
            self.source = source
        return found


def kubelet_holders(plugin_dir: Path, pod_resources_socket: Path | None) -> KubeletHolders:
    api: DeviceHolders = (PodResourcesHolders(pod_resources_socket) if pod_resources_socket
                          else _Never())
    return KubeletHolders(api, CheckpointHolders(plugin_dir / CHECKPOINT))


def holder_uids(holders: DeviceHolders, pods: list[PodInfo]) -> dict[str, str]:
    """Device id -> the UID of the pod the kubelet allocated it to, or ``pod:<ns>/<name>``
    for a pod ``pods`` does not show (the API server's watch can lag the kubelet)."""
    uid_of = {(p.namespace, p.name): p.uid for p in pods}
    return {dev: h.uid or uid_of.get((h.namespace, h.name), f"pod:{h.namespace}/{h.name}")
            for dev, h in (holders.held() or {}).items()}


def devices_of(holders: DeviceHolders, pod: PodInfo) -> list[str]:
    """The devices the kubelet gave ``pod``."""
    return sorted(dev for dev, uid in holder_uids(holders, [pod]).items() if uid == pod.uid)


class _Never:
    def held(self) -> dict[str, Holder] | None:
        return None


__all__ = ["CHECKPOINT", "POD_RESOURCES_SOCKET", "CheckpointHolders", "DeviceHolders",
           "Holder", "KubeletHolders", "PodResourcesHolders", "devices_of", "holder_uids",
           "kubelet_holders"]
