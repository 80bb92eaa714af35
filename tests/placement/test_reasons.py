"""Why a job is not placed reads the same whatever the policy (``common.unplaced_reason``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.common import INSUFFICIENT_CAPACITY, unplaced_reason
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.policy_names import MIG_POLICIES, mig_policy
from conspirator.operator.placement.throughput import default_table

TABLE = default_table()


def cluster(*models: str) -> ClusterState:
    return ClusterState.from_nodes((f"n{k}", gpu_model(m), 1) for k, m in enumerate(models))


def job(jid: str, rps: float = 100.0, *, model: str = "resnet50", slo: float = 50.0,
        mem: float = 4.0, tenant: str = "t", dedicated: bool = False,
        allowed: frozenset[str] | None = None) -> Job:
    return Job(jid, model, rps, slo, mem, tenant=tenant, dedicated_gpu=dedicated,
               allowed_gpus=allowed)


def reasons(state: ClusterState, bad: Job, *, replan: bool = False) -> dict[str, str]:
    """Policy name -> the reason ``bad`` is refused, each policy on its own copy."""
    out: dict[str, str] = {}
    for name in MIG_POLICIES:
        trial = state.copy()
        policy = mig_policy(name)
        dec = (policy.replan(trial, [bad], TABLE) if replan
               else policy.place(trial, [bad], TABLE))
        [u] = [u for u in dec.unplaced if u.job_id == bad.id]
        out[name] = u.reason
    return out


def assert_same_everywhere(state: ClusterState, bad: Job, got: dict[str, str]) -> str:
    [reason] = set(got.values())  # one wording for every policy
    assert reason == unplaced_reason(bad, state.models().values(), TABLE)
    return reason


NO_OPTION = [
    (job("huge", mem=500.0), "has memory for 500 GiB"),
    (job("instant", slo=0.05), "p99 SLO of 0.05 ms"),
    (job("nowhere", allowed=frozenset({"B200"})), "no GPU of an allowed model (B200)"),
    (job("unknown", model="gpt-17"), "'gpt-17' has no throughput profile"),
]


@pytest.mark.parametrize("replan", [False, True], ids=["place", "replan"])
@pytest.mark.parametrize(("bad", "words"), NO_OPTION, ids=[b.id for b, _ in NO_OPTION])
def test_a_job_no_gpu_can_serve_reads_the_same_in_every_policy(bad: Job, words: str,
                                                               replan: bool) -> None:
    state = cluster("A100-80GB", "T4")
    reason = assert_same_everywhere(state, bad, reasons(state, bad, replan=replan))
    assert words in reason


def full(*models: str, tenant: str = "other") -> ClusterState:
    """Every GPU holds a replica of a filler job of ``tenant`` (placed by the greedy)."""
    state = cluster(*models)
    fillers = [job(f"fill{k}", 10.0, tenant=tenant) for k in range(len(models))]
    for f in fillers:
        gpu = next(g for g in state.gpus if g.empty)
        prof = next(p for p in gpu.model.planning_profiles
                    if gpu.model.mig_capable or p.name == "whole")
        opt = TABLE.best(f, gpu.model, prof)
        assert opt is not None
        state.assign(f, gpu, prof, prof.starts[-1], opt.throughput_rps)
    return state


CAPACITY = [
    ("no-gpu-left", lambda: full("T4", "T4"), job("late", 50.0, slo=500.0),
     "insufficient capacity: 50 rps do not fit in the free space of T4/whole"),
    ("isolation", lambda: full("A100-80GB"), job("iso", 50.0, tenant="t2", dedicated=True),
     "; the job needs GPUs no other tenant uses"),
    ("too-much-demand", lambda: cluster("T4"), job("flood", 1e6, slo=500.0),
     "insufficient capacity: 1e+06 rps do not fit in the free space of T4/whole"),
]


@pytest.mark.parametrize(("make", "bad", "words"), [c[1:] for c in CAPACITY],
                         ids=[c[0] for c in CAPACITY])
def test_a_job_refused_for_capacity_reads_the_same_in_every_policy(
        make: Callable[[], ClusterState], bad: Job, words: str) -> None:
    state = make()
    reason = assert_same_everywhere(state, bad, reasons(state, bad))
    assert reason.startswith(f"{INSUFFICIENT_CAPACITY}: ") and words in reason
