"""Moves that drop nothing, through the controller on the in-memory API (issue 15, part 3).

* A global re-plan's move is make-before-break: the old instance stays in the job's
  ``status.retiring``, in the layout and in the worker Deployment until the new worker is
  ready and the DPU agents count it; then it goes, and the pod that goes is the one on the
  old instance.
* A scale-in (or any released instance) marks the pod that holds it as the cheapest
  (``pod-deletion-cost``), so the ReplicaSet controller removes that pod, not another.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conspirator.operator.agentload import AgentReport, ReplicaSample
from conspirator.operator.autoscale import JobLoad
from conspirator.operator.controller import Controller
from conspirator.operator.settings import Settings
from conspirator.operator.writer import LEAVING_COST

from .builders import job_body
from .fakes import FakeKube, apply_layouts, gpunode

DPU = {"dpu": {"present": True, "model": "BlueField-3", "agentEndpoint": "10.0.0.1:9400"},
       "conditions": [{"type": "DPUReady", "status": "True", "reason": "AgentConnected",
                       "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}


def placed(gpu: int, start: int = 6, profile: str = "1g.10gb") -> dict[str, Any]:
    return {"node": "n1", "gpuUUID": f"GPU-n1-{gpu}", "gpuModel": "A100-80GB",
            "migProfile": profile, "startSlice": start}


def spread() -> tuple[FakeKube, Controller]:
    """Two small movable jobs on two GPUs (instances applied): a re-plan puts them on one."""
    api = FakeKube()
    api.nodes["n1"] = gpunode("n1", gpus=2, dpu=DPU)
    for i, name in enumerate(("p", "q")):
        b = job_body(name, 800, created=f"2026-01-0{i + 1}T00:00:00Z")
        b["status"] = {"replicas": [placed(i)]}
        api.jobs[f"ns/{name}"] = b
    api.nodes["n1"]["spec"] = {"gpus": [
        {"index": i, "migEnabled": True, "instances": [
            {"profile": "1g.10gb", "start": 6, "reservedFor": f"ns/{n}"}]}
        for i, n in enumerate(("p", "q"))]}
    apply_layouts(api)
    return api, Controller(Settings(replan_interval=0, max_migrations=8), api)


def ready_all(api: FakeKube, c: Controller) -> None:
    """Play the Deployment controller: every worker Deployment is rolled out and ready."""
    for d in api.deployments.values():
        n = d["spec"]["replicas"]
        d["status"] = {"observedGeneration": d["metadata"].get("generation", 1),
                       "readyReplicas": n, "updatedReplicas": n, "replicas": n}
        api.rv += 1
        d["metadata"]["resourceVersion"] = str(api.rv)
        c.cache.observe_worker(d)


def report(job: str, pods: dict[str, str]) -> AgentReport:
    """The agent on n1 reports job ``job`` with one ready replica per (device id -> pod)."""
    return AgentReport("n1", {job: JobLoad(100.0, 100.0, p99_ms=5.0, window_s=30.0,
                                           replicas=len(pods))},
                       tuple(ReplicaSample(job, dev, 100.0, pod=pod)
                             for dev, pod in sorted(pods.items())))


async def settle(api: FakeKube, c: Controller) -> None:
    await c.reconcile()
    apply_layouts(api)
    for n in api.nodes.values():
        c.cache.observe_node(n)
    await c.reconcile()


def worker_count(api: FakeKube, job: str) -> int:
    return sum(d["spec"]["replicas"] for d in api.deployments.values()
               if d["metadata"]["labels"].get("conspirator.io/job") == job)


def test_a_replan_move_holds_the_old_instance_until_the_new_worker_is_counted() -> None:
    api, c = spread()
    c.cache.scraping = True

    async def go() -> None:
        await settle(api, c)
        ready_all(api, c)
        await c.reconcile()
        assert {k: worker_count(api, k.split("/")[1]) for k in api.jobs} == \
            {"ns/p": 1, "ns/q": 1}
        await c.replan()
        moved = [k for k, b in api.jobs.items() if b["status"].get("retiring")]
        assert len(moved) == 1
        key = moved[0]
        st = api.jobs[key]["status"]
        (old,) = st["retiring"]
        assert old["gpuUUID"] not in {r["gpuUUID"] for r in st["replicas"]}
        assert "migrating" in st["message"]
        await asyncio.sleep(0.01)
        (text,) = [e["message"] for e in api.events if e["reason"] == "Migrating"]
        assert "make-before-break" in text
        # The old instance stays in the layout, reserved for the job, and keeps its worker.
        await settle(api, c)
        spec = {(g["index"], i["start"]): i["reservedFor"]
                for g in api.nodes["n1"]["spec"]["gpus"] for i in g.get("instances", [])}
        old_gpu = int(old["gpuUUID"].rsplit("-", 1)[1])
        assert spec[(old_gpu, old["startSlice"])] == key
        assert worker_count(api, key.split("/")[1]) == 2
        # Ready workers, but the agents still count the old replica only: it holds.
        ready_all(api, c)
        old_dev = f"MIG-n1-{old_gpu}-{old['startSlice']}"
        await c.observe_load([report(key, {old_dev: "ns/old-pod"})])
        await c.reconcile()
        assert api.jobs[key]["status"].get("retiring")
        # The agents count both: the old replica goes, and its pod is the one removed.
        (new,) = api.jobs[key]["status"]["replicas"]
        new_dev = f"MIG-n1-{int(new['gpuUUID'].rsplit('-', 1)[1])}-{new['startSlice']}"
        await c.observe_load([report(key, {old_dev: "ns/old-pod", new_dev: "ns/new-pod"})])
        await c.reconcile()
        st = api.jobs[key]["status"]
        assert not st.get("retiring") and "migrating" not in st["message"]
        assert worker_count(api, key.split("/")[1]) == 1
        assert ("set_pod_deletion_cost", f"ns/old-pod={LEAVING_COST}") in api.writes_made
        assert not any(w[0] in ("set_pod_deletion_cost", "delete_pod") and "new-pod" in w[1]
                       for w in api.writes_made)
        await asyncio.sleep(0.01)
        assert "Migrated" in api.reasons(key)
        await settle(api, c)
        used = {g["index"] for g in api.nodes["n1"]["spec"]["gpus"] if g.get("instances")}
        assert len(used) == 1  # consolidated at last

    asyncio.run(go())


def test_a_restart_mid_migration_keeps_the_old_instance() -> None:
    api, c = spread()

    async def go() -> None:
        await settle(api, c)
        await c.replan()
        (key,) = [k for k, b in api.jobs.items() if b["status"].get("retiring")]
        retiring = api.jobs[key]["status"]["retiring"]
        spec = api.nodes["n1"]["spec"]
        fresh = Controller(Settings(replan_interval=0), api)
        fresh.cache.scraping = True
        await fresh.reconcile()
        assert api.jobs[key]["status"]["retiring"] == retiring
        assert api.nodes["n1"]["spec"] == spec

    asyncio.run(go())


def test_scale_in_removes_the_pod_of_the_released_instance() -> None:
    api = FakeKube()
    api.nodes["n1"] = gpunode("n1", gpus=1, dpu=DPU)
    api.jobs["ns/j0"] = job_body("j0", 1000)
    c = Controller(Settings(replan_interval=0), api)

    async def go() -> None:
        await settle(api, c)
        ready_all(api, c)
        reps = api.jobs["ns/j0"]["status"]["replicas"]
        assert len(reps) >= 2
        pods = {f"MIG-n1-0-{r['startSlice']}": f"ns/pod-{r['startSlice']}" for r in reps}
        await c.observe_load([report("ns/j0", pods)])
        # The demand drops (a spec change here; the autoscaler does the same): one goes.
        b = api.jobs["ns/j0"]
        b["spec"]["demand"]["requestsPerSecond"] = 100
        b["metadata"]["generation"] = 2
        api.rv += 1
        b["metadata"]["resourceVersion"] = str(api.rv)
        c.cache.observe_job(b)
        await c.reconcile()
        kept = {r["startSlice"] for r in api.jobs["ns/j0"]["status"]["replicas"]}
        gone = {r["startSlice"] for r in reps} - kept
        assert gone and worker_count(api, "j0") == len(kept)
        marked = [w[1] for w in api.writes_made if w[0] == "set_pod_deletion_cost"]
        assert sorted(marked) == sorted(f"ns/pod-{s}={LEAVING_COST}" for s in gone)

    asyncio.run(go())
