"""The chart in DRA mode (``allocation: dra``) on the real node: an InferenceJob through the
operator pod, the node daemon pod as the DRA driver ``conspirator.io``, the real scheduler
and kubelet, the chart's DeviceClass.

* the daemon reports ``allocation: DRA`` and publishes its ResourceSlices; no device-plugin
  resource is requested by the workers;
* the operator gives each replica a ResourceClaimTemplate (named in the job's status) whose
  selector names the instance the plan reserved; the scheduler allocates exactly that
  device: each claim's device carries the replica's GPU uuid, profile and start slice;
* the workers register their buffers and ``conspirator loadgen`` gets every request
  answered through the agent pod, by both replicas;
* deleting the job removes the Deployments, the claim templates and the claims; the kubelet
  unprepares them (their CDI specs go) and the instances are no longer in use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from conspirator_e2e import chart
from conspirator_e2e.chart import CHART
from conspirator_e2e.cluster import CDI_SPEC_DIRS, LocalCluster
from conspirator_e2e.datapath import gpunode
from conspirator_e2e.release import Release, installed_release
from kubernetes import client

from conspirator.mig import DRA_DEVICE_CLASS, DRA_DRIVER, RESOURCE_PREFIX

pytestmark = pytest.mark.skipif(not (CHART / "Chart.yaml").exists(), reason="no chart")

JOB = "chart-dra"


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    # No load loop: learned profiles would rightly shrink the demo job mid-test (its worker
    # serves far more than the profile's 100 req/s); test_autoscale.py covers them.
    with installed_release(cluster, tmp_path_factory.mktemp("helm-dra"), observe_interval=0,
                           allocation="dra") as rel:
        yield rel


def _slice_devices(api: client.ApiClient, node: str) -> dict[str, dict[str, Any]]:
    out = cast(dict[str, Any], client.CustomObjectsApi(api).list_cluster_custom_object(
        "resource.k8s.io", "v1", "resourceslices", field_selector=f"spec.nodeName={node}"))
    return {dv["name"]: dv for s in out["items"] if s["spec"]["driver"] == DRA_DRIVER
            for dv in s["spec"].get("devices", [])}


def _namespaced(api: client.ApiClient, ns: str, plural: str) -> list[dict[str, Any]]:
    out = cast(dict[str, Any], client.CustomObjectsApi(api).list_namespaced_custom_object(
        "resource.k8s.io", "v1", ns, plural))
    return list(out["items"])


def _cdi_specs() -> set[str]:
    return {p.name for p in Path(CDI_SPEC_DIRS[0]).glob("conspirator.io-mig_*.json")}


def _attr(device: dict[str, Any], name: str) -> Any:
    return next(iter(device["attributes"][name].values()))


def test_a_job_runs_on_exactly_its_reserved_devices_and_frees_them(
        release: Release, api: client.ApiClient, core: client.CoreV1Api, namespace: str,
        cluster_info: dict[str, Any], tmp_path: Path) -> None:
    cluster, ns, node = release.cluster, namespace, str(cluster_info["realNode"])
    chart.wait("the daemon pod in DRA mode", lambda: (
        (gpunode(api, node) or {}).get("status") or {}).get("allocation") == "DRA", 120,
        release.describe)
    assert cluster.kubectl("get", "deviceclass", DRA_DEVICE_CLASS, "-o", "name").stdout.strip()
    for obj in chart.demo_objects(JOB, release.worker_image):
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))
    try:
        chart.wait_serving(cluster, ns, JOB)
        chart.wait("both replicas at the agent",
                   lambda: chart.agent_replicas(f"{ns}/{JOB}") == 2, 120, release.describe)
        job, summary, text = chart.serve_through_agent(cluster, ns, JOB, tmp_path, 1000)
        assert (summary["sent"], summary["ok"], summary["lost"], summary["failed"]) == (
            1000, 1000, 0, {}), text
        assert len(summary["by_buffer"]) == 2, summary["by_buffer"]

        # Each replica's claim template is in the status; each claim got the very device
        # its replica reserved.
        replicas = job["status"]["replicas"]
        assert len(replicas) == 2 and all(r.get("resourceClaimTemplate") for r in replicas)
        templates = {t["metadata"]["name"] for t in _namespaced(api, ns,
                                                                "resourceclaimtemplates")}
        assert {r["resourceClaimTemplate"] for r in replicas} <= templates
        pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
        assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
        for p in pods:
            assert p["spec"]["resourceClaims"], p["spec"]
            limits = p["spec"]["containers"][0].get("resources", {}).get("limits") or {}
            assert not [k for k in limits if k.startswith(RESOURCE_PREFIX)], limits
        claims = _namespaced(api, ns, "resourceclaims")
        assert len(claims) == 2, [c["metadata"]["name"] for c in claims]
        devices = _slice_devices(api, node)
        got = set()
        for c in claims:
            (result,) = c["status"]["allocation"]["devices"]["results"]
            assert (result["driver"], result["pool"]) == (DRA_DRIVER, node), result
            dev = devices[result["device"]]
            got.add((_attr(dev, "parentUUID"), _attr(dev, "profile"), int(_attr(dev, "start"))))
        want = {(r["gpuUUID"], r["migProfile"], int(r["startSlice"])) for r in replicas}
        assert got == want, (got, want)
        uids = {c["metadata"]["uid"] for c in claims}
        assert {f"conspirator.io-mig_{u}.json" for u in uids} <= _cdi_specs()
    finally:
        cluster.kubectl("delete", "ij", JOB, "-n", ns, "--wait=true", "--timeout=90s",
                        check=False)
        cluster.kubectl("delete", "modelprofile", chart.DEMO_MODEL, "--ignore-not-found",
                        check=False)

    def deployments() -> list[str]:
        return cluster.kubectl("get", "deploy", "-n", ns, "-o", "name").stdout.split()

    chart.wait_gone(cluster, "the job's Deployments", deployments)
    chart.wait_gone(cluster, "the job's claim templates", lambda: [
        t["metadata"]["name"] for t in _namespaced(api, ns, "resourceclaimtemplates")])
    chart.wait_gone(cluster, "the job's claims", lambda: [
        c["metadata"]["name"] for c in _namespaced(api, ns, "resourceclaims")])
    chart.wait_gone(cluster, "the claims' CDI specs", lambda: sorted(
        {f"conspirator.io-mig_{u}.json" for u in uids} & _cdi_specs()))
    chart.wait_gone(cluster, "instances in use", lambda: [
        i["uuid"] for g in ((gpunode(api, node) or {}).get("status") or {}).get("gpus") or []
        for i in g.get("instances") or [] if i.get("inUse")])
