"""Crash safety: the operator is killed (SIGKILL) at random points while a burst of 50
InferenceJobs arrives, and restarted each time; it converges with every job Running, no
slice reserved twice, one worker Deployment per (job, node, profile) and none left over,
one token Secret per job and the agents' Secret holding exactly their tokens.  A last
restart after convergence changes nothing (the plan is rebuilt from the statuses; no
Secret is rewritten).

``CONSPIRATOR_E2E_SEED`` picks the random kill points (printed on failure).
"""

from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
from typing import Any

from conspirator_e2e.fakenode import FakeNodeDaemon
from conspirator_e2e.operator_fixtures import (  # noqa: F401  (pytest fixtures)
    OperatorFactory,
    fake_nodes,
    operator_crds,
    operators,
    resnet_profile,
)
from conspirator_e2e.operator_testing import (
    MANAGED,
    check_invariants,
    create,
    inference_job,
    jobs,
    phases,
    raw,
)
from conspirator_e2e.testing import wait_until
from kubernetes import client

BURST = 50
KILLS = 4


def burst(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(BURST):
        model = rng.choice(["resnet50", "resnet18", "bert-base"])
        out.append(inference_job(
            f"burst-{i:02d}", rng.choice([200, 400, 700, 1000]), model=model,
            p99=rng.choice([25, 50, 100]), memory=rng.choice([2, 4, 8]),
            max_batch=rng.choice([4, 8, 16])))
    return out


AGG = "conspirator-agent-tokens"


def secrets(api: client.ApiClient, ns: str) -> dict[str, dict[str, Any]]:
    core = client.CoreV1Api(api)
    return {s["metadata"]["name"]: s for s in raw(core.list_namespaced_secret(
        ns, _preload_content=False))}


def tokens(api: client.ApiClient, ns: str) -> tuple[dict[str, str], dict[str, str]]:
    """(job -> token of its Secret, key -> token in the agents' Secret)."""
    got = secrets(api, ns)

    def text(v: str) -> str:
        return base64.b64decode(v).decode()

    per_job = {j["metadata"]["name"]: text(got[j["status"]["tokenSecret"]]["data"]["token"])
               for j in jobs(api, [ns])}
    agg = {k: text(v) for k, v in (got.get(AGG, {}).get("data") or {}).items()}
    return per_job, agg


def snapshot(api: client.ApiClient, ns: str) -> dict[str, Any]:
    apps = client.AppsV1Api(api)
    deps = raw(apps.list_namespaced_deployment(ns, label_selector=MANAGED,
                                               _preload_content=False))
    return {
        "secrets": sorted((n, s["metadata"]["resourceVersion"])
                          for n, s in secrets(api, ns).items()),
        "replicas": {j["metadata"]["name"]: sorted(
            (r["node"], r["gpuUUID"], r["migProfile"], r["startSlice"])
            for r in j["status"]["replicas"]) for j in jobs(api, [ns])},
        "deployments": sorted((d["metadata"]["name"], d["metadata"]["uid"]) for d in deps),
    }


def test_kill_during_burst_converges(cluster: Any, api: client.ApiClient, namespace: str,
                                     resnet_profile: None,  # noqa: F811
                                     operators: OperatorFactory,  # noqa: F811
                                     fake_nodes: FakeNodeDaemon) -> None:  # noqa: F811
    seed = int(os.environ.get("CONSPIRATOR_E2E_SEED", str(int(time.time()))))
    print(f"CONSPIRATOR_E2E_SEED={seed}")
    rng = random.Random(seed)
    bodies = burst(rng)
    op = operators("--standalone", "--replan-interval", "0", "--operator-namespace",
                   namespace).start()

    def arrive() -> None:
        for b in bodies:
            create(api, namespace, b)
            time.sleep(rng.uniform(0, 0.08))

    creator = threading.Thread(target=arrive)
    creator.start()
    kill_log = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.3, 4.0))
        op.kill()
        kill_log.append(dict(phases(jobs(api, [namespace]))))
        op.start()
    creator.join()
    print("phases at each kill:", kill_log)

    def converged() -> bool:
        assert op.alive(), op.tail()
        return phases(jobs(api, [namespace])) == {"Running": BURST}

    try:
        wait_until("all jobs Running", converged, 300, interval=2)
    finally:
        print("phases:", dict(phases(jobs(api, [namespace]))))
    assert check_invariants(api, [namespace]) == []

    # Every job has its token Secret and the agents' Secret holds exactly their tokens.
    def agents_agree() -> bool:
        per_job, agg = tokens(api, namespace)
        return agg == {f"{namespace}.{n}": t for n, t in per_job.items()}

    try:
        wait_until("the agents' Secret to hold every job's token", agents_agree, 30)
    finally:
        per_job, agg = tokens(api, namespace)
        print(json.dumps({"jobs": len(per_job), "agents": len(agg)}))
    assert len(tokens(api, namespace)[0]) == BURST

    # A restart after convergence rebuilds the same plan and recreates nothing.
    before = snapshot(api, namespace)
    op.kill()
    op.start()
    op.wait_healthy()
    time.sleep(5)
    assert snapshot(api, namespace) == before
    assert check_invariants(api, [namespace]) == []
