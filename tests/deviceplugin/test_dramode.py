"""The node daemon in DRA mode: its mode choice, the slices it publishes from the GPUNode
spec's reservations, prepared claims counting as in use, and the status it reports."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from conspirator.deviceplugin.allocation import AllocationConfig
from conspirator.deviceplugin.daemon import DaemonConfig, NodeDaemon
from conspirator.deviceplugin.dra.registration import api_pb2 as reg_pb
from conspirator.deviceplugin.dra.registration import api_pb2_grpc as reg_grpc
from conspirator.deviceplugin.dramode import DEVICE_PLUGIN, DRA, DraConfig, DraMode, choose
from conspirator.deviceplugin.simulated import SimulatedBackend
from conspirator.mig import reservation_tag

from .fakes import FakeNodeAPI
from .test_dra_plugin import NODE, Claims


class Slices:
    """The API server's ResourceSlices of one node (a SliceClient)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes = 0

    def list(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def create(self, body: dict[str, Any]) -> None:
        self.writes += 1
        self.objects[body["metadata"]["name"]] = {**body, "metadata": {
            **body["metadata"], "resourceVersion": str(self.writes)}}

    def replace(self, body: dict[str, Any]) -> None:
        self.create(body)

    def delete(self, name: str) -> None:
        self.writes += 1
        self.objects.pop(name, None)

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for s in self.objects.values() for d in s["spec"].get("devices", [])}


def test_auto_is_dra_only_where_everything_it_needs_is_there(tmp_path: Path) -> None:
    yes, no = (lambda: True), (lambda: False)

    def boom() -> bool:
        raise OSError("discovery failed")

    assert choose("dra", no, tmp_path / "none") == DRA
    assert choose("devicePlugin", yes, tmp_path) == DEVICE_PLUGIN
    assert choose("auto", yes, tmp_path, yes) == DRA
    assert choose("auto", yes, tmp_path / "none", yes) == DEVICE_PLUGIN  # no DRA kubelet
    assert choose("auto", no, tmp_path, yes) == DEVICE_PLUGIN  # no resource.k8s.io/v1
    assert choose("auto", yes, tmp_path, no) == DEVICE_PLUGIN  # the gate drops counters
    assert choose("auto", boom, tmp_path, yes) == DEVICE_PLUGIN


@pytest.fixture
def dra_daemon(a100x2: SimulatedBackend, tmp_path: Path
               ) -> tuple[NodeDaemon, FakeNodeAPI, Slices, Claims]:
    cluster, slices, claims = FakeNodeAPI(NODE), Slices(), Claims()
    mode = DraMode(NODE, a100x2, claims, slices, AllocationConfig(NODE),
                   DraConfig(plugin_dir=tmp_path / "plugin", registry_dir=tmp_path / "reg",
                             cdi_dir=tmp_path / "cdi"))
    d = NodeDaemon(DaemonConfig(node=NODE, plugin_dir=tmp_path / "dp"), a100x2, cluster,
                   dra=mode)
    return d, cluster, slices, claims


def test_dra_mode_publishes_the_reservations_and_prepared_devices_stay(
        dra_daemon: tuple[NodeDaemon, FakeNodeAPI, Slices, Claims]) -> None:
    d, cluster, slices, claims = dra_daemon
    assert d.plugins is None  # no device plugins in DRA mode
    cluster.set_spec([
        {"index": 0, "instances": [{"profile": "1g.10gb", "start": 0, "reservedFor": "ta/a"},
                                   {"profile": "1g.10gb", "start": 1, "reservedFor": "ta/a"}]},
        {"index": 1, "instances": [{"profile": "3g.40gb", "start": 4,
                                    "reservedFor": "tb/b"}]}])
    d.reconcile()
    assert cluster.status.allocation == "DRA"
    assert cluster.condition("Ready")[1:] == (
        "DevicesAdvertised", "3 device(s) of 2 resource(s) advertised as ResourceSlices (DRA)")
    devs = slices.devices()
    reserved = {n: dv["attributes"]["reservation"]["string"] for n, dv in devs.items()
                if dv["attributes"]["reservation"]["string"]}
    assert reserved == {"gpu-0-mig-1g-10gb-0": reservation_tag("ta/a"),
                        "gpu-0-mig-1g-10gb-1": reservation_tag("ta/a"),
                        "gpu-1-mig-3g-40gb-4": reservation_tag("tb/b")}
    # GPUs holding reservations publish only their reserved devices.
    assert set(devs) == set(reserved)
    writes = slices.writes
    d.reconcile()
    assert slices.writes == writes  # nothing changed: nothing written

    # The scheduler allocated B's claim; the kubelet prepares it.  The layout then drops
    # the instance: it stays, blocked, while the claim holds it.
    ref = claims.add("b-0", "uid-b", ["gpu-1-mig-3g-40gb-4"], namespace="tb")
    assert d.dra is not None
    (res,) = d.dra.driver.prepare([ref]).values()
    assert res.error == ""
    cluster.set_spec([{"index": 0, "instances": []}, {"index": 1, "instances": []}])
    d.reconcile()
    assert cluster.condition("LayoutApplied")[1] == "Blocked"
    assert [(i.profile, i.start) for i in d.backend.instances(1)] == [("3g.40gb", 4)]
    d.dra.driver.unprepare([ref])
    d.reconcile()
    assert cluster.condition("LayoutApplied")[:2] == ("True", "Applied")
    assert d.backend.instances(1) == []


def test_auto_falls_back_when_no_kubelet_registers_the_driver(
        dra_daemon: tuple[NodeDaemon, FakeNodeAPI, Slices, Claims], tmp_path: Path) -> None:
    """A registry directory no kubelet watches (another ``--root-dir``): nobody calls
    GetInfo, so the wait times out, both sockets close and the slices an earlier DRA run
    left are withdrawn."""
    d, _, slices, _ = dra_daemon
    mode = d.dra
    assert mode is not None
    mode.publish(d.reservations)
    assert slices.objects
    assert mode.await_registration(0.2) is False
    assert not mode.server.serving
    assert not mode.server.registration_socket.exists()
    assert not mode.server.plugin_socket.exists()
    diff = mode.withdraw()
    assert diff.delete and not slices.objects


def test_auto_keeps_dra_once_the_kubelet_registers_it(
        dra_daemon: tuple[NodeDaemon, FakeNodeAPI, Slices, Claims]) -> None:
    """The kubelet's plugin watcher, played over the real registration socket: GetInfo,
    then NotifyRegistrationStatus(registered)."""
    d, _, _, _ = dra_daemon
    mode = d.dra
    assert mode is not None
    mode.start()
    done = threading.Event()

    def kubelet() -> None:
        with grpc.insecure_channel(f"unix://{mode.server.registration_socket}") as ch:
            stub = reg_grpc.RegistrationStub(ch)
            stub.GetInfo(reg_pb.InfoRequest(), timeout=10)
            stub.NotifyRegistrationStatus(reg_pb.RegistrationStatus(plugin_registered=True),
                                          timeout=10)
        done.set()

    t = threading.Thread(target=kubelet)
    t.start()
    try:
        assert mode.await_registration(30) is True
        assert mode.server.serving
    finally:
        t.join(30)
        mode.stop()
    assert done.is_set()


def test_a_checkpoint_with_prepared_claims_keeps_dra_without_waiting(
        dra_daemon: tuple[NodeDaemon, FakeNodeAPI, Slices, Claims]) -> None:
    """Claims an earlier run prepared must find the driver for their Unprepare."""
    d, _, _, claims = dra_daemon
    mode = d.dra
    assert mode is not None
    ref = claims.add("a-0", "uid-a", ["gpu-0-mig-1g-10gb-0"])
    (res,) = mode.driver.prepare([ref]).values()
    assert res.error == ""
    try:
        assert mode.await_registration(0) is True
    finally:
        mode.stop()
