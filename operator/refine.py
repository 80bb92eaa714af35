"""Learned profiles: what a replica really serves refines ``ModelProfile.status.observed``.

Pure: samples in, entries out.  A *sample* is the throughput one replica achieved over an
agent's window when that says something about its capacity (:func:`is_sample`): the job
was saturated all through the window (the agent served less than was offered, or a queue
of several requests per replica waited at it, at every scrape for at least a window: what
a replica served is what it can serve), or the replica served more than its entry says
(it can do at least that much, saturated or not).  A window that served below the entry
without saturation says nothing - the replica may simply have had little to do - and is
not a sample.

Samples are kept per (model, GPU model, MIG profile, batch) - the entry the plan used
for the replica.  The refined throughput is the **median** of the last
:data:`WINDOW` samples, written once there are :data:`MIN_SAMPLES`, and only when it
differs from the entry in force by more than :data:`MIN_CHANGE`: one outlier cannot
move a median of three or more, and noise below a few percent does not re-plan the
cluster.  The entry's p99 latency is kept from the entry it refines (the agents'
latency includes queueing, not the batch latency the table means).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

WINDOW = 9
"""Samples the median is taken over."""
MIN_SAMPLES = 3
"""Samples needed before an entry is written."""
MIN_CHANGE = 0.05
"""Relative change below which the entry is not rewritten."""

EntryKey = tuple[str, str, str, int]
"""(model, GPU model, MIG profile, batch size)."""


@dataclass(slots=True)
class Samples:
    """The recent samples of one entry, and how many were ever taken.

    Capacity samples (saturated windows) and lower bounds (unsaturated windows that beat
    the entry) are kept apart: a lower bound says "at least", so it must not pull the
    median of real capacity measurements down."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    bounds: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    total: int = 0

    def add(self, rps: float, capacity: bool = True) -> None:
        if rps > 0:
            (self.recent if capacity else self.bounds).append(rps)
            self.total += 1

    def estimate(self) -> float | None:
        """The median of the recent capacity samples once there are enough, else the median
        of the recent lower bounds once there are enough."""
        for d in (self.recent, self.bounds):
            if len(d) >= MIN_SAMPLES:
                return statistics.median(d)
        return None


@dataclass(frozen=True, slots=True)
class Refinement:
    """One ``status.observed`` entry to write."""

    key: EntryKey
    throughput: float
    p99_latency_ms: float
    samples: int
    time: datetime
    previous: float
    """The throughput in force before (spec, defaults or an older observation)."""


@dataclass(slots=True)
class Refiner:
    """Samples by entry; :meth:`refinements` says which entries to rewrite."""

    samples: dict[EntryKey, Samples] = field(default_factory=dict)

    def add(self, key: EntryKey, rps: float, capacity: bool = True) -> None:
        self.samples.setdefault(key, Samples()).add(rps, capacity)

    def refinements(self, in_force: dict[EntryKey, tuple[float, float]],
                    now: datetime) -> list[Refinement]:
        """Entries whose estimate differs from ``in_force`` (key -> (throughput, p99 ms))
        by more than :data:`MIN_CHANGE`.  Keys absent from ``in_force`` are skipped: an
        entry is refined, never invented (its latency would be unknown)."""
        out = []
        for key, s in sorted(self.samples.items()):
            est = s.estimate()
            cur = in_force.get(key)
            if est is None or cur is None:
                continue
            thr, lat = cur
            if abs(est - thr) <= MIN_CHANGE * thr:
                continue
            out.append(Refinement(key, round(est, 3), lat, s.total, now, thr))
        return out

    def forget(self, keys: Iterable[EntryKey]) -> None:
        for k in keys:
            self.samples.pop(k, None)


def is_sample(rps: float, in_force: float | None, saturated: bool) -> bool:
    """Whether a replica's window throughput ``rps`` measures its capacity (module doc);
    ``saturated``: the job was short of capacity (``JobLoad.saturated``)."""
    if rps <= 0:
        return False
    if in_force is not None and rps > in_force * (1.0 + MIN_CHANGE):
        return True
    return saturated


__all__ = ["MIN_CHANGE", "MIN_SAMPLES", "WINDOW", "EntryKey", "Refinement", "Refiner",
           "Samples", "is_sample"]
