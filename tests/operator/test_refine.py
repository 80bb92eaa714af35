"""Learned profiles (operator/refine.py): a median of saturated samples, never one outlier."""

from __future__ import annotations

from datetime import UTC, datetime

from conspirator.operator.autoscale import JobLoad
from conspirator.operator.refine import MIN_SAMPLES, Refiner, is_sample

KEY = ("resnet50", "A100-80GB", "1g.10gb", 8)
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def test_written_only_with_enough_samples_and_a_real_change() -> None:
    r = Refiner()
    for _ in range(MIN_SAMPLES - 1):
        r.add(KEY, 200.0)
    assert r.refinements({KEY: (100.0, 20.0)}, NOW) == []
    r.add(KEY, 200.0)
    (ref,) = r.refinements({KEY: (100.0, 20.0)}, NOW)
    assert ref.throughput == 200.0 and ref.p99_latency_ms == 20.0 and ref.samples == 3
    assert ref.previous == 100.0
    assert r.refinements({KEY: (198.0, 20.0)}, NOW) == []  # within 5 %


def test_one_outlier_does_not_swing_the_entry() -> None:
    r = Refiner()
    for v in (100.0, 101.0, 99.0, 100.5, 5000.0):
        r.add(KEY, v)
    assert r.refinements({KEY: (100.0, 20.0)}, NOW) == []
    r.add(KEY, 0.0)  # not a sample
    assert r.samples[KEY].total == 5


def test_entries_are_refined_never_invented() -> None:
    r = Refiner()
    for _ in range(5):
        r.add(KEY, 300.0)
    assert r.refinements({}, NOW) == []


def test_what_is_a_sample() -> None:
    short = JobLoad(offered_rps=150.0, served_rps=100.0)
    queue = JobLoad(offered_rps=100.0, served_rps=100.0, waiting=8, replicas=2)
    moment = JobLoad(offered_rps=100.0, served_rps=100.0, waiting=3, replicas=2)
    assert short.saturated and queue.saturated and not moment.saturated
    assert not JobLoad(offered_rps=101.0, served_rps=100.0).saturated
    assert is_sample(90.0, 100.0, True)  # short of capacity: it is the capacity
    assert is_sample(200.0, 100.0, False)  # serves more than the entry says
    assert not is_sample(60.0, 100.0, False)  # little to do: says nothing
    assert not is_sample(0.0, 100.0, True)


def test_lower_bounds_do_not_pull_real_measurements_down() -> None:
    r = Refiner()
    for v in (126.0, 127.0, 125.0, 126.0):  # unsaturated windows that beat the entry
        r.add(KEY, v, capacity=False)
    (ref,) = r.refinements({KEY: (100.0, 20.0)}, NOW)
    assert ref.throughput == 126.0
    for v in (165.0, 166.0, 164.0):  # saturated windows: the capacity itself
        r.add(KEY, v)
    (ref,) = r.refinements({KEY: (126.0, 20.0)}, NOW)
    assert ref.throughput == 165.0 and ref.samples == 7
