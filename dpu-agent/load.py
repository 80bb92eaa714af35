"""The load the agent observes, per job and per replica (issue 15): what arrives, what is
answered, what fails, how long it takes, and what each replica achieves.

The request path only bumps plain integers and one bucket of a fixed latency histogram
(:class:`JobLoad`; the replica's counters live on its handle): no lock, no
prometheus-client call, O(1) per request (a ``bisect`` over the fixed bucket bounds).
Windowed figures come from **snapshots** of those cumulative counters, taken by the
agent's sweeper once per slice (:meth:`JobLoad.tick`, every ``slice_s`` seconds): the
window's counts are the counters now less the oldest snapshot still inside the window,
so reading them costs nothing on the request path either.  The window therefore covers
between ``window_s - slice_s`` and ``window_s`` seconds (less while the job is younger),
and every figure says which span it covers.

Latency is measured from a request's arrival at the agent (its admission: the header of
a TCP request, the STAGED frame of a one-sided one) to its answer being handed to the
client's connection (the write follows at the end of the same event-loop batch).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

#: Upper bounds (seconds) of the latency buckets: 2^(1/4) steps from 10 us to about 168 s
#: (a percentile read from them is within 19% of the true value); a last bucket takes
#: the rest.  ``bisect_left(BOUNDS, x)`` is the bucket of ``x`` (``x <= bound``, the
#: Prometheus ``le`` rule).
BOUNDS: tuple[float, ...] = tuple(1e-5 * 2 ** (i / 4) for i in range(97))
NBUCKETS = len(BOUNDS) + 1
#: The bounds exposed as a Prometheus histogram: every fourth (powers of two from 10 us).
EXPOSED_BUCKETS: tuple[int, ...] = tuple(range(0, len(BOUNDS), 4))

DEFAULT_WINDOW_S = 60.0
DEFAULT_SLICE_S = 5.0

__all__ = ["BOUNDS", "EXPOSED_BUCKETS", "NBUCKETS", "JobLoad", "Snapshot", "WindowView",
           "bucket_of", "percentile"]


def bucket_of(seconds: float) -> int:
    return bisect_left(BOUNDS, seconds)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A job's cumulative counters at time ``t`` (monotonic seconds)."""

    t: float
    requests: int
    responses: int
    errors: int
    hist: tuple[int, ...]
    completed: dict[int, int]  # buffer id -> completions of that replica so far


@dataclass(frozen=True, slots=True)
class WindowView:
    """What the window says about a job: counts over ``span_s`` seconds."""

    span_s: float
    requests: int
    responses: int
    errors: int
    hist: tuple[int, ...]
    base: Snapshot

    def rate(self, count: int) -> float:
        return count / self.span_s if self.span_s > 0 else 0.0


class JobLoad:
    """One job's cumulative counters, its latency histogram and its snapshot ring.

    Written by the event loop only; read by the metrics thread (plain ints and a tuple
    replaced whole, so a reader sees a consistent ring)."""

    __slots__ = ("dropped", "errors", "hist", "latency_sum", "requests", "responses",
                 "ring", "slice_s", "window_s")

    def __init__(self, now: float, window_s: float = DEFAULT_WINDOW_S,
                 slice_s: float = DEFAULT_SLICE_S) -> None:
        if not 0 < slice_s <= window_s:
            raise ValueError(f"the slice ({slice_s} s) must be positive and at most the "
                             f"window ({window_s} s)")
        self.window_s = window_s
        self.slice_s = slice_s
        self.requests = 0  # every request of the job the agent received (refusals too)
        self.responses = 0  # answered with a RESPONSE
        self.errors = 0  # answered with an ERROR
        self.dropped = 0  # finished after their client had gone: nobody to answer
        self.hist = [0] * NBUCKETS  # latency of the responses, cumulative
        self.latency_sum = 0.0
        self.ring: tuple[Snapshot, ...] = (Snapshot(now, 0, 0, 0, (0,) * NBUCKETS, {}),)

    def record(self, seconds: float) -> None:
        """One response's latency (the responses counter is the caller's)."""
        self.hist[bisect_left(BOUNDS, seconds)] += 1
        self.latency_sum += seconds

    def tick(self, now: float, completed: dict[int, int]) -> None:
        """Take a snapshot if the last one is a slice old (the sweeper's call)."""
        ring = self.ring
        if now - ring[-1].t < self.slice_s:
            return
        snap = Snapshot(now, self.requests, self.responses, self.errors, tuple(self.hist),
                        completed)
        keep = [s for s in ring if s.t >= now - self.window_s]
        self.ring = (*keep, snap)

    def base(self, now: float) -> Snapshot:
        """The oldest snapshot inside the window (the newest one if all are older)."""
        ring = self.ring
        for s in ring:
            if s.t >= now - self.window_s:
                return s
        return ring[-1]

    def window(self, now: float) -> WindowView:
        b = self.base(now)
        hist = tuple(x - y for x, y in zip(self.hist, b.hist, strict=True))
        return WindowView(max(now - b.t, 0.0), self.requests - b.requests,
                          self.responses - b.responses, self.errors - b.errors, hist, b)


def percentile(hist: tuple[int, ...] | list[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of a bucketed distribution, interpolated
    geometrically inside its bucket; None when the histogram is empty."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= rank:
            frac = min(max((rank - seen) / n, 0.0), 1.0)
            if i >= len(BOUNDS):  # beyond the last bound: say the last bound
                return BOUNDS[-1]
            hi = BOUNDS[i]
            lo = BOUNDS[i - 1] if i else hi / 2 ** 0.25
            return float(lo * math.exp(frac * math.log(hi / lo)))
        seen += n
    return BOUNDS[-1]  # pragma: no cover - the loop always reaches the rank
