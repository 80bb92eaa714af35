"""The segment planners against the checker, a brute force, and ParvaGPU's published counts."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conspirator.mig import gpu_model
from conspirator.operator.placement.segment_greedy import plan_parvagpu
from conspirator.operator.placement.segment_milp import plan_milp
from conspirator.operator.placement.segments import (
    A100_80GB_PROFILES,
    Demand,
    PlacedSegment,
    Segment,
    SegmentPlan,
    SegmentTable,
)
from conspirator.operator.simulator.parvagpu_check import check_plan, relayout

PUBLISHED = [2, 3, 5, 7, 13, 16]  # published/gpus.csv
RERUN = [2, 3, 5, 7, 13, 17]
A100 = gpu_model("A100-80GB")


def test_conspirator_meets_the_bar(profiles: SegmentTable,
                                   slo_sets: list[list[Demand]]) -> None:
    counts = []
    for demands, pub in zip(slo_sets, PUBLISHED, strict=True):
        plan = plan_milp(profiles, demands)
        res = check_plan(plan, demands)
        assert res.valid, res.violations
        assert res.gpus <= pub
        assert plan.optimal and plan.lower_bound == res.gpus
        counts.append(res.gpus)
    assert sum(counts) < sum(PUBLISHED)


def test_mig_only_uses_one_process_and_no_fewer_gpus(profiles: SegmentTable,
                                                     slo_sets: list[list[Demand]]) -> None:
    for demands in slo_sets:
        mig = plan_milp(profiles, demands, mps=False)
        assert check_plan(mig, demands).valid
        assert all(s.segment.processes == 1 for s in mig.segments)
        assert mig.gpus >= plan_milp(profiles, demands).gpus


def test_reimplementation_reproduces_the_rebuilt_scheduler(
        profiles: SegmentTable, slo_sets: list[list[Demand]]) -> None:
    for demands, rerun in zip(slo_sets, RERUN, strict=True):
        plan = plan_parvagpu(profiles, demands)
        res = check_plan(plan, demands)
        assert res.gpus == rerun
        assert len(res.met) == res.total and res.repairable
        assert all(s.segment.processes <= 3 for s in plan.segments)


def test_checker_catches_each_rule(profiles: SegmentTable,
                                   slo_sets: list[list[Demand]]) -> None:
    demands = slo_sets[2]
    plan = plan_milp(profiles, demands)
    segs = list(plan.segments)
    # Short of a rate: drop every segment of one model but one.
    model = segs[0].model
    short = [s for s in segs if s.model != model] + [segs[0]]
    served = sum(s.segment.throughput_rps for s in short if s.model == model)
    rate = next(d.rate_rps for d in demands if d.model == model)
    res = check_plan(SegmentPlan(tuple(short)), demands)
    assert (model in res.met) == (served >= rate)
    # A latency the SLO does not allow.
    slow = replace(segs[0], segment=replace(segs[0].segment, batch_latency_ms=1e6))
    res = check_plan(SegmentPlan((slow, *segs[1:])), demands)
    assert segs[0].model not in res.met and any("per batch" in v for v in res.violations)
    # Two instances on one memory slice.
    clash = replace(segs[1], gpu=segs[0].gpu, start=segs[0].start)
    res = check_plan(SegmentPlan((*segs, clash)), demands)
    assert res.invalid_gpus >= 1 and not res.valid


def _seg(gpcs: int, rps: float) -> Segment:
    return Segment(gpcs, 8, 1, rps, 1.0)


@st.composite
def one_model(draw: st.DrawFn) -> tuple[SegmentTable, Demand]:
    per = {g: draw(st.floats(10, 1000)) for g in A100_80GB_PROFILES
           if draw(st.booleans()) or g == 7}
    table = SegmentTable({"m": [_seg(g, r) for g, r in per.items()]})
    return table, Demand("m", draw(st.floats(1, 3000)), 100.0)


def _fits_one_gpu(table: SegmentTable, d: Demand) -> bool:
    """Brute force: some multiset of instances with a valid A100 layout serves the rate."""
    best = table.best_per_size("m", d.slo_ms)
    sizes = sorted(best)
    for n in range(1, 8):
        for combo in itertools.combinations_with_replacement(sizes, n):
            if sum(best[g].throughput_rps for g in combo) < d.rate_rps:
                continue
            profs = [A100.profile(A100_80GB_PROFILES[g]) for g in combo]
            if relayout(A100, profs) is not None:
                return True
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_model())
def test_milp_agrees_with_brute_force_on_one_gpu(case: tuple[SegmentTable, Demand]) -> None:
    table, d = case
    plan = plan_milp(table, [d])
    assert check_plan(plan, [d]).valid
    assert (plan.gpus == 1) == _fits_one_gpu(table, d)


@st.composite
def many_models(draw: st.DrawFn) -> tuple[SegmentTable, list[Demand]]:
    n = draw(st.integers(1, 4))
    points: dict[str, list[Segment]] = {}
    demands = []
    for k in range(n):
        segs = [Segment(g, b, p, draw(st.floats(5, 800)), draw(st.floats(1, 80)))
                for g in A100_80GB_PROFILES for b in (1, 8) for p in (1, 2)]
        points[f"m{k}"] = segs
        demands.append(Demand(f"m{k}", draw(st.floats(1, 4000)), draw(st.floats(5, 200))))
    return SegmentTable(points), demands


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(many_models())
def test_milp_plans_check_and_beat_the_greedy(case: tuple[SegmentTable, list[Demand]]) -> None:
    table, demands = case
    plan = plan_milp(table, demands)
    res = check_plan(plan, demands)
    servable = [d for d in demands if table.best_per_size(d.model, d.slo_ms)]
    assert set(res.met) == {d.model for d in servable}
    assert set(plan.unserved) == {d.model for d in demands} - set(res.met)
    assert not res.violations or all("not served" not in v for v in res.violations)
    assert res.invalid_gpus == 0 and plan.optimal and plan.lower_bound == plan.gpus
    greedy = check_plan(plan_parvagpu(table, demands), demands)
    if len(greedy.met) == greedy.total and greedy.repairable:
        assert plan.gpus <= greedy.gpus


def test_placed_segments_name_real_start_slices(profiles: SegmentTable,
                                                slo_sets: list[list[Demand]]) -> None:
    plan = plan_milp(profiles, slo_sets[5])
    for s in plan.segments:
        assert s.start in A100.profile(s.segment.profile).starts
    assert isinstance(plan.segments[0], PlacedSegment)
