"""The load a DPU agent observes, as its Prometheus endpoint says it: the metric names (the
agent's ``dpu-agent/metrics.py`` exports them) and a pure parser from one agent's text
exposition to typed per-job and per-replica observations (issue 15).

The operator scrapes every agent's ``/metrics`` (plain HTTP, as Prometheus does; the agent
holds no API token) and reads it with :func:`parse_agent_metrics`::

    obs = parse_agent_metrics(text)
    for key, job in obs.jobs.items():           # "namespace/name"
        job.offered_rps, job.served_rps, job.p99_ms, job.window_s
        for r in job.replicas:                  # one per published input buffer
            r.pod, r.replica, r.devices, r.throughput_rps, r.outstanding, r.state

A replica is named by its worker **pod** (``replica`` label: the pod's name; ``pod``:
``namespace/name`` as the node daemon found it behind the registration's PID, empty with
the stand-in registry, where ``replica`` is the name the worker claimed), its
``pod_uid``, and the **devices** the kubelet gave the pod (the device ids of
``InferenceJob.status.replicas[].deviceID``, which name the reservation); ``buffer`` is
the node-local buffer id (it changes when the worker registers again).

This module is shared core: it imports no component (the operator uses it without the
agent) and nothing beyond ``prometheus_client``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

PREFIX = "conspirator_agent_"

# Per job: labels node, job.
JOB_REQUESTS = "conspirator_agent_job_requests"  # counter (exposed with _total)
JOB_RESPONSES = "conspirator_agent_job_responses"  # counter
JOB_ERRORS = "conspirator_agent_job_errors"  # counter
JOB_DROPPED = "conspirator_agent_job_dropped"  # counter
JOB_OUTSTANDING = "conspirator_agent_job_outstanding_requests"  # gauge
JOB_WAITING = "conspirator_agent_job_waiting_requests"  # gauge
JOB_OFFERED_RPS = "conspirator_agent_job_offered_rps"  # gauge, over the window
JOB_SERVED_RPS = "conspirator_agent_job_served_rps"  # gauge, over the window
JOB_ERROR_RPS = "conspirator_agent_job_error_rps"  # gauge, over the window
JOB_P50 = "conspirator_agent_job_latency_p50_seconds"  # gauge, over the window
JOB_P99 = "conspirator_agent_job_latency_p99_seconds"  # gauge, over the window
JOB_WINDOW = "conspirator_agent_job_window_seconds"  # gauge: the span the window covers
JOB_LATENCY = "conspirator_agent_job_latency_seconds"  # histogram, cumulative
JOB_DRAINING = "conspirator_agent_job_draining_replicas"  # gauge
JOB_DRAINED = "conspirator_agent_job_drained_replicas"  # counter

# Per replica: labels node, job, replica, buffer.
REPLICA_RESPONSES = "conspirator_agent_replica_responses"  # counter
REPLICA_COMPLETIONS = "conspirator_agent_replica_completions"  # counter
REPLICA_OUTSTANDING = "conspirator_agent_replica_outstanding_requests"  # gauge
REPLICA_OUTSTANDING_BYTES = "conspirator_agent_replica_outstanding_bytes"  # gauge
REPLICA_THROUGHPUT = "conspirator_agent_replica_throughput_rps"  # gauge, over the window
REPLICA_WINDOW = "conspirator_agent_replica_window_seconds"  # gauge
REPLICA_WEIGHT = "conspirator_agent_replica_weight"  # gauge: the placement's estimate
REPLICA_INFO = "conspirator_agent_replica_info"  # gauge 1; + pod, pod_uid, devices
REPLICA_STATE = "conspirator_agent_replica_state"  # gauge 0/1 per state (a state set)

#: What a replica can be at the agent: taking requests; draining (no new request, its
#: in-flight ones being finished); drained (nothing left in flight, waiting for the
#: worker to go).
REPLICA_STATES = ("ready", "draining", "drained")

#: A sample every agent's endpoint has: how the parser knows it reads an agent.
AGENT_MARKER = "conspirator_agent_requests_total"


class MalformedMetricsError(ValueError):
    """The text is not a DPU agent's Prometheus exposition, or breaks its own rules."""


@dataclass(frozen=True, slots=True)
class ReplicaObservation:
    """One replica (one published input buffer) of a job, as its agent sees it."""

    job: str  # namespace/name
    replica: str  # the worker pod's name (or the name the worker claimed)
    buffer_id: int
    pod: str = ""  # namespace/name, where the node daemon identified the pod
    pod_uid: str = ""
    devices: tuple[str, ...] = ()  # the kubelet's device ids for the pod
    state: str = "ready"  # one of REPLICA_STATES
    throughput_rps: float = 0.0  # completions per second over window_s
    window_s: float = 0.0
    responses: int = 0
    completions: int = 0
    outstanding: int = 0  # requests in the replica's slots now
    outstanding_bytes: int = 0
    weight: float = 0.0


@dataclass(frozen=True, slots=True)
class JobObservation:
    """One job at one agent: counters since the agent started, rates and latency
    percentiles over the last ``window_s`` seconds, and its replicas."""

    job: str  # namespace/name
    node: str
    requests: int = 0
    responses: int = 0
    errors: int = 0
    dropped: int = 0
    offered_rps: float = 0.0
    served_rps: float = 0.0
    error_rps: float = 0.0
    outstanding: int = 0  # in flight at the job's replicas
    waiting: int = 0  # queued at the agent for a free slot
    p50_ms: float | None = None  # None: no response in the window
    p99_ms: float | None = None
    window_s: float = 0.0
    draining: int = 0  # replicas draining now
    drained_total: int = 0  # replicas that finished draining since the agent started
    replicas: tuple[ReplicaObservation, ...] = ()

    @property
    def namespace(self) -> str:
        return self.job.partition("/")[0]

    @property
    def name(self) -> str:
        return self.job.partition("/")[2]


@dataclass(frozen=True, slots=True)
class AgentObservation:
    """Everything one agent's endpoint says about its jobs."""

    node: str
    jobs: Mapping[str, JobObservation] = field(default_factory=dict)


_JOB_GAUGES: dict[str, str] = {
    f"{JOB_REQUESTS}_total": "requests", f"{JOB_RESPONSES}_total": "responses",
    f"{JOB_ERRORS}_total": "errors", f"{JOB_DROPPED}_total": "dropped",
    JOB_OUTSTANDING: "outstanding", JOB_WAITING: "waiting", JOB_OFFERED_RPS: "offered_rps",
    JOB_SERVED_RPS: "served_rps", JOB_ERROR_RPS: "error_rps", JOB_P50: "p50_ms",
    JOB_P99: "p99_ms", JOB_WINDOW: "window_s", JOB_DRAINING: "draining",
    f"{JOB_DRAINED}_total": "drained_total",
}
_REPLICA_VALUES: dict[str, str] = {
    f"{REPLICA_RESPONSES}_total": "responses", f"{REPLICA_COMPLETIONS}_total": "completions",
    REPLICA_OUTSTANDING: "outstanding", REPLICA_OUTSTANDING_BYTES: "outstanding_bytes",
    REPLICA_THROUGHPUT: "throughput_rps", REPLICA_WINDOW: "window_s",
    REPLICA_WEIGHT: "weight",
}
_COUNTS = frozenset({"requests", "responses", "errors", "dropped", "outstanding", "waiting",
                     "draining", "drained_total", "completions", "outstanding_bytes"})
_MS = frozenset({"p50_ms", "p99_ms"})


def _job_key(labels: Mapping[str, str], sample: str) -> str:
    job = labels.get("job")
    if job is None:
        raise MalformedMetricsError(f"{sample} has no job label")
    ns, sep, name = job.partition("/")
    if not (sep and ns and name) or "/" in name:
        raise MalformedMetricsError(f"{sample}: job label {job[:80]!r} is not namespace/name")
    return job


def _value(field_name: str, value: float, sample: str) -> float | int:
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise MalformedMetricsError(f"{sample}: {value} is not a non-negative finite number")
    if field_name in _COUNTS:
        if value != int(value):
            raise MalformedMetricsError(f"{sample}: a count must be whole, got {value}")
        return int(value)
    if field_name in _MS:
        return value * 1000.0
    return value


def _buffer(labels: Mapping[str, str], sample: str) -> int:
    raw = labels.get("buffer", "")
    if not raw.isdigit() or not 0 < int(raw) <= 0xFFFF_FFFF:
        raise MalformedMetricsError(f"{sample}: buffer label {raw[:20]!r} is not a buffer id")
    return int(raw)


def parse_agent_metrics(text: str, *, node: str | None = None) -> AgentObservation:
    """One agent's ``/metrics`` text -> its jobs' observations.

    ``node`` (optional) is the node the caller scraped; a text naming another node is
    refused.  Raises :class:`MalformedMetricsError` for text that is not Prometheus text, not
    an agent's, or inconsistent (a job label that is not namespace/name, a count that is
    negative or not whole, two nodes, a replica without its buffer id, a duplicate series).
    """
    if not isinstance(text, str):
        raise MalformedMetricsError(f"expected the exposition as text, got {type(text).__name__}")
    try:
        samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise MalformedMetricsError(f"not Prometheus text exposition: {e}") from e
    return _observations(samples, node)


def _observations(samples: Iterable[Sample], node: str | None) -> AgentObservation:
    nodes: set[str] = set()
    jobs: dict[str, dict[str, Any]] = {}
    replicas: dict[tuple[str, int], dict[str, Any]] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    marker = False
    for s in samples:
        name, labels, value = s.name, s.labels, float(s.value)
        if not name.startswith(PREFIX):
            continue
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise MalformedMetricsError(f"duplicate series {name}{dict(labels)}")
        seen.add(key)
        if "node" in labels:
            nodes.add(labels["node"])
        if name == AGENT_MARKER:
            marker = True
        if name in _JOB_GAUGES:
            job = _job_key(labels, name)
            f = _JOB_GAUGES[name]
            jobs.setdefault(job, {})[f] = _value(f, value, name)
        elif name in _REPLICA_VALUES or name in (REPLICA_INFO, REPLICA_STATE):
            job = _job_key(labels, name)
            rep = replicas.setdefault((job, _buffer(labels, name)), {})
            if "replica" not in labels:
                raise MalformedMetricsError(f"{name} has no replica label")
            if rep.setdefault("replica", labels["replica"]) != labels["replica"]:
                raise MalformedMetricsError(f"buffer {labels['buffer']} of {job} has two replica "
                                       f"names")
            if name == REPLICA_INFO:
                rep["pod"] = labels.get("pod", "")
                rep["pod_uid"] = labels.get("pod_uid", "")
                devs = labels.get("devices", "")
                rep["devices"] = tuple(d for d in devs.split(",") if d)
            elif name == REPLICA_STATE:
                st = labels.get("state", "")
                if st not in REPLICA_STATES:
                    raise MalformedMetricsError(f"{name}: unknown state {st[:40]!r}")
                if value == 1:
                    if "state" in rep:
                        raise MalformedMetricsError(f"buffer {labels['buffer']} of {job} is in "
                                               f"two states")
                    rep["state"] = st
                elif value != 0:
                    raise MalformedMetricsError(f"{name}: a state is 0 or 1, got {value}")
            else:
                f = _REPLICA_VALUES[name]
                rep[f] = _value(f, value, name)
    if not marker:
        raise MalformedMetricsError(f"no {AGENT_MARKER}: not a DPU agent's /metrics")
    if len(nodes) > 1:
        raise MalformedMetricsError(f"one agent's text names several nodes: {sorted(nodes)}")
    found = next(iter(nodes), "")
    if node is not None and found != node:
        raise MalformedMetricsError(f"scraped node {node!r}, but the text is node {found!r}'s")
    by_job: dict[str, list[ReplicaObservation]] = {}
    for (job, bid), r in sorted(replicas.items()):
        jobs.setdefault(job, {})
        by_job.setdefault(job, []).append(ReplicaObservation(
            job=job, buffer_id=bid, **r))
    out = {job: JobObservation(job=job, node=found, replicas=tuple(by_job.get(job, ())),
                               **vals)
           for job, vals in sorted(jobs.items())}
    return AgentObservation(found, out)


__all__ = [
    "AGENT_MARKER", "REPLICA_STATES", "AgentObservation", "JobObservation", "MalformedMetricsError",
    "ReplicaObservation", "parse_agent_metrics",
]
