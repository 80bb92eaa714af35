"""Property tests of the plan policies: every objective, on clusters with spot GPUs.

No plan exceeds a GPU, mixes tenants on a GPU of a dedicated job, puts a job that is
not spot-tolerant on a spot GPU, or drops a job; the MILP's objective is the score of
the plan it writes, and the MILP and the greedy agree on tiny instances.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.objective import score
from conspirator.operator.placement.plan_policy import OBJECTIVES, PlanPolicy
from conspirator.operator.placement.policy_names import mig_policy
from conspirator.operator.placement.throughput import default_table
from tests.placement.test_heuristic_properties import MODELS, check_plan

TABLE = default_table()
GPU_MODELS = ["A100-80GB", "H100-80GB", "A30-24GB", "T4", "L4"]


@st.composite
def instances(draw: st.DrawFn, max_jobs: int = 8) -> tuple[ClusterState, list[Job]]:
    nodes = draw(st.lists(st.tuples(st.sampled_from(GPU_MODELS), st.integers(1, 3),
                                    st.booleans()), min_size=1, max_size=4))
    state = ClusterState.from_nodes(
        ((f"n{k}", gpu_model(m), c) for k, (m, c, _) in enumerate(nodes)),
        spot_nodes=[f"n{k}" for k, (_, _, spot) in enumerate(nodes) if spot])
    jobs = [
        Job(id=f"j{k}", model=draw(st.sampled_from(MODELS)),
            demand_rps=draw(st.floats(1.0, 3000.0)),
            latency_slo_ms=draw(st.sampled_from([20.0, 100.0])),
            memory_gib=draw(st.sampled_from([2.0, 9.0, 20.0])),
            tenant=draw(st.sampled_from(["a", "b"])),
            dedicated_gpu=draw(st.booleans()), priority=draw(st.integers(0, 2)),
            spot_tolerant=draw(st.booleans()))
        for k in range(draw(st.integers(1, max_jobs)))
    ]
    return state, jobs


def check_spot(state: ClusterState, jobs: list[Job]) -> None:
    by_id = {j.id: j for j in jobs}
    for g in state.gpus:
        if g.spot:
            assert all(by_id[i.job_id].spot_tolerant for i in g.instances), g.uuid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from(OBJECTIVES), st.sampled_from(["greedy", "milp",
                                                                  "conspirator"]))
def test_every_objective_yields_a_valid_plan(inst: tuple[ClusterState, list[Job]],
                                             objective: str, policy: str) -> None:
    state, jobs = inst
    plan = PlanPolicy(objective=objective)  # type: ignore[arg-type]
    dec = mig_policy(policy, plan).place(state, jobs, TABLE)
    unplaced = dec.unplaced_ids()
    assert {r.job_id for r in dec.placed} | unplaced == {j.id for j in jobs}
    check_plan(state, jobs, unplaced)
    check_spot(state, jobs)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_jobs=6), st.sampled_from(OBJECTIVES))
def test_rules_keep_plans_valid(inst: tuple[ClusterState, list[Job]], objective: str) -> None:
    """Fairness and preemption: plans stay valid; nothing is dropped silently."""
    state, jobs = inst
    plan = PlanPolicy(objective=objective, fairness=True, preemption=True)  # type: ignore[arg-type]
    policy = mig_policy("greedy", plan)
    first = policy.place(state, jobs[: len(jobs) // 2], TABLE)
    planned = set(state.jobs) | {j.id for j in jobs[len(jobs) // 2:]}
    dec = policy.replan(state, jobs[len(jobs) // 2:], TABLE, None)
    assert first.policy == dec.policy == "greedy"
    placed = {r.job_id for r in dec.placed}
    for jid in planned:
        assert jid in placed or jid in dec.unplaced_ids(), jid
    check_spot(state, jobs)
    for g in state.gpus:
        for inst_ in g.instances:
            job = next(j for j in jobs if j.id == inst_.job_id)
            if job.dedicated_gpu:
                assert g.tenants() == {job.tenant}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_jobs=3), st.sampled_from(OBJECTIVES))
def test_milp_and_greedy_agree_on_tiny_instances(inst: tuple[ClusterState, list[Job]],
                                                 objective: str) -> None:
    """The MILP's objective is the score of its plan and never worse than the greedy's;
    on one job that one replica serves, both find the same value."""
    state, jobs = inst
    plan = PlanPolicy(objective=objective)  # type: ignore[arg-type]
    s_milp, s_greedy = state.copy(), state.copy()
    dec = MilpPolicy(plan=plan).place(s_milp, jobs, TABLE)
    GreedyHeuristic(plan=plan).place(s_greedy, jobs, TABLE)
    v_milp = score(s_milp, jobs, policy=plan).value
    v_greedy = score(s_greedy, jobs, policy=plan).value
    assert dec.optimal
    assert dec.objective is not None and abs(dec.objective - v_milp) <= 1e-6 * max(1, v_milp)
    assert v_milp <= v_greedy + 1e-3
    if len(jobs) == 1 and len(s_milp.jobs) == 1 and \
            sum(1 for g in s_milp.gpus for _ in g.instances) == 1:
        assert abs(v_greedy - v_milp) <= 1e-3, (v_greedy, v_milp)
