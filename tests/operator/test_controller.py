"""The kopf handlers and the controller against the in-memory API (tests/operator/fakes.py):
the write order, a failed write forcing a resync, the token Secret's errors, deletion and
watch events; no cluster, no kopf operator running."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

import kopf
import pytest

from conspirator.mig import dra_selector
from conspirator.operator.controller import PENDING_DELAY, RETRY_DELAY, Controller
from conspirator.operator.datapath import TokenUnusableError
from conspirator.operator.handlers import on_job_changed, on_job_deleted, on_watch_event
from conspirator.operator.settings import Settings
from conspirator.operator.views import JobView

from .builders import job_body
from .fakes import FakeKube, apply_layouts, gpunode


class FakeTokens:
    """The data path as the controller sees it; ``error`` makes ``ensure`` raise."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.ensured: list[str] = []
        self.forgotten: list[str] = []
        self.requests = 0
        self.syncs = 0

    async def ensure(self, view: JobView, check: bool = False) -> str | None:
        self.ensured.append(view.key)
        if self.error is not None:
            raise self.error
        return f"{view.name}-conspirator-token"

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    def request(self) -> None:
        self.requests += 1

    async def sync(self, force: bool = False) -> bool:
        self.syncs += 1
        return True


def setup(jobs: int = 1) -> tuple[FakeKube, Controller]:
    api = FakeKube()
    api.nodes["n1"] = gpunode("n1", gpus=2)
    for i in range(jobs):
        api.jobs[f"ns/j{i}"] = job_body(f"j{i}", 900, created=f"2026-01-0{i + 1}T00:00:00Z")
    return api, Controller(Settings(replan_interval=0), api)


def kbody(obj: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, copy.deepcopy(obj)))


def body(api: FakeKube, key: str) -> kopf.Body:
    return kbody(api.jobs[key])


def event(kind: str, obj: dict[str, Any]) -> kopf.RawEvent:
    return {"type": kind, "object": obj}  # type: ignore[typeddict-item]


def test_arrival_writes_the_reservation_then_the_layout_then_workers() -> None:
    api, controller = setup()

    async def go() -> None:
        await on_job_changed(controller, body(api, "ns/j0"))
        status = api.jobs["ns/j0"]["status"]
        assert [r["node"] for r in status["replicas"]] == ["n1"]
        assert api.writes_made[:2] == [("patch_job_status", "ns/j0"),
                                      ("patch_node_spec", "n1")]
        assert api.deployments == {}  # the node does not show the instance yet
        # The node daemon applies the layout; the watch event brings the worker.
        apply_layouts(api)
        on_watch_event(controller, "gpunodes", event("MODIFIED", api.nodes["n1"]),
                       kbody(api.nodes["n1"]))
        await controller.reconcile()
        (dep,) = api.deployments
        assert dep.startswith("ns/j0-n1-")
        await asyncio.sleep(0.01)  # Events are posted in the background
        assert "Placed" in api.reasons("ns/j0") and "WorkersCreated" in api.reasons("ns/j0")
        assert controller.metrics.placement_attempts.labels("arrival", "placed")._value.get() \
            == 1

    asyncio.run(go())


def test_a_failed_write_resyncs_and_converges() -> None:
    api, controller = setup()
    api.fail["patch_node_spec"] = RuntimeError("etcd is having a day")

    async def go() -> None:
        with pytest.raises(kopf.TemporaryError) as err:
            await on_job_changed(controller, body(api, "ns/j0"))
        assert err.value.delay == RETRY_DELAY and "etcd" in str(err.value)
        assert controller.synced is False and api.lists == 1
        assert controller.cache.rebuild  # the work was given back
        # kopf retries: the controller lists everything again and finishes the job.
        await on_job_changed(controller, body(api, "ns/j0"))
        assert api.lists == 2 and controller.health()["synced"]
        assert api.nodes["n1"]["spec"]["gpus"], "the layout is written"
        recorded = api.jobs["ns/j0"]["status"]["replicas"]
        assert [(r["node"], r["migProfile"]) for r in recorded] == \
            [(r.node, r.profile) for r in controller.plan.reserved["ns/j0"]]
        assert controller.metrics.api_errors.labels("GPUNode")._value.get() == 1

    asyncio.run(go())


def test_a_status_write_that_fails_names_the_job() -> None:
    api, controller = setup()
    api.fail["patch_job_status"] = RuntimeError("denied")

    async def go() -> None:
        with pytest.raises(kopf.TemporaryError) as err:
            await on_job_changed(controller, body(api, "ns/j0"))
        assert "denied" in str(err.value)
        await on_job_changed(controller, body(api, "ns/j0"))
        assert api.jobs["ns/j0"]["status"]["replicas"]

    asyncio.run(go())


def test_an_unusable_token_secret_waits_longer_but_the_job_is_placed() -> None:
    api, controller = setup()
    controller.tokens = FakeTokens(TokenUnusableError("an earlier job's Secret"))

    async def go() -> None:
        with pytest.raises(kopf.TemporaryError) as err:
            await on_job_changed(controller, body(api, "ns/j0"))
        assert err.value.delay == PENDING_DELAY and "token Secret" in str(err.value)
        assert api.jobs["ns/j0"]["status"]["replicas"]
        controller.tokens = FakeTokens(OSError("API server unreachable"))
        with pytest.raises(kopf.TemporaryError) as err:
            await on_job_changed(controller, body(api, "ns/j0"))
        assert err.value.delay == RETRY_DELAY

    asyncio.run(go())


def test_deletion_releases_then_drops_the_token_key() -> None:
    api, controller = setup(jobs=2)
    tokens = FakeTokens()
    controller.tokens = tokens

    async def go() -> None:
        for k in ("ns/j0", "ns/j1"):
            await on_job_changed(controller, body(api, k))
        apply_layouts(api)
        for b in api.nodes.values():
            controller.cache.observe_node(b)
        await controller.reconcile()
        assert len(api.deployments) == 2
        api.jobs["ns/j0"]["metadata"]["deletionTimestamp"] = "2026-01-05T00:00:00Z"
        api.jobs["ns/j0"]["metadata"]["resourceVersion"] = "999"
        await on_job_deleted(controller, body(api, "ns/j0"), retry=0)
        assert "ns/j0" not in controller.plan.reserved and "ns/j1" in controller.plan.reserved
        assert [k for k in api.deployments if "j0" in k] == []
        assert tokens.forgotten == ["ns/j0"] and tokens.syncs == 1
        # The object goes: the watch event forgets it.
        gone = api.jobs.pop("ns/j0")
        on_watch_event(controller, "inferencejobs", event("DELETED", gone), kbody(gone))
        assert "ns/j0" not in controller.cache.snap.jobs and tokens.requests == 1
        await controller.reconcile()
        assert not controller.has_work()

    asyncio.run(go())


def test_watch_events_feed_the_cache() -> None:
    api, controller = setup()

    async def go() -> None:
        await on_job_changed(controller, body(api, "ns/j0"))
        assert not controller.has_work()
        n2 = gpunode("n2")
        on_watch_event(controller, "gpunodes", event("ADDED", n2), kbody(n2))
        assert "n2" in controller.cache.snap.nodes and controller.cache.rebuild
        on_watch_event(controller, "gpunodes", event("DELETED", n2), kbody(n2))
        assert "n2" not in controller.cache.snap.nodes
        await controller.reconcile()
        assert not controller.has_work()

    asyncio.run(go())


def test_out_of_scope_jobs_are_ignored() -> None:
    api = FakeKube()
    api.nodes["n1"] = gpunode("n1")
    api.jobs["other/j"] = job_body("j", 900, namespace="other")
    controller = Controller(Settings(replan_interval=0, namespaces=("ns",)), api)

    async def go() -> None:
        await on_job_changed(controller, body(api, "other/j"))
        assert "status" not in api.jobs["other/j"] and api.lists == 0

    asyncio.run(go())


def test_a_dra_node_gets_workers_with_a_claim_for_the_reserved_instances_only() -> None:
    api, controller = setup()
    api.nodes["n1"]["status"]["allocation"] = "DRA"

    async def go() -> None:
        await on_job_changed(controller, body(api, "ns/j0"))
        apply_layouts(api)
        on_watch_event(controller, "gpunodes", event("MODIFIED", api.nodes["n1"]),
                       kbody(api.nodes["n1"]))
        await controller.reconcile()
        (key,) = api.deployments
        (tkey,) = api.claim_templates
        assert tkey == key  # named like the Deployment, created before it
        assert api.writes_made.index(("create_claim_template", tkey)) < \
            api.writes_made.index(("create_deployment", key))
        pod = api.deployments[key]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"] == {"claims": [{"name": "mig"}]}
        assert pod["resourceClaims"] == [{"name": "mig",
                                          "resourceClaimTemplateName": key.split("/")[1]}]
        t = api.claim_templates[tkey]
        assert t["metadata"]["ownerReferences"][0]["name"] == "j0"
        (req,) = t["spec"]["spec"]["devices"]["requests"]
        (rep,) = api.jobs["ns/j0"]["status"]["replicas"]
        assert req["exactly"]["selectors"] == [{"cel": {"expression": dra_selector(
            rep["migProfile"], "ns/j0")}}]
        assert rep["resourceClaimTemplate"] == key.split("/")[1]
        # Another pass writes nothing new: the template exists.
        n = len(api.writes_made)
        await controller.reconcile()
        assert ("create_claim_template", tkey) not in api.writes_made[n:]

    asyncio.run(go())
