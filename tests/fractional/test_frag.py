"""FGD's fragmentation measure on hand-built nodes (expected values derived by hand)."""

from __future__ import annotations

import pytest

from conspirator.operator.placement.fractional.frag import (
    FragMeasure,
    node_fragmentation,
    task_fragment,
)
from conspirator.operator.placement.fractional.workload import TargetWorkload, TaskType

CPU_ONLY = TaskType(1000, 0, 0, None, 0.25)
SHARE_500 = TaskType(2000, 1, 500, None, 0.5)
TWO_WHOLE = TaskType(4000, 2, 1000, None, 0.25)
WORKLOAD = TargetWorkload((CPU_ONLY, SHARE_500, TWO_WHOLE))


def test_cpu_only_task_cannot_use_any_gpu() -> None:
    assert task_fragment("T4", 3000, (1000, 600, 300), CPU_ONLY) == 1900


def test_sharing_task_wastes_only_gpus_with_too_little_free() -> None:
    # GPUs with >= 500 free: 1000 and 600; the 300 one is a fragment
    assert task_fragment("T4", 3000, (1000, 600, 300), SHARE_500) == 300


def test_task_that_does_not_fit_wastes_everything() -> None:
    # two whole GPUs needed, only one free
    assert task_fragment("T4", 5000, (1000, 600, 300), TWO_WHOLE) == 1900
    # enough GPUs but not enough CPU
    assert task_fragment("T4", 3000, (1000, 1000, 300), TWO_WHOLE) == 2300


def test_whole_gpu_task_wastes_partial_gpus() -> None:
    assert task_fragment("T4", 5000, (1000, 1000, 300), TWO_WHOLE) == 300


def test_model_constraint() -> None:
    v100_only = TaskType(1000, 1, 100, frozenset({"V100M16"}), 1.0)
    assert task_fragment("T4", 8000, (1000,), v100_only) == 1000
    assert task_fragment("V100M16", 8000, (1000,), v100_only) == 0


def test_node_fragmentation_is_the_popularity_weighted_expectation() -> None:
    # 0.25 * 1900 + 0.5 * 300 + 0.25 * 1900
    assert node_fragmentation("T4", 3000, (1000, 600, 300), WORKLOAD) == pytest.approx(1100)
    # CPU below the sharing task's 2000: it cannot fit either
    assert node_fragmentation("T4", 1500, (1000, 600, 300), WORKLOAD) == pytest.approx(1900)
    # 0.25 * 2300 + 0.5 * 300 + 0.25 * 300
    assert node_fragmentation("T4", 5000, (1000, 1000, 300), WORKLOAD) == pytest.approx(800)


def test_full_or_gpu_less_node_has_no_fragmentation() -> None:
    assert node_fragmentation("T4", 5000, (0, 0), WORKLOAD) == 0
    assert node_fragmentation(None, 5000, (), WORKLOAD) == 0


@pytest.mark.parametrize(
    ("cpu", "gpus"),
    [(3000, (1000, 600, 300)), (1500, (1000, 600, 300)), (5000, (1000, 1000, 300)), (0, (70,))],
)
def test_memoised_measure_agrees_with_the_definition(cpu: int, gpus: tuple[int, ...]) -> None:
    measure = FragMeasure(WORKLOAD)
    expected = node_fragmentation("T4", cpu, gpus, WORKLOAD)
    assert measure.frag("T4", cpu, gpus) == pytest.approx(expected)
    assert measure.frag("T4", cpu, gpus) == pytest.approx(expected)  # from the memo


def test_memo_shares_cpu_values_with_the_same_effect() -> None:
    measure = FragMeasure(WORKLOAD)
    measure.frag("T4", 2500, (1000,))
    measure.frag("T4", 3900, (1000,))  # covers the same task CPU requests as 2500
    assert len(measure) == 1
