"""The controller and the data path together, against an in-memory API: a job's token
Secret is made before its first status, which names it; workers carry their throughput;
clientEndpoint and DataPathReady follow the GPUNode's DPU agent; deleting the job takes its
key out of the agents' Secret.  (The same flow on the real API server:
e2e/tests/test_operator_datapath.py.)"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from conspirator.operator.controller import Controller
from conspirator.operator.datapath import DataPath
from conspirator.operator.settings import Settings

from .builders import job_body
from .fakes import AGG, OP_NS, FakeKube, gpunode


def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in body["status"]["conditions"]}


def test_token_throughput_endpoint_and_data_path_ready_through_the_controller() -> None:
    api = FakeKube()
    api.nodes["n1"] = gpunode("n1", instances=[("1g.10gb", 6)])
    api.jobs["ns/j"] = job_body("j", 500, max_batch=8)
    controller = Controller(Settings(replan_interval=0), api)
    datapath = DataPath(api, controller, OP_NS, AGG)
    controller.tokens = datapath

    async def arrive() -> None:  # what the create handler does
        await controller.job_changed(api.jobs["ns/j"])
        await datapath.sync()

    async def settle() -> None:
        for _ in range(50):
            await asyncio.sleep(0.06)
            if not controller.has_work():
                break
        await controller.reconcile()

    async def go() -> None:
        await arrive()
        job = api.jobs["ns/j"]
        token = api.data("ns", "j-conspirator-token")["token"]
        assert job["status"]["tokenSecret"] == "j-conspirator-token"
        assert api.data(OP_NS, AGG) == {"ns.j": token}
        # Placed on n1's 1g.10gb (900 requests/s in the built-in table); the worker knows.
        (dep,) = api.deployments.values()
        env = {e["name"]: e.get("value")
               for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        thr = float(env["CONSPIRATOR_THROUGHPUT"])
        assert thr > 0 and abs(thr - job["status"]["estimatedThroughput"]) < 1e-3
        assert conditions(job)["DataPathReady"] == ("False", "NoDPU")
        assert "clientEndpoint" not in job["status"]

        # The node daemon reports its agent: the job follows.
        def report(ready: bool) -> None:
            body = copy.deepcopy(api.nodes["n1"])
            body["status"]["dpu"] = {"present": True, "agentEndpoint": "10.1.0.1:7470"}
            body["status"]["conditions"] = [{
                "type": "DPUReady", "status": "True" if ready else "False",
                "reason": "AgentConnected" if ready else "AgentNotConnected",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
            api.rv += 1
            body["metadata"]["resourceVersion"] = str(api.rv)
            api.nodes["n1"] = body
            controller.cache.observe_node(body)
            controller.nudge()

        report(False)
        await settle()
        job = api.jobs["ns/j"]
        assert conditions(job)["DataPathReady"] == ("False", "AgentNotConnected")
        assert job["status"]["clientEndpoint"] == "10.1.0.1:7470"
        report(True)
        await settle()
        job = api.jobs["ns/j"]
        assert conditions(job)["DataPathReady"] == ("True", "AgentConnected")
        assert job["status"]["clientEndpoints"] == [{
            "node": "n1", "endpoint": "10.1.0.1:7470", "replicas": 1,
            "throughput": job["status"]["estimatedThroughput"], "connected": True}]
        # Nothing else changes: the Deployment was not rolled by the status changes.
        assert [d["metadata"]["resourceVersion"] for d in api.deployments.values()] == \
            [dep["metadata"]["resourceVersion"]]

        # Deleted: released, then (finalizer path) its key leaves the agents' Secret.
        job["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
        api.rv += 1
        job["metadata"]["resourceVersion"] = str(api.rv)
        await controller.job_deleted(job)  # releases, then drops its key
        assert api.data(OP_NS, AGG) == {} and api.deployments == {}
        await datapath.idle()

    asyncio.run(go())
