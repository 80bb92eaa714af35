"""Who holds which device: the kubelet's PodResources API over a real gRPC unix socket, and
the device manager's checkpoint where the API cannot answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from conspirator.deviceplugin.holders import (
    CheckpointHolders,
    Holder,
    KubeletHolders,
    PodResourcesHolders,
    devices_of,
    holder_uids,
    kubelet_holders,
)
from conspirator.deviceplugin.kube import PodInfo
from conspirator.deviceplugin.podresources.v1 import api_pb2 as pr
from conspirator.deviceplugin.podresources.v1 import api_pb2_grpc as pr_grpc

R1 = "conspirator.io/mig-1g.10gb"
R3 = "conspirator.io/mig-3g.40gb"


class Lister(pr_grpc.PodResourcesListerServicer):
    """The kubelet's side, answering what ``pods`` says."""

    def __init__(self) -> None:
        self.pods: list[pr.PodResources] = []
        self.fail = False
        self.calls = 0

    def List(self, request: pr.ListPodResourcesRequest, context: Any  # noqa: N802
             ) -> pr.ListPodResourcesResponse:
        self.calls += 1
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet restarting")
        return pr.ListPodResourcesResponse(pod_resources=self.pods)

    def GetAllocatableResources(self, request: pr.AllocatableResourcesRequest,  # noqa: N802
                                context: Any
                                ) -> pr.AllocatableResourcesResponse:
        return pr.AllocatableResourcesResponse()


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[tuple[Lister, Path]]:
    sock = tmp_path / "pod-resources" / "kubelet.sock"
    sock.parent.mkdir()
    lister = Lister()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pr_grpc.add_PodResourcesListerServicer_to_server(lister, server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield lister, sock
    finally:
        server.stop(None)


def pod(ns: str, name: str, *containers: list[tuple[str, list[str]]]) -> pr.PodResources:
    return pr.PodResources(namespace=ns, name=name, containers=[
        pr.ContainerResources(name=f"c{i}", devices=[
            pr.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in devs])
        for i, devs in enumerate(containers)])


def test_pod_resources_lists_our_devices_by_pod(kubelet: tuple[Lister, Path]) -> None:
    lister, sock = kubelet
    lister.pods = [
        pod("team-a", "w0", [(R1, ["MIG-a"]), ("nvidia.com/gpu", ["GPU-x"])]),
        pod("team-a", "w1", [(R3, ["MIG-b", "MIG-c"])], [(R1, ["MIG-d"])]),
        pod("kube-system", "dns", []),
    ]
    held = PodResourcesHolders(sock).held()
    assert held == {"MIG-a": Holder("team-a", "w0"), "MIG-b": Holder("team-a", "w1"),
                    "MIG-c": Holder("team-a", "w1"), "MIG-d": Holder("team-a", "w1")}


def test_unreachable_api_answers_none_and_the_checkpoint_stands_in(
        kubelet: tuple[Lister, Path], tmp_path: Path) -> None:
    lister, sock = kubelet
    lister.pods = [pod("ns", "w", [(R1, ["MIG-a"])])]
    cp = tmp_path / "kubelet_internal_checkpoint"
    cp.write_text(json.dumps({"Data": {"PodDeviceEntries": [
        {"PodUID": "uid-1", "ContainerName": "c", "ResourceName": R1,
         "DeviceIDs": {"-1": ["MIG-old"]}}]}}))
    both = KubeletHolders(PodResourcesHolders(sock), CheckpointHolders(cp))
    assert both.held() == {"MIG-a": Holder("ns", "w")}
    lister.fail = True  # the kubelet answers errors: the checkpoint stands in
    assert PodResourcesHolders(sock).held() is None
    assert both.held() == {"MIG-old": Holder(uid="uid-1")}
    lister.fail = False  # and the API is used again once it answers
    assert both.held() == {"MIG-a": Holder("ns", "w")}
    missing = KubeletHolders(PodResourcesHolders(tmp_path / "none.sock"), CheckpointHolders(cp))
    assert missing.held() == {"MIG-old": Holder(uid="uid-1")}
    assert kubelet_holders(tmp_path, None).held() == {"MIG-old": Holder(uid="uid-1")}
    assert CheckpointHolders(tmp_path / "absent").held() is None


def test_the_checkpoint_lists_our_resources_only(tmp_path: Path) -> None:
    cp = tmp_path / "kubelet_internal_checkpoint"
    cp.write_text(json.dumps({"Data": {"PodDeviceEntries": [
        {"PodUID": "p1", "ContainerName": "c", "ResourceName": R1,
         "DeviceIDs": {"-1": ["MIG-a", "MIG-b"]}, "AllocResp": ""},
        {"PodUID": "p2", "ContainerName": "c", "ResourceName": "nvidia.com/gpu",
         "DeviceIDs": {"-1": ["GPU-x"]}, "AllocResp": ""},
        {"PodUID": "p3", "ContainerName": "c", "ResourceName": R3,
         "DeviceIDs": ["MIG-c"], "AllocResp": ""},
    ], "RegisteredDevices": {}}, "Checksum": 1}))
    assert CheckpointHolders(cp).held() == {"MIG-a": Holder(uid="p1"), "MIG-b": Holder(uid="p1"),
                                            "MIG-c": Holder(uid="p3")}
    cp.write_text("{not json")
    assert CheckpointHolders(cp).held() is None


def test_holders_map_to_pod_uids(kubelet: tuple[Lister, Path]) -> None:
    lister, sock = kubelet
    lister.pods = [pod("ns", "known", [(R1, ["MIG-a"])]), pod("ns", "new", [(R1, ["MIG-b"])])]
    known = PodInfo(uid="u-known", namespace="ns", name="known", phase="Running")
    holders = PodResourcesHolders(sock)
    # A pod the API server's watch has not shown yet still holds its device.
    assert holder_uids(holders, [known]) == {"MIG-a": "u-known", "MIG-b": "pod:ns/new"}
    assert devices_of(holders, known) == ["MIG-a"]
    other = PodInfo(uid="u-other", namespace="ns", name="other", phase="Running")
    assert devices_of(holders, other) == []
