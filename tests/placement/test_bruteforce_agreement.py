"""The MILP agrees with exhaustive search on many tiny seeded instances.

Brute force enumerates every valid MIG layout of every GPU (through
``check_layout``, not through the layouts module) and every assignment of
instances to jobs, so an agreement checks the MILP's configurations, tenant
groups, capacities and demand constraints together.
"""

from __future__ import annotations

import random

import pytest

from conspirator.operator.placement.bruteforce import brute_force
from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.objective import demand_met, score
from conspirator.operator.placement.throughput import default_table

TABLE = default_table()
MODELS = sorted(TABLE.models)
GPUS = ["A100-80GB", "H100-80GB", "H200-141GB", "A30-24GB", "A100-40GB", "T4", "A10"]
BLOCKS = 8
PER_BLOCK = 15


def tiny_jobs(rng: random.Random, prefix: str, n: int) -> list[Job]:
    return [
        Job(
            f"{prefix}{k}",
            rng.choice(MODELS),
            rng.choice([50.0, 200.0, 500.0, 1000.0, 2500.0, 5000.0]),
            rng.choice([10.0, 20.0, 50.0, 100.0]),
            rng.choice([2.0, 5.0, 10.0, 18.0, 30.0]),
            tenant=rng.choice(["a", "b"]),
            dedicated_gpu=rng.random() < 0.3,
            priority=rng.choice([0, 0, 1]),
            allowed_gpus=frozenset(rng.sample(GPUS, 3)) if rng.random() < 0.2 else None,
        )
        for k in range(n)
    ]


def tiny_cluster(rng: random.Random) -> ClusterState:
    names = [rng.choice(GPUS) for _ in range(rng.randint(1, 3))]
    return ClusterState((f"n{k}", gpu_model(g)) for k, g in enumerate(names))


@pytest.mark.parametrize("block", range(BLOCKS))
def test_place_matches_brute_force(block: int) -> None:
    for seed in range(block * PER_BLOCK, (block + 1) * PER_BLOCK):
        rng = random.Random(seed)
        state = tiny_cluster(rng)
        if rng.random() < 0.5:  # some GPUs already carry instances
            MilpPolicy().place(state, tiny_jobs(rng, "old", rng.randint(1, 3)), TABLE)
        jobs = tiny_jobs(rng, "j", rng.randint(1, 4))
        best = brute_force(state, jobs, TABLE)
        dec = MilpPolicy().place(state, jobs, TABLE)
        assert dec.optimal, seed
        assert dec.objective == pytest.approx(best.objective), seed
        # the plan written into the state achieves the reported value
        assert score(state, jobs).value == pytest.approx(best.objective), seed
        unmet = {j.id for j in jobs if not demand_met(state.served_rps(j.id), j.demand_rps)}
        assert {u.job_id for u in dec.unplaced} == unmet, seed


@pytest.mark.parametrize("block", range(BLOCKS // 2))
def test_unbounded_replan_matches_brute_force_from_scratch(block: int) -> None:
    for seed in range(1000 + block * PER_BLOCK, 1000 + (block + 1) * PER_BLOCK):
        rng = random.Random(seed)
        state = tiny_cluster(rng)
        MilpPolicy().place(state, tiny_jobs(rng, "old", rng.randint(1, 3)), TABLE)
        new = tiny_jobs(rng, "j", rng.randint(1, 2))
        everything = [*state.jobs.values(), *new]
        empty = ClusterState((g.node, g.model) for g in state.gpus)
        best = brute_force(empty, everything, TABLE)
        dec = MilpPolicy().replan(state, new, TABLE, migration_budget=None)
        assert dec.optimal, seed
        assert dec.objective == pytest.approx(best.objective), seed
        assert score(state, everything).value == pytest.approx(best.objective), seed


def test_brute_force_small_cases_by_hand() -> None:
    state = ClusterState([("n0", gpu_model("A100-80GB")), ("n1", gpu_model("T4"))])
    small = Job("s", "resnet50", 100.0, 50.0, 4.0)
    assert brute_force(state, [small], TABLE).objective == pytest.approx(1.0)
    impossible = Job("x", "resnet50", 100.0, 50.0, 500.0)
    res = brute_force(state, [small, impossible], TABLE)
    assert res.objective == pytest.approx(1.0 + 100.0)
    assert res.unmet == frozenset({"x"})
    # two dedicated tenants need two GPUs
    a = Job("a", "resnet50", 100.0, 50.0, 4.0, tenant="a", dedicated_gpu=True)
    b = Job("b", "resnet50", 100.0, 50.0, 4.0, tenant="b", dedicated_gpu=True)
    two = ClusterState([("n0", gpu_model("A100-80GB")), ("n1", gpu_model("A100-80GB"))])
    assert brute_force(two, [a, b], TABLE).objective == pytest.approx(2.0)
    one = ClusterState([("n0", gpu_model("A100-80GB"))])
    assert brute_force(one, [a, b], TABLE).objective == pytest.approx(101.0)
