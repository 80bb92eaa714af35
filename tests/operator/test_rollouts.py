"""Worker rollouts that drop nothing, through the controller on the in-memory API (issue 15,
part 3): a new worker revision (image, args, data path) of a lone replica starts on a new
instance, in the job's other worker set, while the old worker keeps its template and serves;
the old one goes once the new one is ready and the DPU agents count it.  Without room for
both, the Deployment replaces its pod in place, within the disruption budget, and says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conspirator.operator.controller import Controller
from conspirator.operator.settings import Settings

from .builders import job_body
from .fakes import FakeKube, apply_layouts, gpunode
from .test_migration import DPU, placed, ready_all, report, settle

OLD, NEW, NEWER = "conspirator/worker:0.1.0", "conspirator/worker:0.2.0", "conspirator/worker:0.3.0"


def one_job(gpus: int = 2, profile: str = "1g.10gb", rps: float = 800
            ) -> tuple[FakeKube, Controller]:
    api = FakeKube()
    api.nodes["n1"] = gpunode("n1", gpus=gpus, dpu=DPU)
    b = job_body("j", rps)
    start = 0 if profile == "7g.80gb" else 6
    b["status"] = {"replicas": [placed(0, start, profile)]}
    api.jobs["ns/j"] = b
    api.nodes["n1"]["spec"] = {"gpus": [{"index": 0, "migEnabled": True, "instances": [
        {"profile": profile, "start": start, "reservedFor": "ns/j"}]}]}
    apply_layouts(api)
    c = Controller(Settings(replan_interval=0), api)
    c.cache.scraping = True
    return api, c


def new_image(api: FakeKube, c: Controller, image: str) -> None:
    b = api.jobs["ns/j"]
    b["spec"]["model"]["image"] = image
    b["metadata"]["generation"] = int(b["metadata"]["generation"]) + 1
    api.rv += 1
    b["metadata"]["resourceVersion"] = str(api.rv)
    c.cache.observe_job(b)


def workers(api: FakeKube) -> dict[str, tuple[int, str]]:
    """Deployment name -> (replicas, image)."""
    return {d["metadata"]["name"]: (d["spec"]["replicas"],
                                    d["spec"]["template"]["spec"]["containers"][0]["image"])
            for d in api.deployments.values()}


def device(r: dict[str, Any]) -> str:
    return f"MIG-n1-{int(r['gpuUUID'].rsplit('-', 1)[1])}-{r['startSlice']}"


def test_a_lone_replica_rolls_out_make_before_break_and_back() -> None:
    api, c = one_job()

    async def go() -> None:
        await settle(api, c)
        ready_all(api, c)
        await c.reconcile()
        assert workers(api) == {"j-n1-1g-10gb": (1, OLD)}
        (old,) = api.jobs["ns/j"]["status"]["replicas"]

        new_image(api, c, NEW)
        await settle(api, c)
        st = api.jobs["ns/j"]["status"]
        (new,) = st["replicas"]
        assert new["workerSet"] == 1 and device(new) != device(old)
        assert [device(r) for r in st["retiring"]] == [device(old)]
        assert "workerSet" not in st["retiring"][0]
        assert "rolling out" in st["message"]
        # The old worker keeps its template; the new revision starts in set b.
        assert workers(api) == {"j-n1-1g-10gb": (1, OLD), "j-n1-1g-10gb-b": (1, NEW)}
        await asyncio.sleep(0.01)
        (text,) = [e["message"] for e in api.events if e["reason"] == "RollingOut"]
        assert "make-before-break" in text
        # Both instances are in the layout, reserved for the job.
        held = {(g["index"], i["start"]) for g in api.nodes["n1"]["spec"]["gpus"]
                for i in g.get("instances", []) if i.get("reservedFor") == "ns/j"}
        assert len(held) == 2

        # The new worker is ready but the agents count the old one only: it holds.
        ready_all(api, c)
        await c.observe_load([report("ns/j", {device(old): "ns/old-pod"})])
        await c.reconcile()
        assert api.jobs["ns/j"]["status"].get("retiring")
        assert workers(api)["j-n1-1g-10gb"] == (1, OLD)
        # Counted: the old revision's Deployment goes; the new one stays as it is.
        await c.observe_load([report("ns/j", {device(old): "ns/old-pod",
                                              device(new): "ns/j-n1-1g-10gb-b-x-y"})])
        await settle(api, c)
        st = api.jobs["ns/j"]["status"]
        assert not st.get("retiring") and [device(r) for r in st["replicas"]] == [device(new)]
        assert workers(api) == {"j-n1-1g-10gb-b": (1, NEW)}
        await asyncio.sleep(0.01)
        assert "RolledOut" in api.reasons("ns/j")

        # The next revision goes back to set 0, the same way.
        new_image(api, c, NEWER)
        await settle(api, c)
        assert workers(api) == {"j-n1-1g-10gb-b": (1, NEW), "j-n1-1g-10gb": (1, NEWER)}
        (newer,) = api.jobs["ns/j"]["status"]["replicas"]
        assert "workerSet" not in newer
        assert [device(r) for r in api.jobs["ns/j"]["status"]["retiring"]] == [device(new)]

    asyncio.run(go())


def test_a_restart_mid_rollout_keeps_both_revisions() -> None:
    api, c = one_job()

    async def go() -> None:
        await settle(api, c)
        ready_all(api, c)
        new_image(api, c, NEW)
        await settle(api, c)
        status, spec, deps = (api.jobs["ns/j"]["status"], api.nodes["n1"]["spec"],
                              workers(api))
        fresh = Controller(Settings(replan_interval=0), api)
        fresh.cache.scraping = True
        await fresh.reconcile()
        assert api.jobs["ns/j"]["status"]["retiring"] == status["retiring"]
        assert api.jobs["ns/j"]["status"]["replicas"] == status["replicas"]
        assert api.nodes["n1"]["spec"] == spec and workers(api) == deps

    asyncio.run(go())


def test_without_room_for_both_the_pods_are_replaced_in_place_within_the_budget() -> None:
    api, c = one_job(gpus=1, profile="7g.80gb", rps=5000)  # the whole of the only GPU

    async def go() -> None:
        await settle(api, c)
        ready_all(api, c)
        (before,) = api.jobs["ns/j"]["status"]["replicas"]
        new_image(api, c, NEW)
        await settle(api, c)
        st = api.jobs["ns/j"]["status"]
        assert not st.get("retiring") and st["replicas"] == [before]
        assert workers(api) == {"j-n1-7g-80gb": (1, NEW)}
        (d,) = api.deployments.values()
        assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
        await asyncio.sleep(0.01)
        texts = [e["message"] for e in api.events if e["reason"] == "RollingOut"]
        assert len(texts) == 1 and "no room for both" in texts[0]
        await settle(api, c)  # said once
        await asyncio.sleep(0.01)
        assert api.reasons("ns/j").count("RollingOut") == 1

    asyncio.run(go())
