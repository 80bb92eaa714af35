"""The device plugin servers against a test kubelet: real gRPC over unix sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conspirator.deviceplugin.plugin import (
    ContainerAllocation,
    Device,
    PluginManager,
    ResourcePlugin,
    preferred,
    socket_name,
)

from .kubelet import TestKubelet

R1 = "conspirator.io/mig-1g.10gb"
R3 = "conspirator.io/mig-3g.40gb"


def allocator(resource: str, devices: list[Device]) -> ContainerAllocation:
    ids = ",".join(d.id for d in devices)
    return ContainerAllocation(envs={"NVIDIA_VISIBLE_DEVICES": ids, "RESOURCE": resource},
                               mounts=[("/run/conspirator", "/tmp/reg", True)],
                               annotations={"conspirator.io/mig-devices": ids})


def devs(*ids: str, gpu: int = 0, healthy: bool = True) -> list[Device]:
    return [Device(id=i, gpu_index=gpu, start=n, healthy=healthy) for n, i in enumerate(ids)]


ALLOCATED: list[tuple[str, list[str]]] = []


@pytest.fixture
def manager(kubelet: TestKubelet) -> Iterator[PluginManager]:
    ALLOCATED.clear()
    m = PluginManager(kubelet.plugin_dir, allocator,
                      on_allocate=lambda r, ids: ALLOCATED.append((r, ids)))
    yield m
    m.stop()


def test_registers_lists_and_allocates(kubelet: TestKubelet, manager: PluginManager) -> None:
    manager.set_devices({R1: devs("MIG-a", "MIG-b")})
    kubelet.wait("registration", lambda: R1 in kubelet.endpoints)
    reg = kubelet.endpoints[R1].request
    assert reg.version == "v1beta1"
    assert reg.endpoint == socket_name(R1) == "conspirator-mig-1g.10gb.sock"
    assert reg.options.pre_start_required and reg.options.get_preferred_allocation_available
    opts = kubelet.endpoints[R1].options
    assert opts.pre_start_required and opts.get_preferred_allocation_available
    assert kubelet.devices(R1, lambda ds: len(ds) == 2) == [("MIG-a", "Healthy"),
                                                           ("MIG-b", "Healthy")]

    resp = kubelet.allocate(R1, ["MIG-b"])
    c = resp.container_responses[0]
    assert dict(c.envs) == {"NVIDIA_VISIBLE_DEVICES": "MIG-b", "RESOURCE": R1}
    assert [(m.container_path, m.host_path, m.read_only) for m in c.mounts] == [
        ("/run/conspirator", "/tmp/reg", True)]
    assert dict(c.annotations) == {"conspirator.io/mig-devices": "MIG-b"}
    assert [(R1, ["MIG-b"])] == ALLOCATED
    kubelet.prestart(R1, ["MIG-b"])


def test_health_changes_are_streamed_and_refused(kubelet: TestKubelet,
                                                 manager: PluginManager) -> None:
    manager.set_devices({R1: devs("MIG-a", "MIG-b")})
    kubelet.devices(R1, lambda ds: len(ds) == 2)
    manager.set_devices({R1: [*devs("MIG-a"), Device(id="MIG-b", start=1, healthy=False)]})
    assert kubelet.devices(R1, lambda ds: ("MIG-b", "Unhealthy") in ds) == [
        ("MIG-a", "Healthy"), ("MIG-b", "Unhealthy")]
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(R1, ["MIG-b"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unhealthy" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(R1, ["MIG-nope"])
    assert "unknown device" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        kubelet.prestart(R1, ["MIG-b"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_resources_appear_and_vanish(kubelet: TestKubelet, manager: PluginManager) -> None:
    manager.set_devices({R1: devs("MIG-a")})
    kubelet.devices(R1, lambda ds: len(ds) == 1)
    manager.set_devices({R1: devs("MIG-a"), R3: devs("MIG-c", gpu=1)})
    assert kubelet.devices(R3, lambda ds: len(ds) == 1) == [("MIG-c", "Healthy")]
    sock3 = kubelet.plugin_dir / socket_name(R3)
    assert sock3.exists()
    manager.set_devices({R1: devs("MIG-a", "MIG-d")})
    # The vanished resource is zeroed first, then its server stops and its socket goes.
    kubelet.wait("the 3g stream to end", lambda: kubelet.endpoints[R3].ended)
    assert kubelet.endpoints[R3].lists[-1] == []
    assert not sock3.exists()
    assert set(manager.plugins) == {R1}
    kubelet.devices(R1, lambda ds: len(ds) == 2)


def test_re_registers_when_the_kubelet_restarts(sockdir: Path) -> None:
    kubelet = TestKubelet(sockdir / "dp").start()
    m = PluginManager(kubelet.plugin_dir, allocator, poll_interval=0.1)
    try:
        m.set_devices({R1: devs("MIG-a")})
        kubelet.devices(R1, lambda ds: len(ds) == 1)
        assert len(kubelet.registrations) == 1
        m.start()  # the watcher thread
        # A kubelet restart: its socket is re-created and the plugins' sockets are wiped.
        kubelet.stop()
        (kubelet.plugin_dir / socket_name(R1)).unlink()
        kubelet2 = TestKubelet(kubelet.plugin_dir).start()
        try:
            assert kubelet2.devices(R1, lambda ds: len(ds) == 1) == [("MIG-a", "Healthy")]
            assert (kubelet.plugin_dir / socket_name(R1)).exists()
            assert kubelet2.allocate(R1, ["MIG-a"]).container_responses[0].envs[
                "NVIDIA_VISIBLE_DEVICES"] == "MIG-a"
        finally:
            kubelet2.stop()
    finally:
        m.stop()
        kubelet.stop()


def test_registers_once_the_kubelet_appears(sockdir: Path) -> None:
    plugin_dir = sockdir / "dp"
    m = PluginManager(plugin_dir, allocator)
    try:
        m.set_devices({R1: devs("MIG-a")})  # no kubelet yet: served, not registered
        assert not m.registered(R1)
        kubelet = TestKubelet(plugin_dir)
        kubelet.refuse = "resource name taken"
        kubelet.start()
        m.check()
        assert not m.registered(R1)  # refused: retried on the next pass
        kubelet.refuse = None
        m.check()
        assert m.registered(R1)
        kubelet.devices(R1, lambda ds: len(ds) == 1)
        kubelet.stop()
    finally:
        m.stop()


def test_preferred_allocation_packs_busy_gpus(kubelet: TestKubelet,
                                              manager: PluginManager) -> None:
    d = [Device(id=f"g0-{i}", gpu_index=0, start=i) for i in range(5)] + [
        Device(id=f"g1-{i}", gpu_index=1, start=i) for i in range(2)]
    manager.set_devices({R1: d})
    kubelet.devices(R1, lambda ds: len(ds) == 7)
    # GPU 1 has fewer free devices: take those first, keeping GPU 0's block together.
    assert kubelet.preferred(R1, [x.id for x in d], [], 3) == ["g1-0", "g1-1", "g0-0"]
    assert kubelet.preferred(R1, [x.id for x in d], ["g0-4"], 2) == ["g0-4", "g1-0"]
    assert preferred(d, [], 0) == []


def test_a_plugin_replaces_a_stale_socket(sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    path.write_text("left by a killed daemon")
    p = ResourcePlugin(R1, path, allocator)
    p.set_devices(devs("MIG-a"))
    p.start()
    try:
        with grpc.insecure_channel(f"unix://{path}") as ch:
            from conspirator.deviceplugin.v1beta1 import api_pb2 as pb
            from conspirator.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc
            stream = pb_grpc.DevicePluginStub(ch).ListAndWatch(pb.Empty())
            first = next(iter(stream))
            assert [d.ID for d in first.devices] == ["MIG-a"]
            stream.cancel()
    finally:
        p.stop()
    assert not path.exists()
