"""Restricted sub-MIPs on top of ``lpdive`` (``submip``): valid plans, the exact optimum.

Property tests covering every policy (no overlap, memory, isolation, no lost job)
are in ``test_heuristic_properties.py``; these check the encoding of a plan as a
vector of the MILP, the restricted solves and agreement with the exact optimum.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from conspirator.operator.placement.bruteforce import brute_force
from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.lpdive import LpDiveHeuristic
from conspirator.operator.placement.milp import MilpPolicy, lower_bound
from conspirator.operator.placement.objective import score
from conspirator.operator.placement.pattern import PatternProblem, build_problem, formulate
from conspirator.operator.placement.policy_names import mig_policy
from conspirator.operator.placement.submip import (
    SubMipHeuristic,
    encode,
    feasible,
    root_lp,
    solve_restricted,
    value_of,
)
from conspirator.operator.placement.throughput import default_table

from .test_bruteforce_agreement import tiny_cluster, tiny_jobs
from .test_heuristic_properties import check_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mig_instances import make_instance

TABLE = default_table()


def _problem(state: ClusterState, jobs: list[Job]) -> PatternProblem:
    pb = build_problem(state, jobs, TABLE, replan=False, budget=None, e1=1.0, e2=100.0)
    formulate(pb)
    return pb


def test_registered_as_its_own_policy() -> None:
    assert isinstance(mig_policy("submip"), SubMipHeuristic)
    assert mig_policy("submip").name == "submip"


@pytest.mark.parametrize("seed", range(3))
def test_encoded_plan_is_feasible_and_scores_the_same(seed: int) -> None:
    state, jobs = make_instance(seed, 40)
    GreedyHeuristic().place(state, jobs[:15], TABLE)  # partly used GPUs: completions
    plan = state.copy()
    LpDiveHeuristic().place(plan, jobs[15:], TABLE)
    pb = _problem(state, jobs[15:])
    x = encode(pb, state, plan)
    assert x is not None
    assert feasible(pb.model, x)
    # GPUs used before count as a constant: the model's value is the plan's score.
    assert value_of(pb.model, x) == pytest.approx(score(plan, jobs[15:]).value)


def test_encode_refuses_a_plan_that_moved_a_replica() -> None:
    state, jobs = make_instance(1, 20)
    GreedyHeuristic().place(state, jobs[:10], TABLE)
    moved = state.copy()
    for jid in list(moved.jobs)[:1]:
        moved.release(jid)
    LpDiveHeuristic().place(moved, jobs[10:], TABLE)
    assert encode(_problem(state, jobs[10:]), state, moved) is None


def test_restricted_solve_with_nothing_fixed_is_the_milp() -> None:
    state, jobs = make_instance(2, 30)
    plan = state.copy()
    LpDiveHeuristic().place(plan, jobs, TABLE)
    pb = _problem(state, jobs)
    x = encode(pb, state, plan)
    assert x is not None
    root = root_lp(pb.model, 10.0)
    assert root is not None
    assert root.objective == pytest.approx(lower_bound(state, jobs, TABLE), rel=1e-6)
    best = solve_restricted(pb, x, [], 30.0)
    assert best is not None
    exact = state.copy()
    assert MilpPolicy().place(exact, jobs, TABLE).optimal
    assert value_of(pb.model, best) == pytest.approx(score(exact, jobs).value)
    # Fixing every replica column the start does not use keeps the start feasible.
    unused = [c for c in pb.vars.y.values() if x[c] < 0.5]
    same = solve_restricted(pb, x, unused, 30.0)
    assert same is not None
    assert value_of(pb.model, same) <= value_of(pb.model, x) + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_valid_plan_never_below_the_optimum_nor_above_lpdive(seed: int) -> None:
    state, jobs = make_instance(seed, 40)
    ours = state.copy()
    dec = SubMipHeuristic().place(ours, jobs, TABLE)
    check_plan(ours, jobs, dec.unplaced_ids())
    assert {r.job_id for r in dec.placed} | dec.unplaced_ids() == {j.id for j in jobs}
    assert all(u.reason for u in dec.unplaced)
    assert dec.objective == score(ours, jobs).value
    exact = state.copy()
    assert MilpPolicy().place(exact, jobs, TABLE).optimal
    assert score(ours, jobs).value >= score(exact, jobs).value - 1e-9
    dive = state.copy()
    LpDiveHeuristic(polish=1.0).place(dive, jobs, TABLE)
    assert score(ours, jobs).value <= score(dive, jobs).value


@pytest.mark.parametrize("seed", range(4))
def test_reaches_the_milp_optimum_on_small_instances(seed: int) -> None:
    # 20 jobs, seed 3 is one lpdive misses (benchmarks/results/mig)
    state, jobs = make_instance(seed, 20)
    ours, exact = state.copy(), state.copy()
    SubMipHeuristic().place(ours, jobs, TABLE)
    MilpPolicy().place(exact, jobs, TABLE)
    assert score(ours, jobs).value == pytest.approx(score(exact, jobs).value)


def test_agrees_with_brute_force_on_tiny_instances() -> None:
    hits = 0
    for seed in range(30):
        rng = random.Random(seed)
        state = tiny_cluster(rng)
        jobs = tiny_jobs(rng, "j", rng.randint(1, 4))
        best = brute_force(state, jobs, TABLE)
        dec = SubMipHeuristic().place(state, jobs, TABLE)
        check_plan(state, jobs, dec.unplaced_ids())
        value = score(state, jobs).value
        assert value >= best.objective - 1e-9, seed
        hits += value == pytest.approx(best.objective)
    assert hits >= 28  # a heuristic, so not asserted exactly


def test_rejects_a_non_positive_sub_limit() -> None:
    with pytest.raises(ValueError, match="sub_limit_s"):
        SubMipHeuristic(sub_limit_s=0.0)
