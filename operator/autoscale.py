"""The autoscaler's decision: observed load in, the request rate to plan for out.

Pure: no I/O, no clock (the caller passes ``now``), no controller state.  The controller
keeps one :class:`ScalerState` per ``Auto`` job, feeds it every aggregated observation
(:class:`JobLoad`) and, when :func:`decide` returns a :class:`ScaleDecision`, plans the
job for its ``planned_rps`` (the engine's incremental path scales out, possibly
re-slicing free GPUs; the revalidation phase gives back replicas the smaller demand no
longer needs).

The rule follows the HorizontalPodAutoscaler's conventions, on capacity rather than on a
replica count (with MIG re-slicing one larger instance may replace several small ones):

1. *Recommendation*: ``offered / target utilization``.  When the p99 the agents see
   reaches :data:`P99_PRESSURE` of the SLO (or the job is saturated - the agents served
   less than was offered over their window, or :data:`QUEUE_PER_REPLICA` requests per
   replica wait at them - while the offered rate is below the plan: the estimate is too
   optimistic), the recommendation is at least :data:`PRESSURE_STEP` times the capacity
   planned now.  (A request or two waiting at one scrape is no pressure: Poisson arrivals
   queue for a moment at any utilization.)  Latency pressure
   counts only once the previous change is realised (the placement serves the planned
   rate) and :data:`PRESSURE_COOLDOWN_S` has passed, so replicas that are still starting
   do not compound into a runaway.  Clamped to ``[minRequestsPerSecond,
   maxRequestsPerSecond]`` and to at least :data:`MIN_RPS`.
2. *Stabilization*: scale out to the lowest recommendation of the scale-up window, scale
   in to the highest of the scale-down window (each window includes this one).
3. *Tolerance*: changes within :data:`TOLERANCE` of the plan are ignored.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from conspirator.api.v1alpha1 import Scaling, ScalingMode

TOLERANCE = 0.1
"""Relative change of the recommendation below which nothing is done (HPA's default)."""
P99_PRESSURE = 0.9
"""Share of the SLO at which the observed p99 counts as latency pressure."""
PRESSURE_STEP = 1.5
"""Under latency pressure, recommend at least this times the capacity planned now."""
PRESSURE_COOLDOWN_S = 60.0
"""Seconds after a change before latency pressure may scale out again."""
QUEUE_PER_REPLICA = 4
"""Requests waiting at the agents per ready replica that mean the replicas never idle."""
UNMET = 1.05
"""Offered above served by this factor over the window: the capacity does not keep up."""
MIN_RPS = 1.0
"""The smallest rate a job is planned for (one replica)."""


@dataclass(frozen=True, slots=True)
class JobLoad:
    """The load of one job, summed over the agents that reported it."""

    offered_rps: float
    served_rps: float
    errors_rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    outstanding: int = 0
    waiting: int = 0
    window_s: float = 0.0
    agents: int = 1
    replicas: int = 0
    """Ready replicas at the agents (0: not reported)."""

    @property
    def queueing(self) -> bool:
        """A queue of :data:`QUEUE_PER_REPLICA` requests or more per ready replica at the
        scrape: the replicas are busy all the time (a moment's Poisson queue is shorter)."""
        return self.replicas > 0 and self.waiting >= QUEUE_PER_REPLICA * self.replicas

    @property
    def saturated(self) -> bool:
        """Short of capacity over the window: more offered than served, or queueing."""
        return self.offered_rps > self.served_rps * UNMET or self.queueing


@dataclass(slots=True)
class ScalerState:
    """What the autoscaler remembers of one job."""

    planned_rps: float
    last_change: float | None = None
    history: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, recommendation), oldest first, within the longer window."""

    @classmethod
    def start(cls, planned_rps: float, now: float) -> ScalerState:
        """A fresh state (a new job, or an operator that restarted): the current plan is
        the first recommendation, so scale-in waits a whole window either way."""
        s = cls(planned_rps=planned_rps)
        s.history.append((now, planned_rps))
        return s


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """A change of the rate the job is planned for, with the figures behind it."""

    planned_rps: float
    previous_rps: float
    recommended_rps: float
    direction: str
    """``up`` or ``down``."""
    message: str

    @property
    def reason(self) -> str:
        """The Event reason."""
        return "ScaledOut" if self.direction == "up" else "ScaledIn"


def recommendation(scaling: Scaling, slo_ms: float, load: JobLoad, state: ScalerState,
                   realised: bool, now: float) -> tuple[float, str]:
    """Step 1 of the module docstring: the rate to plan for now, and why (text)."""
    target = scaling.target_utilization_percent / 100.0
    rec = load.offered_rps / target
    why = (f"offered {load.offered_rps:.1f} req/s at a {scaling.target_utilization_percent}% "
           f"target")
    cooled = state.last_change is None or now - state.last_change >= PRESSURE_COOLDOWN_S
    pressure = ""
    if load.p99_ms is not None and load.p99_ms >= P99_PRESSURE * slo_ms:
        pressure = f"p99 {load.p99_ms:.1f} ms >= {P99_PRESSURE:.0%} of the {slo_ms:g} ms SLO"
    elif load.saturated and load.offered_rps < state.planned_rps * target:
        pressure = (f"{load.served_rps:.1f} of {load.offered_rps:.1f} req/s served, "
                    f"{load.waiting} queued for {load.replicas} replica(s), below the planned "
                    f"{state.planned_rps:.1f} req/s")
    if pressure and realised and cooled:
        stepped = state.planned_rps * PRESSURE_STEP
        if stepped > rec:
            rec = stepped
            why = f"{pressure}: {PRESSURE_STEP:g}x the planned capacity"
    if scaling.min_requests_per_second is not None and rec < scaling.min_requests_per_second:
        rec, why = scaling.min_requests_per_second, f"{why}, raised to minRequestsPerSecond"
    if scaling.max_requests_per_second is not None and rec > scaling.max_requests_per_second:
        rec, why = scaling.max_requests_per_second, f"{why}, capped at maxRequestsPerSecond"
    return max(MIN_RPS, rec), why


def decide(scaling: Scaling, slo_ms: float, load: JobLoad, state: ScalerState, now: float,
           realised: bool = True) -> ScaleDecision | None:
    """Record this observation in ``state`` and return the change to make, if any.

    ``realised``: the placement serves the rate planned now (no scale-out in flight).
    ``state.planned_rps`` and ``state.last_change`` are updated when a change is returned.
    """
    if scaling.mode is not ScalingMode.AUTO:
        return None
    rec, why = recommendation(scaling, slo_ms, load, state, realised, now)
    up_w = float(scaling.scale_up_stabilization_seconds)
    down_w = float(scaling.scale_down_stabilization_seconds)
    state.history.append((now, rec))
    keep = max(up_w, down_w)
    while state.history and state.history[0][0] < now - keep:
        state.history.popleft()
    up = min(r for t, r in state.history if t >= now - up_w) if up_w > 0 else rec
    down = max(r for t, r in state.history if t >= now - down_w) if down_w > 0 else rec
    old = state.planned_rps
    new: float | None = None
    direction = ""
    if up > old * (1.0 + TOLERANCE):
        new, direction = up, "up"
        window = (f" (lowest recommendation of the last {up_w:g} s)" if up_w else "")
    elif down < old * (1.0 - TOLERANCE):
        new, direction = down, "down"
        window = f" (highest recommendation of the last {down_w:g} s)"
    if new is None:
        return None
    new = _round(new)
    state.planned_rps = new
    state.last_change = now
    p99 = f", p99 {load.p99_ms:.1f} ms" if load.p99_ms is not None else ""
    message = (f"planned capacity {old:g} -> {new:g} req/s{window}: {why}; observed "
               f"{load.offered_rps:.1f} offered, {load.served_rps:.1f} served req/s{p99}, "
               f"{load.waiting} queued, over {load.agents} agent(s)")
    return ScaleDecision(new, old, rec, direction, message)


def _round(rps: float) -> float:
    """Three significant figures: the status and Events stay readable, and tiny noise does
    not make a new plan."""
    if rps <= 0:
        return rps
    digits = 2 - math.floor(math.log10(rps))
    return round(rps, digits) if digits > 0 else float(round(rps, digits))


__all__ = ["MIN_RPS", "P99_PRESSURE", "PRESSURE_COOLDOWN_S", "PRESSURE_STEP",
           "QUEUE_PER_REPLICA", "TOLERANCE", "UNMET",
           "JobLoad", "ScaleDecision", "ScalerState", "decide", "recommendation"]
