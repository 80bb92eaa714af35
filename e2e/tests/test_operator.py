"""The operator on the real local cluster: the examples run where the plan says, deleting a
job frees its slices for the next one, unplaceable jobs say why, probes and metrics.

The operator runs as a child process (``conspirator operator``); the kwok GPU nodes get
their GPUNodes from the node daemon's stand-in (``conspirator_e2e.fakenode``), and the real
scheduler binds the worker pods, which kwok then runs.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from conspirator_e2e.cluster import LocalCluster
from conspirator_e2e.fakenode import FakeNodeDaemon
from conspirator_e2e.operator_fixtures import (  # noqa: F401  (pytest fixtures)
    OperatorFactory,
    fake_nodes,
    operator_crds,
    operators,
    resnet_profile,
)
from conspirator_e2e.operator_testing import (
    EXAMPLES,
    GROUP,
    MANAGED,
    VERSION,
    OperatorProcess,
    check_invariants,
    create,
    events_for,
    get,
    inference_job,
    jobs,
    raw,
)
from conspirator_e2e.testing import wait_until
from kubernetes import client

from conspirator.mig import profile_of_resource


def wait_phase(api: client.ApiClient, ns: str, name: str, phase: str, op: OperatorProcess,
               timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        assert op.alive(), op.tail()
        j = get(api, ns, name)
        return j if (j.get("status") or {}).get("phase") == phase else None
    try:
        return wait_until(f"{name} to be {phase}", probe, timeout)
    except AssertionError:
        print(json.dumps(get(api, ns, name).get("status"), indent=1))
        print(op.tail(30))
        raise


def slots(job: dict[str, Any]) -> set[tuple[str, str, str, int]]:
    return {(r["node"], r["gpuUUID"], r["migProfile"], int(r["startSlice"]))
            for r in job["status"]["replicas"]}


@pytest.fixture
def operator(operators: OperatorFactory, fake_nodes: FakeNodeDaemon) -> OperatorProcess:  # noqa: F811
    op = operators("--standalone", "--replan-interval", "0").start()
    op.wait_healthy()
    return op


def test_examples_run_where_the_plan_says(cluster: LocalCluster, api: client.ApiClient,
                                          core: client.CoreV1Api, namespace: str,
                                          resnet_profile: None,  # noqa: F811
                                          operator: OperatorProcess) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    try:
        names = [j["metadata"]["name"] for j in jobs(api, [namespace])]
        assert sorted(names) == ["bert-base-team-a", "resnet50", "resnet50-auto"]
        done = {n: wait_phase(api, namespace, n, "Running", operator) for n in names}
        pods = raw(core.list_namespaced_pod(namespace, label_selector=MANAGED,
                                            _preload_content=False))
        for name, job in done.items():
            st = job["status"]
            assert st["replicaCount"] == len(st["replicas"]) > 0
            assert st["estimatedThroughput"] >= st["demand"] == \
                job["spec"]["demand"]["requestsPerSecond"]
            # No DPU agent on the fake nodes (test_operator_datapath.py reports one).
            assert {c["type"]: c["status"] for c in st["conditions"]} == {
                "Placed": "True", "Partitioned": "True", "Ready": "True",
                "DataPathReady": "False"}
            assert st["tokenSecret"] == f"{name}-conspirator-token"
            assert st["observedGeneration"] == job["metadata"]["generation"]
            # The real scheduler bound the workers where the plan put the replicas.
            planned = Counter((r["node"], r["migProfile"]) for r in st["replicas"])
            bound = Counter(
                (p["spec"]["nodeName"], profile_of_resource(next(iter(
                    p["spec"]["containers"][0]["resources"]["limits"]))))
                for p in pods if p["metadata"]["labels"]["conspirator.io/job-uid"]
                == job["metadata"]["uid"] and p["status"]["phase"] == "Running")
            assert bound == planned, (name, bound, planned)
            assert {e["reason"] for e in events_for(api, namespace, name)} >= {
                "Placed", "WorkersCreated"}
        # bert-base asks for GPUs no other tenant uses.
        bert = {r["gpuUUID"] for r in done["bert-base-team-a"]["status"]["replicas"]}
        others = {r["gpuUUID"] for j in jobs(api) if j["metadata"]["name"] != "bert-base-team-a"
                  for r in (j.get("status") or {}).get("replicas") or []}
        assert not bert & others
        table = cluster.kubectl("get", "ij", "-n", namespace).stdout
        print(table)
        for name in names:
            row = next(line for line in table.splitlines() if line.split()[:1] == [name])
            st = done[name]["status"]
            assert "Running" in row and st["profiles"] in row and str(st["replicaCount"]) in row
        assert check_invariants(api, [namespace]) == []
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", str(EXAMPLES / "gpunode.yaml"))


def test_delete_frees_slices_for_the_next_job(cluster: LocalCluster, api: client.ApiClient,
                                              namespace: str, resnet_profile: None,  # noqa: F811
                                              operator: OperatorProcess) -> None:
    h100: dict[str, Any] = {"allowedAccelerators": ["H100-80GB"]}
    big = inference_job("big", 35000, p99=6.5, **h100)
    create(api, namespace, big)
    first = wait_phase(api, namespace, "big", "Running", operator)
    # The H100s are nearly full: the next job does not fit and says why.
    create(api, namespace, inference_job("next", 12000, p99=6.5, **h100))
    waiting = wait_phase(api, namespace, "next", "Unschedulable", operator)
    assert "insufficient capacity" in waiting["status"]["message"], waiting["status"]
    placed = {c["type"]: c for c in waiting["status"]["conditions"]}["Placed"]
    assert placed["status"] == "False" and placed["reason"] == "Unschedulable"
    unplaceable = [e for e in events_for(api, namespace, "next") if e["reason"] == "Unplaceable"]
    assert unplaceable and unplaceable[0]["type"] == "Warning"
    assert "insufficient capacity" in unplaceable[0]["message"]
    # Deleting the big job frees its slices; the waiting job gets them.
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencejobs", "big")
    wait_until("big to be released", lambda: not any(
        j["metadata"]["name"] == "big" for j in jobs(api, [namespace])), 60)
    second = wait_phase(api, namespace, "next", "Running", operator)
    freed = {(n, g) for n, g, _, _ in slots(first)}
    assert {(n, g) for n, g, _, _ in slots(second)} & freed, "no freed GPU was reused"
    assert check_invariants(api, [namespace]) == []


def test_unplaceable_jobs_say_why(api: client.ApiClient, namespace: str,
                                  operator: OperatorProcess) -> None:
    create(api, namespace, inference_job("t4-only", 100, allowedAccelerators=["T4"]))
    create(api, namespace, inference_job("huge", 100, memory=200))
    create(api, namespace, inference_job("mystery", 100, model="no-such-model"))
    t4 = wait_phase(api, namespace, "t4-only", "Unschedulable", operator)
    assert "T4" in t4["status"]["message"] and "exists in the cluster" in t4["status"]["message"]
    huge = wait_phase(api, namespace, "huge", "Unschedulable", operator)
    assert "200 GiB" in huge["status"]["message"]
    mystery = wait_phase(api, namespace, "mystery", "Failed", operator)
    assert "no-such-model" in mystery["status"]["message"]
    assert "ModelProfile" in mystery["status"]["message"]
    for name, reason in (("t4-only", "Unplaceable"), ("huge", "Unplaceable"),
                         ("mystery", "UnknownModel")):
        def found(name: str = name, reason: str = reason) -> list[dict[str, Any]]:
            return [e for e in events_for(api, namespace, name) if e["reason"] == reason]
        evs = wait_until(f"{reason} event for {name}", found, 30)
        assert evs[0]["type"] == "Warning"
        assert not (get(api, namespace, name)["status"].get("replicas"))


def test_liveness_and_metrics(api: client.ApiClient, namespace: str,
                              operator: OperatorProcess) -> None:
    create(api, namespace, inference_job("probe", 500))
    wait_phase(api, namespace, "probe", "Running", operator)
    code, body = operator.get("/healthz")
    assert code == 200, body
    assert set(json.loads(body)["planner"]) >= {"synced", "jobs", "gpuNodes"}  # cached 10 s
    text = operator.metrics()
    for name in ("conspirator_placement_attempts_total", "conspirator_placement_duration_seconds",
                 "conspirator_pending_jobs", "conspirator_gpus_in_use",
                 "conspirator_mig_reconfigurations_total", "conspirator_migrations_total"):
        assert name in text, name
    attempts = [line for line in text.splitlines()
                if line.startswith('conspirator_placement_attempts_total{kind="arrival",'
                                   'result="placed"}')]
    assert attempts and float(attempts[0].split()[-1]) >= 1
    in_use = next(line for line in text.splitlines() if line.startswith("conspirator_gpus_in_use"))
    assert float(in_use.split()[-1]) >= 1


def test_spec_change_is_replanned(api: client.ApiClient, namespace: str,
                                  operator: OperatorProcess) -> None:
    create(api, namespace, inference_job("grow", 500))
    small = wait_phase(api, namespace, "grow", "Running", operator)
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencejobs", "grow",
        {"spec": {"demand": {"requestsPerSecond": 6000}}})

    def grown() -> dict[str, Any] | None:
        j = get(api, namespace, "grow")
        st = j.get("status") or {}
        ok = st.get("observedGeneration") == 2 and st.get("phase") == "Running"
        return j if ok else None

    big = wait_until("grow to be re-planned and Running", grown, 120)
    assert big["status"]["estimatedThroughput"] >= 6000 > small["status"]["estimatedThroughput"]
    # What it had still fits the new spec: kept, and topped up.
    assert slots(small) <= slots(big)
    assert check_invariants(api, [namespace]) == []


def test_global_replan_consolidates_within_the_disruption_budget(
        api: client.ApiClient, namespace: str, operators: OperatorFactory,  # noqa: F811
        fake_nodes: FakeNodeDaemon) -> None:  # noqa: F811
    op = operators("--standalone", "--replan-interval", "4").start()
    op.wait_healthy()
    # Two tenants that want GPUs of their own: two GPUs.
    for name in ("iso-a", "iso-b"):
        create(api, namespace, inference_job(
            name, 500, tenant=name, isolation={"dedicatedGPU": True},
            migration={"allowed": True, "disruptionBudget": 1}))
    before = {n: wait_phase(api, namespace, n, "Running", op) for n in ("iso-a", "iso-b")}
    gpus = {r["gpuUUID"] for j in before.values() for r in j["status"]["replicas"]}
    assert len(gpus) == 2
    # Isolation lifted: the periodic re-plan may put them on one GPU, moving one replica.
    for name in ("iso-a", "iso-b"):
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencejobs", name,
            {"spec": {"isolation": {"dedicatedGPU": False}}})

    def consolidated() -> bool:
        now = [get(api, namespace, n) for n in ("iso-a", "iso-b")]
        used = {r["gpuUUID"] for j in now for r in (j.get("status") or {}).get("replicas", [])}
        return len(used) == 1 and all(j["status"]["phase"] == "Running" for j in now)

    wait_until("the re-plan to consolidate the two jobs", consolidated, 120)
    moved = [e for n in ("iso-a", "iso-b") for e in events_for(api, namespace, n)
             if e["reason"] == "Migrating"]
    assert len(moved) == 1 and "moves 1 replica" in moved[0]["message"]
    text = op.metrics()
    assert "conspirator_migrations_total 1.0" in text
    assert check_invariants(api, [namespace]) == []
