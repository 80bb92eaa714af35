"""The operator's part of the data path on the real local cluster.

* a job gets its token Secret (owned by the job, never regenerated, recreated with a new
  token when the user deletes it), the agents' aggregate Secret holds its key, a restarted
  operator rewrites neither, and deleting the job takes the key out (and the garbage
  collector the Secret);
* ``clientEndpoint`` and ``DataPathReady`` follow a GPUNode whose status reports a DPU
  agent (patched here as the node daemon would write it), and the workers carry
  ``CONSPIRATOR_THROUGHPUT``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from conspirator_e2e.fakenode import FakeNodeDaemon
from conspirator_e2e.operator_fixtures import (  # noqa: F401  (pytest fixtures)
    OperatorFactory,
    fake_nodes,
    operator_crds,
    operators,
    resnet_profile,
)
from conspirator_e2e.operator_testing import (
    GROUP,
    MANAGED,
    VERSION,
    OperatorProcess,
    create,
    get,
    inference_job,
    jobs,
    raw,
)
from conspirator_e2e.testing import wait_until
from kubernetes import client

AGG = "conspirator-agent-tokens"


def read_secret(core: client.CoreV1Api, ns: str, name: str) -> dict[str, Any] | None:
    try:
        r: Any = core.read_namespaced_secret(name, ns, _preload_content=False)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
    return cast(dict[str, Any], json.loads(r.data))


def secret_data(core: client.CoreV1Api, ns: str, name: str) -> dict[str, str] | None:
    s = read_secret(core, ns, name)
    if s is None:
        return None
    return {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}


def secret_rv(core: client.CoreV1Api, ns: str, name: str) -> str:
    s = read_secret(core, ns, name)
    assert s is not None, name
    return str(s["metadata"]["resourceVersion"])


def conditions(job: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"])
            for c in (job.get("status") or {}).get("conditions") or []}


def wait_job(api: client.ApiClient, ns: str, name: str, what: str, ok: Any,
             op: OperatorProcess, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        assert op.alive(), op.tail()
        j = get(api, ns, name)
        return j if ok(j) else None
    try:
        return wait_until(f"{name}: {what}", probe, timeout)
    except AssertionError:
        print(json.dumps(get(api, ns, name).get("status"), indent=1))
        print(op.tail(30))
        raise


def running(j: dict[str, Any]) -> bool:
    return (j.get("status") or {}).get("phase") == "Running"


@pytest.fixture
def datapath_operator(operators: OperatorFactory, fake_nodes: FakeNodeDaemon,  # noqa: F811
                      namespace: str) -> OperatorProcess:
    # The aggregate lives in the test's namespace (the chart's is the operator's own).
    op = operators("--standalone", "--replan-interval", "0", "--operator-namespace", namespace,
                   "--token-resync-interval", "2").start()
    op.wait_healthy()
    return op


def test_token_secret_and_the_agents_secret_follow_the_job(
        api: client.ApiClient, core: client.CoreV1Api, namespace: str,
        operators: OperatorFactory, datapath_operator: OperatorProcess) -> None:  # noqa: F811
    op = datapath_operator
    create(api, namespace, inference_job("dp", 500))
    job = wait_job(api, namespace, "dp", "Running with its token Secret",
                   lambda j: running(j) and j["status"].get("tokenSecret"), op)
    name = job["status"]["tokenSecret"]
    assert name == "dp-conspirator-token"
    s = read_secret(core, namespace, name)
    assert s is not None and s["type"] == "Opaque"
    assert s["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "conspirator",
                                       "conspirator.io/job": "dp"}
    (owner,) = s["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "InferenceJob", "dp", job["metadata"]["uid"], True)
    token = base64.b64decode(s["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    key = f"{namespace}.dp"

    def aggregated() -> str | None:
        return (secret_data(core, namespace, AGG) or {}).get(key)

    assert wait_until("the job's key in the agents' Secret", aggregated, 30) == token

    # Rotation: the user deletes the Secret; a new token, and the agents get it.
    core.delete_namespaced_secret(name, namespace)

    def rotated() -> str | None:
        d = secret_data(core, namespace, name)
        new = d.get("token") if d else None
        return new if new and new != token else None

    new = wait_until("a new token Secret", rotated, 30)
    wait_until("the agents' Secret to hold the new token",
               lambda: (secret_data(core, namespace, AGG) or {}).get(key) == new, 30)

    # A restarted operator rewrites neither Secret (nor any token).
    rvs = (secret_rv(core, namespace, name), secret_rv(core, namespace, AGG))
    op.kill()
    op.start().wait_healthy()
    wait_until("the restarted operator to resync", lambda: "synced:" in op.log_text().split(
        "===== start 1")[-1], 30)
    time.sleep(5)  # more than two resync periods
    assert (secret_rv(core, namespace, name), secret_rv(core, namespace, AGG)) == rvs
    assert (secret_data(core, namespace, name) or {}).get("token") == new

    # Deleted: the key leaves the agents' Secret, the garbage collector takes the token's.
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencejobs", "dp")
    wait_until("dp to be released", lambda: not any(
        j["metadata"]["name"] == "dp" for j in jobs(api, [namespace])), 60)
    assert key not in (secret_data(core, namespace, AGG) or {})
    wait_until("the token Secret to be garbage-collected",
               lambda: secret_data(core, namespace, name) is None, 90)


@pytest.fixture
def dpu_node(api: client.ApiClient) -> Iterator[list[str]]:
    """Names of GPUNodes whose DPU status the test changed; restored afterwards."""
    touched: list[str] = []
    yield touched
    co = client.CustomObjectsApi(api)
    for n in touched:
        gn = cast(dict[str, Any], co.get_cluster_custom_object(GROUP, VERSION, "gpunodes", n))
        conds = [c for c in (gn.get("status") or {}).get("conditions") or []
                 if c["type"] != "DPUReady"]
        co.patch_cluster_custom_object_status(GROUP, VERSION, "gpunodes", n, {"status": {
            "dpu": {"present": False, "model": None, "agentEndpoint": None},
            "conditions": conds}})


def report_agent(api: client.ApiClient, node: str, endpoint: str, connected: bool) -> None:
    """What the node daemon writes when it finds the DPU agent (docs/deviceplugin.md)."""
    co = client.CustomObjectsApi(api)
    gn = cast(dict[str, Any], co.get_cluster_custom_object(GROUP, VERSION, "gpunodes", node))
    conds = [copy.deepcopy(c) for c in (gn.get("status") or {}).get("conditions") or []
             if c["type"] != "DPUReady"]
    conds.append({"type": "DPUReady", "status": "True" if connected else "False",
                  "reason": "AgentConnected" if connected else "AgentNotConnected",
                  "message": "e2e", "lastTransitionTime": "2026-01-01T00:00:00Z"})
    co.patch_cluster_custom_object_status(GROUP, VERSION, "gpunodes", node, {"status": {
        "dpu": {"present": True, "model": "BlueField-2", "agentEndpoint": endpoint},
        "conditions": conds}})


def test_client_endpoint_and_data_path_ready_follow_the_gpunode(
        api: client.ApiClient, core: client.CoreV1Api, namespace: str,
        datapath_operator: OperatorProcess, dpu_node: list[str]) -> None:
    op = datapath_operator
    create(api, namespace, inference_job("ep", 500))
    job = wait_job(api, namespace, "ep", "Running", running, op)
    assert conditions(job)["DataPathReady"] == ("False", "NoDPU")
    assert "clientEndpoint" not in job["status"]
    nodes = sorted({r["node"] for r in job["status"]["replicas"]})
    node = nodes[0]
    dpu_node.append(node)
    endpoint = "10.244.9.1:7470"

    report_agent(api, node, endpoint, connected=False)
    job = wait_job(api, namespace, "ep", "the agent endpoint, not connected", lambda j: (
        j["status"].get("clientEndpoint") == endpoint
        and conditions(j)["DataPathReady"] == ("False", "AgentNotConnected")), op, 30)
    report_agent(api, node, endpoint, connected=True)
    job = wait_job(api, namespace, "ep", "DataPathReady", lambda j: conditions(j)[
        "DataPathReady"] == ("True", "AgentConnected"), op, 30)
    here = [r for r in job["status"]["replicas"] if r["node"] == node]
    first = job["status"]["clientEndpoints"][0]
    assert (first["node"], first["endpoint"], first["replicas"], first["connected"]) == (
        node, endpoint, len(here), True)
    if len(nodes) == 1:
        assert first["throughput"] == pytest.approx(job["status"]["estimatedThroughput"])
    assert job["status"]["tokenSecret"] == "ep-conspirator-token"

    # The workers carry their replica's throughput (the agent's dispatch weight).
    deps = raw(client.AppsV1Api(api).list_namespaced_deployment(
        namespace, label_selector=MANAGED, _preload_content=False))
    total = 0.0
    for d in deps:
        env = {e["name"]: e.get("value")
               for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        total += float(env["CONSPIRATOR_THROUGHPUT"]) * d["spec"]["replicas"]
        assert env["CONSPIRATOR_JOB"] == "ep" and env["CONSPIRATOR_NAMESPACE"] == namespace
    assert total == pytest.approx(job["status"]["estimatedThroughput"], rel=1e-3)

    # The agent goes away: the job says so, and keeps the endpoint it had.
    report_agent(api, node, endpoint, connected=False)
    wait_job(api, namespace, "ep", "DataPathReady False again", lambda j: conditions(j)[
        "DataPathReady"] == ("False", "AgentNotConnected"), op, 30)
