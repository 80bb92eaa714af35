"""The DRA driver's prepare/unprepare on the simulated backend, its checkpoint across a
restart, its CDI specs, and the kubelet's two gRPC services over real unix sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conspirator.deviceplugin.allocation import AllocationConfig, Given, container_allocation
from conspirator.deviceplugin.dra.checkpoint import PreparedDevice
from conspirator.deviceplugin.dra.claims import ClaimRef
from conspirator.deviceplugin.dra.prepare import ContainerEdits, DraDriver
from conspirator.deviceplugin.dra.registration import api_pb2 as reg_pb
from conspirator.deviceplugin.dra.registration import api_pb2_grpc as reg_grpc
from conspirator.deviceplugin.dra.server import DraPluginServer
from conspirator.deviceplugin.dra.v1 import api_pb2 as pb
from conspirator.deviceplugin.dra.v1 import api_pb2_grpc as pb_grpc
from conspirator.deviceplugin.simulated import SimulatedBackend

from .conftest import make_backend

NODE = "test-node"


class Claims:
    """The API server's ResourceClaims, as a ClaimReader (no API server runs here)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0

    def add(self, name: str, uid: str, devices: list[str], pool: str = NODE,
            namespace: str = "team-a", driver: str = "conspirator.io",
            pods: tuple[str, ...] = ()) -> ClaimRef:
        self.objects[(namespace, name)] = {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"namespace": namespace, "name": name, "uid": uid},
            "status": {"allocation": {"devices": {"results": [
                {"request": "gpu", "driver": driver, "pool": pool, "device": d}
                for d in devices]}},
                "reservedFor": [{"resource": "pods", "name": f"pod-{u}", "uid": u}
                                for u in pods]},
        }
        return ClaimRef(namespace=namespace, name=name, uid=uid)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.objects.get((namespace, name))


def daemon_edits(backend: SimulatedBackend, tmp: Path) -> Any:
    """The device plugin's own Allocate environment (:mod:`.allocation`), as the DRA
    driver's edits."""
    config = AllocationConfig(NODE, tmp / "reg" / "registry.sock")

    def edits(resource: str, devices: list[PreparedDevice]) -> ContainerEdits:
        return container_allocation(config, resource,
                                    [Given(d.uuid, d.profile, d.gpu_uuid) for d in devices])

    return edits


@pytest.fixture
def backend(tmp_path: Path) -> SimulatedBackend:
    return make_backend(tmp_path, [{"model": "A100-80GB", "count": 2}, {"model": "T4"}])


@pytest.fixture
def claims() -> Claims:
    return Claims()


def make_driver(backend: SimulatedBackend, claims: Claims, tmp: Path) -> DraDriver:
    return DraDriver(NODE, backend, claims, daemon_edits(backend, tmp),
                     checkpoint=tmp / "state" / "checkpoint.json", cdi_dir=tmp / "cdi")


def test_prepare_creates_the_instance_and_writes_the_cdi_spec(
        backend: SimulatedBackend, claims: Claims, tmp_path: Path) -> None:
    driver = make_driver(backend, claims, tmp_path)
    ref = claims.add("c1", "uid-1", ["gpu-0-mig-3g-40gb-4", "gpu-1-mig-1g-10gb-2"])
    (result,) = driver.prepare([ref]).values()
    assert result.error == ""
    by_name = {d.device: d for d in result.devices}
    assert set(by_name) == {"gpu-0-mig-3g-40gb-4", "gpu-1-mig-1g-10gb-2"}
    inst = {i.key: i for g in (0, 1) for i in backend.instances(g)}
    assert set(inst) == {(0, "3g.40gb", 4), (1, "1g.10gb", 2)}
    assert by_name["gpu-0-mig-3g-40gb-4"].uuid == inst[(0, "3g.40gb", 4)].uuid
    assert by_name["gpu-0-mig-3g-40gb-4"].cdi_id == \
        "conspirator.io/mig=uid-1-gpu-0-mig-3g-40gb-4"

    spec = json.loads((tmp_path / "cdi" / "conspirator.io-mig_uid-1.json").read_text())
    assert spec["cdiVersion"] == "0.6.0" and spec["kind"] == "conspirator.io/mig"
    assert [d["name"] for d in spec["devices"]] == [
        "uid-1-gpu-0-mig-3g-40gb-4", "uid-1-gpu-1-mig-1g-10gb-2"]
    env = dict(e.split("=", 1) for e in spec["containerEdits"]["env"])
    uuids = sorted(d.uuid for d in result.devices)
    assert sorted(env["NVIDIA_VISIBLE_DEVICES"].split(",")) == uuids
    assert env["CONSPIRATOR_NODE_NAME"] == NODE
    assert env["CONSPIRATOR_REGISTRY_SOCKET"] == "/run/conspirator/registry.sock"
    assert env["CONSPIRATOR_RESOURCE"] == "conspirator.io"  # two profiles
    assert spec["containerEdits"]["mounts"][0]["containerPath"] == "/run/conspirator"
    assert driver.held() == {d.uuid: "uid-1" for d in result.devices}


def test_a_pods_devices_are_those_of_the_claims_reserved_for_it(
        backend: SimulatedBackend, claims: Claims, tmp_path: Path) -> None:
    """What the worker registry attaches to a DRA pod's buffer registration (the kubelet's
    PodResources API only lists device-plugin devices)."""
    driver = make_driver(backend, claims, tmp_path)
    mine = claims.add("c1", "uid-1", ["gpu-0-mig-1g-10gb-0"], pods=("pod-a",))
    other = claims.add("c2", "uid-2", ["gpu-1-mig-1g-10gb-0"], pods=("pod-b",))
    results = driver.prepare([mine, other])
    assert driver.devices_of_pod("pod-a") == [results["uid-1"].devices[0].uuid]
    assert driver.devices_of_pod("pod-b") == [results["uid-2"].devices[0].uuid]
    assert driver.devices_of_pod("pod-c") == []
    # Kept across a restart, and gone with the claim.
    again = make_driver(backend, claims, tmp_path)
    assert again.devices_of_pod("pod-a") == driver.devices_of_pod("pod-a")
    again.unprepare([mine])
    assert again.devices_of_pod("pod-a") == []


def test_prepare_is_idempotent_and_survives_a_restart(
        backend: SimulatedBackend, claims: Claims, tmp_path: Path) -> None:
    ref = claims.add("c1", "uid-1", ["gpu-0-mig-1g-10gb-0"])
    first = make_driver(backend, claims, tmp_path).prepare([ref])
    cdi = tmp_path / "cdi" / "conspirator.io-mig_uid-1.json"
    stamp, ops, reads = cdi.stat().st_mtime_ns, backend.operations(), claims.reads

    again = make_driver(backend, claims, tmp_path)  # a restarted daemon
    assert again.prepare([ref]) == first
    assert (cdi.stat().st_mtime_ns, backend.operations(), claims.reads) == (stamp, ops, reads)

    assert again.unprepare([ref]) == {"uid-1": ""}
    assert not cdi.exists()
    assert make_driver(backend, claims, tmp_path).prepared() == {}
    # The instance stays: the layout applier owns it; unprepare only releases.
    assert [i.key for i in backend.instances(0)] == [(0, "1g.10gb", 0)]
    assert again.unprepare([ref]) == {"uid-1": ""}  # twice is fine


def test_an_existing_instance_is_used_and_a_half_made_one_completed(
        backend: SimulatedBackend, claims: Claims, tmp_path: Path) -> None:
    made = backend.create_instance(0, "2g.20gb", 2)
    backend.create_gpu_instance(1, "1g.10gb", 6)  # GI without CI: a crash between them
    driver = make_driver(backend, claims, tmp_path)
    ref = claims.add("c1", "uid-1", ["gpu-0-mig-2g-20gb-2", "gpu-1-mig-1g-10gb-6"])
    (r,) = driver.prepare([ref]).values()
    assert r.error == ""
    assert {d.device: d.uuid for d in r.devices}["gpu-0-mig-2g-20gb-2"] == made.uuid
    assert all(i.complete for i in backend.instances(1))


def test_refusals_are_per_claim(backend: SimulatedBackend, claims: Claims,
                                tmp_path: Path) -> None:
    backend.create_instance(0, "3g.40gb", 4)
    driver = make_driver(backend, claims, tmp_path)
    good = claims.add("ok", "uid-ok", ["gpu-1-mig-7g-80gb-0"])
    cases = {
        "other-pool": claims.add("a", "uid-a", ["gpu-0-mig-1g-10gb-0"], pool="other-node"),
        "unknown": claims.add("b", "uid-b", ["gpu-0-mig-9g-99gb-0"]),
        "overlap": claims.add("c", "uid-c", ["gpu-0-mig-1g-10gb-5"]),
        "whole-with-instances": claims.add("d", "uid-d", ["gpu-0"]),
        "self-overlap": claims.add("e", "uid-e", ["gpu-0-mig-1g-10gb-0",
                                                  "gpu-0-mig-2g-20gb-0"]),
        "missing": ClaimRef(namespace="team-a", name="nope", uid="uid-f"),
        "replaced": ClaimRef(namespace="team-a", name="ok", uid="uid-old"),
    }
    out = driver.prepare([good, *cases.values()])
    assert out["uid-ok"].error == "" and len(out["uid-ok"].devices) == 1
    errors = {k: out[ref.uid].error for k, ref in cases.items()}
    assert all(errors.values()), errors
    assert "pool 'other-node'" in errors["other-pool"]
    assert "no device 'gpu-0-mig-9g-99gb-0'" in errors["unknown"]
    assert "overlaps its 3g.40gb@4" in errors["overlap"]
    assert "still holds MIG instances" in errors["whole-with-instances"]
    assert "overlap" in errors["self-overlap"]
    assert "not found" in errors["missing"]
    assert "has UID uid-ok" in errors["replaced"]
    # Nothing was created for the refused claims.
    assert [i.key for i in backend.instances(0)] == [(0, "3g.40gb", 4)]
    assert set(driver.prepared()) == {"uid-ok"}

    # A device another claim holds (or overlaps) is refused too.
    taken = claims.add("g", "uid-g", ["gpu-1-mig-1g-10gb-0"])
    assert "prepared for claim uid-ok" in driver.prepare([taken])["uid-g"].error


def test_whole_gpu_without_mig_and_unhealthy_gpus(
        backend: SimulatedBackend, claims: Claims, tmp_path: Path) -> None:
    sick: set[str] = set()
    driver = DraDriver(NODE, backend, claims, daemon_edits(backend, tmp_path),
                       checkpoint=tmp_path / "cp.json", cdi_dir=tmp_path / "cdi",
                       unhealthy=lambda: sick)
    t4 = backend.gpus()[2]
    (r,) = driver.prepare([claims.add("w", "uid-w", ["gpu-2"])]).values()
    assert r.error == "" and r.devices[0].uuid == t4.uuid
    sick.add(backend.gpus()[0].uuid)
    err = driver.prepare([claims.add("s", "uid-s", ["gpu-0-mig-1g-10gb-0"])])["uid-s"].error
    assert "unhealthy" in err


# ---- gRPC -----------------------------------------------------------------------------


@pytest.fixture
def served(backend: SimulatedBackend, claims: Claims, tmp_path: Path, sockdir: Path
           ) -> Iterator[DraPluginServer]:
    server = DraPluginServer(make_driver(backend, claims, tmp_path),
                             plugin_dir=sockdir / "plugins" / "conspirator.io",
                             registry_dir=sockdir / "plugins_registry").start()
    yield server
    server.stop()


def test_registration_as_the_kubelet_reads_it(served: DraPluginServer,
                                              sockdir: Path) -> None:
    sock = sockdir / "plugins_registry" / "conspirator.io-reg.sock"
    assert served.registration_socket == sock
    with grpc.insecure_channel(f"unix://{sock}") as ch:
        stub = reg_grpc.RegistrationStub(ch)
        info = stub.GetInfo(reg_pb.InfoRequest(), timeout=10)
        assert (info.type, info.name) == ("DRAPlugin", "conspirator.io")
        assert list(info.supported_versions) == ["v1.DRAPlugin"]
        assert info.endpoint == str(sockdir / "plugins" / "conspirator.io" / "dra.sock")
        stub.NotifyRegistrationStatus(reg_pb.RegistrationStatus(plugin_registered=True),
                                      timeout=10)
        assert served.registration.registered.is_set()
        stub.NotifyRegistrationStatus(
            reg_pb.RegistrationStatus(plugin_registered=False, error="no"), timeout=10)
        assert served.registration.error == "no"


def test_prepare_and_unprepare_over_the_kubelets_method_paths(
        served: DraPluginServer, claims: Claims, backend: SimulatedBackend) -> None:
    ref = claims.add("c1", "uid-1", ["gpu-0-mig-1g-10gb-3"])
    bad = claims.add("c2", "uid-2", ["gpu-7"])
    request = pb.NodePrepareResourcesRequest(claims=[
        pb.Claim(namespace=r.namespace, name=r.name, uid=r.uid) for r in (ref, bad)])
    with grpc.insecure_channel(f"unix://{served.plugin_socket}") as ch:
        # The path the kubelet calls, spelled out rather than taken from the stubs.
        prepare = ch.unary_unary(
            "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
            request_serializer=pb.NodePrepareResourcesRequest.SerializeToString,
            response_deserializer=pb.NodePrepareResourcesResponse.FromString)
        resp = prepare(request, timeout=30)
        ok = resp.claims["uid-1"]
        assert ok.error == ""
        (dev,) = ok.devices
        assert (dev.pool_name, dev.device_name, list(dev.request_names)) == (
            NODE, "gpu-0-mig-1g-10gb-3", ["gpu"])
        assert list(dev.cdi_device_ids) == ["conspirator.io/mig=uid-1-gpu-0-mig-1g-10gb-3"]
        assert not dev.HasField("share_id")
        assert "no device 'gpu-7'" in resp.claims["uid-2"].error

        stub = pb_grpc.DRAPluginStub(ch)
        out = stub.NodeUnprepareResources(pb.NodeUnprepareResourcesRequest(claims=[
            pb.Claim(namespace=ref.namespace, name=ref.name, uid=ref.uid)]), timeout=30)
        assert dict(out.claims)["uid-1"].error == ""
    assert [i.key for i in backend.instances(0)] == [(0, "1g.10gb", 3)]


def test_stop_removes_both_sockets(backend: SimulatedBackend, claims: Claims,
                                   tmp_path: Path, sockdir: Path) -> None:
    server = DraPluginServer(make_driver(backend, claims, tmp_path),
                             plugin_dir=sockdir / "p", registry_dir=sockdir / "r").start()
    assert server.plugin_socket.exists() and server.registration_socket.exists()
    server.stop()
    assert not server.plugin_socket.exists() and not server.registration_socket.exists()
    assert not server.serving
