"""What every LP-based engine (``lpdive``, ``submip``) must do with a cluster that already
runs jobs: place new ones around them, deterministically, and re-plan within the budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conspirator.operator.placement.common import replica_map
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.lpdive import LpDiveHeuristic
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.objective import score
from conspirator.operator.placement.submip import SubMipHeuristic
from conspirator.operator.placement.throughput import default_table

from .test_heuristic_properties import check_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mig_instances import make_instance

TABLE = default_table()
ENGINES = [LpDiveHeuristic, SubMipHeuristic]


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
def test_deterministic_and_places_around_running_jobs(engine: type[MixPackHeuristic]) -> None:
    state, jobs = make_instance(2, 50)
    GreedyHeuristic().place(state, jobs[:25], TABLE)
    before = replica_map(state)
    a, b = state.copy(), state.copy()
    dec = engine().place(a, jobs[25:], TABLE)
    engine().place(b, jobs[25:], TABLE)
    assert replica_map(a) == replica_map(b)
    after = replica_map(a)
    for jid, reps in before.items():
        assert after[jid] == reps
    new_ids = {j.id for j in jobs[25:]}
    assert {r.job_id for r in dec.placed} <= new_ids
    check_plan(a, [j for j in jobs if j.id in before or j.id in new_ids], dec.unplaced_ids())


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
def test_replan_respects_the_budget(engine: type[MixPackHeuristic]) -> None:
    state, jobs = make_instance(3, 30)
    greedy = GreedyHeuristic()
    for j in jobs:
        greedy.place(state, [j], TABLE)
    kept = score(state, jobs).value
    served = {j.id for j in jobs if state.served_rps(j.id)}
    dec = engine().replan(state, [], TABLE, migration_budget=4)
    assert dec.migrations <= 4
    assert score(state, jobs).value <= kept
    assert served.isdisjoint(dec.unplaced_ids())
