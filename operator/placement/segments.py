"""Segments: (MIG profile, batch size, MPS processes) and what each serves of a model.

A *segment* is one MIG instance running ``processes`` MPS processes of one model, each
batching ``batch`` requests (ParvaGPU's "triplet", SC'24).  A measured table gives, per
model, the throughput of *one process* and the batch latency at every (GPCs, batch,
processes) point; the instance serves ``processes`` times that (ParvaGPU's loader does
the same: ``trp = trp * num_proc``).

The rules of the comparison are ParvaGPU's (``shared/data/parvagpu/README.md``): a
segment may serve a model only when its batch latency is below ``0.9 * SLO / 2``
(:func:`admissible`), and a plan is valid when each model's segments sum to at least its
request rate.  For a fixed MIG size only the segment with the highest throughput matters
to a planner that minimises GPUs (the instance costs the same whatever runs in it):
:meth:`SegmentTable.best_per_size`.

GPCs map to A100-80GB profiles as :data:`A100_80GB_PROFILES` says (the profiled
instances were the 1g/2g/3g/4g/7g profiles without media extensions; ``1g.20gb`` has
the compute of ``1g.10gb`` and twice its memory slices, so a planner never gains by it).
Nothing here reads files: :mod:`conspirator.operator.simulator.parvagpu_inputs` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from conspirator.operator.placement.throughput import ThroughputRow, ThroughputTable

A100_80GB = "A100-80GB"

A100_80GB_PROFILES: Mapping[int, str] = {
    1: "1g.10gb", 2: "2g.20gb", 3: "3g.40gb", 4: "4g.40gb", 7: "7g.80gb",
}
"""ParvaGPU's ``Mig instance`` (GPCs) -> the A100-80GB MIG profile it was measured on."""

GPCS_OF_PROFILE: Mapping[str, int] = {v: k for k, v in A100_80GB_PROFILES.items()}

SLO_HEADROOM = 0.9
"""ParvaGPU's margin: a batch must finish within ``0.9 * SLO / 2``."""


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    """One measured point: ``processes`` MPS processes at ``batch`` on ``gpcs`` GPCs."""

    gpcs: int
    batch: int
    processes: int
    per_process_rps: float
    batch_latency_ms: float

    @property
    def throughput_rps(self) -> float:
        """What the instance serves: every process's throughput, summed."""
        return self.per_process_rps * self.processes

    @property
    def profile(self) -> str:
        return A100_80GB_PROFILES[self.gpcs]

    def describe(self) -> str:
        return f"{self.profile} b{self.batch} x{self.processes}"


def latency_bound_ms(slo_ms: float) -> float:
    """The batch latency a segment must stay below for a request SLO of ``slo_ms``."""
    return SLO_HEADROOM * slo_ms / 2.0


def admissible(seg: Segment, slo_ms: float) -> bool:
    """ParvaGPU's latency rule (strict, as its configurator compares)."""
    return seg.batch_latency_ms < latency_bound_ms(slo_ms)


def p99_equivalent_ms(batch_latency_ms: float) -> float:
    """The request latency the engine's tables carry for a measured batch latency.

    The engine admits a row when its latency is within the job's SLO; ``2 * L / 0.9``
    is within the SLO exactly when ``L`` is within ParvaGPU's ``0.9 * SLO / 2``.
    """
    return 2.0 * batch_latency_ms / SLO_HEADROOM


class SegmentTable:
    """Measured segments per model (points with no throughput, OOM in the profile, dropped)."""

    def __init__(self, points: Mapping[str, Iterable[Segment]]) -> None:
        self._points: dict[str, tuple[Segment, ...]] = {}
        for model, segs in points.items():
            kept = tuple(sorted(s for s in segs if s.per_process_rps > 0
                                and s.batch_latency_ms > 0))
            for s in kept:
                if s.gpcs not in A100_80GB_PROFILES or s.processes < 1 or s.batch < 1:
                    raise ValueError(f"{model}: invalid segment {s}")
            self._points[model] = kept

    @property
    def models(self) -> tuple[str, ...]:
        """Model names in alphabetical order (the column order of ParvaGPU's SLO files)."""
        return tuple(sorted(self._points))

    def limited(self, max_processes: int) -> SegmentTable:
        """The same table without segments of more than ``max_processes`` processes."""
        return SegmentTable({m: [s for s in segs if s.processes <= max_processes]
                             for m, segs in self._points.items()})

    def points(self, model: str) -> tuple[Segment, ...]:
        return self._points[model]

    def best_per_size(self, model: str, slo_ms: float, mps: bool = True) -> dict[int, Segment]:
        """Per GPC count, the admissible segment that serves the most (``mps=False``: one
        process only).  Ties go to fewer processes, then the smaller batch."""
        best: dict[int, Segment] = {}
        for s in self._points[model]:
            if not admissible(s, slo_ms) or (not mps and s.processes != 1):
                continue
            cur = best.get(s.gpcs)
            if cur is None or (s.throughput_rps, -s.processes, -s.batch) > (
                    cur.throughput_rps, -cur.processes, -cur.batch):
                best[s.gpcs] = s
        return best

    def find(self, model: str, gpcs: int, batch: int, processes: int) -> Segment | None:
        for s in self._points.get(model, ()):
            if (s.gpcs, s.batch, s.processes) == (gpcs, batch, processes):
                return s
        return None


def throughput_rows(table: SegmentTable) -> Iterator[ThroughputRow]:
    """The one-process segments as the engine's rows (A100-80GB; latency as
    :func:`p99_equivalent_ms`): the measured source next to the derived defaults.

    Rows carry no process count, so only ``processes == 1`` is exported; the segment
    planners read the :class:`SegmentTable` itself.
    """
    for model in table.models:
        for s in table.points(model):
            if s.processes == 1:
                yield ThroughputRow(model, A100_80GB, s.profile, s.batch,
                                    round(s.throughput_rps, 3),
                                    round(p99_equivalent_ms(s.batch_latency_ms), 3))


def throughput_table(table: SegmentTable) -> ThroughputTable:
    return ThroughputTable(throughput_rows(table))


@dataclass(frozen=True, slots=True)
class Demand:
    """One served model of an SLO set: request rate (req/s) and latency SLO (ms)."""

    model: str
    rate_rps: float
    slo_ms: float


@dataclass(frozen=True, slots=True)
class PlacedSegment:
    """A segment of a model placed on a GPU at a MIG start slice."""

    gpu: int
    start: int
    model: str
    segment: Segment


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """A plan for one SLO set: placed segments, and what the planner knows of it."""

    segments: tuple[PlacedSegment, ...]
    unserved: tuple[str, ...] = ()  # models the planner could not serve at all
    lower_bound: int = 0  # GPUs every plan needs (the solver's dual bound, rounded up)
    optimal: bool = False  # the planner proved no plan uses fewer GPUs

    @property
    def gpus(self) -> int:
        return len({s.gpu for s in self.segments})

    def served_rps(self, model: str) -> float:
        return sum(s.segment.throughput_rps for s in self.segments if s.model == model)


__all__ = [
    "A100_80GB",
    "A100_80GB_PROFILES",
    "GPCS_OF_PROFILE",
    "SLO_HEADROOM",
    "Demand",
    "PlacedSegment",
    "Segment",
    "SegmentPlan",
    "SegmentTable",
    "admissible",
    "latency_bound_ms",
    "p99_equivalent_ms",
    "throughput_rows",
    "throughput_table",
]
