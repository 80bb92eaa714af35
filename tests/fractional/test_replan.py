"""Global re-plan: every pod placed or failed, the best order kept."""

from __future__ import annotations

import random

from conspirator.operator.placement.fractional.conspirator import ConspiratorPolicy
from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import NodeSpec, PodSpec
from conspirator.operator.placement.fractional.replan import (
    largest_first,
    place_in_order,
    random_order,
    replan,
)
from conspirator.operator.placement.fractional.workload import build_target_workload


def trace() -> tuple[list[NodeSpec], list[PodSpec]]:
    nodes = [NodeSpec(f"n{i}", 16000, 65536, 4, "T4") for i in range(3)]
    shapes = [(2000, 1, 810), (1000, 1, 190), (4000, 1, 1000), (3000, 0, 0), (2000, 2, 1000)]
    pods = [
        PodSpec(f"p{i:02d}", cpu, 1024, num, milli)
        for i, (cpu, num, milli) in enumerate(shapes[i % 5] for i in range(30))
    ]
    return nodes, pods


def test_every_pod_is_placed_or_failed() -> None:
    nodes, pods = trace()
    result = replan(nodes, pods, attempts=2)
    assert set(result.placements) | set(result.failed) == {p.name for p in pods}
    assert not set(result.placements) & set(result.failed)
    placed = [p for p in pods if p.name in result.placements]
    assert result.cluster.used_gpu_milli == sum(p.total_gpu_milli for p in placed)
    assert 0 < result.gpu_alloc_ratio <= 1


def test_the_best_order_wins() -> None:
    nodes, pods = trace()
    orders = [largest_first, random_order(0), random_order(1)]
    best = replan(nodes, pods, orders=orders)
    for order in orders:
        attempt = place_in_order(nodes, order(pods), _policy(pods))
        assert attempt.cluster.used_gpu_milli <= best.cluster.used_gpu_milli


def test_largest_first_order() -> None:
    _, pods = trace()
    ordered = largest_first(pods)
    assert ordered[0].total_gpu_milli == 2000
    assert ordered[-1].num_gpu == 0
    assert random_order(3)(pods) == random_order(3)(list(reversed(pods)))


def _policy(pods: list[PodSpec]) -> ConspiratorPolicy:
    return ConspiratorPolicy(FragMeasure(build_target_workload(pods)), random.Random(0))
