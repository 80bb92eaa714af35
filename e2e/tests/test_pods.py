"""A pod with a project-built image runs to completion on the real node (kubelet + containerd)."""

from __future__ import annotations

import ipaddress
from typing import Any

from conspirator_e2e.cluster import HELLO_IMAGE, POD_SUBNET
from conspirator_e2e.testing import as_dict, pod_phase_in, wait_until
from kubernetes import client


def hello_pod(name: str, node: str, args: list[str]) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            restart_policy="Never",
            node_selector={"kubernetes.io/hostname": node},
            termination_grace_period_seconds=1,
            containers=[client.V1Container(
                name="hello",
                image=HELLO_IMAGE,
                image_pull_policy="Never",  # built here and imported; no registry exists
                args=args,
                env=[client.V1EnvVar(name="POD_NAME", value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")))],
            )],
        ),
    )


def finished(core: client.CoreV1Api, ns: str, name: str) -> dict[str, Any]:
    pod = wait_until(f"pod {name} to finish",
                     pod_phase_in(core, ns, name, {"Succeeded", "Failed"}), 180)
    return as_dict(pod)


def test_pod_runs_to_completion_and_log_is_read_back(
    core: client.CoreV1Api, namespace: str, cluster_info: dict[str, Any]
) -> None:
    node = cluster_info["realNode"]
    core.create_namespaced_pod(namespace, hello_pod("hello", node, ["from", "the", "real", "node"]))
    pod = finished(core, namespace, "hello")
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert pod["spec"]["node_name"] == node
    assert pod["status"]["container_statuses"][0]["state"]["terminated"]["exit_code"] == 0
    # The sandbox got its address from the bridge CNI plugin.
    assert ipaddress.ip_address(pod["status"]["pod_ip"]) in ipaddress.ip_network(POD_SUBNET)
    logs = core.read_namespaced_pod_log("hello", namespace)
    assert "conspirator-hello: from the real node (pod=hello host=hello)" in logs


def test_container_exit_code_reaches_the_api(
    core: client.CoreV1Api, namespace: str, cluster_info: dict[str, Any]
) -> None:
    node = cluster_info["realNode"]
    core.create_namespaced_pod(namespace, hello_pod("fails", node, ["--exit", "3", "bye"]))
    pod = finished(core, namespace, "fails")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["container_statuses"][0]["state"]["terminated"]["exit_code"] == 3
    assert "conspirator-hello: bye" in core.read_namespaced_pod_log("fails", namespace)


def test_real_node_reports_the_project_runtime(
    core: client.CoreV1Api, cluster_info: dict[str, Any]
) -> None:
    node = as_dict(core.read_node(cluster_info["realNode"]))
    info = node["status"]["node_info"]
    # The containerd e2e/build.sh builds (the kubelet reports its version without the "v").
    assert info["container_runtime_version"] == \
        "containerd://" + cluster_info["versions"]["CONTAINERD_VERSION"].removeprefix("v")
    assert info["kubelet_version"] == cluster_info["versions"]["KUBERNETES_VERSION"]
    images = {n for img in node["status"]["images"] or [] for n in img["names"] or []}
    assert HELLO_IMAGE in images
    assert not node["spec"]["taints"]
