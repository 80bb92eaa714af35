"""Spot nodes that vanish: seeded interruptions of the MIG track's spot pool.

Each spot node is taken back at Poisson times (``per_day`` interruptions per node and
day on average) and returns after ``downtime_s``.  While it is away its GPUs are
down: their replicas are lost and nothing new lands there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from conspirator.operator.placement.cluster import ClusterState, GpuState


@dataclass(frozen=True, slots=True)
class SpotSpec:
    per_day: float = 1.0
    downtime_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.per_day < 0 or self.downtime_s <= 0:
            raise ValueError("spot interruptions need per_day >= 0 and downtime_s > 0")


def interruptions(nodes: Sequence[str], spec: SpotSpec, horizon_s: float,
                  seed: int) -> list[tuple[float, float, str]]:
    """(down at, up at, node) per interruption, in time order; seeded per node."""
    out: list[tuple[float, float, str]] = []
    if spec.per_day <= 0:
        return out
    rate = spec.per_day / 86400.0
    for k, node in enumerate(sorted(nodes)):
        rng = random.Random(seed * 1_000_003 + k)
        t = rng.expovariate(rate)
        while t < horizon_s:
            out.append((t, t + spec.downtime_s, node))
            t += spec.downtime_s + rng.expovariate(rate)
    out.sort()
    return out


def take_down(state: ClusterState, node: str) -> set[str]:
    """Mark ``node``'s GPUs down and drop their replicas; the jobs that lost some."""
    hit: set[str] = set()
    for g in _gpus(state, node):
        for inst in list(g.instances):
            state.unassign(g, inst)
            hit.add(inst.job_id)
        g.down = True
    for jid in hit:
        if state.served_rps(jid) <= 0:
            state.release(jid)
    return hit


def bring_up(state: ClusterState, node: str) -> None:
    for g in _gpus(state, node):
        g.down = False


def _gpus(state: ClusterState, node: str) -> list[GpuState]:
    return [g for g in state.gpus if g.node == node]
