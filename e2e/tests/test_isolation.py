"""Tenant isolation at admission, on the real kubelet (device-plugin mode).

The scenario of the DRA issue: GPU 0 holds two 1g instances reserved for dedicated tenant
A, GPU 1 one instance of tenant B and one of tenant C.  The pods are created in the
adverse order and in shuffled orders; each container must see an instance its own job
reserved, so no GPU ever runs pods of A and of another tenant.

With the shared profile resource (``conspirator.io/mig-1g.10gb``, what every worker
requested before reservations became resources) the same scenario breaks isolation: the
kubelet takes the device plugin's preferred allocation, which packs B's pod next to A's.
The legacy round shows that, so the scenario stays adverse enough to catch a regression.
"""

from __future__ import annotations

import random
import secrets
import shutil
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

from conspirator.mig import reserved_resource_name, resource_name

from .test_deviceplugin_kubelet import GEOMETRY

# A100-40GB: a profile name no other test advertises on the real node (the kubelet keeps
# reporting a resource, at 0, for minutes after its plugin has gone).
PROFILE = "1g.5gb"
IMAGE = "conspirator.local/e2e/dpworker:v1"


@pytest.fixture(scope="module")
def daemon(cluster: LocalCluster, cluster_info: dict[str, Any]) -> Iterator[RealNodeDaemon]:
    apply_crds(cluster)
    build_dpworker_image(cluster)
    d = RealNodeDaemon(cluster, cluster_info,
                       "gpus:\n  - model: A100-40GB\n  - model: A100-40GB\n")
    d.agent.start()
    d.process.start()
    try:
        yield d
    finally:
        d.process.stop()
        d.agent.stop()
        cluster.kubectl("delete", "gpunode", d.node, "--ignore-not-found", check=False)
        shutil.rmtree(d.dir, ignore_errors=True)


def pod(name: str, ns: str, node: str, job: str, resource: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"conspirator.io/job": job}),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=1,
            node_selector={"kubernetes.io/hostname": node},
            containers=[client.V1Container(
                name="worker", image=IMAGE, image_pull_policy="Never",
                args=[str(GEOMETRY.control_bytes), str(GEOMETRY.data_bytes),
                      str(GEOMETRY.slot_bytes), str(GEOMETRY.result_bytes)],
                env=[client.V1EnvVar(name="CONSPIRATOR_JOB", value=job),
                     client.V1EnvVar(name="CONSPIRATOR_NAMESPACE", value=ns)],
                resources=client.V1ResourceRequirements(limits={resource: "1"},
                                                        requests={resource: "1"}),
            )],
        ),
    )


def seen_device(core: client.CoreV1Api, ns: str, name: str) -> str:
    """The MIG device the container was given (its environment, as the worker prints it)."""
    log: str = wait_for(f"{name} to print its environment", lambda: (
        text := core.read_namespaced_pod_log(name, ns)) and "env NVIDIA_VISIBLE_DEVICES=" in
        text and text, 90)
    for line in log.splitlines():
        if line.startswith("env NVIDIA_VISIBLE_DEVICES="):
            return line.split("=", 1)[1]
    raise AssertionError(log)


def run_round(core: client.CoreV1Api, api: client.ApiClient, d: RealNodeDaemon, ns: str,
              order: list[tuple[str, str, str]]) -> dict[str, tuple[str, int, int]]:
    """Create the pods (name, job, resource) in ``order``, one at a time as the kubelet
    admits them; return pod -> (job, GPU index, start) of the device each container saw."""
    for name, job, res in order:
        core.create_namespaced_pod(ns, pod(name, ns, d.node, job, res))
        wait_for(f"{name} to run", lambda n=name: as_dict(core.read_namespaced_pod(n, ns))[
            "status"]["phase"] == "Running", 120, on_timeout=d.process.tail)
    st = (gpunode(api, d.node) or {})["status"]
    where = {i["uuid"]: (g["index"], i["start"]) for g in st["gpus"] for i in g["instances"]}
    out = {name: (job, *where[seen_device(core, ns, name)]) for name, job, _ in order}
    for name, _, _ in order:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    for name, _, _ in order:
        wait_for(f"{name} to go", lambda n=name: not any(
            p.metadata is not None and p.metadata.name == n
            for p in core.list_namespaced_pod(ns).items), 120)
    return out


def tenants_per_gpu(seen: dict[str, tuple[str, int, int]]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for job, gpu, _ in seen.values():
        out.setdefault(gpu, set()).add(job)
    return out


def set_spec(api: client.ApiClient, node: str, gpus: list[dict[str, Any]]) -> int:
    obj: Any = client.CustomObjectsApi(api).patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, node, {"spec": {"gpus": gpus}})
    return int(obj["metadata"]["generation"])


def test_no_gpu_runs_a_dedicated_tenant_beside_another(
        daemon: RealNodeDaemon, api: client.ApiClient, core: client.CoreV1Api,
        namespace: str) -> None:
    d, ns = daemon, namespace
    wait_for("the daemon's GPUNode", lambda: condition(gpunode(api, d.node), "Ready").get(
        "status") == "True", 60, on_timeout=d.process.tail)
    tag = secrets.token_hex(3)  # fresh resource names: the kubelet remembers old ones
    a, b, c = (f"{t}-{tag}" for t in ("tenant-a", "tenant-b", "tenant-c"))
    owners = {j: f"{ns}/{j}" for j in (a, b, c)}
    res = {j: reserved_resource_name(PROFILE, owners[j]) for j in (a, b, c)}

    def inst(start: int, job: str | None) -> dict[str, Any]:
        return {"profile": PROFILE, "start": start,
                **({"reservedFor": owners[job]} if job else {})}

    reserved = {(0, 0): a, (0, 1): a, (1, 0): b, (1, 1): c}
    gen = set_spec(api, d.node, [
        {"index": g, "instances": [inst(s, j) for (gg, s), j in reserved.items() if gg == g]}
        for g in (0, 1)])
    wait_for("the reserved layout", lambda: applied(api, d.node, gen), 60,
             on_timeout=d.process.tail)
    wait_for("the kubelet to advertise the jobs' resources", lambda: (
        (cap := capacity(core, d.node)[1]).get(res[a]) == "2" and cap.get(res[b]) == "1"
        and cap.get(res[c]) == "1"), 60, on_timeout=d.process.tail)

    pods = [("a0", a, res[a]), ("a1", a, res[a]), ("b0", b, res[b]), ("c0", c, res[c])]
    adverse = [pods[0], pods[2], pods[1], pods[3]]  # A, then B beside it, then A, C
    rng = random.Random(tag)
    orders = [adverse, *(rng.sample(pods, len(pods)) for _ in range(2))]
    for order in orders:
        seen = run_round(core, api, d, ns, order)
        for job, gpu, start in seen.values():
            assert reserved[(gpu, start)] == job, (order, seen)  # exactly its job's instance
        assert tenants_per_gpu(seen) == {0: {a}, 1: {b, c}}, (order, seen)

    # Legacy: the same layout unreserved, every pod asking for the shared resource (what
    # the operator's workers did before): the adverse order puts B beside dedicated A.
    gen = set_spec(api, d.node, [{"index": g, "instances": [inst(s, None) for s in (0, 1)]}
                                 for g in (0, 1)])
    wait_for("the unreserved layout", lambda: applied(api, d.node, gen), 60,
             on_timeout=d.process.tail)
    shared = resource_name(PROFILE)
    wait_for("the shared resource", lambda: capacity(core, d.node)[1].get(shared) == "4", 60,
             on_timeout=d.process.tail)
    seen = run_round(core, api, d, ns, [(n, j, shared) for n, j, _ in adverse])
    assert any(len(jobs) > 1 and a in jobs for jobs in tenants_per_gpu(seen).values()), seen
