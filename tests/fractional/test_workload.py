"""Building FGD's target workload from a pod list."""

from __future__ import annotations

import pytest

from conspirator.operator.placement.fractional.model import PodSpec
from conspirator.operator.placement.fractional.workload import (
    TargetWorkload,
    TaskType,
    build_target_workload,
)


def pods(shape: tuple[int, int, int], count: int, prefix: str) -> list[PodSpec]:
    cpu, num, milli = shape
    return [PodSpec(f"{prefix}-{i}", cpu, 1024 * (i + 1), num, milli) for i in range(count)]


def test_types_ignore_memory_and_keep_the_most_popular() -> None:
    trace = (
        pods((4000, 1, 500), 60, "a")
        + pods((8000, 1, 1000), 30, "b")
        + pods((1000, 0, 0), 8, "c")
        + pods((2000, 8, 1000), 2, "d")
    )
    workload = build_target_workload(trace, popularity_threshold=0.95)
    # 60 + 30 = 90% < 95%, + 8 = 98% >= 95%: the 2% type is dropped
    assert [t.shape for t in workload.tasks] == [
        (4000, 1, 500, None),
        (8000, 1, 1000, None),
        (1000, 0, 0, None),
    ]
    assert [t.popularity for t in workload.tasks] == pytest.approx([60 / 98, 30 / 98, 8 / 98])


def test_cpu_pods_can_be_left_out() -> None:
    trace = pods((4000, 1, 500), 3, "a") + pods((1000, 0, 0), 5, "c")
    workload = build_target_workload(trace, include_cpu_pods=False)
    assert [t.shape for t in workload.tasks] == [(4000, 1, 500, None)]
    assert workload.tasks[0].popularity == pytest.approx(1.0)


def test_popularities_must_sum_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        TargetWorkload((TaskType(1, 0, 0, None, 0.5),))
    with pytest.raises(ValueError, match="at least one"):
        TargetWorkload(())
