"""``--allocation auto`` on the real kubelet node: the mode follows what the kubelet does.

- pointed at the kubelet's own plugin registry (``<kubelet root>/plugins_registry``), the
  kubelet registers the DRA driver and the daemon runs in DRA mode;
- pointed at a plugin registry no kubelet watches (a node whose kubelet ``--root-dir`` is
  not the default, which the directory's mere existence cannot tell), nobody registers the
  driver within the timeout: the daemon withdraws the ResourceSlices an earlier DRA run left,
  serves device plugins that the kubelet registers, reports ``allocation: DevicePlugin`` and
  records a ``DRANotRegistered`` Event on its GPUNode.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conspirator_e2e.cluster import LocalCluster
from conspirator_e2e.datapath import condition, gpunode
from conspirator_e2e.nodedaemon import apply_crds, wait_for
from conspirator_e2e.realnode import (
    GROUP,
    PLURAL,
    VERSION,
    RealNodeDaemon,
    capacity,
    dra_args,
)
from kubernetes import client

from conspirator.mig import RESOURCE_PREFIX, resource_name

GPUS = "gpus:\n  - model: A100-80GB\n    count: 1\n"


@pytest.fixture
def state(cluster: LocalCluster) -> Iterator[Path]:
    apply_crds(cluster)
    path = Path(f"/tmp/cauto-{secrets.token_hex(3)}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_daemon(cluster: LocalCluster, info: dict[str, Any], args: tuple[str, ...]
               ) -> RealNodeDaemon:
    d = RealNodeDaemon(cluster, info, GPUS, args)
    d.agent.start()
    d.process.start()
    return d


def stop(cluster: LocalCluster, d: RealNodeDaemon) -> None:
    d.process.stop()
    d.agent.stop()
    cluster.kubectl("delete", "gpunode", d.node, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "resourceslices", "--field-selector",
                    f"spec.nodeName={d.node}", check=False)
    shutil.rmtree(d.dir, ignore_errors=True)


def slices(api: client.ApiClient, node: str) -> list[str]:
    out: Any = client.CustomObjectsApi(api).list_cluster_custom_object(
        "resource.k8s.io", "v1", "resourceslices", field_selector=f"spec.nodeName={node}")
    return [s["metadata"]["name"] for s in out["items"]]


def ready(api: client.ApiClient, node: str) -> dict[str, Any] | None:
    obj = gpunode(api, node)
    return obj if condition(obj, "Ready").get("status") == "True" else None


def auto_args(dra: tuple[str, ...], timeout: str) -> tuple[str, ...]:
    out = list(dra)
    out[out.index("--allocation") + 1] = "auto"
    return (*out, "--dra-registration-timeout", timeout)


def test_auto_is_dra_where_the_kubelet_registers_the_driver(
        cluster: LocalCluster, cluster_info: dict[str, Any], api: client.ApiClient,
        state: Path) -> None:
    d = run_daemon(cluster, cluster_info, auto_args(dra_args(cluster, state), "60"))
    try:
        obj = wait_for("the daemon's GPUNode", lambda: ready(api, d.node), 120,
                       on_timeout=d.process.tail)
        assert obj["status"]["allocation"] == "DRA"
        assert wait_for("its ResourceSlices", lambda: slices(api, d.node), 60)
        assert "the kubelet registered DRA driver conspirator.io" in d.process.tail()
    finally:
        stop(cluster, d)


def test_auto_serves_device_plugins_when_no_kubelet_registers_the_driver(
        cluster: LocalCluster, cluster_info: dict[str, Any], api: client.ApiClient,
        core: client.CoreV1Api, state: Path) -> None:
    # An earlier DRA run of this node left its slices.
    first = run_daemon(cluster, cluster_info, dra_args(cluster, state))
    try:
        wait_for("the DRA run's ResourceSlices", lambda: slices(api, first.node), 120,
                 on_timeout=first.process.tail)
    finally:
        first.process.stop()
        first.agent.stop()
        shutil.rmtree(first.dir, ignore_errors=True)
    assert slices(api, first.node)

    elsewhere = state / "not-the-kubelets" / "plugins_registry"
    elsewhere.mkdir(parents=True)
    args = list(auto_args(dra_args(cluster, state), "3"))
    args[args.index("--plugins-registry-dir") + 1] = str(elsewhere)
    d = run_daemon(cluster, cluster_info, tuple(args))
    try:
        # (The GPUNode still says DRA until the new daemon's first pass, after the timeout.)
        obj = wait_for("the GPUNode to report device-plugin mode", lambda: (
            o := ready(api, d.node)) and o["status"]["allocation"] == "DevicePlugin" and o,
            120, on_timeout=d.process.tail)
        assert not slices(api, d.node), "the DRA run's slices are withdrawn"
        assert not any(elsewhere.iterdir()), "no registration socket left behind"
        assert condition(obj, "Ready")["message"].endswith("to the kubelet"), obj["status"]
        # The kubelet registers the device plugins: a layout's instances are Node capacity.
        client.CustomObjectsApi(api).patch_cluster_custom_object(
            GROUP, VERSION, PLURAL, d.node,
            {"spec": {"gpus": [{"index": 0, "instances": [{"profile": "1g.10gb", "start": 0}]}]}})
        cap = wait_for("the device plugins' resources", lambda: {
            k: v for k, v in capacity(core, d.node)[0].items()
            if k.startswith(RESOURCE_PREFIX) and v != "0"}, 90, on_timeout=d.process.tail)
        assert cap == {resource_name("1g.10gb"): "1"}, cap
        events = wait_for("the DRANotRegistered Event", lambda: [
            e for e in core.list_event_for_all_namespaces(
                field_selector=f"involvedObject.name={d.node},reason=DRANotRegistered").items
            if e.message and str(elsewhere) in e.message], 60)
        assert "serving device plugins" in str(events[0].message)
    finally:
        stop(cluster, d)
