"""The autoscaler's rule (operator/autoscale.py): recommendations, windows, tolerance."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conspirator.api.v1alpha1 import Scaling, ScalingMode
from conspirator.operator.autoscale import (
    MIN_RPS,
    PRESSURE_COOLDOWN_S,
    PRESSURE_STEP,
    JobLoad,
    ScalerState,
    decide,
)

AUTO = Scaling(mode=ScalingMode.AUTO, scale_down_stabilization_seconds=300)
SLO = 50.0


def load(offered: float, p99: float | None = 5.0, waiting: int = 0) -> JobLoad:
    return JobLoad(offered_rps=offered, served_rps=offered, p99_ms=p99, waiting=waiting)


def test_static_jobs_are_never_scaled() -> None:
    st_ = ScalerState.start(100.0, 0.0)
    assert decide(Scaling(), SLO, load(1000.0), st_, 10.0) is None
    assert st_.planned_rps == 100.0


def test_scale_out_at_once_to_offered_over_target() -> None:
    s = ScalerState.start(100.0, 0.0)
    d = decide(AUTO, SLO, load(240.0), s, 15.0)
    assert d is not None and d.direction == "up" and d.reason == "ScaledOut"
    assert d.planned_rps == 300.0 == s.planned_rps  # 240 / 0.8
    assert "100 -> 300 req/s" in d.message and "240.0 offered" in d.message


def test_small_changes_are_within_tolerance() -> None:
    s = ScalerState.start(100.0, 0.0)
    assert decide(AUTO, SLO, load(85.0), s, 15.0) is None  # 106 req/s: +6%
    assert decide(AUTO, SLO, load(75.0), s, 400.0) is None  # 94 req/s: -6%


def test_scale_in_waits_for_the_window_and_takes_its_highest() -> None:
    s = ScalerState.start(300.0, 0.0)
    for t in range(15, 300, 15):
        assert decide(AUTO, SLO, load(80.0 if t > 100 else 160.0), s, float(t)) is None
    # Past the window from the start, the highest recommendation left is 160/0.8.
    d = decide(AUTO, SLO, load(80.0), s, 330.0)
    assert d is not None and d.direction == "down" and d.planned_rps == 200.0
    # and to 100 only once the 200s have aged out too.
    assert decide(AUTO, SLO, load(80.0), s, 390.0) is None
    d = decide(AUTO, SLO, load(80.0), s, 420.0)
    assert d is not None and d.planned_rps == 100.0


def test_latency_pressure_scales_past_the_offered_rate_once_realised() -> None:
    s = ScalerState.start(100.0, 0.0)
    hot = load(70.0, p99=48.0)  # under target by rate, but p99 at 96% of the SLO
    assert decide(AUTO, SLO, hot, s, 10.0, realised=False) is None
    d = decide(AUTO, SLO, hot, s, 20.0)
    assert d is not None and d.planned_rps == 100.0 * PRESSURE_STEP
    assert "p99 48.0 ms" in d.message
    # No compounding while the new capacity settles.
    assert decide(AUTO, SLO, hot, s, 20.0 + PRESSURE_COOLDOWN_S / 2) is None
    d = decide(AUTO, SLO, hot, s, 20.0 + PRESSURE_COOLDOWN_S)
    assert d is not None and d.planned_rps == 100.0 * PRESSURE_STEP ** 2


def test_unmet_demand_below_the_plan_is_pressure_a_moment_of_queueing_is_not() -> None:
    s = ScalerState.start(100.0, 0.0)
    moment = JobLoad(offered_rps=60.0, served_rps=60.0, p99_ms=5.0, waiting=3, replicas=1)
    assert decide(AUTO, SLO, moment, s, 100.0) is None
    short = JobLoad(offered_rps=60.0, served_rps=50.0, p99_ms=5.0, waiting=2, replicas=1)
    d = decide(AUTO, SLO, short, s, 200.0)
    assert d is not None and "50.0 of 60.0 req/s served" in d.message
    assert d.planned_rps == 150.0
    s = ScalerState.start(100.0, 0.0)
    queued = JobLoad(offered_rps=60.0, served_rps=60.0, p99_ms=5.0, waiting=8, replicas=2)
    d = decide(AUTO, SLO, queued, s, 100.0)
    assert d is not None and "8 queued for 2 replica(s)" in d.message


def test_bounds_clamp_the_recommendation() -> None:
    sc = Scaling(mode=ScalingMode.AUTO, min_requests_per_second=50,
                 max_requests_per_second=400, scale_down_stabilization_seconds=0)
    s = ScalerState.start(100.0, 0.0)
    d = decide(sc, SLO, load(1000.0), s, 1.0)
    assert d is not None and d.planned_rps == 400.0 and "maxRequestsPerSecond" in d.message
    d = decide(sc, SLO, load(0.0), s, 2.0)
    assert d is not None and d.planned_rps == 50.0
    free = Scaling(mode=ScalingMode.AUTO, scale_down_stabilization_seconds=0)
    d = decide(free, SLO, load(0.0), s, 3.0)
    assert d is not None and d.planned_rps == MIN_RPS


def test_scale_up_window_takes_the_lowest() -> None:
    sc = Scaling(mode=ScalingMode.AUTO, scale_up_stabilization_seconds=60)
    s = ScalerState.start(100.0, 0.0)
    assert decide(sc, SLO, load(400.0), s, 10.0) is None  # the start (100) is in the window
    d = decide(sc, SLO, load(400.0), s, 65.0)
    assert d is not None and d.planned_rps == 500.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(1.0, 5.0), st.floats(0.0, 5000.0)), min_size=1,
                max_size=60), st.integers(0, 900))
def test_never_below_any_recommendation_of_the_window(
        steps: list[tuple[float, float]], window: int) -> None:
    sc = Scaling(mode=ScalingMode.AUTO, scale_down_stabilization_seconds=window)
    s = ScalerState.start(1000.0, 0.0)
    t = 0.0
    seen: list[tuple[float, float]] = [(0.0, 1000.0)]
    for dt, offered in steps:
        t += dt * 10
        before = s.planned_rps
        d = decide(sc, SLO, load(offered, p99=None), s, t)
        seen.append((t, max(MIN_RPS, offered / 0.8)))
        if d is not None and d.direction == "down":
            floor = max(r for at, r in seen if at >= t - window)
            assert d.planned_rps >= floor * 0.995 and d.planned_rps < before
