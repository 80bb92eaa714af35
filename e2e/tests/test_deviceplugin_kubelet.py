"""The node daemon on the real node: the real kubelet registers its device plugins, advertises
the MIG resources on the Node, and calls Allocate when a worker pod starts; the container sees
what Allocate gave it and registers its input buffer through the mounted socket, which the
daemon publishes to a (test) DPU agent.

The daemon runs the simulated GPU backend (no GPU here) as its own process, with the kubelet's
device-plugin directory from cluster.json; the test plays the operator by writing GPUNode.spec.
"""

from __future__ import annotations

import json
import mmap
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conspirator_e2e.cluster import LocalCluster
from conspirator_e2e.datapath import condition, gpunode
from conspirator_e2e.nodedaemon import apply_crds, build_dpworker_image, wait_for
from conspirator_e2e.realnode import (
    GROUP,
    PLURAL,
    VERSION,
    RealNodeDaemon,
    applied,
    capacity,
)
from conspirator_e2e.testing import as_dict
from kubernetes import client

from conspirator.wire.shm import Geometry

# H200 profiles: names no other e2e test uses, since the kubelet keeps reporting a resource
# (at 0) for minutes after its plugin has gone.
R1 = "conspirator.io/mig-1g.18gb"
R3 = "conspirator.io/mig-3g.71gb"
R4 = "conspirator.io/mig-4g.71gb"
GEOMETRY = Geometry(slots=1, slot_bytes=4096, result_bytes=64)


def timing(what: str, t0: float) -> None:
    print(f"[timing] {what}: {time.monotonic() - t0:.2f}s")


@pytest.fixture(scope="module")
def daemon(cluster: LocalCluster, cluster_info: dict[str, Any],
           api: client.ApiClient) -> Iterator[RealNodeDaemon]:
    apply_crds(cluster)
    build_dpworker_image(cluster)
    d = RealNodeDaemon(cluster, cluster_info, "gpus:\n  - model: H200-141GB\n")
    d.agent.start()
    d.process.start()
    try:
        yield d
    finally:
        d.process.stop()
        d.agent.stop()
        cluster.kubectl("delete", "gpunode", d.node, "--ignore-not-found", check=False)
        if d.process.proc is not None and d.process.proc.returncode not in (0, None):
            print(d.process.tail())
        shutil.rmtree(d.dir, ignore_errors=True)


def set_layout(api: client.ApiClient, name: str, instances: list[tuple[str, int]]) -> int:
    obj: Any = client.CustomObjectsApi(api).patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name,
        {"spec": {"gpus": [{"index": 0, "instances": [{"profile": p, "start": s}
                                                      for p, s in instances]}]}})
    return int(obj["metadata"]["generation"])


def worker_pod(name: str, ns: str, node: str, image: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"conspirator.io/job": "resnet"}),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=5,
            node_selector={"kubernetes.io/hostname": node},
            containers=[client.V1Container(
                name="worker", image=image, image_pull_policy="Never",
                args=[str(GEOMETRY.control_bytes), str(GEOMETRY.data_bytes),
                      str(GEOMETRY.slot_bytes), str(GEOMETRY.result_bytes)],
                env=[client.V1EnvVar(name="CONSPIRATOR_JOB", value="resnet"),
                     client.V1EnvVar(name="CONSPIRATOR_NAMESPACE", value=ns)],
                resources=client.V1ResourceRequirements(limits={R1: "1"}, requests={R1: "1"}),
            )],
        ),
    )


def test_real_kubelet_allocates_mig_devices_to_a_worker(
        daemon: RealNodeDaemon, api: client.ApiClient, core: client.CoreV1Api,
        namespace: str) -> None:
    node = daemon.node
    hint = daemon.process.tail
    wait_for("the daemon's GPUNode", lambda: condition(gpunode(api, node), "Ready").get(
        "status") == "True", 60, on_timeout=hint)

    # The operator's part: seven 1g.18gb instances on GPU 0.
    t0 = time.monotonic()
    gen = set_layout(api, node, [("1g.18gb", s) for s in range(7)])
    obj = wait_for("the layout to be applied", lambda: applied(api, node, gen), 60,
                   on_timeout=hint)
    timing("spec written -> LayoutApplied", t0)
    insts = obj["status"]["gpus"][0]["instances"]
    assert [(i["profile"], i["start"]) for i in insts] == [("1g.18gb", s) for s in range(7)]
    uuids = {i["uuid"] for i in insts}
    assert obj["status"]["dpu"] == {"present": True, "model": "BlueField-2",
                                    "agentEndpoint": "10.244.0.1:7100"}
    # The real kubelet registered the plugin and advertises the devices on the Node.
    wait_for("the kubelet to advertise 7 x 1g.18gb",
             lambda: capacity(core, node)[1].get(R1) == "7", 60, on_timeout=hint)
    timing("spec written -> Node allocatable (real kubelet)", t0)
    # The registry's publisher authenticated with the (test) agent: DPUReady.
    wait_for("DPUReady", lambda: condition(gpunode(api, node), "DPUReady").get(
        "status") == "True", 30, on_timeout=hint)

    # A worker pod: the kubelet calls Allocate; the container sees what Allocate gave it.
    image = "conspirator.local/e2e/dpworker:v1"
    t0 = time.monotonic()
    core.create_namespaced_pod(namespace, worker_pod("w0", namespace, node, image))
    pod = wait_for("the worker to run", lambda: (p := as_dict(core.read_namespaced_pod(
        "w0", namespace)))["status"]["phase"] == "Running" and p, 90, on_timeout=hint)
    log = wait_for("the worker to register", lambda: (
        text := core.read_namespaced_pod_log("w0", namespace)) and "serving" in text and text,
        60, on_timeout=hint)
    env = dict(line[4:].split("=", 1) for line in log.splitlines() if line.startswith("env "))
    device = env["NVIDIA_VISIBLE_DEVICES"]
    assert device in uuids, log
    assert env["CONSPIRATOR_DEVICES"] == device
    assert env["CONSPIRATOR_RESOURCE"] == R1
    assert env["CONSPIRATOR_MIG_PROFILE"] == "1g.18gb"
    assert env["CONSPIRATOR_GPU_UUIDS"] == obj["status"]["gpus"][0]["uuid"]
    assert env["CONSPIRATOR_REGISTRY_SOCKET"] == "/run/conspirator/registry.sock"
    assert "socket /run/conspirator/registry.sock is a socket: yes" in log
    timing("pod created -> running and its buffer registered", t0)
    registered = json.loads(log.split("registered ", 1)[1].splitlines()[0])

    # The daemon knew the caller's pod (SO_PEERCRED -> cgroup -> pod UID) and published the
    # buffer, with the very memory the container wrote into.
    bid = registered["buffer_id"]
    daemon.agent.wait("the publication", lambda: bid in daemon.agent.published)
    got = daemon.agent.published[bid]
    pub = got.publication
    assert pub.pod_uid == pod["metadata"]["uid"]
    assert pub.extra["pod"] == f"{namespace}/w0"
    assert pub.extra.get("devices") == device
    assert pub.spec.job == f"{namespace}/resnet"
    with mmap.mmap(got.fds[3], GEOMETRY.data_bytes) as mem:
        assert mem[:13] == b"hello from w0"

    # The device in use is reported so (the kubelet's PodResources API says who holds it);
    # metrics say what was advertised and allocated.
    wait_for("the device to be reported in use", lambda: any(
        i["uuid"] == device and i.get("inUse") for i in (gpunode(api, node) or {}).get(
            "status", {}).get("gpus", [{}])[0].get("instances", [])), 30, on_timeout=hint)
    log_text = daemon.process.log_file.read_text(errors="replace")
    assert "device holders from the kubelet's PodResources API" in log_text, hint()
    metrics = daemon.metrics()
    assert (f'conspirator_node_devices_advertised{{health="healthy",node="{node}",'
            f'resource="{R1}"}} 7.0') in metrics
    assert f'conspirator_node_allocations_total{{node="{node}",resource="{R1}"}} 1.0' in metrics
    assert f'conspirator_node_registered_buffers{{node="{node}"}} 1.0' in metrics

    # A layout that removes the device in use: everything else changes, it stays (blocked).
    gen = set_layout(api, node, [("4g.71gb", 0), ("3g.71gb", 4)])
    obj = wait_for("the change to be blocked", lambda: applied(api, node, gen, "False"), 60,
                   on_timeout=hint)
    blocked = condition(obj, "LayoutApplied")
    assert blocked["reason"] == "Blocked" and device in blocked["message"]
    left = obj["status"]["gpus"][0]["instances"]
    assert device in {i["uuid"] for i in left}
    assert sum(1 for i in left if i["profile"] == "1g.18gb") == 1
    events = as_dict(core.list_namespaced_event("default", field_selector=(
        f"involvedObject.name={node},reason=LayoutBlocked")))["items"]
    assert any(device in e["message"] for e in events), events
    wait_for("the kubelet to see the 1g.18gb devices go",
             lambda: capacity(core, node)[0].get(R1) == "1", 60, on_timeout=hint)

    # The pod exits: its buffer is withdrawn and the layout completes.
    t0 = time.monotonic()
    core.delete_namespaced_pod("w0", namespace)
    daemon.agent.wait("the withdrawal", lambda: any(b == bid for b, _ in daemon.agent.withdrawn),
                      60)
    timing("pod deleted -> buffer withdrawn", t0)
    obj = wait_for("the layout to complete", lambda: applied(api, node, gen), 90,
                   on_timeout=hint)
    timing("pod deleted -> blocked layout applied", t0)
    assert [(i["profile"], i["start"]) for i in obj["status"]["gpus"][0]["instances"]] == [
        ("4g.71gb", 0), ("3g.71gb", 4)]
    wait_for("the kubelet to advertise the new layout", lambda: (
        (c := capacity(core, node))[1].get(R4) == "1" and c[1].get(R3) == "1"
        and c[1].get(R1, "0") == "0"), 60, on_timeout=hint)
