"""The load loop (operator/loadcontrol.py) through the controller, on the in-memory API:
observed load in the status, Auto jobs re-placed when the autoscaler changes their planned
rate (out and in, Events with the figures), restarts keeping the planned rate, and learned
profiles re-planning a job whose replicas serve more than their entry says."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from conspirator.operator.agentload import AgentReport, ReplicaSample
from conspirator.operator.autoscale import JobLoad
from conspirator.operator.controller import Controller
from conspirator.operator.handlers import on_job_changed
from conspirator.operator.settings import Settings

from .builders import job_body
from .fakes import FakeKube, apply_layouts, gpunode
from .test_controller import body

AUTO = {"mode": "Auto", "scaleDownStabilizationSeconds": 0}


def setup(rps: float, scaling: dict[str, Any] | None = None, gpus: int = 4
          ) -> tuple[FakeKube, Controller]:
    api = FakeKube()
    api.nodes["n1"] = gpunode("n1", gpus=gpus)
    api.jobs["ns/j0"] = (job_body("j0", rps, scaling=scaling) if scaling
                         else job_body("j0", rps))
    return api, Controller(Settings(replan_interval=0), api)


def report(offered: float, served: float | None = None, p99: float = 5.0, waiting: int = 0,
           replicas: tuple[ReplicaSample, ...] = ()) -> AgentReport:
    return AgentReport("n1", {"ns/j0": JobLoad(offered, offered if served is None else served,
                                               p99_ms=p99, waiting=waiting, window_s=30.0)},
                       replicas)


def capacity(api: FakeKube) -> float:
    return float(api.jobs["ns/j0"]["status"]["estimatedThroughput"])


async def settle(api: FakeKube, c: Controller) -> None:
    await asyncio.sleep(0)
    await c.reconcile()
    apply_layouts(api)
    for n in api.nodes.values():
        c.cache.observe_node(n)
    await c.reconcile()


def test_static_job_shows_observed_load_and_keeps_its_demand() -> None:
    api, c = setup(300)

    async def go() -> None:
        await on_job_changed(c, body(api, "ns/j0"))
        res = await c.observe_load([report(900.0, 450.0, p99=48.0, waiting=7)])
        assert res.rendered == ["ns/j0"] and not res.decisions
        await settle(api, c)
        st = api.jobs["ns/j0"]["status"]
        assert st["observed"]["offeredRPS"] == 900.0 and st["observed"]["servedRPS"] == 450.0
        assert st["observed"]["p99LatencyMs"] == 48.0 and st["observed"]["waiting"] == 7
        assert st["demand"] == 300 and "autoscaling" not in st
        # The same figures again are not worth a write.
        res = await c.observe_load([report(900.0, 450.0, p99=48.0, waiting=7)])
        assert res.rendered == []

    asyncio.run(go())


def test_auto_job_scales_out_and_in_with_events() -> None:
    api, c = setup(300, AUTO)

    async def go() -> None:
        await on_job_changed(c, body(api, "ns/j0"))
        await settle(api, c)
        st = api.jobs["ns/j0"]["status"]
        assert st["autoscaling"]["plannedRPS"] == 300
        before = capacity(api)
        res = await c.observe_load([report(900.0)])
        d = res.decisions["ns/j0"]
        assert d.direction == "up" and d.planned_rps == 1120.0  # 900 / 0.8, 3 figures
        await settle(api, c)
        st = api.jobs["ns/j0"]["status"]
        assert st["demand"] == 1120.0 and st["autoscaling"]["plannedRPS"] == 1120.0
        assert "300 -> 1120 req/s" in st["autoscaling"]["reason"]
        assert capacity(api) >= 1120.0 * 0.99 > before
        assert st["replicaCount"] >= 2 and st["phase"] in ("Starting", "Running")
        assert [e["reason"] for e in c.load.posted] == ["ScaledOut"]
        assert "900.0 offered" in c.load.posted[0]["message"]
        # The load drops: back to one small replica (window 0 in this test).
        res = await c.observe_load([report(100.0)])
        assert res.decisions["ns/j0"].direction == "down"
        await settle(api, c)
        assert api.jobs["ns/j0"]["status"]["demand"] == 125.0
        assert capacity(api) < 1120.0 * 0.99
        assert [e["reason"] for e in c.load.posted] == ["ScaledOut", "ScaledIn"]

    asyncio.run(go())


def test_a_restarted_operator_plans_for_the_recorded_rate() -> None:
    api, c = setup(300, AUTO)

    async def go() -> None:
        await on_job_changed(c, body(api, "ns/j0"))
        await c.observe_load([report(900.0)])
        await settle(api, c)
        reps = api.jobs["ns/j0"]["status"]["replicas"]
        fresh = Controller(Settings(replan_interval=0), api)
        await fresh.reconcile()
        assert fresh.snap.jobs["ns/j0"].demand_rps == 1120.0
        assert api.jobs["ns/j0"]["status"]["replicas"] == reps

    asyncio.run(go())


def test_bounds_and_static_mode_switch() -> None:
    api, c = setup(300, {**AUTO, "maxRequestsPerSecond": 500})

    async def go() -> None:
        await on_job_changed(c, body(api, "ns/j0"))
        res = await c.observe_load([report(5000.0)])
        assert res.decisions["ns/j0"].planned_rps == 500.0
        await settle(api, c)
        assert api.jobs["ns/j0"]["status"]["demand"] == 500.0

    asyncio.run(go())


def profile_body(thr: float) -> dict[str, Any]:
    """resnet50 profiled on A100-80GB 1g.10gb only, at ``thr`` requests/s."""
    return {"apiVersion": "conspirator.io/v1alpha1", "kind": "ModelProfile",
            "metadata": {"name": "resnet50", "resourceVersion": "1"},
            "spec": {"model": "resnet50", "entries": [
                {"gpuModel": "A100-80GB", "migProfile": "1g.10gb", "batchSize": 8,
                 "throughput": thr, "p99LatencyMs": 10.0}]}}


async def placed(api: FakeKube, c: Controller) -> list[str]:
    """Place ns/j0, play the node daemon, and return its replicas' identities."""
    await on_job_changed(c, body(api, "ns/j0"))
    await settle(api, c)
    return ids(api)


def ids(api: FakeKube) -> list[str]:
    return [f"{r['gpuUUID']}/{r['migProfile']}/{r['startSlice']}"
            for r in api.jobs["ns/j0"]["status"]["replicas"]]


def test_a_replica_twice_as_fast_as_its_profile_is_planned_with_the_observed_figure() -> None:
    api, c = setup(350, gpus=1)
    api.profiles["resnet50"] = profile_body(100.0)

    async def go() -> None:
        await on_job_changed(c, body(api, "ns/j0"))
        await settle(api, c)
        st = api.jobs["ns/j0"]["status"]
        assert st["profiles"] == "4x1g.10gb" and capacity(api) == 400.0
        (dep,) = api.deployments.values()
        template = copy.deepcopy(dep["spec"]["template"])
        # Each replica serves 200 req/s, not 100: it can do at least that much.
        samples = tuple(ReplicaSample("ns/j0", rid, 200.0 + k) for k, rid in
                        enumerate(ids(api)))
        res = await c.observe_load([report(806.0, 806.0, replicas=samples)])
        (ref,) = res.refinements
        assert ref.key == ("resnet50", "A100-80GB", "1g.10gb", 8)
        assert ref.throughput == 201.5 and ref.previous == 100.0 and ref.samples == 4
        obs = api.profiles["resnet50"]["status"]["observed"]
        assert [(o["migProfile"], o["throughput"], o["samples"]) for o in obs] == [
            ("1g.10gb", 201.5, 4)]
        await settle(api, c)
        # Planned with the learned figure: two replicas serve the 350 req/s now.
        st = api.jobs["ns/j0"]["status"]
        assert st["profiles"] == "2x1g.10gb" and capacity(api) == 403.0
        # The Deployment scaled down; its pod template (the workers' weight) did not
        # change, so the two workers left are not rolled.
        (dep,) = api.deployments.values()
        assert dep["spec"]["replicas"] == 2
        assert template == dep["spec"]["template"]

    asyncio.run(go())


def test_unsaturated_windows_and_one_outlier_do_not_refine() -> None:
    api, c = setup(350, gpus=1)
    api.profiles["resnet50"] = profile_body(100.0)

    async def go() -> None:
        rid = (await placed(api, c))[0]
        for _ in range(5):  # little to do, queueing for a moment: these measure nothing
            res = await c.observe_load([report(60.0, waiting=3, replicas=(
                ReplicaSample("ns/j0", rid, 60.0),))])
            assert not res.refinements
        for v in (100.0, 101.0, 5000.0, 99.0):  # saturated; one outlier among them
            res = await c.observe_load([report(900.0, 400.0, replicas=(
                ReplicaSample("ns/j0", rid, v),))])
            assert not res.refinements
        assert "status" not in api.profiles["resnet50"]
        # Saturated for less than a window: a window that mixes busy and idle time says
        # nothing (it would read as a capacity below the real one).
        c.load.saturated_since["ns/j0"] = time.monotonic() + 3600
        for v in (60.0, 61.0, 62.0):
            res = await c.observe_load([report(900.0, 400.0, replicas=(
                ReplicaSample("ns/j0", rid, v),))])
            assert not res.refinements
        assert "status" not in api.profiles["resnet50"]

    asyncio.run(go())


def test_a_recreated_profile_learns_afresh() -> None:
    api, c = setup(350, gpus=1)
    api.profiles["resnet50"] = profile_body(100.0)

    async def go() -> None:
        rid = (await placed(api, c))[0]
        for _ in range(2):  # two samples of the old profile: not enough to write
            res = await c.observe_load([report(100.0, replicas=(
                ReplicaSample("ns/j0", rid, 200.0),))])
            assert not res.refinements
        # The platform team measured again: a new spec (generation 2).
        new = profile_body(100.0)
        new["metadata"].update(generation=2, resourceVersion="7")
        api.profiles["resnet50"] = new
        c.cache.observe_profile(new)
        res = await c.observe_load([report(100.0, replicas=(
            ReplicaSample("ns/j0", rid, 200.0),))])
        assert not res.refinements  # one sample of the new profile, not three
        assert c.load.refiner.samples[("resnet50", "A100-80GB", "1g.10gb", 8)].total == 1

    asyncio.run(go())
