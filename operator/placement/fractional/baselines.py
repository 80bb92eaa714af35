"""The FGD paper's policies, as its simulator defines them.

Every one but ``random`` scores the feasible nodes with an integer in 0..100
(Kubernetes score plugins) and takes the best-scored node that comes first in
the cluster's node order (see :func:`.policies.first_in_order`).  The integer
truncation is kept on purpose: it decides which nodes tie, hence the
published results.

- ``fgd``: ``int(100 * sigmoid(-dF / 1000))`` where ``dF`` is the increase of
  the node's fragmentation (milli-GPU); the GPU of a sharing pod is the one
  with the best such score (the tightest among ties).
- ``bestfit``: least CPU and GPU left after placement, each normalised by the
  largest node (128 cores, 8 GPUs), weight 1/2 each; tightest GPU.
- ``random``: a uniformly random feasible node and GPU.
- ``dotprod``: smallest dot product of the node's free (CPU, GPU) and the pod's
  request, normalised the same way (Tetris); tightest GPU.
- ``gpupacking``: prefer already shared GPUs, then free GPUs on used nodes,
  then idle nodes; tightest GPU.
- ``gpuclustering``: prefer nodes that already host pods of the same GPU
  affinity (sharing, 1-GPU, 2-GPU, ...), then fuller nodes; tightest GPU.
"""

from __future__ import annotations

import math
import random
from typing import cast

from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import (
    MILLI,
    Choice,
    FractionalCluster,
    Group,
    PodSpec,
    gpu_moves,
)
from conspirator.operator.placement.fractional.policies import (
    feasible_groups,
    first_in_order,
    memo_token,
    pick_member,
    tightest_share,
)

MAX_SPEC_CPU = 128_000
"""Milli-CPU of the largest node (FGD's normaliser)."""
MAX_SPEC_GPU = 8 * MILLI
"""Milli-GPU of the largest node (FGD's normaliser)."""


def _best_groups(
    scored: list[tuple[int, Group]],
) -> list[Group]:
    top = max(s for s, _ in scored)
    return [g for s, g in scored if s == top]


class FgdPolicy:
    """Fragmentation Gradient Descent with FGD's integer node scores."""

    name = "fgd"

    def __init__(self, measure: FragMeasure, rng: random.Random) -> None:
        self.measure = measure
        self.rng = rng
        self._token = memo_token()

    def _score(self, g: Group, pod: PodSpec) -> tuple[int, int]:
        frag = self.measure.frag
        before = frag(g.model, g.cpu_left, g.gpus)
        cpu_after = g.cpu_left - pod.cpu_milli
        best: tuple[int, int] | None = None
        for after, share in gpu_moves(g.gpus, pod.num_gpu, pod.gpu_milli):
            delta = frag(g.model, cpu_after, after) - before
            score = int(100.0 / (1.0 + math.exp(delta / 1000.0)))
            if best is None or score > best[0]:
                best = (score, share)
        assert best is not None, "feasible groups have at least one move"
        return best

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None:
        key = (self._token, pod.class_id)
        top = -1
        tied: list[Group] = []
        shares: dict[int, int] = {}
        for g in feasible_groups(cluster, pod):
            hit = cast("tuple[int, int] | None", g.memo.get(key))
            if hit is None:
                hit = g.memo[key] = self._score(g, pod)
            score, share = hit
            if score > top:
                top, tied = score, [g]
            elif score == top:
                tied.append(g)
            shares[id(g)] = share
        if not tied:
            return None
        node = first_in_order(tied)
        return cluster.choice_for(node, pod, shares[id(cluster.group_of(node))])


class BestFitPolicy:
    """FGD's BestFit: least free CPU and GPU left after placement."""

    name = "bestfit"

    def __init__(self, measure: FragMeasure, rng: random.Random) -> None:
        self.rng = rng

    @staticmethod
    def score(g: Group, pod: PodSpec) -> int:
        s = 0.0
        s += (g.cpu_left - pod.cpu_milli) / MAX_SPEC_CPU * 0.5
        s += (sum(g.gpus) - pod.total_gpu_milli) / MAX_SPEC_GPU * 0.5
        return int((1.0 - s) * 100)

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None:
        scored = [(self.score(g, pod), g) for g in feasible_groups(cluster, pod)]
        if not scored:
            return None
        node = first_in_order(_best_groups(scored))
        return cluster.choice_for(node, pod, tightest_share(cluster.group_of(node).gpus, pod))


class RandomPolicy:
    """A uniformly random feasible node, and a random GPU with enough share."""

    name = "random"

    def __init__(self, measure: FragMeasure, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None:
        groups = feasible_groups(cluster, pod)
        if not groups:
            return None
        node = pick_member(groups, self.rng)
        if pod.is_sharing:
            usable = [i for i, v in enumerate(cluster.gpu_left[node]) if v >= pod.gpu_milli]
            return Choice(node, (self.rng.choice(usable),))
        return cluster.choice_for(node, pod, MILLI)


class DotProductPolicy:
    """Tetris-style alignment score on (CPU, total GPU), normalised by the largest node."""

    name = "dotprod"

    def __init__(self, measure: FragMeasure, rng: random.Random) -> None:
        self.rng = rng

    @staticmethod
    def score(g: Group, pod: PodSpec) -> int:
        dot = (g.cpu_left / MAX_SPEC_CPU) * (pod.cpu_milli / MAX_SPEC_CPU)
        dot += (sum(g.gpus) / MAX_SPEC_GPU) * (pod.total_gpu_milli / MAX_SPEC_GPU)
        return int(100 * (1 - dot / 2))

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None:
        scored = [(self.score(g, pod), g) for g in feasible_groups(cluster, pod)]
        if not scored:
            return None
        node = first_in_order(_best_groups(scored))
        return cluster.choice_for(node, pod, tightest_share(cluster.group_of(node).gpus, pod))


class GpuPackingPolicy:
    """Prefer shared GPUs, then free GPUs on used nodes, then idle nodes."""

    name = "gpupacking"

    def __init__(self, measure: FragMeasure, rng: random.Random) -> None:
        self.rng = rng

    @staticmethod
    def score(g: Group, pod: PodSpec) -> int:
        if pod.num_gpu == 0:
            return 0
        gpus = g.gpus
        free_gpus = sum(1 for v in gpus if v == MILLI)
        if free_gpus == len(gpus):  # idle node
            return max(100 // 3 - free_gpus, free_gpus)
        share = tightest_share(gpus, pod)
        if share == MILLI:  # must open fully free GPUs on a used node
            return max(100 // 2 - pod.num_gpu, 100 // 3)
        return max(100 - (share * 100 // MILLI) // 10, 100 // 2)

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None:
        scored = [(self.score(g, pod), g) for g in feasible_groups(cluster, pod)]
        if not scored:
            return None
        node = first_in_order(_best_groups(scored))
        return cluster.choice_for(node, pod, tightest_share(cluster.group_of(node).gpus, pod))


class GpuClusteringPolicy:
    """Prefer nodes hosting pods of the same GPU affinity, then fuller nodes.

    The score depends on the pods already on a node, not only on its free
    resources, so this policy scores nodes one by one.
    """

    name = "gpuclustering"

    def __init__(self, measure: FragMeasure, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None:
        groups = feasible_groups(cluster, pod)
        if not groups:
            return None
        tag = pod.affinity_tag
        best = -1
        chosen = -1
        for g in groups:
            fill = 100 // 4 * (MAX_SPEC_GPU - sum(g.gpus)) // MAX_SPEC_GPU
            for node in g.members:
                if tag is None:
                    score = 0
                else:
                    tags = cluster.affinity[node]
                    if tags.get(tag, 0) > 0:
                        score = fill + (100 * 3 // 4 if len(tags) == 1 else 100 * 2 // 4)
                    else:
                        score = fill + (100 // 4 if not tags else 0)
                if score > best or (score == best and node < chosen):
                    best, chosen = score, node
        node = chosen
        return cluster.choice_for(node, pod, tightest_share(cluster.group_of(node).gpus, pod))
