"""Node daemons on kwok GPU nodes: one real ``conspirator node-daemon --kwok`` process per node
(simulated backend) drives GPUNode.spec to applied and advertises the MIG devices as the Node's
capacity, so the real scheduler binds pods there; killing a daemon in the middle of an apply
and restarting it converges.

The test writes GPUNode.spec itself (the operator's part), on kwok nodes of its own that it
creates and deletes, so the cluster's default kwok nodes keep their layouts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conspirator_e2e.cluster import (
    GPU_TAINT_KEY,
    HELLO_IMAGE,
    ClusterSpec,
    GPUNodeSpec,
    LocalCluster,
)
from conspirator_e2e.datapath import condition, gpunode
from conspirator_e2e.nodedaemon import NodeDaemons, wait_for
from conspirator_e2e.testing import as_dict
from kubernetes import client

GROUP, VERSION, PLURAL = "conspirator.io", "v1alpha1", "gpunodes"
PREFIX = "conspirator.io/mig-"


def timing(what: str, t0: float) -> None:
    print(f"[timing] {what}: {time.monotonic() - t0:.2f}s")
NODES = (
    GPUNodeSpec(name="dp-kwok-a100-0", gpu_model="A100-80GB",
                gpus=(("3g.40gb", "3g.40gb"), ("7g.80gb",)), cpu="32", memory="256Gi"),
    GPUNodeSpec(name="dp-kwok-a100-1", gpu_model="A100-80GB",
                gpus=(("3g.40gb", "3g.40gb"), ("3g.40gb", "3g.40gb")), cpu="32",
                memory="256Gi"),
    GPUNodeSpec(name="dp-kwok-h200-0", gpu_model="H200-141GB", gpus=(("7g.141gb",),),
                cpu="32", memory="256Gi"),
)


@pytest.fixture(scope="module")
def daemons(cluster: LocalCluster) -> Iterator[NodeDaemons]:
    cluster.create_gpu_nodes(ClusterSpec(name="dp", real_node="", gpu_nodes=NODES))
    work = Path(tempfile.mkdtemp(prefix="cdp-kwok-", dir="/tmp"))
    # Each MIG operation takes 0.2 s, as real ones take about a second: an apply lasts long
    # enough to kill the daemon in the middle of it.
    d = NodeDaemons(cluster, NODES, work, op_delay=0.2, resync=2.0)
    d.install()
    d.start()
    try:
        yield d
    finally:
        d.uninstall()
        for n in NODES:
            cluster.kubectl("delete", "node", n.name, "--ignore-not-found", check=False)
        shutil.rmtree(work, ignore_errors=True)


def set_layouts(api: client.ApiClient, name: str,
                layouts: list[list[tuple[str, int]]]) -> int:
    gpus = [{"index": i, "instances": [{"profile": p, "start": s} for p, s in lay]}
            for i, lay in enumerate(layouts)]
    obj: Any = client.CustomObjectsApi(api).patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, {"spec": {"gpus": gpus}})
    return int(obj["metadata"]["generation"])


def layout_status(obj: dict[str, Any]) -> list[list[tuple[str, int]]]:
    return [[(i["profile"], i["start"]) for i in g["instances"]]
            for g in obj["status"]["gpus"]]


def applied(api: client.ApiClient, name: str, generation: int,
            status: str = "True") -> dict[str, Any] | None:
    obj = gpunode(api, name)
    if obj and (obj.get("status") or {}).get("observedGeneration") == generation and \
            condition(obj, "LayoutApplied").get("status") == status:
        return obj
    return None


def mig_capacity(core: client.CoreV1Api, node: str) -> dict[str, str]:
    st = as_dict(core.read_node(node))["status"]
    return {k: v for k, v in (st["allocatable"] or {}).items() if k.startswith(PREFIX)}


def counts(layouts: list[list[tuple[str, int]]]) -> dict[str, str]:
    out: dict[str, int] = {}
    for lay in layouts:
        for p, _ in lay:
            out[PREFIX + p] = out.get(PREFIX + p, 0) + 1
    return {k: str(v) for k, v in out.items()}


def state(daemons: NodeDaemons, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(daemons.state_file(name).read_text())
    return data


def test_one_daemon_per_kwok_node_applies_layouts(
        daemons: NodeDaemons, api: client.ApiClient, core: client.CoreV1Api,
        namespace: str) -> None:
    hint = daemons.logs
    # Each daemon reports its node's GPUs and advertises what they hold.
    for n in NODES:
        obj = wait_for(f"{n.name}'s status", lambda n=n: condition(
            gpunode(api, n.name), "Ready").get("status") == "True" and gpunode(api, n.name),
            60, on_timeout=hint)
        assert obj["status"]["gpuCount"] == len(n.gpus)
        assert {g["model"] for g in obj["status"]["gpus"]} == {n.gpu_model}
        wait_for(f"{n.name}'s capacity", lambda n=n: mig_capacity(core, n.name) == {
            PREFIX + p: str(c) for p, c in n.mig_capacity().items()}, 30, on_timeout=hint)

    # New layouts for every node at once, as the operator writes them.
    want = {
        "dp-kwok-a100-0": [[("2g.20gb", 0), ("2g.20gb", 2), ("2g.20gb", 4), ("1g.10gb", 6)],
                           [("4g.40gb", 0), ("3g.40gb", 4)]],
        "dp-kwok-a100-1": [[("3g.40gb", 0), ("3g.40gb", 4)], [("7g.80gb", 0)]],
        "dp-kwok-h200-0": [[("3g.71gb", 0), ("2g.35gb", 4), ("1g.18gb", 6)]],
    }
    t0 = time.monotonic()
    gens = {name: set_layouts(api, name, lay) for name, lay in want.items()}
    for name, lay in want.items():
        obj = wait_for(f"{name} to apply generation {gens[name]}",
                       lambda name=name: applied(api, name, gens[name]), 90, on_timeout=hint)
        assert layout_status(obj) == lay
        wait_for(f"{name}'s new capacity", lambda name=name, lay=lay: mig_capacity(
            core, name) == counts(lay), 30, on_timeout=hint)
    timing("3 nodes' specs written -> all applied and advertised (0.2 s per MIG call)", t0)

    # The real scheduler binds a pod to the profile one of the daemons advertises; kwok runs
    # it; the daemon gives it a device, as the kubelet would, and reports it in use.
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="w"),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=0,
            tolerations=[client.V1Toleration(key=GPU_TAINT_KEY, operator="Equal", value="true",
                                             effect="NoSchedule")],
            node_selector={"kubernetes.io/hostname": "dp-kwok-h200-0"},
            containers=[client.V1Container(name="w", image=HELLO_IMAGE, resources=(
                client.V1ResourceRequirements(limits={PREFIX + "3g.71gb": "1"},
                                              requests={PREFIX + "3g.71gb": "1"})))]))
    core.create_namespaced_pod(namespace, pod)
    p = wait_for("the pod to get its device", lambda: (x := as_dict(core.read_namespaced_pod(
        "w", namespace)))["spec"]["node_name"] == "dp-kwok-h200-0" and (
        x["metadata"]["annotations"] or {}).get("conspirator.io/mig-devices") and x, 60,
        on_timeout=hint)
    [device] = json.loads(p["metadata"]["annotations"]["conspirator.io/mig-devices"])[
        PREFIX + "3g.71gb"]
    wait_for("the device to be reported in use", lambda: any(
        i["uuid"] == device and i.get("inUse") for i in (gpunode(
            api, "dp-kwok-h200-0") or {})["status"]["gpus"][0]["instances"]), 30,
        on_timeout=hint)

    # Asking for the whole GPU: blocked by the pod, reported, then applied once it is gone.
    gen = set_layouts(api, "dp-kwok-h200-0", [[("7g.141gb", 0)]])
    obj = wait_for("the change to be blocked", lambda: applied(
        api, "dp-kwok-h200-0", gen, "False"), 60, on_timeout=hint)
    assert condition(obj, "LayoutApplied")["reason"] == "Blocked"
    assert layout_status(obj) == [[("3g.71gb", 0)]]
    events = as_dict(core.list_namespaced_event("default", field_selector=(
        "involvedObject.name=dp-kwok-h200-0,reason=LayoutBlocked")))["items"]
    assert any(device in e["message"] for e in events), events
    core.delete_namespaced_pod("w", namespace,
                               body=client.V1DeleteOptions(grace_period_seconds=0))
    obj = wait_for("the whole GPU", lambda: applied(api, "dp-kwok-h200-0", gen), 90,
                   on_timeout=hint)
    assert layout_status(obj) == [[("7g.141gb", 0)]]
    wait_for("the 7g capacity", lambda: mig_capacity(core, "dp-kwok-h200-0") == {
        PREFIX + "7g.141gb": "1"}, 30, on_timeout=hint)


def test_a_daemon_killed_mid_apply_converges_after_restart(
        daemons: NodeDaemons, api: client.ApiClient, core: client.CoreV1Api) -> None:
    name = "dp-kwok-a100-1"
    d = daemons.daemons[name]
    hint = daemons.logs
    wait_for(f"{name}'s status", lambda: condition(gpunode(api, name), "Ready").get(
        "status") == "True", 60, on_timeout=hint)
    before = int(state(daemons, name)["operations"])
    # 14 instances to create and whatever is there to destroy: ~40 operations of 0.2 s.
    want = [[("1g.10gb", s) for s in range(7)], [("1g.10gb", s) for s in range(7)]]
    gen = set_layouts(api, name, want)
    wait_for("the apply to be under way", lambda: int(state(daemons, name)["operations"])
             >= before + 7, 60, interval=0.05, on_timeout=hint)
    d.kill()
    mid = state(daemons, name)
    have = [[(i["profile"], i["start"]) for i in g["instances"]] for g in mid["gpus"]]
    assert have != want, "killed too late: the apply had finished"
    obj = gpunode(api, name)
    assert obj is not None and condition(obj, "LayoutApplied").get("observedGeneration") != gen

    t0 = time.monotonic()
    d.start()
    obj = wait_for("the restarted daemon to converge", lambda: applied(api, name, gen), 120,
                   interval=0.5, on_timeout=hint)
    timing(f"restart after a kill at operation {int(mid['operations']) - before} "
           "-> converged", t0)
    assert layout_status(obj) == want
    final = state(daemons, name)
    assert all(i["ciId"] is not None and i["uuid"] for g in final["gpus"]
               for i in g["instances"]), "a half-made instance was left behind"
    wait_for("the capacity", lambda: mig_capacity(core, name) == {PREFIX + "1g.10gb": "14"},
             30, on_timeout=hint)
    assert d.starts == 2
