"""The load the DPU agents report, as the operator uses it (pure: values in, values out).

An :class:`AgentReport` is one agent's scrape: per job the window's figures and per
replica the throughput it achieved.  :func:`aggregate` sums a job's figures over the
agents that serve it (a job's replicas may sit behind several agents; each agent
dispatches only to its own node's replicas), taking the worst agent's latency.
:func:`to_status` makes the ``status.observed`` value and :func:`worth_writing` decides
whether a new one is worth a status write (a 1,000-node cluster's jobs would otherwise
patch their status on every scrape).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from conspirator.api.v1alpha1 import ObservedLoad
from conspirator.operator.autoscale import JobLoad

REWRITE_CHANGE = 0.1
"""Relative change of a rate or of p99 that is worth a status write."""
REWRITE_AFTER_S = 60.0
"""A status older than this is rewritten anyway (``observed.time`` stays fresh)."""


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One replica's window at one agent."""

    job: str
    """Job key, ``namespace/name``."""
    replica: str
    """The replica's identity at the agent (see :func:`replica_slot`)."""
    throughput_rps: float
    outstanding: int = 0
    pod: str = ""
    """``namespace/name`` of the worker pod, where the node daemon identified it."""


@dataclass(frozen=True, slots=True)
class AgentReport:
    """One agent's scrape."""

    node: str
    jobs: dict[str, JobLoad] = field(default_factory=dict)
    replicas: tuple[ReplicaSample, ...] = ()


def aggregate(reports: Iterable[AgentReport]) -> dict[str, JobLoad]:
    """Each job's load over every agent that reported it."""
    parts: dict[str, list[JobLoad]] = {}
    for r in reports:
        for key, load in r.jobs.items():
            parts.setdefault(key, []).append(load)
    out: dict[str, JobLoad] = {}
    for key, loads in parts.items():
        p50 = [x.p50_ms for x in loads if x.p50_ms is not None]
        p99 = [x.p99_ms for x in loads if x.p99_ms is not None]
        out[key] = JobLoad(
            offered_rps=sum(x.offered_rps for x in loads),
            served_rps=sum(x.served_rps for x in loads),
            errors_rps=sum(x.errors_rps for x in loads),
            p50_ms=max(p50) if p50 else None,
            p99_ms=max(p99) if p99 else None,
            outstanding=sum(x.outstanding for x in loads),
            waiting=sum(x.waiting for x in loads),
            window_s=max(x.window_s for x in loads),
            agents=sum(x.agents for x in loads),
            replicas=sum(x.replicas for x in loads),
        )
    return out


def to_status(load: JobLoad, now: datetime) -> ObservedLoad:
    def r(x: float) -> float:
        return round(x, 2)

    return ObservedLoad(
        offeredRPS=r(load.offered_rps), servedRPS=r(load.served_rps),
        errors_per_second=r(load.errors_rps),
        p50_latency_ms=None if load.p50_ms is None else r(load.p50_ms),
        p99_latency_ms=None if load.p99_ms is None else r(load.p99_ms),
        outstanding=load.outstanding, waiting=load.waiting,
        window_seconds=r(load.window_s), agents=load.agents, time=now)


def worth_writing(old: ObservedLoad | None, new: ObservedLoad) -> bool:
    """Whether ``new`` differs enough from the status's ``old`` to write it."""
    if old is None:
        return True
    if (new.time - old.time).total_seconds() >= REWRITE_AFTER_S:
        return True
    if (old.waiting > 0) != (new.waiting > 0) or (old.errors_per_second > 0) != \
            (new.errors_per_second > 0) or old.agents != new.agents:
        return True
    pairs = [(old.offered_rps, new.offered_rps), (old.served_rps, new.served_rps),
             (old.p99_latency_ms, new.p99_latency_ms)]
    for a, b in pairs:
        if (a is None) != (b is None):
            return True
        if a is not None and b is not None and abs(b - a) > REWRITE_CHANGE * max(a, 1e-9):
            return True
    return False


__all__ = ["REWRITE_AFTER_S", "REWRITE_CHANGE", "AgentReport", "ReplicaSample", "aggregate",
           "to_status", "worth_writing"]
