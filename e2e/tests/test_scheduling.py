"""The real scheduler binds MIG-requesting pods to kwok GPU nodes whose capacity advertises the
profile, and leaves them Pending when no node can hold them."""

from __future__ import annotations

import time

import pytest
from conspirator_e2e.cluster import GPU_TAINT_KEY, HELLO_IMAGE, MIG_RESOURCE_PREFIX
from conspirator_e2e.testing import as_dict, scheduled_condition, wait_until
from kubernetes import client


def gpu_pod(name: str, profile: str, count: int = 1, tolerate: bool = True) -> client.V1Pod:
    resource = MIG_RESOURCE_PREFIX + profile
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=0,
            tolerations=[client.V1Toleration(key=GPU_TAINT_KEY, operator="Equal", value="true",
                                             effect="NoSchedule")] if tolerate else None,
            containers=[client.V1Container(
                name="worker",
                image=HELLO_IMAGE,
                resources=client.V1ResourceRequirements(
                    requests={resource: str(count)}, limits={resource: str(count)}),
            )],
        ),
    )


def bound_node(core: client.CoreV1Api, ns: str, name: str, timeout: float = 60) -> str:
    def probe() -> str | None:
        node: str | None = as_dict(core.read_namespaced_pod(name, ns))["spec"]["node_name"]
        return node

    return wait_until(f"pod {name} to be bound", probe, timeout)


def assert_stays_pending(core: client.CoreV1Api, ns: str, name: str, why: str,
                         settle: float = 8) -> None:
    def unschedulable() -> client.V1PodCondition | None:
        cond = scheduled_condition(core.read_namespaced_pod(name, ns))
        return cond if cond is not None and cond.reason == "Unschedulable" else None

    cond = wait_until(f"scheduler to give up on {name}", unschedulable, 60)
    assert cond.status == "False"
    assert why in (cond.message or ""), cond.message
    time.sleep(settle)  # and it stays that way
    pod = as_dict(core.read_namespaced_pod(name, ns))
    assert pod["spec"]["node_name"] is None
    assert pod["status"]["phase"] == "Pending"


@pytest.mark.parametrize(("profile", "model"), [("1g.10gb", "A100-80GB"),
                                                ("3g.40gb", "H100-80GB")])
def test_mig_pod_lands_on_a_node_advertising_the_profile(
    core: client.CoreV1Api, namespace: str, profile: str, model: str
) -> None:
    core.create_namespaced_pod(namespace, gpu_pod("mig", profile))
    node = as_dict(core.read_node(bound_node(core, namespace, "mig")))
    assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"
    assert int(node["status"]["allocatable"][MIG_RESOURCE_PREFIX + profile]) >= 1
    assert node["metadata"]["labels"]["conspirator.io/gpu-model"] == model
    # kwok plays the kubelet of simulated nodes: the pod is reported Running.
    wait_until("kwok to run the pod", lambda: as_dict(core.read_namespaced_pod(
        "mig", namespace))["status"]["phase"] == "Running", 60)


def test_mig_pod_stays_pending_when_no_node_advertises_the_profile(
    core: client.CoreV1Api, namespace: str
) -> None:
    nodes = [as_dict(n) for n in core.list_node().items]
    assert not any(MIG_RESOURCE_PREFIX + "7g.80gb" in (n["status"]["capacity"] or {})
                   for n in nodes)
    core.create_namespaced_pod(namespace, gpu_pod("too-big", "7g.80gb"))
    assert_stays_pending(core, namespace, "too-big", "Insufficient conspirator.io/mig-7g.80gb")


def test_mig_pod_without_toleration_stays_pending(
    core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_pod(namespace, gpu_pod("intolerant", "1g.10gb", tolerate=False))
    assert_stays_pending(core, namespace, "intolerant", "untolerated taint")


def test_scheduler_respects_mig_capacity(core: client.CoreV1Api, namespace: str) -> None:
    """Fill every node advertising 1g.10gb with one pod taking all of them: one more is Pending."""
    profile = "1g.10gb"
    resource = MIG_RESOURCE_PREFIX + profile

    def others_gone() -> bool:  # pods of earlier tests' namespaces may still be going away
        pods = [as_dict(p) for p in core.list_pod_for_all_namespaces().items]
        return not any(
            resource in ((c["resources"] or {}).get("requests") or {})
            for p in pods
            if p["metadata"]["namespace"] != namespace
            for c in p["spec"]["containers"]
        )

    wait_until("other tests' MIG pods to be deleted", others_gone, 60)
    nodes = [as_dict(n) for n in core.list_node().items]
    # A node reporting the resource at 0 holds none (the kubelet keeps a resource whose
    # plugin has gone at 0, in etcd, across cluster restarts).
    holders = {n["metadata"]["name"]: int(n["status"]["allocatable"][resource])
               for n in nodes if int((n["status"]["allocatable"] or {}).get(resource, 0)) > 0}
    per_node = set(holders.values())
    assert len(per_node) == 1, f"the default spec gives every A100 node the same layout: {holders}"
    count = per_node.pop()
    for i in range(len(holders)):
        core.create_namespaced_pod(namespace, gpu_pod(f"fill-{i}", profile, count))
    used = {bound_node(core, namespace, f"fill-{i}") for i in range(len(holders))}
    assert used == set(holders)  # one per node: the scheduler counted the extended resource
    core.create_namespaced_pod(namespace, gpu_pod("one-more", profile))
    assert_stays_pending(core, namespace, "one-more", f"Insufficient {resource}")
