"""Time-varying request rates for the MIG track (``--demand-pattern``).

Every job of a workload keeps its declared ``demand_rps`` as its *base* rate; this
module turns it into an offered rate that is piecewise constant over a global grid
of steps of ``step_s`` seconds (step ``k`` covers ``[k * step_s, (k + 1) * step_s)``;
simulated time 0 is midnight).  A job's trace covers the steps its lifetime
overlaps.  Everything is drawn from ``random.Random`` seeded with the run's seed,
the pattern and the job id, so a seed gives every policy the same traces and a job's
trace does not depend on the other jobs.

``diurnal``
    ``base * (1 + A * cos(2 pi (t - peak) / 24 h)) * noise``, evaluated at the
    step's midpoint.  ``peak`` is the shared peak hour (14:00) plus a per-job
    jitter drawn uniformly in +-``phase_jitter_h`` (2 h); the amplitude ``A`` is
    drawn per job uniformly in ``amplitude`` (0.3-0.7); ``noise`` is log-normal
    per step with mean 1 (``exp(s Z - s^2 / 2)``, ``s = noise_sigma`` = 0.05).
    Over whole days the mean is the base rate.
``bursty``
    The base rate, plus bursts: burst starts are a Poisson process over the job's
    lifetime (``burst_rate_per_h`` = 0.25, one every 4 h on average), each burst
    multiplies the rate by a factor drawn uniformly in ``burst_multiplier`` (2-4)
    for an exponentially distributed duration (mean ``burst_mean_s`` = 30 min).
    A step's rate is the mean over the step (a burst covering a third of a step
    adds a third of its extra rate); overlapping bursts take the largest factor.
``static``
    No trace: the job's declared rate, all the time (the static track).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from conspirator.operator.simulator.mig_inputs import JobEvent

PATTERNS = ("static", "diurnal", "bursty")
DAY_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class DemandSpec:
    """The generator's parameters (defaults documented in docs/mig-track.md)."""

    pattern: str = "static"
    step_s: float = 300.0
    peak_hour: float = 14.0
    phase_jitter_h: float = 2.0
    amplitude: tuple[float, float] = (0.3, 0.7)
    noise_sigma: float = 0.05
    burst_rate_per_h: float = 0.25
    burst_multiplier: tuple[float, float] = (2.0, 4.0)
    burst_mean_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown demand pattern {self.pattern!r}; known: "
                             f"{', '.join(PATTERNS)}")
        if not self.step_s > 0:
            raise ValueError(f"the demand step must be > 0 s, got {self.step_s}")


@dataclass(frozen=True, slots=True)
class DemandTrace:
    """One job's offered rate: ``rates[i]`` over global step ``first_step + i``."""

    job_id: str
    base_rps: float
    step_s: float
    first_step: int
    rates: tuple[float, ...]

    def step_of(self, t: float) -> int:
        return int(t // self.step_s)

    def rate_in_step(self, k: int) -> float:
        """The rate over global step ``k`` (clamped to the job's first and last steps)."""
        i = min(max(k - self.first_step, 0), len(self.rates) - 1)
        return self.rates[i]

    def rate_at(self, t: float) -> float:
        return self.rate_in_step(self.step_of(t))

    @property
    def peak_rps(self) -> float:
        return max(self.rates)

    @property
    def mean_rps(self) -> float:
        return sum(self.rates) / len(self.rates)


def _steps(ev: JobEvent, step_s: float) -> range:
    first = int(ev.arrival_s // step_s)
    end = ev.arrival_s + ev.duration_s
    last = max(first, math.ceil(end / step_s) - 1)
    return range(first, last + 1)


def _diurnal(ev: JobEvent, spec: DemandSpec, rng: random.Random) -> list[float]:
    amp = rng.uniform(*spec.amplitude)
    peak_s = (spec.peak_hour + rng.uniform(-spec.phase_jitter_h, spec.phase_jitter_h)) * 3600.0
    s = spec.noise_sigma
    out = []
    for k in _steps(ev, spec.step_s):
        mid = (k + 0.5) * spec.step_s
        wave = 1.0 + amp * math.cos(2.0 * math.pi * (mid - peak_s) / DAY_S)
        noise = math.exp(rng.gauss(0.0, s) - s * s / 2.0) if s > 0 else 1.0
        out.append(ev.job.demand_rps * wave * noise)
    return out


def bursts(ev: JobEvent, spec: DemandSpec, rng: random.Random
           ) -> list[tuple[float, float, float]]:
    """``(start, end, factor)`` of the bursts of one job, in time order."""
    out: list[tuple[float, float, float]] = []
    rate = spec.burst_rate_per_h / 3600.0
    if rate <= 0:
        return out
    t = ev.arrival_s
    end = ev.arrival_s + ev.duration_s
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        factor = rng.uniform(*spec.burst_multiplier)
        out.append((t, t + rng.expovariate(1.0 / spec.burst_mean_s), factor))


def _bursty(ev: JobEvent, spec: DemandSpec, rng: random.Random) -> list[float]:
    found = bursts(ev, spec, rng)
    out = []
    for k in _steps(ev, spec.step_s):
        lo, hi = k * spec.step_s, (k + 1) * spec.step_s
        # Piecewise: the largest factor over each part of the step, averaged.
        cuts = sorted({lo, hi, *(min(max(x, lo), hi) for b in found for x in b[:2])})
        extra = 0.0
        for a, b in itertools.pairwise(cuts):
            mid = (a + b) / 2.0
            f = max((fac for s, e, fac in found if s <= mid < e), default=1.0)
            extra += (f - 1.0) * (b - a)
        out.append(ev.job.demand_rps * (1.0 + extra / spec.step_s))
    return out


def job_rng(seed: int, pattern: str, job_id: str) -> random.Random:
    return random.Random(f"demand/{seed}/{pattern}/{job_id}")


def trace_for(ev: JobEvent, spec: DemandSpec, seed: int) -> DemandTrace:
    rng = job_rng(seed, spec.pattern, ev.job.id)
    if spec.pattern == "diurnal":
        rates = _diurnal(ev, spec, rng)
    elif spec.pattern == "bursty":
        rates = _bursty(ev, spec, rng)
    else:
        rates = [ev.job.demand_rps] * len(_steps(ev, spec.step_s))
    return DemandTrace(ev.job.id, ev.job.demand_rps, spec.step_s,
                       int(ev.arrival_s // spec.step_s), tuple(round(r, 3) for r in rates))


def generate_traces(events: Sequence[JobEvent], spec: DemandSpec, seed: int
                    ) -> dict[str, DemandTrace]:
    """Job id -> its trace, for every job of ``events``."""
    return {ev.job.id: trace_for(ev, spec, seed) for ev in events}
