"""ParvaGPU's configurator and allocator (SC'24), re-implemented for comparison.

Follows the authors' C scheduler (``MunQ-Lee/ParvaGPU_SC24``, ``src/configurator.c``,
``src/allocator.c``) step by step:

* configurator, per model: over instance sizes 1, 2, 3, 4, 7, batches ascending and
  1..3 MPS processes (``MAX_NUM_PROC 3``), among segments with batch latency below
  ``SLO/2 * 0.9`` (SLO and rate read with ``atoi``, i.e. truncated to integers), the
  *optimal* one has the highest throughput per GPC (first wins ties), and per size the
  best per GPC is kept; ``floor(rate / T)`` optimal instances (one fewer when it divides
  exactly), then the remainder on the smallest size whose best segment covers it;
* allocator: the segments are queued by size and dequeued largest first; each goes to
  the GPU whose free GPCs exceed its size by the least (first such GPU; a 3-GPC one
  never next to a 3g at slice 4, a 1-GPC one never on a GPU holding two 3g), at the
  first free start of its size's list (7, 4: 0; 3: 4; 2: 0, 4, 2; 1: 0, 6, 4, 1, 2, 3, 5);
* optimisation: from the last GPU to the first, a GPU with at most 4 GPCs used is
  emptied and its segments' throughput re-served by 2- and 1-GPC segments (2-GPC ones
  first when one serves more than two 1-GPC ones), placed by the same allocator.

Like the original, the allocator tracks only which start slices are taken, not which
memory slices an instance covers, so it may emit layouts that MIG refuses (a 1g at
slice 1 beside a 2g at slice 0); :mod:`conspirator.operator.simulator.parvagpu_check`
says so when it does.  Two cases the C code leaves undefined are made explicit: a GPU
the best fit picks but whose start list is full is passed over for the next best, and
a remainder no size covers gets one more optimal instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from conspirator.operator.placement.segments import (
    Demand,
    PlacedSegment,
    Segment,
    SegmentPlan,
    SegmentTable,
)

SIZES: tuple[int, ...] = (1, 2, 3, 4, 7)
MAX_PROCESSES = 3
GPCS = 7
STARTS: dict[int, tuple[int, ...]] = {
    7: (0,), 4: (0,), 3: (4,), 2: (0, 4, 2), 1: (0, 6, 4, 1, 2, 3, 5),
}


@dataclass(slots=True)
class _Service:
    model: str
    optimal: Segment
    count: int
    last: Segment | None
    per_size: dict[int, Segment]


@dataclass(slots=True)
class _Gpu:
    usage: int = 0
    slots: dict[int, tuple[_Service, Segment]] = field(default_factory=dict)


def _configure(table: SegmentTable, d: Demand, mps: bool) -> _Service | None:
    rate = float(int(d.rate_rps))
    slo = float(int(d.slo_ms))
    best_per_gpc = 0.0
    optimal: Segment | None = None
    count = 0
    per_size: dict[int, Segment] = {}
    per_size_best: dict[int, float] = {}
    limit = MAX_PROCESSES if mps else 1
    points = sorted(table.points(d.model), key=lambda s: (SIZES.index(s.gpcs), s.batch,
                                                          s.processes))
    for s in points:
        if s.processes > limit or not s.batch_latency_ms < slo / 2 * 0.9:
            continue
        per_gpc = s.throughput_rps / s.gpcs
        if per_gpc > best_per_gpc:
            best_per_gpc, optimal = per_gpc, s
            count = math.floor(rate / s.throughput_rps)
            if math.fmod(rate, s.throughput_rps) == 0:
                count -= 1
        if per_gpc > per_size_best.get(s.gpcs, 0.0):
            per_size_best[s.gpcs] = per_gpc
            per_size[s.gpcs] = s
    if optimal is None or rate <= 0:
        return None
    rest = rate - optimal.throughput_rps * count
    last = next((per_size[g] for g in SIZES if g in per_size
                 and rest <= per_size[g].throughput_rps), None)
    if last is None:
        count += 1
    return _Service(d.model, optimal, count, last, per_size)


class _Allocator:
    def __init__(self) -> None:
        self.gpus: list[_Gpu] = []

    def _fits(self, gpu: _Gpu, size: int) -> bool:
        if GPCS - gpu.usage < size:
            return False
        sizes = {k: seg.gpcs for k, (_, seg) in gpu.slots.items()}
        if size == 3 and sizes.get(4) == 3:
            return False
        return not (size == 1 and sizes.get(0) == 3 and sizes.get(4) == 3)

    def place(self, svc: _Service, seg: Segment) -> None:
        size = seg.gpcs
        cands = [g for g in self.gpus if self._fits(g, size)]
        cands.sort(key=lambda g: GPCS - g.usage - size)  # stable: first GPU wins ties
        for gpu in cands:
            start = next((s for s in STARTS[size] if s not in gpu.slots), None)
            if start is not None:
                break
        else:
            gpu, start = _Gpu(), STARTS[size][0]
            self.gpus.append(gpu)
        gpu.slots[start] = (svc, seg)
        gpu.usage += size

    def drain(self, queue: list[tuple[_Service, Segment]]) -> None:
        for svc, seg in sorted(queue, key=lambda q: -q[1].gpcs):  # stable within a size
            self.place(svc, seg)


def _optimise(alloc: _Allocator, services: list[_Service]) -> None:
    owed = {s.model: 0.0 for s in services}
    for gpu in reversed(list(alloc.gpus)):
        if gpu.usage > 4:
            continue
        for start in range(GPCS):
            if start not in gpu.slots:
                continue
            svc, seg = gpu.slots.pop(start)
            gpu.usage -= seg.gpcs
            owed[svc.model] += seg.throughput_rps
            one, two = svc.per_size.get(1), svc.per_size.get(2)
            queue: list[tuple[_Service, Segment]] = []
            if one is None and two is None:
                continue
            if two is not None and (one is None or two.throughput_rps / 2 > one.throughput_rps):
                n2 = (math.ceil if one is None else math.floor)(owed[svc.model]
                                                                / two.throughput_rps)
                queue += [(svc, two)] * max(n2, 0)
                owed[svc.model] -= n2 * two.throughput_rps
            if one is not None:
                n1 = math.ceil(owed[svc.model] / one.throughput_rps)
                queue += [(svc, one)] * max(n1, 0)
                owed[svc.model] -= n1 * one.throughput_rps
            alloc.drain(queue)


def plan_parvagpu(table: SegmentTable, demands: list[Demand], mps: bool = True) -> SegmentPlan:
    """ParvaGPU's plan for one SLO set (``mps=False``: its ``NO_MPS`` build)."""
    services: list[_Service] = []
    unserved: list[str] = []
    for d in demands:
        svc = _configure(table, d, mps)
        if svc is None:
            unserved.append(d.model)
        else:
            services.append(svc)
    alloc = _Allocator()
    queue: list[tuple[_Service, Segment]] = []
    for svc in services:
        queue += [(svc, svc.optimal)] * svc.count
        if svc.last is not None:
            queue.append((svc, svc.last))
    alloc.drain(queue)
    _optimise(alloc, services)
    placed = [PlacedSegment(i, start, svc.model, seg)
              for i, gpu in enumerate(g for g in alloc.gpus if g.slots)
              for start, (svc, seg) in sorted(gpu.slots.items())]
    return SegmentPlan(tuple(placed), tuple(unserved))


__all__ = ["MAX_PROCESSES", "plan_parvagpu"]
