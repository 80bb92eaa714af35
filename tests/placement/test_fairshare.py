"""Weighted max-min fair shares and Jain's index (seeded random cases)."""

from __future__ import annotations

import random

import pytest

from conspirator.operator.placement.fairshare import jain, waterfill
from conspirator.operator.placement.plan_policy import GpuPower, PlanPolicy


def test_waterfill_is_weighted_max_min() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 6)
        demand = {f"t{k}": rng.uniform(0.0, 10.0) for k in range(n)}
        weight = {t: rng.choice([1.0, 2.0, 3.5]) for t in demand}
        cap = rng.uniform(0.0, 40.0)
        share = waterfill(cap, demand, weight)
        assert sum(share.values()) <= min(cap, sum(demand.values())) + 1e-6
        assert all(-1e-9 <= share[t] <= demand[t] + 1e-9 for t in demand)
        if cap >= sum(demand.values()):
            assert share == pytest.approx(demand)
            continue
        assert sum(share.values()) == pytest.approx(cap)
        # Tenants not capped at their demand get the same share per unit of weight,
        # at least as much as any capped tenant's demand per weight.
        level = {t: share[t] / weight[t] for t in demand if share[t] < demand[t] - 1e-6}
        assert max(level.values()) - min(level.values()) <= 1e-6
        for t, d in demand.items():
            if t not in level and d > 0:
                assert d / weight[t] <= min(level.values()) + 1e-6


def test_jain() -> None:
    assert jain([0.5, 0.5, 0.5]) == pytest.approx(1.0)
    assert jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert 0.25 < jain([1.0, 0.5, 0.2, 0.9]) < 1.0


def test_objective_charges() -> None:
    from conspirator.operator.placement.cluster import ClusterState
    from conspirator.operator.placement.gpus import gpu_model

    state = ClusterState.from_nodes([("a", gpu_model("A100-80GB"), 1),
                                     ("t", gpu_model("T4"), 1)], spot_nodes=["t"])
    a100, t4 = state.gpus
    cost = PlanPolicy(objective="cost")
    scale = cost.scale(state.gpus)
    assert scale == pytest.approx(cost.prices["A100-80GB"].on_demand)
    assert cost.gpu_cost(t4.model, True, scale) == pytest.approx(
        cost.prices["T4"].spot / scale)
    energy = PlanPolicy(objective="energy", power={"A100-80GB": GpuPower(50.0, 400.0)})
    prof = a100.model.profile("3g.40gb")
    assert energy.instance_cost(a100.model, prof, 400.0) == pytest.approx(350.0 / 7 * 3 / 400)
    assert PlanPolicy().gpu_cost(t4.model, True, 1.0) == 1.0
    with pytest.raises(ValueError):
        PlanPolicy(objective="speed")  # type: ignore[arg-type]
