"""MILP, heuristic and brute force on tiny instances.

The conspirator policy (greedy for one arrival, the better of greedy and MILP for a
batch) must reach the brute-force optimum; the greedy alone can never beat it (a
greedy plan better than the optimum would mean the objective is miscounted), and
every plan it writes is valid.
"""

from __future__ import annotations

import random

import pytest

from conspirator.operator.placement.bruteforce import brute_force
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.objective import score
from conspirator.operator.placement.throughput import default_table

from .test_bruteforce_agreement import tiny_cluster, tiny_jobs

TABLE = default_table()


@pytest.mark.parametrize("block", range(4))
def test_conspirator_reaches_optimum_and_greedy_never_beats_it(block: int) -> None:
    greedy_optimal = 0
    cases = 0
    for seed in range(5000 + block * 15, 5000 + (block + 1) * 15):
        rng = random.Random(seed)
        state = tiny_cluster(rng)
        jobs = tiny_jobs(rng, "j", rng.randint(2, 4))
        best = brute_force(state, jobs, TABLE).objective
        ours = state.copy()
        ConspiratorPolicy().place(ours, jobs, TABLE)
        assert score(ours, jobs).value == pytest.approx(best), seed
        greedy = state.copy()
        GreedyHeuristic().place(greedy, jobs, TABLE)
        value = score(greedy, jobs).value
        assert value >= best - 1e-9, seed
        greedy_optimal += value <= best + 1e-9
        cases += 1
    # The greedy is optimal on most tiny cases; a collapse here means a regression.
    assert greedy_optimal >= cases // 2
