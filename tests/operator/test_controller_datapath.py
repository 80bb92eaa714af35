"""The controller and the data path together, against an in-memory API: a job's token
Secret is made before its first status, which names it; workers carry their throughput;
clientEndpoint and DataPathReady follow the GPUNode's DPU agent; deleting the job takes its
key out of the agents' Secret.  (The same flow on the real API server:
e2e/tests/test_operator_datapath.py.)"""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

from conspirator.operator.controller import Controller
from conspirator.operator.datapath import DataPath
from conspirator.operator.kube import Kube, NotFoundError
from conspirator.operator.settings import Settings

from .builders import API, job_body
from .test_datapath import AGG, OP_NS, FakeSecrets


def gpunode(name: str, dpu: dict[str, Any] | None = None,
            instances: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"gpus": [{
        "index": 0, "uuid": f"GPU-{name}-0", "model": "A100-80GB", "memoryGiB": 80,
        "migCapable": True, "migEnabled": True,
        "instances": [{"profile": p, "start": s, "uuid": f"MIG-{name}-{s}"}
                      for p, s in instances or []]}]}
    if dpu is not None:
        status["dpu"] = dpu["dpu"]
        status["conditions"] = dpu["conditions"]
    return {"apiVersion": API, "kind": "GPUNode",
            "metadata": {"name": name, "generation": 1, "resourceVersion": "1"},
            "spec": {}, "status": status}


class FakeApi(FakeSecrets):
    """The calls the controller makes, over dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}

    async def list_jobs(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.jobs.values()))

    async def list_nodes(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.nodes.values()))

    async def list_profiles(self) -> list[dict[str, Any]]:
        return []

    async def list_workers(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.deployments.values()))

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]
                               ) -> dict[str, Any]:
        body = self.jobs[f"{namespace}/{name}"]
        merged = {**(body.get("status") or {}), **status}
        body["status"] = {k: v for k, v in merged.items() if v is not None}
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(body)

    async def patch_node_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = self.nodes[name]
        body["spec"] = spec
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(body)

    async def create_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"].update(resourceVersion=str(self.rv), uid=f"d{self.rv}", generation=1)
        self.deployments[f"{body['metadata']['namespace']}/{body['metadata']['name']}"] = body
        return copy.deepcopy(body)

    async def update_deployment(self, body: dict[str, Any], resource_version: str
                                ) -> dict[str, Any]:
        return await self.create_deployment(body)

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.deployments[f"{namespace}/{name}"])
        except KeyError:
            raise NotFoundError(name) from None

    async def delete_deployment(self, namespace: str, name: str, uid: str | None = None
                                ) -> None:
        self.deployments.pop(f"{namespace}/{name}", None)

    async def post_event(self, body: dict[str, Any]) -> None:
        return None


def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in body["status"]["conditions"]}


def test_token_throughput_endpoint_and_data_path_ready_through_the_controller() -> None:
    api = FakeApi()
    api.nodes["n1"] = gpunode("n1", instances=[("1g.10gb", 6)])
    api.jobs["ns/j"] = job_body("j", 500, max_batch=8)
    controller = Controller(Settings(replan_interval=0), cast(Kube, api))
    datapath = DataPath(api, controller, OP_NS, AGG)

    async def arrive() -> None:  # what the create handler does
        body = api.jobs["ns/j"]
        key = controller.observe_job(body)
        assert key is not None
        await datapath.ensure(controller.snap.jobs[key])
        await controller.job_changed(body)
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
            controller.observe_node(body)
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
        await controller.job_deleted(job)
        datapath.forget("ns/j")
        await datapath.sync()
        assert api.data(OP_NS, AGG) == {} and api.deployments == {}
        await datapath.idle()

    asyncio.run(go())
