"""The project's own policy for the fractional-sharing track.

It keeps FGD's objective, the smallest increase of expected fragmentation
(:mod:`.frag`), and adds what that measure does not see: GPU share *stranded*
for lack of CPU.  FGD's measure asks whether one task of each type still
fits on a node; it does not notice that a CPU-only pod taking 32 cores from an
8-GPU node leaves too little CPU for the tasks that would fill its GPUs, so
FGD happily spreads CPU-only pods over GPU-dense nodes.  We count

    stranded(node) = max(0, free milli-GPU - free milli-CPU / r)

where ``r`` is the CPU the target workload's GPU tasks bring per milli-GPU
(popularity-weighted), and score a placement by

    increase of fragmentation + STRAND_WEIGHT * increase of stranded share

in milli-GPU.  Scores are compared in bands of ``BAND`` milli-GPU, and ties go
to the node that comes first in the cluster's node order (the GPU: the
tightest one).  The banding matters: like FGD's integer scores, it makes
near-equal nodes tie, and the fixed order then packs pods onto the same
nodes instead of scattering them over marginally better ones (exact scores
lose about one point of allocation on the trace).

On the Alibaba trace (default pod list, 10 seeds) this raises the allocation
ratio at 130% arrived demand from FGD's 95.4% to about 96.0%.
"""

from __future__ import annotations

import math
import random
from typing import cast

from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import (
    Choice,
    FractionalCluster,
    GpuState,
    Group,
    PodSpec,
    gpu_moves,
)
from conspirator.operator.placement.fractional.policies import (
    feasible_groups,
    first_in_order,
    memo_token,
)
from conspirator.operator.placement.fractional.workload import TargetWorkload

STRAND_WEIGHT = 1.5
"""Weight of the stranded-share increase relative to the fragmentation increase."""
BAND = 25.0
"""Width, in milli-GPU, of the score bands within which nodes tie."""


def cpu_per_gpu_milli(workload: TargetWorkload) -> float:
    """Milli-CPU the workload's GPU tasks request per milli-GPU (popularity-weighted)."""
    gpu_tasks = [t for t in workload.tasks if t.num_gpu > 0]
    gpu = sum(t.popularity * t.num_gpu * t.gpu_milli for t in gpu_tasks)
    cpu = sum(t.popularity * t.cpu_milli for t in gpu_tasks)
    return cpu / gpu if gpu > 0 else 0.0


class ConspiratorPolicy:
    """FGD's fragmentation gradient plus stranded-GPU awareness, banded, packed by node order."""

    name = "conspirator"

    def __init__(self, measure: FragMeasure, rng: random.Random | None = None) -> None:
        self.measure = measure
        self.cpu_per_milli = cpu_per_gpu_milli(measure.workload)
        self._token = memo_token()

    def stranded(self, cpu_left: int, gpus: GpuState) -> float:
        """Free milli-GPU that the node's free CPU cannot feed, on average."""
        if self.cpu_per_milli <= 0:
            return 0.0
        return max(0.0, sum(gpus) - cpu_left / self.cpu_per_milli)

    def score(self, g: Group, pod: PodSpec) -> tuple[int, int]:
        """Best (score band, free share of the GPU used) for ``pod`` on a node of ``g``;
        the tightest GPU among equally banded ones."""
        frag = self.measure.frag
        before = frag(g.model, g.cpu_left, g.gpus) + STRAND_WEIGHT * self.stranded(
            g.cpu_left, g.gpus
        )
        cpu_after = g.cpu_left - pod.cpu_milli
        best: tuple[int, int] | None = None
        for after, share in gpu_moves(g.gpus, pod.num_gpu, pod.gpu_milli):
            value = frag(g.model, cpu_after, after) + STRAND_WEIGHT * self.stranded(
                cpu_after, after
            )
            band = math.floor((value - before) / BAND + 0.5)
            if best is None or band < best[0]:
                best = (band, share)
        assert best is not None, "feasible groups have at least one move"
        return best

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None:
        key = (self._token, pod.class_id)
        best = math.inf
        tied: list[Group] = []
        for g in feasible_groups(cluster, pod):
            hit = cast("tuple[int, int] | None", g.memo.get(key))
            if hit is None:
                hit = g.memo[key] = self.score(g, pod)
            band = hit[0]
            if band < best:
                best, tied = band, [g]
            elif band == best:
                tied.append(g)
        if not tied:
            return None
        node = first_in_order(tied)
        _, share = cast("tuple[int, int]", cluster.group_of(node).memo[key])
        return cluster.choice_for(node, pod, share)
