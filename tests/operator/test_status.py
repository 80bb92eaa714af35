"""InferenceJob status rendering: phases, conditions, printer-column fields."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from conspirator.api.v1alpha1 import InferenceJobStatus, JobPhase
from conspirator.operator.status import Outcome, render, same_status
from conspirator.operator.views import JobView, NodeView, Replica

from .builders import job, job_body, node

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REPS = [Replica("a", 0, "GPU-a-0", "A100-80GB", "1g.10gb", 6, 900.0),
        Replica("a", 0, "GPU-a-0", "A100-80GB", "1g.10gb", 5, 900.0)]
NODES = {"a": node("a", gpus=1, instances={0: [("1g.10gb", 5), ("1g.10gb", 6)]})}


def conds(st: InferenceJobStatus, data_path: bool = False) -> dict[str, tuple[str, str]]:
    """The conditions by type; DataPathReady only when asked (tested on its own below)."""
    return {c.type: (c.status.value, c.reason) for c in st.conditions
            if data_path or c.type != "DataPathReady"}


def test_phases_follow_the_decision_and_the_cluster() -> None:
    v = job("j", 1500)
    assert render(v, Outcome([]), NODES, T0).phase == JobPhase.PENDING
    st = render(v, Outcome([], reason="insufficient capacity: ..."), NODES, T0)
    assert st.phase == JobPhase.UNSCHEDULABLE and "insufficient capacity" in (st.message or "")
    assert conds(st)["Placed"] == ("False", "Unschedulable")
    st = render(v, Outcome([], failure="model 'x' has no ModelProfile"), NODES, T0)
    assert st.phase == JobPhase.FAILED and conds(st)["Placed"] == ("False", "UnknownModel")
    st = render(v, Outcome(REPS, applied={"a": False}), NODES, T0)
    assert st.phase == JobPhase.PARTITIONING
    assert conds(st) == {"Placed": ("True", "Placed"), "Partitioned": ("False", "WaitingForLayout"),
                         "Ready": ("False", "WaitingForLayout")}
    st = render(v, Outcome(REPS, applied={"a": True}), NODES, T0)
    assert st.phase == JobPhase.STARTING and conds(st)["Ready"] == ("False", "WorkersStarting")
    st = render(v, Outcome(REPS, applied={"a": True}, workers={("a", "1g.10gb"): (2, 2)},
                           source="ModelProfile/resnet50"), NODES, T0)
    assert st.phase == JobPhase.RUNNING
    assert conds(st) == {"Placed": ("True", "Placed"), "Partitioned": ("True", "LayoutApplied"),
                         "Ready": ("True", "WorkersReady")}
    assert (st.replica_count, st.profiles, st.estimated_throughput, st.demand) == (
        2, "2x1g.10gb", 1800.0, 1500.0)
    assert st.observed_generation == 1
    assert [r.device_id for r in st.replicas] == ["MIG-a-0-6", "MIG-a-0-5"]
    assert "ModelProfile/resnet50" in next(c.message for c in st.conditions if c.type == "Placed")


def test_degraded_when_short_of_demand_or_when_running_workers_are_lost() -> None:
    v = job("j", 5000)
    st = render(v, Outcome(REPS, reason="insufficient capacity", applied={"a": True},
                           workers={("a", "1g.10gb"): (2, 2)}), NODES, T0)
    assert st.phase == JobPhase.DEGRADED and "1800 of 5000" in (st.message or "")
    assert conds(st)["Placed"] == ("False", "PartiallyPlaced")
    running = JobView.from_body(job_body("j", 1500, status=render(
        job("j", 1500), Outcome(REPS, applied={"a": True}, workers={("a", "1g.10gb"): (2, 2)}),
        NODES, T0).to_k8s()))
    st = render(running, Outcome(REPS, applied={"a": True}, workers={("a", "1g.10gb"): (1, 2)}),
                NODES, T0)
    assert st.phase == JobPhase.DEGRADED and "1 of 2" in (st.message or "")


def test_conditions_keep_their_transition_time_and_same_status_detects_no_change() -> None:
    first = render(job("j", 1500), Outcome(REPS, applied={"a": False}), NODES, T0)
    v = JobView.from_body(job_body("j", 1500, status=first.to_k8s()))
    later = T0 + timedelta(minutes=5)
    again = render(v, Outcome(REPS, applied={"a": False}), NODES, later)
    assert same_status(v.job.status, again)
    applied = render(v, Outcome(REPS, applied={"a": True}), NODES, later)
    times = {c.type: c.last_transition_time for c in applied.conditions}
    assert times["Placed"] == T0 and times["Partitioned"] == later
    assert not same_status(v.job.status, applied)
    assert not same_status(None, applied)


def test_messages_fit_the_schema() -> None:
    st = render(job("j", 100), Outcome([], reason="x" * 5000), NODES, T0)
    assert len(st.message or "") <= 1024


# --- the data path: where clients connect, DataPathReady --------------------------------

SPREAD = [Replica("a", 0, "GPU-a-0", "A100-80GB", "1g.10gb", 6, 900.0),
          Replica("b", 0, "GPU-b-0", "A100-80GB", "1g.10gb", 6, 900.0),
          Replica("b", 0, "GPU-b-0", "A100-80GB", "1g.10gb", 5, 900.0),
          Replica("c", 0, "GPU-c-0", "A100-80GB", "3g.40gb", 0, 1600.0)]


def dp(v: JobView, reps: list[Replica], nodes: Mapping[str, NodeView],
       token: str | None = "tok"
       ) -> tuple[tuple[str, str], str | None, list[tuple[str, str, int, bool]]]:
    st = render(v, Outcome(reps, applied=dict.fromkeys("abc", True), token_secret=token),
                nodes, T0)
    assert st.token_secret == token
    eps = [(e.node, e.endpoint, e.replicas, e.connected) for e in st.client_endpoints]
    return conds(st, data_path=True)["DataPathReady"], st.client_endpoint, eps


def test_client_endpoint_prefers_a_connected_agent_then_the_most_replicas() -> None:
    v = job("j", 3000)
    nodes = {n: node(n, gpus=1, agent=f"10.0.0.{i}:7470", dpu_ready=True)
             for i, n in enumerate("abc")}
    cond, ep, eps = dp(v, SPREAD, nodes)
    assert cond == ("True", "AgentConnected")
    # b holds two replicas; a and c one each (c's is faster, so c before a).
    assert ep == "10.0.0.1:7470"
    assert eps == [("b", "10.0.0.1:7470", 2, True), ("c", "10.0.0.2:7470", 1, True),
                   ("a", "10.0.0.0:7470", 1, True)]
    # b's agent drops: the connected ones come first, b is still listed.
    nodes["b"] = node("b", gpus=1, agent="10.0.0.1:7470", dpu_ready=False)
    cond, ep, eps = dp(v, SPREAD, nodes)
    assert cond == ("True", "AgentConnected") and ep == "10.0.0.2:7470"
    assert eps[-1] == ("b", "10.0.0.1:7470", 2, False)
    # The order does not depend on the order of the replicas.
    assert dp(v, list(reversed(SPREAD)), nodes)[2] == eps


def test_data_path_ready_says_what_is_missing() -> None:
    v = job("j", 3000)
    bare = {n: node(n, gpus=1) for n in "abc"}
    assert dp(v, [], bare)[0] == ("False", "NotPlaced")
    cond, ep, eps = dp(v, SPREAD, bare)
    assert cond == ("False", "NoDPU") and ep is None and eps == []
    no_dpu = {n: node(n, gpus=1, dpu_ready=False, dpu_reason="NoDPU") for n in "abc"}
    assert dp(v, SPREAD, no_dpu)[0] == ("False", "NoDPU")
    # An agent endpoint reported, not (yet) connected.
    waiting = dict(bare, a=node("a", gpus=1, agent="10.0.0.9:7470", dpu_ready=False))
    cond, ep, eps = dp(v, SPREAD, waiting)
    assert cond == ("False", "AgentNotConnected") and ep == "10.0.0.9:7470"
    assert eps == [("a", "10.0.0.9:7470", 1, False)]
    ready = dict(bare, a=node("a", gpus=1, agent="10.0.0.9:7470", dpu_ready=True))
    assert dp(v, SPREAD, ready, token=None)[0] == ("False", "TokenMissing")
    assert dp(v, SPREAD, ready)[0] == ("True", "AgentConnected")
    # A node of the job the operator has no GPUNode for counts as no DPU.
    assert dp(v, SPREAD, {})[0] == ("False", "NoDPU")


def test_data_path_fields_do_not_rewrite_an_unchanged_status() -> None:
    nodes = {"a": node("a", gpus=1, instances={0: [("1g.10gb", 5), ("1g.10gb", 6)]},
                       agent="10.0.0.1:7470", dpu_ready=True)}
    out = Outcome(REPS, applied={"a": True}, token_secret="j-conspirator-token")
    first = render(job("j", 1500), out, nodes, T0)
    assert first.client_endpoint == "10.0.0.1:7470"
    v = JobView.from_body(job_body("j", 1500, status=first.to_k8s()))
    assert same_status(v.job.status, render(v, out, nodes, T0 + timedelta(minutes=1)))
    gone = {"a": node("a", gpus=1, instances={0: [("1g.10gb", 5), ("1g.10gb", 6)]})}
    st = render(v, out, gone, T0 + timedelta(minutes=1))
    assert not same_status(v.job.status, st) and st.client_endpoint is None
    assert conds(st, data_path=True)["DataPathReady"] == ("False", "NoDPU")
