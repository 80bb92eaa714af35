"""InferenceJob status rendering: phases, conditions, printer-column fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conspirator.api.v1alpha1 import JobPhase
from conspirator.operator.status import Outcome, render, same_status
from conspirator.operator.views import JobView, Replica

from .builders import job, job_body, node

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REPS = [Replica("a", 0, "GPU-a-0", "A100-80GB", "1g.10gb", 6, 900.0),
        Replica("a", 0, "GPU-a-0", "A100-80GB", "1g.10gb", 5, 900.0)]
NODES = {"a": node("a", gpus=1, instances={0: [("1g.10gb", 5), ("1g.10gb", 6)]})}


def conds(st: object) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in st.conditions}  # type: ignore[attr-defined]


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
