"""The replica-mix search (``mixpack``): valid plans, MILP agreement on small instances.

Property tests covering every policy (no overlap, memory, isolation, no lost job)
are in ``test_heuristic_properties.py``; these check the search itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conspirator.operator.placement.common import replica_map
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.objective import score
from conspirator.operator.placement.policy_names import mig_policy
from conspirator.operator.placement.throughput import default_table

from .test_heuristic_properties import check_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mig_instances import make_instance

TABLE = default_table()


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_milp_optimum_on_small_instances(seed: int) -> None:
    state, jobs = make_instance(seed, 20)
    ours = state.copy()
    dec = MixPackHeuristic().place(ours, jobs, TABLE)
    check_plan(ours, jobs, dec.unplaced_ids())
    assert {r.job_id for r in dec.placed} | dec.unplaced_ids() == {j.id for j in jobs}
    assert all(u.reason for u in dec.unplaced)
    exact = state.copy()
    assert MilpPolicy().place(exact, jobs, TABLE).optimal
    assert score(ours, jobs).value == pytest.approx(score(exact, jobs).value)
    greedy = state.copy()
    GreedyHeuristic().place(greedy, jobs, TABLE)
    assert score(ours, jobs).value <= score(greedy, jobs).value


def test_valid_plan_on_a_larger_instance_and_deterministic() -> None:
    state, jobs = make_instance(1, 100)
    a, b = state.copy(), state.copy()
    dec = MixPackHeuristic(iterations=200).place(a, jobs, TABLE)
    MixPackHeuristic(iterations=200).place(b, jobs, TABLE)
    check_plan(a, jobs, dec.unplaced_ids())
    assert replica_map(a) == replica_map(b)
    assert dec.objective == score(a, jobs).value


def test_place_around_running_jobs_moves_nothing() -> None:
    state, jobs = make_instance(2, 50)
    GreedyHeuristic().place(state, jobs[:25], TABLE)
    before = replica_map(state)
    dec = MixPackHeuristic(iterations=100).place(state, jobs[25:], TABLE)
    after = replica_map(state)
    for jid, reps in before.items():
        assert after[jid] == reps
    assert {r.job_id for r in dec.placed} <= {j.id for j in jobs[25:]}
    placed_before = set(before)
    new_ids = {j.id for j in jobs[25:]}
    check_plan(state, [j for j in jobs if j.id in placed_before or j.id in new_ids],
               dec.unplaced_ids())
    # Free room on GPUs already in use is offered to the new jobs (at no GPU cost).
    used_before = {uid for reps in before.values() for uid, _, _ in reps}
    assert any(r.gpu_uid in used_before for r in dec.placed)


def test_replan_within_budget_never_worse_than_keeping() -> None:
    state, jobs = make_instance(3, 30)
    greedy = GreedyHeuristic()
    for j in jobs:  # one by one: a fragmented start
        greedy.place(state, [j], TABLE)
    kept = score(state, jobs).value
    served = {j.id for j in jobs if state.served_rps(j.id)}
    dec = MixPackHeuristic(iterations=100).replan(state, list(state.jobs.values()), TABLE,
                                                  migration_budget=None)
    assert score(state, jobs).value <= kept
    assert served.isdisjoint(dec.unplaced_ids())
    check_plan(state, [j for j in jobs if j.id in served], dec.unplaced_ids())


def test_registered_for_the_simulator() -> None:
    assert mig_policy("mixpack").name == "mixpack"
