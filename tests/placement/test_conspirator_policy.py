"""The conspirator policy: greedy for one arrival, the better of MILP and greedy otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.objective import score
from conspirator.operator.placement.throughput import default_table

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mig_instances import make_instance

TABLE = default_table()


def test_batch_is_never_worse_than_either_engine() -> None:
    for seed in range(3):
        state, jobs = make_instance(seed, 20)
        values = {}
        for pol in (ConspiratorPolicy(), GreedyHeuristic(), MilpPolicy()):
            s = state.copy()
            dec = pol.place(s, jobs, TABLE)
            values[pol.name] = score(s, jobs).value
            assert {r.job_id for r in dec.placed} | dec.unplaced_ids() == {j.id for j in jobs}
        assert values["conspirator"] <= min(values["greedy"], values["milp"]) + 1e-9


def test_single_arrival_takes_the_greedy_path() -> None:
    state, jobs = make_instance(0, 20)
    pol = ConspiratorPolicy()
    dec = pol.place(state, jobs[:1], TABLE)
    assert dec.policy == "conspirator" and dec.mip_gap is None  # no solver ran


def test_replan_respects_the_migration_budget() -> None:
    state, jobs = make_instance(1, 20)
    pol = ConspiratorPolicy()
    for j in jobs:  # arrivals one by one: a greedy, fragmented start
        pol.place(state, [j], TABLE)
    before = score(state, jobs).value
    dec = pol.replan(state, list(state.jobs.values()), TABLE, migration_budget=3)
    assert dec.migrations <= 3
    assert score(state, jobs).value <= before
