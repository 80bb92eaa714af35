"""DRA mode on the real kubelet: the node daemon as the DRA driver ``conspirator.io``.

The daemon (simulated A100s) publishes its ResourceSlices with the GPUNode spec's
reservations, the real scheduler allocates each worker's ResourceClaim (from a template
whose CEL selector is the operator's, :func:`conspirator.mig.dra_selector`), the real
kubelet calls the driver's NodePrepareResources over gRPC, and containerd 2 applies the CDI
spec the driver wrote: the container sees the instance its job reserved.

- 20 workers of four jobs, created in a random order: 20 of 20 see one of their own job's
  reserved instances (uuid, profile, start), no two the same;
- the isolation scenario (dedicated tenant A's GPU, B and C on another) in the adverse and
  shuffled orders;
- the daemon killed right after a Prepare converges (the kubelet retries, the checkpoint
  answers); deleting the workers unprepares their claims (CDI specs gone) and frees the
  instances; a claim nothing can satisfy leaves its pod Pending with the scheduler's reason.
"""

from __future__ import annotations

import random
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from conspirator_e2e.cluster import CDI_SPEC_DIRS, LocalCluster
from conspirator_e2e.datapath import condition, gpunode
from conspirator_e2e.nodedaemon import apply_crds, build_dpworker_image, wait_for
from conspirator_e2e.realnode import (
    GROUP,
    PLURAL,
    VERSION,
    RealNodeDaemon,
    applied,
    dra_args,
)
from conspirator_e2e.testing import as_dict
from kubernetes import client

from conspirator.mig import DRA_DEVICE_CLASS, DRA_DRIVER, dra_selector

from .test_deviceplugin_kubelet import GEOMETRY

PROFILE = "1g.10gb"
IMAGE = "conspirator.local/e2e/dpworker:v1"
DEVICE_CLASS = {
    "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
    "metadata": {"name": DRA_DEVICE_CLASS},
    "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRA_DRIVER}"'}}]},
}


@pytest.fixture(scope="module")
def daemon(cluster: LocalCluster, cluster_info: dict[str, Any], api: client.ApiClient
           ) -> Iterator[RealNodeDaemon]:
    apply_crds(cluster)
    build_dpworker_image(cluster)
    custom = client.CustomObjectsApi(api)
    try:
        custom.create_cluster_custom_object("resource.k8s.io", "v1", "deviceclasses",
                                            DEVICE_CLASS)
    except client.ApiException as e:
        if e.status != 409:
            raise
    state = Path(f"/tmp/cdra-{secrets.token_hex(3)}")
    d = RealNodeDaemon(cluster, cluster_info, "gpus:\n  - model: A100-80GB\n    count: 3\n",
                       dra_args(cluster, state))
    d.agent.start()
    d.process.start()
    try:
        yield d
    finally:
        d.process.stop()
        d.agent.stop()
        cluster.kubectl("delete", "gpunode", d.node, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "resourceslices", "--field-selector",
                        f"spec.nodeName={d.node}", check=False)
        # The chart installs the class itself (test_helm): leave none behind.
        cluster.kubectl("delete", "deviceclass", DRA_DEVICE_CLASS, "--ignore-not-found",
                        check=False)
        shutil.rmtree(d.dir, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def set_spec(api: client.ApiClient, d: RealNodeDaemon,
             reserved: dict[tuple[int, int], str]) -> None:
    gpus = [{"index": g, "instances": [
        {"profile": PROFILE, "start": s, **({"reservedFor": o} if o else {})}
        for (gg, s), o in sorted(reserved.items()) if gg == g]} for g in (0, 1, 2)]
    obj: Any = client.CustomObjectsApi(api).patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, d.node, {"spec": {"gpus": gpus}})
    gen = int(obj["metadata"]["generation"])
    wait_for("the layout", lambda: applied(api, d.node, gen), 90, on_timeout=d.process.tail)


def published(api: client.ApiClient, node: str) -> dict[str, dict[str, Any]]:
    out = cast(dict[str, Any], client.CustomObjectsApi(api).list_cluster_custom_object(
        "resource.k8s.io", "v1", "resourceslices", field_selector=f"spec.nodeName={node}"))
    return {dv["name"]: dv for s in out["items"] for dv in s["spec"].get("devices", [])}


def claim_template(ns: str, job: str, profile: str = PROFILE) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": job, "namespace": ns},
        "spec": {"spec": {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": DRA_DEVICE_CLASS, "allocationMode": "ExactCount", "count": 1,
            "selectors": [{"cel": {"expression": dra_selector(profile, f"{ns}/{job}")}}],
        }}]}}},
    }


def worker(name: str, ns: str, node: str, job: str) -> Any:  # a Pod body; the client takes dicts
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"conspirator.io/job": job}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "nodeSelector": {"kubernetes.io/hostname": node},
            "resourceClaims": [{"name": "mig", "resourceClaimTemplateName": job}],
            "containers": [{
                "name": "worker", "image": IMAGE, "imagePullPolicy": "Never",
                "args": [str(GEOMETRY.control_bytes), str(GEOMETRY.data_bytes),
                         str(GEOMETRY.slot_bytes), str(GEOMETRY.result_bytes)],
                "env": [{"name": "CONSPIRATOR_JOB", "value": job},
                        {"name": "CONSPIRATOR_NAMESPACE", "value": ns}],
                "resources": {"claims": [{"name": "mig"}]},
            }],
        },
    }


def seen_device(core: client.CoreV1Api, ns: str, name: str) -> str:
    log: str = wait_for(f"{name} to print its environment", lambda: (
        text := core.read_namespaced_pod_log(name, ns)) and "env NVIDIA_VISIBLE_DEVICES=" in
        text and text, 90)
    return next(line.split("=", 1)[1] for line in log.splitlines()
                if line.startswith("env NVIDIA_VISIBLE_DEVICES="))


def running(core: client.CoreV1Api, ns: str, names: list[str]) -> bool:
    phases = {p.metadata.name: p.status.phase for p in core.list_namespaced_pod(ns).items
              if p.metadata is not None and p.status is not None}
    return all(phases.get(n) == "Running" for n in names)


def where(api: client.ApiClient, node: str) -> dict[str, tuple[int, str, int]]:
    st = (gpunode(api, node) or {})["status"]
    return {i["uuid"]: (g["index"], i["profile"], i["start"])
            for g in st["gpus"] for i in g["instances"]}


def delete_all(core: client.CoreV1Api, ns: str, names: list[str]) -> None:
    for n in names:
        core.delete_namespaced_pod(n, ns, grace_period_seconds=0)
    wait_for("the workers to go", lambda: not any(
        p.metadata is not None and p.metadata.name in names
        for p in core.list_namespaced_pod(ns).items), 180)


def resource_claims(custom: client.CustomObjectsApi, ns: str) -> list[dict[str, Any]]:
    out = cast(dict[str, Any], custom.list_namespaced_custom_object(
        "resource.k8s.io", "v1", ns, "resourceclaims"))
    return list(out["items"])


def cdi_specs() -> set[str]:
    return {p.name for p in Path(CDI_SPEC_DIRS[0]).glob("conspirator.io-mig_*.json")}


def readable(cluster: LocalCluster, node: str, ns: str, pods: list[str]) -> None:
    """What an SRE reads: ``kubectl get resourceslices,resourceclaims`` names the node, the
    driver and each claim's state; ``describe`` shows the devices' attributes by name."""
    out = cluster.kubectl("get", "resourceslices,resourceclaims", "-n", ns).stdout
    print(out)
    lines = [line.split() for line in out.splitlines()]
    slice_rows = [r for r in lines if r and r[0].startswith("resourceslice.")]
    claim_rows = [r for r in lines if r and r[0].startswith("resourceclaim.")]
    mine = [r for r in slice_rows if r[1] == node]
    assert mine and all(r[2] == DRA_DRIVER and r[3] == node for r in mine), out
    assert len(claim_rows) == len(pods), out
    assert all(r[1] == "allocated,reserved" for r in claim_rows), out
    assert all(any(r[0].startswith(f"resourceclaim.resource.k8s.io/{p}-") for r in claim_rows)
               for p in pods), out
    names = cluster.kubectl("get", "resourceslices", "--field-selector",
                            f"spec.nodeName={node}", "-o", "name").stdout.split()
    text = cluster.kubectl("describe", *names).stdout
    # kubectl spells the attribute names its own way (1.37 "Parent UUID", 1.35 "ParentUUID").
    flat = "".join(text.split()).lower()
    for word in ("productName", "A100-80GB", "profile", PROFILE, "parentUUID", "start",
                 "reservation", "uuid", "sharedCounters", "consumesCounters"):
        assert word.lower() in flat, (word, text[:3000])


def test_twenty_workers_see_exactly_their_jobs_instances(
        cluster: LocalCluster, daemon: RealNodeDaemon, api: client.ApiClient,
        core: client.CoreV1Api, namespace: str) -> None:
    d, ns = daemon, namespace
    wait_for("the daemon's GPUNode", lambda: condition(gpunode(api, d.node), "Ready").get(
        "status") == "True", 90, on_timeout=d.process.tail)
    assert (gpunode(api, d.node) or {})["status"]["allocation"] == "DRA"
    jobs = {"j1": [(0, s) for s in range(7)], "j2": [(1, s) for s in range(4)],
            "j3": [(1, s) for s in range(4, 7)], "j4": [(2, s) for s in range(6)]}
    reserved = {slot: f"{ns}/{j}" for j, slots in jobs.items() for slot in slots}
    set_spec(api, d, {**reserved, (2, 6): ""})
    wait_for("the slices to carry the reservations", lambda: sum(
        1 for dv in published(api, d.node).values()
        if dv["attributes"]["reservation"]["string"]) == 20, 60, on_timeout=d.process.tail)
    custom = client.CustomObjectsApi(api)
    for j in jobs:
        custom.create_namespaced_custom_object("resource.k8s.io", "v1", ns,
                                               "resourceclaimtemplates", claim_template(ns, j))
    pods = [(f"{j}-{i}", j) for j, slots in jobs.items() for i in range(len(slots))]
    random.Random(ns).shuffle(pods)
    t0 = time.monotonic()
    for name, j in pods:
        core.create_namespaced_pod(ns, worker(name, ns, d.node, j))
    names = [n for n, _ in pods]
    wait_for("20 workers to run", lambda: running(core, ns, names), 420,
             on_timeout=d.process.tail)
    print(f"[timing] 20 DRA workers created -> running: {time.monotonic() - t0:.1f}s")
    slots = where(api, d.node)
    seen = {n: slots[seen_device(core, ns, n)] for n in names}
    exact = sum(1 for n, j in pods if reserved.get((seen[n][0], seen[n][2])) == f"{ns}/{j}"
                and seen[n][1] == PROFILE)
    assert exact == 20, seen
    assert len(set(seen.values())) == 20
    claims = resource_claims(custom, ns)
    assert len(claims) == 20
    readable(cluster, d.node, ns, names)
    assert len(cdi_specs() & {f"conspirator.io-mig_{c['metadata']['uid']}.json"
                              for c in claims}) == 20

    # The workers go: the kubelet unprepares every claim, the claims and their CDI specs go.
    uids = {c["metadata"]["uid"] for c in claims}
    delete_all(core, ns, names)
    wait_for("the claims to be unprepared", lambda: not (
        cdi_specs() & {f"conspirator.io-mig_{u}.json" for u in uids}), 120,
        on_timeout=d.process.tail)
    wait_for("the claims to go", lambda: not resource_claims(custom, ns), 120)


def test_a_daemon_killed_after_prepare_converges_and_bad_claims_wait(
        daemon: RealNodeDaemon, api: client.ApiClient, core: client.CoreV1Api,
        namespace: str) -> None:
    d, ns = daemon, namespace
    wait_for("the daemon's GPUNode", lambda: condition(gpunode(api, d.node), "Ready").get(
        "status") == "True", 90, on_timeout=d.process.tail)
    set_spec(api, d, {(0, 0): f"{ns}/k", (0, 1): f"{ns}/k"})
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object("resource.k8s.io", "v1", ns,
                                           "resourceclaimtemplates", claim_template(ns, "k"))
    mark = d.process.log_file.read_text(errors="replace").count("prepared ")
    core.create_namespaced_pod(ns, worker("k-0", ns, d.node, "k"))
    wait_for("the claim to be prepared", lambda: d.process.log_file.read_text(
        errors="replace").count("prepared ") > mark, 120, on_timeout=d.process.tail)
    d.process.kill()  # right after Prepare: the kubelet may not have its answer yet
    time.sleep(1)
    d.process.start()
    wait_for("k-0 to run", lambda: running(core, ns, ["k-0"]), 180, on_timeout=d.process.tail)
    slot = where(api, d.node)[seen_device(core, ns, "k-0")]
    assert (slot[0], slot[2]) in {(0, 0), (0, 1)}

    # A claim nothing publishes (an unknown profile): Pending, with the scheduler's reason.
    custom.create_namespaced_custom_object(
        "resource.k8s.io", "v1", ns, "resourceclaimtemplates",
        {**claim_template(ns, "bad", profile="9g.99gb"), "metadata": {"name": "bad",
                                                                      "namespace": ns}})
    core.create_namespaced_pod(ns, worker("bad-0", ns, d.node, "bad"))
    cond = wait_for("bad-0 to be unschedulable", lambda: next((
        c for c in (as_dict(core.read_namespaced_pod("bad-0", ns))["status"].get(
            "conditions") or []) if c["type"] == "PodScheduled" and c["status"] == "False"),
        None), 60)
    assert cond["reason"] == "Unschedulable", cond
    assert d.process.alive
    delete_all(core, ns, ["k-0", "bad-0"])
    wait_for("k's instance to be free", lambda: not any(
        i.get("inUse") for g in (gpunode(api, d.node) or {})["status"]["gpus"]
        for i in g["instances"]), 120, on_timeout=d.process.tail)


def test_no_gpu_runs_a_dedicated_tenant_beside_another_in_dra_mode(
        daemon: RealNodeDaemon, api: client.ApiClient, core: client.CoreV1Api,
        namespace: str) -> None:
    d, ns = daemon, namespace
    tag = secrets.token_hex(2)
    a, b, c = (f"t{t}-{tag}" for t in "abc")
    reserved = {(0, 0): a, (0, 1): a, (1, 0): b, (1, 1): c}
    set_spec(api, d, {k: f"{ns}/{j}" for k, j in reserved.items()})
    custom = client.CustomObjectsApi(api)
    for j in (a, b, c):
        custom.create_namespaced_custom_object("resource.k8s.io", "v1", ns,
                                               "resourceclaimtemplates", claim_template(ns, j))
    pods = [("a0", a), ("a1", a), ("b0", b), ("c0", c)]
    adverse = [pods[0], pods[2], pods[1], pods[3]]
    rng = random.Random(tag)
    for order in [adverse, *(rng.sample(pods, len(pods)) for _ in range(2))]:
        for name, j in order:
            core.create_namespaced_pod(ns, worker(name, ns, d.node, j))
            wait_for(f"{name} to run", lambda n=name: running(core, ns, [n]), 180,
                     on_timeout=d.process.tail)
        slots = where(api, d.node)
        seen = {n: slots[seen_device(core, ns, n)] for n, _ in order}
        for n, j in order:
            assert reserved[(seen[n][0], seen[n][2])] == j, (order, seen)
        delete_all(core, ns, [n for n, _ in order])
