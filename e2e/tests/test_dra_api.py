"""The local cluster serves DRA (resource.k8s.io/v1) with partitionable devices enabled.

- every resource.k8s.io/v1 resource is served;
- every component (API server, scheduler, controller manager, kubelet) reports the
  ``DRAPartitionableDevices`` gate on (``kubernetes_feature_enabled`` in its /metrics);
- a pool of two ResourceSlices, one with a counter set (``spec.sharedCounters``: on 1.35 a
  counter set lives in its own slice) and one whose device consumes from it
  (``consumesCounters``), keeps both fields: an API server without the gate accepts such slices
  but silently drops the fields.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from conspirator_e2e.cluster import FEATURE_GATES, LocalCluster
from conspirator_e2e.constants import CONTROLLER_MANAGER_PORT, SCHEDULER_PORT
from kubernetes import client

GROUP, VERSION, PLURAL = "resource.k8s.io", "v1", "resourceslices"
GATE = "DRAPartitionableDevices"


def gate_enabled(metrics: str, gate: str) -> bool:
    m = re.search(r'^kubernetes_feature_enabled\{name="' + gate + r'",[^}]*\} (\S+)$', metrics,
                  re.MULTILINE)
    assert m, f"{gate} not in kubernetes_feature_enabled metrics"
    return float(m.group(1)) == 1


def test_resource_api_is_served(cluster: LocalCluster) -> None:
    out = cluster.kubectl("api-resources", f"--api-group={GROUP}", "-o", "name").stdout.split()
    assert {"deviceclasses.resource.k8s.io", "resourceclaims.resource.k8s.io",
            "resourceclaimtemplates.resource.k8s.io", "resourceslices.resource.k8s.io"} <= set(out)
    versions = json.loads(cluster.kubectl("get", "--raw", f"/apis/{GROUP}").stdout)["versions"]
    assert f"{GROUP}/{VERSION}" in {v["groupVersion"] for v in versions}


def test_every_component_has_the_gate(cluster: LocalCluster, cluster_info: dict[str, Any]
                                      ) -> None:
    assert FEATURE_GATES.get(GATE) is True
    metrics = {
        "kube-apiserver": cluster.kubectl("get", "--raw", "/metrics").stdout,
        "kubelet": cluster.kubectl(
            "get", "--raw", f"/api/v1/nodes/{cluster_info['realNode']}/proxy/metrics").stdout,
    }
    for name, port in (("kube-scheduler", SCHEDULER_PORT),
                       ("kube-controller-manager", CONTROLLER_MANAGER_PORT)):
        code, body = cluster._https(f"https://127.0.0.1:{port}/metrics", verify=False)
        assert code == 200, (name, code, body[:300])
        metrics[name] = body
    assert {n: gate_enabled(m, GATE) for n, m in metrics.items()} == dict.fromkeys(metrics, True)
    configz = json.loads(cluster.kubectl(
        "get", "--raw", f"/api/v1/nodes/{cluster_info['realNode']}/proxy/configz").stdout)
    assert configz["kubeletconfig"]["featureGates"].get(GATE) is True


@pytest.fixture
def pool(api: client.ApiClient) -> Iterator[tuple[client.CustomObjectsApi, str]]:
    """The API for ResourceSlices and a fresh pool name; the pool's slices deleted after."""
    objects = client.CustomObjectsApi(api)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    yield objects, name
    for suffix in ("counters", "devices"):
        try:
            objects.delete_cluster_custom_object(GROUP, VERSION, PLURAL, f"{name}-{suffix}")
        except client.ApiException as e:
            if e.status != 404:
                raise


def test_shared_counters_are_kept(pool: tuple[client.CustomObjectsApi, str]) -> None:
    objects, name = pool
    driver = "e2e.conspirator.io"
    base_spec: dict[str, Any] = {
        "driver": driver,
        "pool": {"name": name, "generation": 1, "resourceSliceCount": 2},
        "allNodes": True,
    }
    counter_set = "gpu-0"
    counters: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceSlice",
        "metadata": {"name": f"{name}-counters"},
        "spec": {**base_spec, "sharedCounters": [{
            "name": counter_set,
            "counters": {"memory": {"value": "80Gi"}, "memory-slice-0": {"value": "1"},
                         "memory-slice-1": {"value": "1"}},
        }]},
    }
    devices: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceSlice",
        "metadata": {"name": f"{name}-devices"},
        "spec": {**base_spec, "devices": [{
            "name": f"mig-1g-{i}",
            "attributes": {"profile": {"string": "1g.10gb"}},
            "consumesCounters": [{"counterSet": counter_set, "counters": {
                "memory": {"value": "10Gi"}, f"memory-slice-{i}": {"value": "1"}}}],
        } for i in range(2)]},
    }
    for obj in (counters, devices):
        objects.create_cluster_custom_object(GROUP, VERSION, PLURAL, obj)
    got_counters = cast(dict[str, Any], objects.get_cluster_custom_object(
        GROUP, VERSION, PLURAL, f"{name}-counters"))
    got_devices = cast(dict[str, Any], objects.get_cluster_custom_object(
        GROUP, VERSION, PLURAL, f"{name}-devices"))
    assert got_counters["spec"].get("sharedCounters") == counters["spec"]["sharedCounters"], \
        "the API server dropped spec.sharedCounters: is DRAPartitionableDevices on?"
    assert [d.get("consumesCounters") for d in got_devices["spec"]["devices"]] == \
        [d["consumesCounters"] for d in devices["spec"]["devices"]]
