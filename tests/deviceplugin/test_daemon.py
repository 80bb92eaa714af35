"""The daemon's reconcile pass on the simulated backend, with an in-memory API server and a
test kubelet (real gRPC)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conspirator.api.v1alpha1 import DPUStatus
from conspirator.deviceplugin.daemon import (
    DaemonConfig,
    NodeDaemon,
    detect_dpu,
)
from conspirator.deviceplugin.kube import DEVICES_ANNOTATION, PodInfo, pod_info
from conspirator.deviceplugin.simulated import SimulatedBackend
from conspirator.mig import reserved_resource_name

from .conftest import make_backend
from .fakes import FakeNodeAPI
from .kubelet import TestKubelet

R1 = "conspirator.io/mig-1g.10gb"
R3 = "conspirator.io/mig-3g.40gb"
R7 = "conspirator.io/mig-7g.80gb"


def inst(profile: str, start: int) -> dict[str, object]:
    return {"profile": profile, "start": start}


def kwok_daemon(backend: SimulatedBackend, cluster: FakeNodeAPI) -> NodeDaemon:
    return NodeDaemon(DaemonConfig(node="node-1", kwok=True), backend, cluster)


def test_kwok_mode_applies_advertises_and_reports(a100x2: SimulatedBackend) -> None:
    cluster = FakeNodeAPI()
    d = kwok_daemon(a100x2, cluster)
    d.reconcile()
    # No spec yet: inventory and readiness, nothing advertised, nothing changed.
    st = cluster.status
    assert st.gpu_count == 2 and [g.model for g in st.gpus] == ["A100-80GB"] * 2
    assert all(g.mig_capable and g.mig_enabled and not g.instances for g in st.gpus)
    assert cluster.condition("Ready")[0] == "True"
    assert cluster.condition("DPUReady")[:2] == ("False", "NoDPU")
    assert cluster.capacity == {}

    cluster.set_spec([{"index": 0, "instances": [inst("3g.40gb", 0), inst("3g.40gb", 4)]},
                      {"index": 1, "instances": [inst("1g.10gb", s) for s in range(7)]}])
    r = d.reconcile()
    assert r is not None and r.converged
    assert cluster.capacity == {R3: (2, 2), R1: (7, 7)}
    st = cluster.status
    assert st.observed_generation == 2
    assert cluster.condition("LayoutApplied")[:2] == ("True", "Applied")
    assert [(i.profile, i.start) for i in st.gpus[0].instances] == [("3g.40gb", 0),
                                                                   ("3g.40gb", 4)]
    assert all(i.uuid and i.uuid.startswith("MIG-") and not i.in_use
               for g in st.gpus for i in g.instances)
    assert [e[1] for e in cluster.events] == ["Reconfigured"]
    # Idempotent: another pass changes nothing and writes nothing.
    writes = len(cluster.statuses)
    d.reconcile()
    assert len(cluster.statuses) == writes and len(cluster.events) == 1
    m = d.metrics.registry
    assert m.get_sample_value("conspirator_node_reconfigurations_total",
                              {"node": "node-1", "outcome": "converged"}) == 1
    assert m.get_sample_value("conspirator_node_mig_operations_total",
                              {"node": "node-1", "operation": "create"}) == 9
    assert m.get_sample_value("conspirator_node_devices_advertised",
                              {"node": "node-1", "resource": R1, "health": "healthy"}) == 7
    assert m.get_sample_value("conspirator_node_apply_duration_seconds_count",
                              {"node": "node-1"}) == 1


def test_kwok_pods_get_devices_and_block_their_destruction(a100x2: SimulatedBackend) -> None:
    cluster = FakeNodeAPI()
    d = kwok_daemon(a100x2, cluster)
    cluster.set_spec([{"index": 0, "instances": [inst("3g.40gb", 0), inst("3g.40gb", 4)]}])
    d.reconcile()
    cluster.pod_list = [PodInfo(uid="u1", namespace="ns", name="w1", phase="Running",
                                requests={R3: 1})]
    d.reconcile()
    assigned = json.loads(cluster.pod_list[0].annotations[DEVICES_ANNOTATION])
    [dev] = assigned[R3]
    assert dev == a100x2.instances(0)[0].uuid  # the first free one, by start slice
    assert [i.in_use for i in cluster.status.gpus[0].instances] == [True, False]
    assert cluster.capacity == {R3: (2, 2)}  # the scheduler counts the pod itself

    # The operator asks for one 7g: the 3g in use stays; the free one goes.
    cluster.set_spec([{"index": 0, "instances": [inst("7g.80gb", 0)]}])
    d.reconcile()
    assert [(i.profile, i.start) for i in a100x2.instances(0)] == [("3g.40gb", 0)]
    reason, msg = cluster.condition("LayoutApplied")[1:]
    assert reason == "Blocked" and dev in msg
    assert ("Warning", "LayoutBlocked") in [e[:2] for e in cluster.events]
    assert cluster.capacity == {R3: (1, 1)}
    assert d.metrics.registry.get_sample_value("conspirator_node_blocked_changes_total",
                                               {"node": "node-1"}) == 1
    d.reconcile()  # still blocked: reported once
    assert [e[1] for e in cluster.events].count("LayoutBlocked") == 1

    # The pod finishes: its device is free, the layout converges.
    cluster.pod_list = [PodInfo(uid="u1", namespace="ns", name="w1", phase="Succeeded",
                                requests={R3: 1}, annotations=cluster.pod_list[0].annotations)]
    d.reconcile()
    assert cluster.condition("LayoutApplied")[:2] == ("True", "Applied")
    assert cluster.capacity == {R7: (1, 1)}
    assert d.metrics.registry.get_sample_value("conspirator_node_blocked_instances",
                                               {"node": "node-1"}) == 0


def test_invalid_layouts_are_reported_not_applied(tmp_path: Path) -> None:
    b = make_backend(tmp_path, [{"model": "A30-24GB"}])
    cluster = FakeNodeAPI()
    d = kwok_daemon(b, cluster)
    # Valid for the API server (start rules of 8-slice GPUs), not for an A30's 4 slices.
    cluster.set_spec([{"index": 0, "instances": [inst("1g.6gb", 5)]}])
    d.reconcile()
    status, reason, msg = cluster.condition("LayoutApplied")
    assert (status, reason) == ("False", "InvalidLayout") and "cannot start at slice 5" in msg
    assert cluster.status.observed_generation == 2
    assert b.operations() == 0
    assert ("Warning", "InvalidLayout") in [e[:2] for e in cluster.events]


def test_unhealthy_devices(a100x2: SimulatedBackend) -> None:
    cluster = FakeNodeAPI()
    d = kwok_daemon(a100x2, cluster)
    cluster.set_spec([{"index": 0, "instances": [inst("3g.40gb", 0), inst("3g.40gb", 4)]}])
    d.reconcile()
    sick = a100x2.instances(0)[1].uuid
    assert sick is not None
    a100x2.inject_xid(sick, 79)
    for ev in a100x2.poll_health(0):
        d.unhealthy[ev.uuid] = ev.reason
    d.reconcile()
    assert cluster.capacity == {R3: (2, 1)}
    assert sick in cluster.condition("Ready")[2]


def test_kubelet_mode_end_to_end(a100x2: SimulatedBackend, kubelet: TestKubelet,
                                 sockdir: Path) -> None:
    cluster = FakeNodeAPI()
    reg = sockdir / "registry" / "registry.sock"
    d = NodeDaemon(DaemonConfig(node="node-1", plugin_dir=kubelet.plugin_dir,
                                registry_socket=reg,
                                dpu=DPUStatus(present=True, model="BlueField-2"),
                                agent_endpoint="10.0.0.9:7100"), a100x2, cluster)
    try:
        cluster.set_spec([{"index": 0, "instances": [inst("3g.40gb", 0), inst("3g.40gb", 4)]},
                          {"index": 1, "instances": [inst("7g.80gb", 0)]}])
        d.reconcile()
        ids3 = [i.uuid for i in a100x2.instances(0)]
        got = kubelet.devices(R3, lambda ds: len(ds) == 2)
        assert sorted(x for x, _ in got) == sorted(ids3)  # type: ignore[type-var]
        kubelet.devices(R7, lambda ds: len(ds) == 1)
        assert cluster.status.dpu is not None and cluster.status.dpu.present
        assert cluster.status.dpu.agent_endpoint == "10.0.0.9:7100"
        assert cluster.condition("DPUReady")[:2] == ("False", "AgentNotConnected")

        dev = ids3[1]
        assert dev is not None
        c = kubelet.allocate(R3, [dev]).container_responses[0]
        assert c.envs["NVIDIA_VISIBLE_DEVICES"] == dev
        assert c.envs["CONSPIRATOR_MIG_PROFILE"] == "3g.40gb"
        assert c.envs["CONSPIRATOR_REGISTRY_SOCKET"] == "/run/conspirator/registry.sock"
        assert c.envs["CONSPIRATOR_GPU_UUIDS"] == a100x2.gpus()[0].uuid
        assert [(m.container_path, m.host_path, m.read_only) for m in c.mounts] == [
            ("/run/conspirator", str(reg.parent), True)]
        assert json.loads(c.annotations[DEVICES_ANNOTATION]) == {R3: [dev]}

        # Just allocated: held even before the kubelet's checkpoint names the pod.
        cluster.set_spec([{"index": 0, "instances": [inst("7g.80gb", 0)]},
                          {"index": 1, "instances": [inst("7g.80gb", 0)]}])
        d.reconcile()
        assert cluster.condition("LayoutApplied")[1] == "Blocked"
        assert [i.uuid for i in a100x2.instances(0)] == [dev]
        kubelet.devices(R3, lambda ds: len(ds) == 1)
    finally:
        if d.plugins is not None:
            d.plugins.stop()


def test_pod_info_counts_devices_per_container() -> None:
    p = pod_info({"metadata": {"uid": "u", "namespace": "n", "name": "p"},
                  "spec": {"containers": [
                      {"resources": {"limits": {R1: "2", "cpu": "1"}, "requests": {R1: "2"}}},
                      {"resources": {"limits": {R1: "1"}}}],
                      "initContainers": [{"resources": {"limits": {R3: "1"}}}]},
                  "status": {"phase": "Running"}})
    assert p.requests == {R1: 3, R3: 1} and p.alive
    assert not pod_info({"status": {"phase": "Failed"}}).alive


def test_detect_dpu(tmp_path: Path) -> None:
    for name, vendor, device in (("0000:01:00.0", "0x10de", "0x20b5"),
                                 ("0000:03:00.0", "0x15b3", "0xa2d6")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "device").write_text(device + "\n")
    assert detect_dpu(tmp_path) == DPUStatus(present=True, model="BlueField-2")
    assert detect_dpu(tmp_path / "none") == DPUStatus(present=False)


@pytest.mark.skipif(not Path("/proc/self/cgroup").exists(), reason="no /proc")
def test_holder_processes_block_too(a100x2: SimulatedBackend) -> None:
    cluster = FakeNodeAPI()
    d = kwok_daemon(a100x2, cluster)
    cluster.set_spec([{"index": 0, "instances": [inst("7g.80gb", 0)]}])
    d.reconcile()
    dev = a100x2.instances(0)[0].uuid
    assert dev is not None
    a100x2.claim(dev, os.getpid())  # this test process "runs CUDA" on it
    cluster.set_spec([{"index": 0, "instances": []}])
    d.reconcile()
    assert cluster.condition("LayoutApplied")[1] == "Blocked"
    assert cluster.status.gpus[0].instances[0].in_use
    a100x2.release(dev, os.getpid())
    d.reconcile()
    assert cluster.condition("LayoutApplied")[:2] == ("True", "Applied")


def test_reserved_instances_are_advertised_only_under_their_jobs_resource(
        a100x2: SimulatedBackend, kubelet: TestKubelet) -> None:
    """The issue's isolation scenario: GPU 0 holds two 1g instances of dedicated tenant A,
    GPU 1 one of B and one of C and a free one.  Whatever order the kubelet admits pods
    in, a pod can only get devices of the resource it asks for, so B's pod can never be
    handed an instance on A's GPU."""
    cluster = FakeNodeAPI()
    d = NodeDaemon(DaemonConfig(node="node-1", plugin_dir=kubelet.plugin_dir), a100x2, cluster)
    a, b, c = (reserved_resource_name("1g.10gb", k) for k in ("ta/a", "tb/b", "tc/c"))
    try:
        cluster.set_spec([
            {"index": 0, "instances": [{**inst("1g.10gb", 0), "reservedFor": "ta/a"},
                                       {**inst("1g.10gb", 1), "reservedFor": "ta/a"}]},
            {"index": 1, "instances": [{**inst("1g.10gb", 0), "reservedFor": "tb/b"},
                                       {**inst("1g.10gb", 1), "reservedFor": "tc/c"},
                                       inst("1g.10gb", 2)]}])
        d.reconcile()
        uuids = {(g, i.start): i.uuid for g in (0, 1) for i in a100x2.instances(g)}
        assert sorted(x for x, _ in kubelet.devices(a, lambda ds: len(ds) == 2)) == sorted(
            [uuids[(0, 0)], uuids[(0, 1)]])  # type: ignore[type-var]
        assert [x for x, _ in kubelet.devices(b, lambda ds: len(ds) == 1)] == [uuids[(1, 0)]]
        assert [x for x, _ in kubelet.devices(c, lambda ds: len(ds) == 1)] == [uuids[(1, 1)]]
        # The free instance on a GPU with reservations is offered to nobody, and no
        # shared 1g resource exists to hand out A's instances.
        assert set(d.devices()) == {a, b, c}
        assert R1 not in kubelet.endpoints
        by_start = {(g.index, i.start): i.resource for g in cluster.status.gpus
                    for i in g.instances}
        assert by_start == {(0, 0): a, (0, 1): a, (1, 0): b, (1, 1): c, (1, 2): None}
        # B's Allocate gets B's device and nothing else exists under B's name.
        got = kubelet.allocate(b, [uuids[(1, 0)]]).container_responses[0]  # type: ignore[list-item]
        assert got.envs["NVIDIA_VISIBLE_DEVICES"] == uuids[(1, 0)]
        assert got.envs["CONSPIRATOR_GPU_UUIDS"] == a100x2.gpus()[1].uuid
    finally:
        if d.plugins is not None:
            d.plugins.stop()


def test_unreserved_layouts_keep_the_shared_profile_resource(a100x2: SimulatedBackend) -> None:
    cluster = FakeNodeAPI()
    d = kwok_daemon(a100x2, cluster)
    cluster.set_spec([{"index": 0, "instances": [inst("3g.40gb", 0)]},
                      {"index": 1, "instances": [{**inst("3g.40gb", 0), "reservedFor": "n/j"},
                                                 inst("3g.40gb", 4)]}])
    d.reconcile()
    # GPU 0 has no reservation: its instance stays open to any pod asking for 3g.
    assert cluster.capacity == {R3: (1, 1), reserved_resource_name("3g.40gb", "n/j"): (1, 1)}
    cluster.pod_list = [PodInfo(uid="u1", namespace="n", name="w", phase="Running",
                                requests={reserved_resource_name("3g.40gb", "n/j"): 1})]
    d.reconcile()
    [dev] = json.loads(cluster.pod_list[0].annotations[DEVICES_ANNOTATION]).values()
    assert dev == [a100x2.instances(1)[0].uuid]
    # The plan gives that instance to another job while the pod still holds it: it stays
    # under the holder's resource until released, so the kubelet cannot hand it out twice.
    rj, rk = (reserved_resource_name("3g.40gb", k) for k in ("n/j", "n/k"))
    cluster.set_spec([{"index": 0, "instances": [inst("3g.40gb", 0)]},
                      {"index": 1, "instances": [{**inst("3g.40gb", 0), "reservedFor": "n/k"},
                                                 inst("3g.40gb", 4)]}])
    d.reconcile()
    assert cluster.capacity == {R3: (1, 1), rj: (1, 1)}
    cluster.pod_list = [PodInfo(uid="u1", namespace="n", name="w", phase="Succeeded",
                                requests={rj: 1}, annotations=cluster.pod_list[0].annotations)]
    d.reconcile()
    assert cluster.capacity == {R3: (1, 1), rk: (1, 1)}
