"""The global re-plan's pools (pure)."""

from __future__ import annotations

from conspirator.operator import replan_pools
from conspirator.operator.global_replan import replan
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.translate import build_cluster, build_table, engine_job, restore

from .builders import RESNET, job, node
from .test_global_replan import rs

TABLE = build_table([RESNET]).table
POLICY = ConspiratorPolicy(time_limit_s=5)


def test_pools_follow_gpu_models_and_nodes() -> None:
    c = build_cluster([node("a", gpus=2), node("b", gpus=2), node("h", model="H100-80GB",
                                                                  gpus=2)])
    restore(c, [(engine_job(job("x", 800)), [rs(0, "1g.10gb", 6)]),
                (engine_job(job("y", 800)), [rs(0, "1g.10gb", 6, n="b")])], TABLE)
    # Two used GPUs per pool at most: nodes a and b split, H100 apart.
    pools = replan_pools.split(c.state, [], size=1).pools
    models = [{c.state.gpus[u].model.name for u in p.gpus} for p in pools]
    assert sorted(len(p.gpus) for p in pools) == [2, 2, 2]
    assert all(len(m) == 1 for m in models)


def test_a_job_spanning_pools_joins_them_or_is_held() -> None:
    c = build_cluster([node("a", gpus=1), node("b", gpus=1), node("c", gpus=1)])
    restore(c, [(engine_job(job("wide", 1700)), [rs(0, "1g.10gb", 6),
                                                  rs(0, "1g.10gb", 6, n="b")]),
                (engine_job(job("z", 800)), [rs(0, "1g.10gb", 6, n="c")])], TABLE)
    joined = replan_pools.split(c.state, [], size=1)
    assert not joined.held and sorted(len(p.gpus) for p in joined.pools) == [1, 2]
    replan_pools.MERGE_LIMIT, old = 1, replan_pools.MERGE_LIMIT
    try:
        held = replan_pools.split(c.state, [], size=1)
    finally:
        replan_pools.MERGE_LIMIT = old
    assert held.held == {0, 1} and [p.gpus for p in held.pools] == [[2]]


def test_a_waiting_job_goes_to_a_pool_of_a_model_it_allows() -> None:
    c = build_cluster([node("a", gpus=1), node("h", model="H100-80GB", gpus=1)])
    only_h = engine_job(job("h-only", 800, allowedAccelerators=["H100-80GB"]))
    pools = replan_pools.split(c.state, [only_h], size=1).pools
    (mine,) = [p for p in pools if p.pending]
    assert {c.state.gpus[u].model.name for u in mine.gpus} == {"H100-80GB"}
    assert pools[0] is mine  # pools with waiting jobs go first


def test_a_pool_kept_before_and_unchanged_is_not_solved_again() -> None:
    c = build_cluster([node("a", gpus=1)])
    restore(c, [(engine_job(job("x", 800)), [rs(0, "1g.10gb", 6)])], TABLE)
    first = replan(c, {"ns/x": 1}, [], POLICY, TABLE, 8)
    assert not first.accepted and first.solved == 1 and first.kept
    again = replan(c, {"ns/x": 1}, [], POLICY, TABLE, 8, known=frozenset(first.kept))
    assert again.solved == 0 and again.skipped == 1
    # A changed job definition is a new fingerprint: solved again.
    c.state.redefine(engine_job(job("x", 900)))
    third = replan(c, {"ns/x": 1}, [], POLICY, TABLE, 8, known=frozenset(first.kept))
    assert third.solved == 1
