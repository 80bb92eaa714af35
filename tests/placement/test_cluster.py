"""``ClusterState.adopt``: a policy's trial copy becomes the state, sharing nothing after."""

from __future__ import annotations

from conspirator.operator.placement.cluster import ClusterState, GpuState
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.jobs import Job

A100 = gpu_model("A100-80GB")
SMALL = next(p for p in A100.planning_profiles if p.name == "1g.10gb")


def job(jid: str, tenant: str = "t") -> Job:
    return Job(jid, "resnet50", 100.0, 50.0, 4.0, tenant=tenant)


def two_gpus() -> ClusterState:
    return ClusterState.from_nodes([("n", A100, 2)])


def one_small(state: ClusterState, j: Job, gpu: int, start: int) -> None:
    state.assign(j, state.gpus[gpu], SMALL, start, 100.0)


def contents(state: ClusterState) -> tuple[list[GpuState], dict[str, Job], dict[str, float]]:
    return list(state.gpus), dict(state.jobs), {j: state.served_rps(j) for j in state.jobs}


def test_adopted_state_equals_the_source() -> None:
    state, trial = two_gpus(), two_gpus()
    one_small(state, job("old"), 0, 6)
    one_small(trial, job("a"), 1, 6)
    one_small(trial, job("b"), 1, 5)
    expected = trial.copy()
    held = state  # whoever holds the state sees the adopted plan
    state.adopt(trial)
    assert held is state
    assert contents(state) == contents(expected)
    assert [list(state.replicas(j)) for j in ("a", "b")] == [
        list(expected.replicas(j)) for j in ("a", "b")]
    assert "old" not in state.jobs and not list(state.replicas("old"))


def test_adopt_is_a_move_the_source_is_left_empty() -> None:
    state, trial = two_gpus(), two_gpus()
    one_small(trial, job("a"), 0, 6)
    state.adopt(trial)
    assert trial.gpus == [] and trial.jobs == {} and not list(trial.replicas("a"))
    assert state.served_rps("a") == 100.0


def test_later_changes_do_not_leak_between_the_two() -> None:
    state, trial = two_gpus(), two_gpus()
    one_small(trial, job("a"), 0, 6)
    state.adopt(trial)
    # The emptied source can be refilled without touching the adopter...
    trial.add_gpu("m", A100, 0)
    one_small(trial, job("x"), 0, 6)
    assert len(state.gpus) == 2 and "x" not in state.jobs and state.served_rps("x") == 0.0
    # ...and the adopter changes without touching the source.
    one_small(state, job("b"), 1, 6)
    state.release("a")
    assert trial.served_rps("x") == 100.0 and set(trial.jobs) == {"x"}
    assert [g.node for g in trial.gpus] == ["m"]
    assert [i.job_id for i in trial.gpus[0].instances] == ["x"]
    assert [[i.job_id for i in g.instances] for g in state.gpus] == [[], ["b"]]


def test_adopting_itself_changes_nothing() -> None:
    state = two_gpus()
    one_small(state, job("a"), 0, 6)
    before = state.copy()
    state.adopt(state)
    assert contents(state) == contents(before)


def test_release_replica_removes_one_replica_and_keeps_the_rest() -> None:
    import dataclasses

    import pytest

    state = two_gpus()
    a = job("a")
    one_small(state, a, 0, 6)
    one_small(state, a, 1, 5)
    inst = state.release_replica("a", 0, 6)
    assert inst.start == 6 and state.gpus[0].empty
    assert state.served_rps("a") == 100.0 and [g.uid for g, _ in state.replicas("a")] == [1]
    with pytest.raises(KeyError):
        state.release_replica("a", 1, 6)  # no replica of a there
    state.redefine(dataclasses.replace(a, demand_rps=50.0))
    assert state.jobs["a"].demand_rps == 50.0
    state.release_replica("a", 1, 5)
    assert "a" not in state.jobs and state.gpus_used() == 0
    with pytest.raises(KeyError):
        state.redefine(a)
