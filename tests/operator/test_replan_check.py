"""Re-validation of a re-plan computed on a snapshot, against what changed meanwhile (pure)."""

from __future__ import annotations

import dataclasses

from conspirator.operator import replan_job
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.replan_check import Verdict, revalidate
from conspirator.operator.translate import (
    EngineCluster,
    build_cluster,
    build_table,
    engine_job,
    restore,
)
from conspirator.operator.views import JobView, NodeView, Replica

from .builders import RESNET, job, node
from .test_global_replan import rs

TABLE = build_table([RESNET]).table
POLICY = ConspiratorPolicy(time_limit_s=5)


def setup(gpus: int = 2, **extra: JobView) -> tuple[EngineCluster, dict[str, JobView],
                                                   list[NodeView]]:
    """Jobs a and b, one 1g.10gb each at slice 6 of GPUs 0 and 1: a re-plan moves one."""
    nodes = [node("a", gpus=gpus)]
    c = build_cluster(nodes)
    live = {"ns/a": job("a", 800), "ns/b": job("b", 800), **extra}
    restore(c, [(engine_job(live["ns/a"]), [rs(0, "1g.10gb", 6)]),
                (engine_job(live["ns/b"]), [rs(1, "1g.10gb", 6)])], TABLE)
    return c, live, nodes


def plan_of(c: EngineCluster) -> dict[str, list[Replica]]:
    return {k: c.replicas(k) for k in c.state.jobs}


def propose(c: EngineCluster, live: dict[str, JobView], nodes: list[NodeView]
            ) -> replan_job.Proposal:
    ordered = sorted(live.values(), key=lambda v: v.order)
    reserved = plan_of(c)
    job = replan_job.snapshot(c, TABLE, ordered, nodes, reserved, [],
                              {k: k in reserved for k in live}, [])
    res = replan_job.run(job, POLICY, 8)
    assert res.accepted and res.migrations == 1
    return replan_job.Proposal(job.base, res)


def check(p: replan_job.Proposal, c: EngineCluster, live: dict[str, JobView],
          nodes: list[NodeView], retiring: tuple[str, ...] = ()) -> Verdict:
    now = replan_job.now(c, live, nodes, plan_of(c), retiring, p.result.changed)
    return revalidate(p.base, p.result.changed, p.result.moved, now)


def test_nothing_changed_commits_the_whole_result() -> None:
    c, live, nodes = setup()
    p = propose(c, live, nodes)
    v = check(p, c, live, nodes)
    assert v.commit and v.changed == p.result.changed and v.moved == p.result.moved
    # The snapshot was a copy: the live state is untouched by the re-plan.
    assert c.state.gpus_used() == 2


def test_an_arrival_on_the_slices_the_move_wants_is_a_conflict() -> None:
    c, live, nodes = setup()
    p = propose(c, live, nodes)
    (mover,) = p.result.moved
    (target,) = p.result.changed[mover]
    # Meanwhile the arrival path placed a new job exactly there.
    late = job("late", 800)
    restore(c, [(engine_job(late), [rs(target.gpu_index, target.profile, target.start)])],
            TABLE)
    v = check(p, c, {**live, "ns/late": late}, nodes)
    assert not v.commit and "taken now" in v.conflict


def test_an_arrival_elsewhere_does_not_stop_the_commit() -> None:
    c, live, nodes = setup(gpus=3)
    p = propose(c, live, nodes)
    late = job("late", 800)
    restore(c, [(engine_job(late), [rs(2, "1g.10gb", 0)])], TABLE)
    assert check(p, c, {**live, "ns/late": late}, nodes).commit


def test_a_mover_that_left_is_dropped_and_one_that_changed_is_a_conflict() -> None:
    c, live, nodes = setup()
    p = propose(c, live, nodes)
    (mover,) = p.result.moved
    gone = {k: v for k, v in live.items() if k != mover}
    c.state.release(mover)
    v = check(p, c, gone, nodes)
    assert v.commit and mover not in v.changed and not v.moved and mover in v.trimmed
    c2, live2, nodes2 = setup()
    p2 = propose(c2, live2, nodes2)
    (mover2,) = p2.result.moved
    live2[mover2] = dataclasses.replace(live2[mover2], generation=2)
    v2 = check(p2, c2, live2, nodes2)
    assert not v2.commit and "spec changed" in v2.conflict


def test_a_mover_whose_reservation_changed_or_that_started_migrating_is_a_conflict() -> None:
    c, live, nodes = setup(gpus=3)
    p = propose(c, live, nodes)
    (mover,) = p.result.moved
    c.state.release(mover)
    restore(c, [(engine_job(live[mover]), [rs(2, "1g.10gb", 6)])], TABLE)
    assert "reservation changed" in check(p, c, live, nodes).conflict
    c2, live2, nodes2 = setup()
    p2 = propose(c2, live2, nodes2)
    (mover2,) = p2.result.moved
    assert "migrating" in check(p2, c2, live2, nodes2, retiring=(mover2,)).conflict


def test_a_node_change_is_a_conflict() -> None:
    c, live, nodes = setup()
    p = propose(c, live, nodes)
    v = check(p, c, live, [*nodes, node("b", gpus=1)])
    assert not v.commit and "inventory" in v.conflict


def test_a_waiting_job_the_arrival_path_placed_meanwhile_is_trimmed() -> None:
    c, live, nodes = setup(gpus=3)
    late = job("late", 800)
    live = {**live, "ns/late": late}
    ordered = sorted(live.values(), key=lambda v: v.order)
    reserved = plan_of(c)
    snap = replan_job.snapshot(c, TABLE, ordered, nodes, reserved, [],
                               {k: k in reserved for k in live}, [])
    res = replan_job.run(snap, POLICY, 8)
    assert "ns/late" in res.changed
    restore(c, [(engine_job(late), [rs(2, "1g.10gb", 0)])], TABLE)
    now = replan_job.now(c, live, nodes, plan_of(c), [], res.changed)
    v = revalidate(snap.base, res.changed, res.moved, now)
    assert "ns/late" in v.trimmed and "ns/late" not in v.changed
    # What it moved still fits next to the arrival's placement (or the check says why not).
    assert v.commit == (v.conflict == "")


def test_a_new_replica_next_to_a_dedicated_tenant_is_a_conflict() -> None:
    c, live, nodes = setup()
    p = propose(c, live, nodes)
    (mover,) = p.result.moved
    (target,) = p.result.changed[mover]
    loner = job("loner", 800, tenant="other", isolation={"dedicatedGPU": True})
    free = 0 if target.start != 0 else 3
    c.state.release(next(k for k in c.state.jobs if k != mover))
    restore(c, [(engine_job(loner), [rs(target.gpu_index, "1g.10gb", free)])], TABLE)
    stay = {k: v for k, v in live.items() if k == mover}
    v = check(p, c, {**stay, "ns/loner": loner}, nodes)
    assert not v.commit and "another tenant" in v.conflict
