"""The global re-plan under each job's migration policy (pure)."""

from __future__ import annotations

from conspirator.api.v1alpha1 import ReplicaStatus
from conspirator.operator.global_replan import frozen_gpus, replan
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.translate import (
    EngineCluster,
    build_cluster,
    build_table,
    engine_job,
    restore,
)

from .builders import RESNET, job, node

TABLE = build_table([RESNET]).table
POLICY = ConspiratorPolicy(time_limit_s=5)


def rs(i: int, p: str, s: int, n: str = "a") -> ReplicaStatus:
    return ReplicaStatus(node=n, gpuUUID=f"GPU-{n}-{i}", gpu_model="A100-80GB", mig_profile=p,
                         start_slice=s)


def spread(gpus: int, **jobs_spec: dict[str, object]) -> EngineCluster:
    """One small job per GPU (1g.10gb at slice 6): consolidation moves them together."""
    c = build_cluster([node("a", gpus=gpus)])
    entries = []
    for i, (name, spec) in enumerate(jobs_spec.items()):
        entries.append((engine_job(job(name, 800, **spec)), [rs(i, "1g.10gb", 6)]))
    restore(c, entries, TABLE)
    return c


def test_replan_consolidates_within_the_budgets() -> None:
    c = spread(2, a={}, b={})
    res = replan(c, {"ns/a": 1, "ns/b": 1}, [], POLICY, TABLE, max_migrations=8)
    assert res.accepted and (res.gpus_before, res.gpus_after) == (2, 1)
    assert res.migrations == 1 and len(res.changed) == 1
    (moved,) = res.changed.values()
    assert moved[0].gpu_index in (0, 1) and moved[0].profile == "1g.10gb"
    # The cluster passed in is untouched: the caller applies the result.
    assert c.state.gpus_used() == 2


def test_pinned_jobs_freeze_their_gpus() -> None:
    c = spread(2, a={}, b={"migration": {"allowed": False}})
    assert frozen_gpus(c.state, {"ns/a": 1}) == {1}
    res = replan(c, {"ns/a": 1}, [], POLICY, TABLE, max_migrations=8)
    assert not res.accepted and res.frozen_gpus == 1 and not res.changed


def test_a_job_on_a_frozen_gpu_freezes_its_other_gpus() -> None:
    c = build_cluster([node("a", gpus=3)])
    restore(c, [(engine_job(job("pinned", 800)), [rs(0, "1g.10gb", 6)]),
                (engine_job(job("wide", 1700)), [rs(0, "1g.10gb", 5), rs(1, "1g.10gb", 6)]),
                (engine_job(job("free", 800)), [rs(2, "1g.10gb", 6)])], TABLE)
    assert frozen_gpus(c.state, {"ns/wide": 1, "ns/free": 1}) == {0, 1}


def test_no_budget_no_moves_and_no_gain_no_change() -> None:
    c = spread(2, a={}, b={})
    assert not replan(c, {"ns/a": 1, "ns/b": 1}, [], POLICY, TABLE, max_migrations=0).accepted
    one = spread(1, a={})
    res = replan(one, {"ns/a": 1}, [], POLICY, TABLE, max_migrations=8)
    assert not res.accepted and "no improvement" in res.note


def test_replan_places_waiting_jobs() -> None:
    c = spread(2, a={})
    waiting = engine_job(job("late", 800))
    res = replan(c, {"ns/a": 1}, [waiting], POLICY, TABLE, max_migrations=8)
    assert res.accepted and "ns/late" in res.changed and res.migrations == 0
