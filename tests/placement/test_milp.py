"""The exact MILP: real MIG placements, isolation, memory, SLO, reasons, replan budget."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from conspirator.operator.placement.cluster import ClusterState, Instance
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.gpus import check_layout, gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.milp import INSUFFICIENT_CAPACITY, MilpPolicy, lower_bound
from conspirator.operator.placement.objective import demand_met, score
from conspirator.operator.placement.throughput import default_table

TABLE = default_table()


def cluster(*models: str, per_node: int = 1) -> ClusterState:
    return ClusterState.from_nodes((f"n{k}", gpu_model(m), per_node) for k, m in enumerate(models))


def job(jid: str, rps: float = 300.0, *, model: str = "resnet50", slo: float = 50.0,
        mem: float = 4.0, tenant: str = "t", dedicated: bool = False,
        allowed: frozenset[str] | None = None, priority: int = 0) -> Job:
    return Job(jid, model, rps, slo, mem, tenant=tenant, dedicated_gpu=dedicated,
               allowed_gpus=allowed, priority=priority)


def check_plan(state: ClusterState, jobs: Sequence[Job], dec: Decision) -> None:
    """Every invariant a plan must keep, whatever the policy's objective."""
    by_id = {j.id: j for j in jobs} | state.jobs
    for g in state.gpus:
        if g.model.mig_capable:
            check_layout(g.model, g.placements())
        else:
            assert len(g.instances) <= 1
            assert all(i.profile.name == "whole" for i in g.instances)
        if any(i.dedicated for i in g.instances):
            assert len(g.tenants()) == 1, f"{g.uuid} mixes tenants next to a dedicated job"
        for inst in g.instances:
            j = by_id[inst.job_id]
            assert inst.profile.memory_gib >= j.memory_gib
            opt = TABLE.best(j, g.model, inst.profile)
            assert opt is not None, f"{inst} breaks memory, SLO or allowed GPUs of {j.id}"
            assert opt.latency_ms <= j.latency_slo_ms
    unplaced = {u.job_id: u for u in dec.unplaced}
    for j in jobs:
        if not demand_met(state.served_rps(j.id), j.demand_rps):
            assert j.id in unplaced, f"{j.id} neither served nor reported"
            assert unplaced[j.id].reason
            assert unplaced[j.id].unmet_rps > 0


def test_small_job_one_small_slice_on_one_gpu() -> None:
    state = cluster("A100-80GB", "A100-80GB")
    jobs = [job("a", 100.0)]
    dec = MilpPolicy().place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert dec.policy == "milp"
    assert dec.optimal is True
    assert dec.mip_gap == 0.0
    assert dec.objective == pytest.approx(1.0)
    assert dec.solve_seconds > 0
    assert [(r.gpu_model, r.profile) for r in dec.placed] in (
        [("A100-80GB", "1g.10gb")], [("A100-80GB", "1g.20gb")])
    assert state.gpus_used() == 1
    assert not dec.unplaced


def test_jobs_share_one_gpu_through_mig() -> None:
    state = cluster("H100-80GB", per_node=4)
    jobs = [job(f"j{k}", 400.0, tenant=f"t{k % 3}") for k in range(7)]
    dec = MilpPolicy().place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert state.gpus_used() == 1
    assert dec.objective == pytest.approx(score(state, jobs).value)


def test_dedicated_job_gets_a_gpu_of_its_own_tenant() -> None:
    state = cluster("A100-80GB", per_node=3)
    jobs = [
        job("iso", 300.0, tenant="a", dedicated=True),
        job("b1", 300.0, tenant="b"),
        job("b2", 300.0, tenant="b"),
        job("a2", 300.0, tenant="a"),
    ]
    dec = MilpPolicy().place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    # a's jobs may share a GPU (the dedicated one only refuses other tenants); b needs another
    assert state.gpus_used() == 2
    iso_gpu = next(g for g, _ in state.replicas("iso"))
    assert iso_gpu.tenants() == {"a"}


def test_two_dedicated_tenants_never_share() -> None:
    state = cluster("H200-141GB", per_node=4)
    jobs = [job(f"{t}{k}", 200.0, tenant=t, dedicated=True) for t in "xyz" for k in range(2)]
    dec = MilpPolicy().place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert state.gpus_used() == 3
    for g in state.gpus:
        assert len(g.tenants()) <= 1


def test_memory_and_slo_respected() -> None:
    state = cluster("A100-80GB", "H100-80GB", "T4")
    jobs = [
        job("big", 200.0, mem=35.0),  # needs a 40 GiB (3g/4g) slice or a 7g
        job("fast", 500.0, slo=5.0, model="bert-base"),  # 1g on A100 is too slow
        job("t4ok", 100.0, model="resnet18", mem=10.0, allowed=frozenset({"T4"})),
    ]
    dec = MilpPolicy().place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert not dec.unplaced
    big = [i for _, i in state.replicas("big")]
    assert all(i.profile.memory_gib >= 35.0 for i in big)
    assert {g.model.name for g, _ in state.replicas("t4ok")} == {"T4"}


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (job("huge", 100.0, mem=500.0), "memory"),
        (job("instant", 100.0, slo=0.05), "SLO"),
        (job("nowhere", 100.0, allowed=frozenset({"B200"})), "allowed"),
        (Job("unknown", "gpt-17", 10.0, 50.0, 4.0), "no throughput profile"),
    ],
    ids=["memory", "slo", "allowed", "unknown-model"],
)
def test_infeasible_job_reported_with_reason(bad: Job, words: str) -> None:
    state = cluster("A100-80GB", "T4")
    jobs = [bad, job("fine", 100.0)]
    dec = MilpPolicy().place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert [u.job_id for u in dec.unplaced] == [bad.id]
    assert words in dec.unplaced[0].reason
    assert dec.unplaced[0].unmet_rps == pytest.approx(bad.demand_rps)
    assert state.served_rps("fine") >= 100.0
    assert dec.optimal


def test_insufficient_capacity() -> None:
    state = cluster("T4")
    # each needs the whole T4
    jobs = [job("a", 400.0, model="resnet50", slo=500.0), job("b", 400.0, slo=500.0,
                                                             priority=1)]
    dec = MilpPolicy().place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert [u.job_id for u in dec.unplaced] == ["a"]  # the heavier-weighted job wins
    assert dec.unplaced[0].reason.startswith(INSUFFICIENT_CAPACITY)
    assert dec.objective == pytest.approx(1.0 + 100.0)


def test_place_keeps_existing_instances_and_fills_them_first() -> None:
    state = cluster("A100-80GB", per_node=2)
    MilpPolicy().place(state, [job("a", 300.0)], TABLE)
    before = [(g.uid, list(g.instances)) for g in state.gpus]
    assert state.gpus_used() == 1
    more = [job("b", 300.0), job("c", 300.0)]
    dec = MilpPolicy().place(state, more, TABLE)
    check_plan(state, more, dec)
    for uid, insts in before:
        for inst in insts:
            assert inst in state.gpus[uid].instances
    assert state.gpus_used() == 1
    assert dec.migrations == 0
    assert {r.job_id for r in dec.placed} == {"b", "c"}


def test_place_tops_up_a_job_already_partly_served() -> None:
    state = cluster("A100-80GB")
    MilpPolicy().place(state, [job("a", 300.0)], TABLE)
    served = state.served_rps("a")
    bigger = job("a", served + 500.0)
    dec = MilpPolicy().place(state, [bigger], TABLE)
    check_plan(state, [bigger], dec)
    assert state.served_rps("a") >= bigger.demand_rps
    assert dec.placed and all(r.job_id == "a" for r in dec.placed)


def test_lower_bound_below_optimum() -> None:
    state = cluster("A100-80GB", "H100-80GB", "T4", per_node=2)
    jobs = [job(f"j{k}", 150.0 * (k + 1), tenant=f"t{k % 2}", dedicated=k == 3) for k in range(6)]
    lb = lower_bound(state, jobs, TABLE)
    dec = MilpPolicy().place(state.copy(), jobs, TABLE)
    assert dec.objective is not None
    assert lb <= dec.objective + 1e-6


def _fragmented() -> tuple[ClusterState, list[Job]]:
    """Four GPUs each holding one small replica: a replan can pack them onto one."""
    state = cluster("A100-80GB", per_node=4)
    jobs = [job(f"j{k}", 200.0) for k in range(4)]
    one = gpu_model("A100-80GB").profile("1g.10gb")
    for k, (g, j) in enumerate(zip(state.gpus, jobs, strict=True)):
        opt = TABLE.best(j, g.model, one)
        assert opt is not None
        state.assign(j, g, one, k, opt.throughput_rps)
    return state, jobs


@pytest.mark.parametrize("budget", [0, 1, 2, 3, None])
def test_replan_respects_the_migration_budget(budget: int | None) -> None:
    state, jobs = _fragmented()
    before = score(state, jobs).value
    dec = MilpPolicy().replan(state, [], TABLE, migration_budget=budget)
    check_plan(state, jobs, dec)
    moves = 3 if budget is None else budget
    assert dec.migrations <= moves
    assert dec.migrations == min(moves, 3)  # no gratuitous moves
    assert state.gpus_used() == 4 - min(moves, 3)
    assert dec.objective is not None
    assert dec.objective == pytest.approx(score(state, jobs).value)
    assert dec.objective <= before
    assert dec.optimal


def test_replan_with_new_jobs_and_budget_zero_equals_place() -> None:
    state, jobs = _fragmented()
    new = [job("n1", 300.0, tenant="u", dedicated=True), job("n2", 100.0)]
    s1, s2 = state.copy(), state.copy()
    d_place = MilpPolicy().place(s1, new, TABLE)
    d_replan = MilpPolicy().replan(s2, new, TABLE, migration_budget=0)
    check_plan(s2, [*jobs, *new], d_replan)
    assert d_replan.migrations == 0
    assert d_replan.objective == pytest.approx(d_place.objective)


def test_replan_drops_replicas_that_no_longer_meet_the_slo() -> None:
    state, jobs = _fragmented()
    stricter = job("j0", 200.0, slo=1.0)  # nothing meets 1 ms for resnet50 on A100 1g
    dec = MilpPolicy().replan(state, [stricter], TABLE, migration_budget=0)
    check_plan(state, [stricter, *jobs[1:]], dec)
    assert "j0" in dec.unplaced_ids()
    assert state.served_rps("j0") == 0.0


def test_replan_keeps_a_media_extension_instance_in_place() -> None:
    state = cluster("A100-80GB", per_node=2)
    me = gpu_model("A100-80GB").profile("1g.10gb+me")
    video = job("video", 100.0)
    opt = TABLE.best(video, state.gpus[1].model, me)
    assert opt is not None
    state.assign(video, state.gpus[1], me, 3, opt.throughput_rps)
    dec = MilpPolicy().replan(state, [job("n", 100.0)], TABLE, migration_budget=0)
    check_plan(state, [video], dec)
    assert dec.migrations == 0
    assert [(i.profile.name, i.start) for i in state.gpus[1].instances if i.job_id == "video"] \
        == [("1g.10gb+me", 3)]
    assert state.gpus_used() == 1  # the new job joins the +me GPU


def test_replan_refuses_a_replica_of_an_unknown_job() -> None:
    state = cluster("A100-80GB")
    one = gpu_model("A100-80GB").profile("1g.10gb")
    state.gpus[0].add(Instance("ghost", "t", one, 0, 10.0))
    with pytest.raises(ValueError, match="ghost"):
        MilpPolicy().replan(state, [], TABLE)


def test_time_limit_still_returns_a_valid_plan() -> None:
    state = cluster("A100-80GB", "H100-80GB", "T4", per_node=4)
    jobs = [job(f"j{k}", 100.0 + 37.0 * k, tenant=f"t{k % 4}", dedicated=k % 5 == 0)
            for k in range(30)]
    dec = MilpPolicy(time_limit_s=0.5).place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert dec.solve_seconds < 10.0
    if not dec.optimal:
        assert dec.mip_gap is None or dec.mip_gap > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="time_limit_s"):
        MilpPolicy(time_limit_s=0)
    state, _ = _fragmented()
    with pytest.raises(ValueError, match="migration_budget"):
        MilpPolicy().replan(state, [], TABLE, migration_budget=-1)


def _mig_instances() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "mig_instances.py"
    spec = importlib.util.spec_from_file_location("mig_instances_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_instance_is_seeded_and_solved() -> None:
    gen = _mig_instances()
    state, jobs = gen.make_instance(3, 20)
    state2, jobs2 = gen.make_instance(3, 20)
    assert jobs == jobs2
    assert [g.model.name for g in state.gpus] == [g.model.name for g in state2.gpus]
    assert len(jobs) == 20
    names = {g.model.name for g in state.gpus}
    assert {"A100-80GB", "H100-80GB", "H200-141GB"} <= names
    dec = MilpPolicy(time_limit_s=30).place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert dec.optimal
    assert dec.objective == pytest.approx(score(state, jobs).value)


@pytest.mark.parametrize("n_jobs", [50, 100])
def test_benchmark_instances_solved_to_optimality(n_jobs: int) -> None:
    gen = _mig_instances()
    state, jobs = gen.make_instance(1, n_jobs)
    dec = MilpPolicy(time_limit_s=60).place(state, jobs, TABLE)
    check_plan(state, jobs, dec)
    assert dec.optimal
    assert dec.objective == pytest.approx(score(state, jobs).value)
