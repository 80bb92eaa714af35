"""Crash safety: the operator is killed (SIGKILL) at random points while a burst of 50
InferenceJobs arrives, and restarted each time; it converges with every job Running, no
slice reserved twice, one worker Deployment per (job, node, profile) and none left over.
A last restart after convergence changes nothing (the plan is rebuilt from the statuses).

``CONSPIRATOR_E2E_SEED`` picks the random kill points (printed on failure).
"""

from __future__ import annotations

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


def snapshot(api: client.ApiClient, ns: str) -> dict[str, Any]:
    apps = client.AppsV1Api(api)
    deps = raw(apps.list_namespaced_deployment(ns, label_selector=MANAGED,
                                               _preload_content=False))
    return {
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
    op = operators("--standalone", "--replan-interval", "0").start()

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

    # A restart after convergence rebuilds the same plan and recreates nothing.
    before = snapshot(api, namespace)
    op.kill()
    op.start()
    op.wait_healthy()
    time.sleep(5)
    assert snapshot(api, namespace) == before
    assert check_invariants(api, [namespace]) == []
