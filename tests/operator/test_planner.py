"""The planner without a cluster or an event loop: decide(work, plan) -> a new plan and
the changes to write.  Arrival, departure, spec change, restart rebuild, unknown model,
and the global re-plan accepted and refused."""

from __future__ import annotations

from typing import Any

from conspirator.api.v1alpha1 import ReplicaStatus
from conspirator.operator.cache import Work
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.planner import Decision, Inputs, Plan, decide
from conspirator.operator.views import JobView, NodeView, ProfileView, Replica, WorkerView

from .builders import RESNET, job, node

INPUTS = Inputs(policy=ConspiratorPolicy(time_limit_s=5), max_migrations=8)


def work(jobs: list[JobView], nodes: list[NodeView], *, dirty: set[str] | None = None,
         rebuild: bool = False, replan: bool = False,
         profiles: list[ProfileView] | None = None) -> Work:
    by_key = {v.key: v for v in jobs}
    return Work(jobs=by_key, nodes={n.name: n for n in nodes},
                profiles={p.name: p for p in profiles or [RESNET]}, workers={},
                spec_dirty=set(by_key) if dirty is None else dirty, status_dirty=set(),
                nodes_dirty=set(), rebuild=rebuild, capacity=rebuild, replan=replan)


def reasons(d: Decision, key: str) -> list[str]:
    return [reason for k, reason, _, _ in d.changes.events if k == key]


def statuses(reps: list[Replica]) -> dict[str, Any]:
    return {"replicas": [r.to_status().to_k8s() for r in reps]}


def rs(i: int, s: int = 6, p: str = "1g.10gb", n: str = "a") -> dict[str, Any]:
    return ReplicaStatus(node=n, gpuUUID=f"GPU-{n}-{i}", gpu_model="A100-80GB", mig_profile=p,
                         start_slice=s).to_k8s()


def test_arrival_is_placed_and_the_input_plan_is_left_alone() -> None:
    a = node("a", gpus=2)
    plan = Plan()
    d = decide(work([job("j", 1500)], [a], rebuild=True), plan, INPUTS)
    reps = d.plan.reserved["ns/j"]
    assert sum(r.throughput_rps for r in reps) >= 1500 * 0.99
    assert d.changes.reserved == {"ns/j": reps} and "ns/j" in d.changes.render
    assert reasons(d, "ns/j") == ["Placed"]
    assert d.tally.attempts == {("arrival", "placed"): 1}
    assert d.tally.gpus_total == 2 and d.tally.gpus_in_use >= 1 and d.tally.pending == 0
    assert plan.reserved == {} and plan.reasons == {}  # a new plan, not a mutated one
    # Deciding again with nothing changed changes nothing.
    again = decide(work([job("j", 1500)], [a], dirty=set()), d.plan, INPUTS)
    assert again.changes.reserved == {} and again.changes.events == []
    assert again.tally.attempts == {}


def test_departure_releases_and_a_waiting_job_gets_the_room() -> None:
    a = node("a", gpus=1)
    first = decide(work([job("big", 6000)], [a], rebuild=True), Plan(), INPUTS)
    assert len(first.plan.reserved["ns/big"]) == 7  # every slice
    late = job("late", 900, created="2026-01-02T00:00:00Z")
    waiting = decide(work([job("big", 6000), late], [a], dirty={"ns/late"}), first.plan, INPUTS)
    assert "ns/late" not in waiting.plan.reserved and "ns/late" in waiting.plan.reasons
    assert reasons(waiting, "ns/late") == ["Unplaceable"]

    gone = decide(work([job("big", 6000, deleting=True), late], [a], dirty={"ns/big"}),
                  waiting.plan, INPUTS)
    assert gone.changes.reserved["ns/big"] == [] and "a" in gone.changes.old_nodes
    assert "ns/big" not in gone.plan.reserved
    assert "ns/late" in gone.plan.reserved and "ns/late" not in gone.plan.reasons
    assert reasons(gone, "ns/late") == ["Placed"]


def test_spec_change_keeps_what_fits_and_gives_back_the_surplus() -> None:
    a = node("a", gpus=2)
    d = decide(work([job("j", 3000)], [a], rebuild=True), Plan(), INPUTS)
    before = d.plan.reserved["ns/j"]
    smaller = job("j", 800, generation=2)
    d2 = decide(work([smaller], [a], dirty={"ns/j"}), d.plan, INPUTS)
    after = d2.plan.reserved["ns/j"]
    assert len(after) < len(before)
    assert {r.slot for r in after} <= {r.slot for r in before}  # kept, not moved
    assert d2.changes.reserved == {"ns/j": after}


def test_restart_rebuilds_the_same_plan_and_writes_nothing() -> None:
    a = node("a", gpus=2)
    d = decide(work([job("x", 1500), job("y", 900)], [a], rebuild=True), Plan(), INPUTS)
    listed = [job(k.split("/")[1], v.job.spec.demand.requests_per_second,
                  status=statuses(d.plan.reserved[k]))
              for k, v in {"ns/x": job("x", 1500), "ns/y": job("y", 900)}.items()]
    restarted = Plan.from_statuses({v.key: v for v in listed})
    d2 = decide(work(listed, [a], rebuild=True), restarted, INPUTS)
    assert d2.plan.reserved == d.plan.reserved
    assert d2.changes.reserved == {} and d2.changes.rebuilt
    assert [r for _, r, _, _ in d2.changes.events] == []


def test_restart_drops_a_recorded_replica_that_double_books() -> None:
    a = node("a", gpus=1)
    first = job("first", 800, status={"replicas": [rs(0, 0, "7g.80gb")]})
    second = job("second", 800, created="2026-01-02T00:00:00Z",
                 status={"replicas": [rs(0, 6)]})
    plan = Plan.from_statuses({v.key: v for v in (first, second)})
    d = decide(work([first, second], [a], rebuild=True), plan, INPUTS)
    assert [r.profile for r in d.plan.reserved["ns/first"]] == ["7g.80gb"]
    assert "ReplicasReleased" in reasons(d, "ns/second")
    # Its status is rendered again (without the replica); it waits for room.
    assert "ns/second" not in d.plan.reserved and "ns/second" in d.changes.render
    assert "ns/second" in d.plan.reasons


def test_unknown_model_fails_once_and_says_so_once() -> None:
    a = node("a", gpus=1)
    j = job("j", 100, model="nope")
    d = decide(work([j], [a], rebuild=True), Plan(), INPUTS)
    assert "nope" in d.plan.failures["ns/j"] and "ns/j" not in d.plan.reserved
    assert reasons(d, "ns/j") == ["UnknownModel"]
    assert d.tally.attempts == {("arrival", "failed"): 1}
    d2 = decide(work([j], [a], dirty={"ns/j"}), d.plan, INPUTS)
    assert reasons(d2, "ns/j") == [] and d2.plan.failures == d.plan.failures


def _spread(pinned: bool, agent: str | None = None) -> tuple[Work, Plan]:
    """Two small jobs on two GPUs: a re-plan can put them on one."""
    extra: dict[str, Any] = {"migration": {"allowed": False}} if pinned else {}
    jobs = [job("p", 800, status={"replicas": [rs(0)]}),
            job("q", 800, status={"replicas": [rs(1)]}, created="2026-01-02T00:00:00Z",
                **extra)]
    return (work(jobs, [node("a", gpus=2, agent=agent)], rebuild=True, replan=True),
            Plan.from_statuses({v.key: v for v in jobs}))


def test_replan_accepted_moves_a_replica_and_says_migrating() -> None:
    w, plan = _spread(pinned=False)
    d = decide(w, plan, INPUTS)
    assert d.changes.replan is not None and d.changes.replan.accepted
    assert d.tally.replans == {"accepted": 1} and d.tally.migrations == 1
    (moved,) = d.changes.reserved
    assert reasons(d, moved) == ["Migrating"]
    assert len({r.gpu_index for reps in d.plan.reserved.values() for r in reps}) == 1
    # Make-before-break: the old instance is still the moved job's, its GPU still in use.
    (old,) = d.plan.retiring[moved]
    assert old.slot not in {r.slot for r in d.plan.reserved[moved]}
    assert d.plan.holding(moved) == [*d.plan.reserved[moved], old]
    assert "make-before-break" in _event(d, moved, "Migrating")
    assert d.tally.gpus_in_use == 2
    assert d.plan.engine is not None and d.plan.engine.gpus_in_use() == 2
    # Nothing else may be planned over it meanwhile.
    g = d.plan.engine.gpus[(old.node, old.gpu_index)]
    assert [i.job_id.startswith("~retiring/") for i in g.instances] == [True]


def _event(d: Decision, key: str, reason: str) -> str:
    (text,) = [m for k, r, m, _ in d.changes.events if k == key and r == reason]
    return text


def _workers(plan: Plan, key: str, jobs: dict[str, JobView], ready: bool) -> list[WorkerView]:
    groups: dict[tuple[str, str], int] = {}
    for r in plan.holding(key):
        groups[(r.node, r.profile)] = groups.get((r.node, r.profile), 0) + 1
    return [WorkerView(name=f"w-{n}-{p}", namespace="ns", job_uid=jobs[key].uid, node=n,
                       profile=p, replicas=c, ready_replicas=c if ready else c - 1,
                       template_hash="h", deleting=False) for (n, p), c in groups.items()]


def test_the_moved_replica_goes_once_the_new_one_runs_and_the_agents_count_it() -> None:
    w, plan = _spread(pinned=False, agent="10.0.0.1:9400")
    d = decide(w, plan, INPUTS)
    (moved,) = d.plan.retiring
    jobs = w.jobs
    total = len(d.plan.holding(moved))

    def later(ready: bool, registered: int | None, at: float) -> Work:
        nxt = work(list(jobs.values()), list(w.nodes.values()), dirty=set())
        nxt.workers = {f"ns/{x.name}": x for x in _workers(d.plan, moved, jobs, ready)}
        nxt.scraping = True
        nxt.now_s = w.now_s + at
        if registered is not None:
            nxt.registered = {moved: (registered, w.now_s + at)}
        return nxt

    # Workers not ready yet; ready but the agents count only the old replicas: it holds.
    for ready, count in [(False, total), (True, total - 1), (True, None)]:
        d2 = decide(later(ready, count, 20.0), d.plan, INPUTS)
        assert d2.plan.retiring == d.plan.retiring and d2.changes.reserved == {}
        assert d2.tally.gpus_in_use == 2
    # A count from before the move does not count.
    stale = later(True, total, 20.0)
    stale.registered = {moved: (total, w.now_s - 1.0)}
    assert decide(stale, d.plan, INPUTS).plan.retiring == d.plan.retiring
    # Ready and counted: the old replica goes, its status and its node's layout shrink.
    d3 = decide(later(True, total, 30.0), d.plan, INPUTS)
    assert d3.plan.retiring == {} and d3.tally.gpus_in_use == 1
    assert moved in d3.changes.reserved and d3.changes.reserved[moved] == d.plan.reserved[moved]
    assert "registered at the DPU agents" in _event(d3, moved, "Migrated")
    # Agents that never report it: the workers' readiness lets it go after a while.
    d4 = decide(later(True, None, 301.0), d.plan, INPUTS)
    assert d4.plan.retiring == {} and "after 301 s" in _event(d4, moved, "Migrated")
    # The released instance is named for the writer (its pod goes, not another one).
    assert [r.slot for r in d3.changes.leaving[moved]] == [r.slot for r in d.plan.retiring[moved]]


def test_without_a_dpu_agent_the_workers_readiness_is_enough() -> None:
    w, plan = _spread(pinned=False)  # the node reports no DPU agent
    d = decide(w, plan, INPUTS)
    (moved,) = d.plan.retiring
    nxt = work(list(w.jobs.values()), list(w.nodes.values()), dirty=set())
    nxt.workers = {f"ns/{x.name}": x for x in _workers(d.plan, moved, w.jobs, True)}
    nxt.scraping, nxt.now_s = True, w.now_s + 5
    d2 = decide(nxt, d.plan, INPUTS)
    assert d2.plan.retiring == {} and "not scraped" in _event(d2, moved, "Migrated")


def test_a_restarted_operator_holds_the_retiring_replicas_of_the_statuses() -> None:
    w, plan = _spread(pinned=False)
    d = decide(w, plan, INPUTS)
    (moved,) = d.plan.retiring
    bodies = []
    for v in w.jobs.values():
        st = {"replicas": [r.to_status().to_k8s() for r in d.plan.reserved.get(v.key, [])],
              "retiring": [r.to_status().to_k8s() for r in d.plan.retiring.get(v.key, [])]}
        bodies.append(job(v.name, v.job.spec.demand.requests_per_second, status=st,
                          created=v.created))
    again = decide(work(bodies, list(w.nodes.values()), rebuild=True),
                   Plan.from_statuses({v.key: v for v in bodies}), INPUTS)
    assert again.plan.reserved == d.plan.reserved
    assert [r.slot for r in again.plan.retiring[moved]] == \
        [r.slot for r in d.plan.retiring[moved]]
    assert again.tally.gpus_in_use == 2 and again.changes.reserved == {}


def test_a_move_onto_its_own_old_slices_is_break_before_make_and_says_why() -> None:
    """One GPU: the re-plan re-cuts it, so the old instance and a new one overlap."""
    from conspirator.operator import migration
    from conspirator.operator.translate import build_cluster

    a = node("a", gpus=1)
    cluster = build_cluster([a])
    r_old = Replica("a", 0, "GPU-a-0", "A100-80GB", "1g.10gb", 6, 100.0)
    r_new = Replica("a", 0, "GPU-a-0", "A100-80GB", "4g.40gb", 0, 400.0)
    elsewhere = Replica("a", 0, "GPU-a-0", "A100-80GB", "1g.10gb", 5, 100.0)
    split = migration.split_moves(cluster, [r_old], [elsewhere], {"ns/x": [elsewhere],
                                                                 "ns/y": [r_new]})
    assert split.retiring == [r_old] and split.broken == []
    clash = Replica("a", 0, "GPU-a-0", "A100-80GB", "3g.40gb", 4, 300.0)
    split = migration.split_moves(cluster, [r_old], [], {"ns/y": [clash]})
    assert split.retiring == [] and len(split.broken) == 1
    assert "no room for both" in split.broken[0][1] and "ns/y" in split.broken[0][1]


def test_replan_refused_keeps_the_plan() -> None:
    w, plan = _spread(pinned=True)
    d = decide(w, plan, INPUTS)
    assert d.changes.replan is not None and not d.changes.replan.accepted
    assert d.tally.replans == {"kept": 1} and d.tally.migrations == 0
    assert d.changes.reserved == {} and d.tally.gpus_in_use == 2
