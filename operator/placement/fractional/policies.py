"""The one interface of the fractional-sharing track's placement policies.

A policy is online: ``choose`` looks at the cluster as it is and names the
node and GPUs for one arriving pod, or returns ``None`` when the pod fits
nowhere.  It does not mutate the cluster; the caller applies the choice with
:meth:`FractionalCluster.place`.

Policies work on node *groups* (nodes with identical free resources): every
distinct state is scored once per pod class, and a score that depends on the
state alone is kept in the group's memo for later pods of the same class.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import count
from typing import Protocol

from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import (
    MILLI,
    Choice,
    FractionalCluster,
    GpuState,
    Group,
    PodSpec,
    gpus_fit,
)


class FractionalPolicy(Protocol):
    """Places one arriving pod: a :class:`Choice`, or ``None`` if it fits nowhere."""

    name: str

    def choose(self, cluster: FractionalCluster, pod: PodSpec) -> Choice | None: ...


PolicyFactory = Callable[[FragMeasure, random.Random], FractionalPolicy]

_TOKENS = count()


def memo_token() -> int:
    """A process-unique key prefix for a policy's entries in :attr:`Group.memo`."""
    return next(_TOKENS)


def feasible_groups(cluster: FractionalCluster, pod: PodSpec) -> list[Group]:
    """Groups whose nodes can host ``pod`` now (model, CPU, memory, GPU shares)."""
    cpu, mem, num, milli, spec = (
        pod.cpu_milli,
        pod.memory_mib,
        pod.num_gpu,
        pod.gpu_milli,
        pod.gpu_spec,
    )
    out: list[Group] = []
    for g in cluster.groups.values():
        if g.cpu_left < cpu or g.mem_left < mem:
            continue
        if num:
            gpus = g.gpus
            if len(gpus) < num or gpus[num - 1] < milli:
                continue
            if spec is not None and g.model not in spec:
                continue
        out.append(g)
    return out


def tightest_share(gpus: GpuState, pod: PodSpec) -> int:
    """Free share of the GPU a best-fit choice uses: the smallest one that fits
    a sharing pod; a whole GPU otherwise (0 for a pod without GPUs)."""
    if pod.num_gpu == 0:
        return 0
    if pod.gpu_milli == MILLI:
        return MILLI
    best = MILLI
    for g in gpus:
        if pod.gpu_milli <= g < best:
            best = g
    return best


def first_in_order(groups: Sequence[Group]) -> int:
    """The node of ``groups`` that comes first in the cluster's node order.

    This is how FGD's simulator breaks ties between equally scored nodes: its
    scheduler takes the first best node of a list whose order is fixed for a
    run (and shuffled between seeds), which favours the same nodes again and
    again, i.e. packs.
    """
    return min(g.first for g in groups)


def pick_member(groups: Sequence[Group], rng: random.Random) -> int:
    """A node drawn uniformly from the union of ``groups``."""
    total = sum(len(g.members) for g in groups)
    r = rng.randrange(total)
    for g in groups:
        n = len(g.members)
        if r < n:
            for node in g.members:
                if r == 0:
                    return node
                r -= 1
        r -= n
    raise AssertionError("unreachable: r < total")


def fits_somewhere(cluster: FractionalCluster, pod: PodSpec) -> bool:
    return any(
        g.cpu_left >= pod.cpu_milli
        and g.mem_left >= pod.memory_mib
        and pod.accepts(g.model)
        and gpus_fit(g.gpus, pod.num_gpu, pod.gpu_milli)
        for g in cluster.groups.values()
    )
