"""The operator's jobs reach Running through the real node daemons: one
``conspirator node-daemon --kwok`` per default kwok node (simulated backend) plays the part the
operator tests give to their stand-in (``conspirator_e2e.fakenode``): it applies the layouts
the operator writes, reports them, advertises the devices as Node capacity, and gives each
worker pod its MIG device.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from conspirator_e2e.cluster import ClusterSpec, LocalCluster
from conspirator_e2e.nodedaemon import NodeDaemons
from conspirator_e2e.operator_fixtures import (  # noqa: F401  (pytest fixtures)
    OperatorFactory,
    operator_crds,
    operators,
)
from conspirator_e2e.operator_testing import (
    EXAMPLES,
    MANAGED,
    OperatorProcess,
    check_invariants,
    get,
    jobs,
    raw,
)
from conspirator_e2e.testing import wait_until
from kubernetes import client

from conspirator.mig import reserved_resource_name

GROUP, VERSION, PLURAL = "conspirator.io", "v1alpha1", "gpunodes"


@pytest.fixture(scope="module")
def node_daemons(cluster: LocalCluster, operator_crds: None) -> Iterator[NodeDaemons]:  # noqa: F811
    work = Path(tempfile.mkdtemp(prefix="cdp-op-", dir="/tmp"))
    d = NodeDaemons(cluster, ClusterSpec.load(cluster.spec_path).gpu_nodes, work, resync=2.0)
    d.install()
    d.start()
    try:
        yield d
    finally:
        d.uninstall()
        shutil.rmtree(work, ignore_errors=True)


def test_operator_jobs_run_through_the_node_daemons(
        cluster: LocalCluster, api: client.ApiClient, core: client.CoreV1Api, namespace: str,
        operators: OperatorFactory, node_daemons: NodeDaemons,  # noqa: F811
        request: pytest.FixtureRequest) -> None:
    custom = client.CustomObjectsApi(api)

    def reported(name: str) -> bool:
        try:
            obj = cast(dict[str, Any], custom.get_cluster_custom_object(
                GROUP, VERSION, PLURAL, name))
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return bool((obj.get("status") or {}).get("gpuCount"))

    def in_use(node: str, device: str) -> bool:
        status = cast(dict[str, Any], custom.get_cluster_custom_object(
            GROUP, VERSION, PLURAL, node))["status"]
        return any(i["uuid"] == device and i.get("inUse")
                   for g in status["gpus"] for i in g["instances"])

    for name in node_daemons.nodes:
        wait_until(f"{name}'s GPUNode from its daemon", partial(reported, name), 60)
    # Leave the cluster as found: the ModelProfile is cluster-scoped (test_crds creates it).
    had_profile = cluster.kubectl("get", "modelprofile", "resnet50", check=False).returncode == 0
    request.addfinalizer(lambda: None if had_profile else cluster.kubectl(
        "delete", "modelprofile", "resnet50", "--ignore-not-found", check=False))
    op: OperatorProcess = operators("--standalone", "--replan-interval", "0").start()
    op.wait_healthy()
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "modelprofile-resnet50.yaml"),
                    "-f", str(EXAMPLES / "inferencejob-resnet50.yaml"),
                    "-f", str(EXAMPLES / "inferencejob-bert-dedicated.yaml"))
    names = [j["metadata"]["name"] for j in jobs(api, [namespace])]
    assert names

    def running() -> bool:
        assert op.alive(), op.tail()
        return all((get(api, namespace, n).get("status") or {}).get("phase") == "Running"
                   for n in names)

    try:
        wait_until("the jobs to run", running, 180)
    except AssertionError:
        print(node_daemons.logs())
        print(op.tail(40))
        raise
    pods = [p for p in raw(core.list_namespaced_pod(namespace, label_selector=MANAGED,
                                                    _preload_content=False))
            if p["status"]["phase"] == "Running"]
    assert pods
    for name in names:
        for r in get(api, namespace, name)["status"]["replicas"]:
            status = cast(dict[str, Any], custom.get_cluster_custom_object(
                GROUP, VERSION, PLURAL, r["node"]))["status"]
            # The replica sits on an instance the daemon made and reports.
            gpu = next(g for g in status["gpus"] if g["uuid"] == r["gpuUUID"])
            assert (r["migProfile"], r["startSlice"]) in {
                (i["profile"], i["start"]) for i in gpu["instances"]}
            assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    # Each worker got a device from its node's daemon, and that device is reported in use.
    for p in pods:
        assigned = json.loads(p["metadata"]["annotations"]["conspirator.io/mig-devices"])
        [(resource, [device])] = assigned.items()
        status = cast(dict[str, Any], custom.get_cluster_custom_object(
            GROUP, VERSION, PLURAL, p["spec"]["nodeName"]))["status"]
        inst = next(i for g in status["gpus"] for i in g["instances"] if i["uuid"] == device)
        # Under the job's own resource: only the instances reserved for it carry it.
        job = p["metadata"]["labels"]["conspirator.io/job"]
        assert resource == reserved_resource_name(inst["profile"],
                                                  f"{p['metadata']['namespace']}/{job}")
        assert inst["resource"] == resource
        wait_until(f"{device} in use", partial(in_use, p["spec"]["nodeName"], device), 30)
    assert check_invariants(api, [namespace]) == []
