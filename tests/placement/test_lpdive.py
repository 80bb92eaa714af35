"""LP diving on the pattern model (``lpdive``): valid plans, agreement with the exact optimum.

Property tests covering every policy (no overlap, memory, isolation, no lost job)
are in ``test_heuristic_properties.py``; these check the dive and its packing.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from conspirator.operator.placement.bruteforce import brute_force
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.lpdive import LpDiveHeuristic, lp_dive
from conspirator.operator.placement.milp import MilpPolicy, lower_bound
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, score
from conspirator.operator.placement.policy_names import mig_policy
from conspirator.operator.placement.throughput import default_table

from .test_bruteforce_agreement import tiny_cluster, tiny_jobs
from .test_heuristic_properties import check_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mig_instances import make_instance

TABLE = default_table()


def test_registered_as_its_own_policy() -> None:
    assert isinstance(mig_policy("lpdive"), LpDiveHeuristic)
    assert mig_policy("lpdive").name == "lpdive"


@pytest.mark.parametrize("seed", range(4))
def test_dive_counts_are_integral_and_cover_the_demand(seed: int) -> None:
    state, jobs = make_instance(seed, 50)
    res = lp_dive(state, jobs, TABLE)
    assert res is not None
    assert res.lp_value == pytest.approx(lower_bound(state, jobs, TABLE), rel=1e-6)
    assert res.solves >= 1
    models = state.models()
    by_id = {j.id: j for j in jobs}
    assert len(res.order) == len(set(res.order)) == len(res.counts)
    for jid, counts in res.counts.items():
        job = by_id[jid]
        served = 0.0
        for (m, p, _t), n in counts.items():
            assert isinstance(n, int) and n > 0
            opt = TABLE.best(job, models[m], next(pr for pr in models[m].planning_profiles
                                                  if pr.name == p))
            assert opt is not None
            served += n * opt.throughput_rps
        if counts:
            assert served >= job.demand_rps * (1.0 - DEMAND_TOLERANCE)


@pytest.mark.parametrize("seed", range(4))
def test_valid_plan_never_below_the_optimum(seed: int) -> None:
    state, jobs = make_instance(seed, 40)
    ours = state.copy()
    dec = LpDiveHeuristic().place(ours, jobs, TABLE)
    check_plan(ours, jobs, dec.unplaced_ids())
    assert {r.job_id for r in dec.placed} | dec.unplaced_ids() == {j.id for j in jobs}
    assert all(u.reason for u in dec.unplaced)
    assert dec.objective == score(ours, jobs).value
    exact = state.copy()
    assert MilpPolicy().place(exact, jobs, TABLE).optimal
    assert score(ours, jobs).value >= score(exact, jobs).value - 1e-9
    greedy = state.copy()
    GreedyHeuristic().place(greedy, jobs, TABLE)
    assert score(ours, jobs).value <= score(greedy, jobs).value


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_the_milp_optimum_on_small_instances(seed: int) -> None:
    # seeds where the optimum is reached (benchmarks/results/mig: 20 jobs, seed 3 is not)
    state, jobs = make_instance(seed, 20)
    ours, exact = state.copy(), state.copy()
    LpDiveHeuristic().place(ours, jobs, TABLE)
    MilpPolicy().place(exact, jobs, TABLE)
    assert score(ours, jobs).value == pytest.approx(score(exact, jobs).value)


def test_agrees_with_brute_force_on_tiny_instances() -> None:
    hits = 0
    for seed in range(30):
        rng = random.Random(seed)
        state = tiny_cluster(rng)
        jobs = tiny_jobs(rng, "j", rng.randint(1, 4))
        best = brute_force(state, jobs, TABLE)
        dec = LpDiveHeuristic().place(state, jobs, TABLE)
        check_plan(state, jobs, dec.unplaced_ids())
        value = score(state, jobs).value
        assert value >= best.objective - 1e-9, seed
        hits += value == pytest.approx(best.objective)
    assert hits >= 27  # measured: 30 of 30; a heuristic, so not asserted exactly
