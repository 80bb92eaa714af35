"""The agent's Prometheus metrics, read from its counters at scrape time.

The request path only bumps the plain integers of :class:`~.core.Stats` (no locks, no
prometheus-client calls per request); :class:`AgentCollector` turns them, the staging pool,
the published replicas and the observed load per job and per replica (``load.py``; the
names are :mod:`conspirator.observe`'s, whose parser reads them back) into
``conspirator_agent_*`` families when Prometheus scrapes.
:func:`serve` exposes them over HTTP, which is also what the chart's probes ask.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from conspirator import observe as names
from conspirator.dpu_agent.core import AgentCore
from conspirator.dpu_agent.load import BOUNDS, EXPOSED_BUCKETS, percentile
from conspirator.dpu_agent.staging import StagingPool
from conspirator.dpu_agent.state import JobState, ReplicaHandle

# Stats field -> (metric name without _total, help).  Counters.
COUNTERS: dict[str, tuple[str, str]] = {
    "requests": ("conspirator_agent_requests", "Requests received from clients"),
    "responses": ("conspirator_agent_responses", "Responses returned to clients"),
    "errors": ("conspirator_agent_errors",
               "Requests answered with an error (no replica, replica failed, timeout, ...)"),
    "dropped_no_session": ("conspirator_agent_dropped_responses",
                           "Answers whose client had gone (nobody to deliver to)"),
    "bytes_in": ("conspirator_agent_received_bytes", "Request payload bytes received"),
    "copy_bytes": ("conspirator_agent_copied_bytes",
                   "Bytes the copy engine moved into replicas' input buffers"),
    "connections": ("conspirator_agent_connections", "Client connections accepted"),
    "protocol_errors": ("conspirator_agent_protocol_errors",
                        "Connections closed for a malformed or unexpected frame"),
    "auth_failures": ("conspirator_agent_auth_failures",
                      "Handshakes refused (wrong token, unknown job or publisher)"),
}


class _Agent(Protocol):
    @property
    def core(self) -> AgentCore: ...

    @property
    def pool(self) -> StagingPool: ...


class AgentCollector(Collector):
    def __init__(self, agent: _Agent, node: str) -> None:
        self.agent = agent
        self.node = node

    def collect(self) -> Iterator[Metric]:
        core, pool = self.agent.core, self.agent.pool
        stats = core.stats
        for field, (name, text) in COUNTERS.items():
            c = CounterMetricFamily(name, text, labels=["node"])
            c.add_metric([self.node], float(getattr(stats, field)))
            yield c
        c = CounterMetricFamily("conspirator_agent_copy_seconds",
                                "Time inside the copy engine", labels=["node"])
        c.add_metric([self.node], stats.copy_ns / 1e9)
        yield c
        c = CounterMetricFamily("conspirator_agent_idle_poll_seconds",
                                "Busy polling that found nothing (--busy-poll-us): the agent's "
                                "CPU time less this is its busy time", labels=["node"])
        c.add_metric([self.node], stats.idle_poll_ns / 1e9)
        yield c
        g = GaugeMetricFamily("conspirator_agent_replicas",
                              "Replicas (published input buffers) the agent dispatches to, "
                              "by job", labels=["node", "job"])
        for job, state in sorted(core.jobs.items()):
            g.add_metric([self.node, job], float(len(state.replicas)))
        yield g
        g = GaugeMetricFamily("conspirator_agent_queued_requests",
                              "Requests waiting for a free replica slot, by job",
                              labels=["node", "job"])
        for job, state in sorted(core.jobs.items()):
            g.add_metric([self.node, job], float(len(state.queue)))
        yield g
        for name, text, value in (
                ("conspirator_agent_staging_bytes", "Staging memory in use", pool.in_use),
                ("conspirator_agent_staging_peak_bytes", "Most staging memory in use so far",
                 pool.peak_in_use),
                ("conspirator_agent_staging_budget_bytes", "Staging memory budget",
                 pool.budget)):
            g = GaugeMetricFamily(name, text, labels=["node"])
            g.add_metric([self.node], float(value))
            yield g
        # Thread safety: the loop thread changes these dicts; copying them is one C call.
        jobs = sorted(dict(core.jobs).items())
        # One instant for the jobs' and the replicas' windows: a replica's rate is then over
        # the same span as its job's (a slow scrape on a busy host once made them differ).
        now = time.monotonic()
        yield from job_families(self.node, jobs, now)
        yield from replica_families(self.node, [(name, sorted(dict(j.all_replicas()).items()))
                                                for name, j in jobs], now)


def job_families(node: str, jobs: list[tuple[str, JobState]], now: float) -> Iterator[Metric]:
    """The observed load per job (``load.py``): counters, gauges, the window."""
    lbl = ["node", "job"]
    fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "requests": CounterMetricFamily(names.JOB_REQUESTS, "Requests of the job the agent "
                                        "received (refused ones included)", labels=lbl),
        "responses": CounterMetricFamily(names.JOB_RESPONSES, "Requests of the job answered "
                                         "with a RESPONSE", labels=lbl),
        "errors": CounterMetricFamily(names.JOB_ERRORS, "Requests of the job answered with "
                                      "an ERROR (refusals, no replica, timeouts, ...)",
                                      labels=lbl),
        "dropped": CounterMetricFamily(names.JOB_DROPPED, "Requests of the job that finished "
                                       "after their client had gone", labels=lbl),
        "drained": CounterMetricFamily(names.JOB_DRAINED, "Replicas of the job that finished "
                                       "draining (nothing left in flight)", labels=lbl),
        "outstanding": GaugeMetricFamily(names.JOB_OUTSTANDING, "Requests in flight at the "
                                         "job's replicas", labels=lbl),
        "waiting": GaugeMetricFamily(names.JOB_WAITING, "Requests queued at the agent for a "
                                     "free replica slot", labels=lbl),
        "draining": GaugeMetricFamily(names.JOB_DRAINING, "Replicas of the job draining now "
                                      "(no new requests)", labels=lbl),
        "offered": GaugeMetricFamily(names.JOB_OFFERED_RPS, "Requests arriving per second "
                                     "over the window", labels=lbl),
        "served": GaugeMetricFamily(names.JOB_SERVED_RPS, "Responses per second over the "
                                    "window", labels=lbl),
        "error_rps": GaugeMetricFamily(names.JOB_ERROR_RPS, "Errors per second over the "
                                       "window", labels=lbl),
        "p50": GaugeMetricFamily(names.JOB_P50, "Median latency (arrival at the agent to "
                                 "answer) of the window's responses", labels=lbl),
        "p99": GaugeMetricFamily(names.JOB_P99, "99th percentile latency of the window's "
                                 "responses", labels=lbl),
        "window": GaugeMetricFamily(names.JOB_WINDOW, "Seconds the window's figures cover",
                                    labels=lbl),
    }
    hist = HistogramMetricFamily(names.JOB_LATENCY, "Latency of the job's responses, from "
                                 "arrival at the agent to the answer", labels=lbl)
    for job, state in jobs:
        v = [node, job]
        load = state.load
        w = load.window(now)
        values: dict[str, float | None] = {
            "requests": load.requests, "responses": load.responses, "errors": load.errors,
            "dropped": load.dropped, "drained": state.drained_total,
            "outstanding": sum(len(r.inflight) for r in list(state.all_replicas().values())),
            "waiting": len(state.queue), "draining": len(state.draining),
            "offered": w.rate(w.requests), "served": w.rate(w.responses),
            "error_rps": w.rate(w.errors), "p50": percentile(w.hist, 0.5),
            "p99": percentile(w.hist, 0.99), "window": w.span_s,
        }
        for key, fam in fams.items():
            value = values[key]
            if value is not None:  # no percentile without a response in the window
                fam.add_metric(v, float(value))
        cum = list(load.hist)
        buckets, acc, i = [], 0, 0
        for b in EXPOSED_BUCKETS:
            while i <= b:
                acc += cum[i]
                i += 1
            buckets.append((repr(BOUNDS[b]), float(acc)))
        buckets.append(("+Inf", float(sum(cum))))
        hist.add_metric(v, buckets, load.latency_sum)
    yield from fams.values()
    yield hist


def replica_state(rep: ReplicaHandle) -> str:
    return "drained" if rep.drained else "draining" if rep.draining else "ready"


def replica_families(node: str, jobs: list[tuple[str, list[tuple[int, ReplicaHandle]]]],
                     now: float) -> Iterator[Metric]:
    """Per replica: what it achieved over the window, what it holds now, who it is."""
    lbl = ["node", "job", "replica", "buffer"]
    fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "responses": CounterMetricFamily(names.REPLICA_RESPONSES, "Requests the replica "
                                         "answered with a RESPONSE", labels=lbl),
        "completions": CounterMetricFamily(names.REPLICA_COMPLETIONS, "Requests the replica "
                                           "finished (any ending)", labels=lbl),
        "outstanding": GaugeMetricFamily(names.REPLICA_OUTSTANDING, "Requests in the "
                                         "replica's slots", labels=lbl),
        "bytes": GaugeMetricFamily(names.REPLICA_OUTSTANDING_BYTES, "Input bytes of the "
                                   "requests in the replica's slots", labels=lbl),
        "throughput": GaugeMetricFamily(names.REPLICA_THROUGHPUT, "Requests the replica "
                                        "finished per second over its window", labels=lbl),
        "window": GaugeMetricFamily(names.REPLICA_WINDOW, "Seconds the replica's window "
                                    "covers (less than the job's while it is younger)",
                                    labels=lbl),
        "weight": GaugeMetricFamily(names.REPLICA_WEIGHT, "The replica's throughput "
                                    "estimate from its registration (the dispatcher's "
                                    "weight)", labels=lbl),
    }
    info = GaugeMetricFamily(names.REPLICA_INFO, "Who a replica is: its pod (namespace/name "
                             "and UID, as the node daemon identified it) and the devices "
                             "the kubelet gave the pod", labels=[*lbl, "pod", "pod_uid",
                                                                  "devices"])
    state_fam = GaugeMetricFamily(names.REPLICA_STATE, "The replica's state (1: current)",
                                  labels=[*lbl, "state"])
    for job, reps in jobs:
        for bid, rep in reps:
            v = [node, job, rep.label, str(bid)]
            base = rep.load.base(now)
            start = max(base.t, rep.published_at)
            # A replica younger than the snapshot counts from its publication.
            done = rep.completed - (base.completed.get(bid, 0)
                                    if base.t >= rep.published_at else 0)
            span = max(now - start, 0.0)
            values = {"responses": rep.responses, "completions": rep.completed,
                      "outstanding": len(rep.inflight), "bytes": rep.outstanding_bytes,
                      "throughput": done / span if span > 0 else 0.0, "window": span,
                      "weight": rep.weight}
            for key, fam in fams.items():
                fam.add_metric(v, float(values[key]))
            info.add_metric([*v, rep.pod, rep.pod_uid, rep.devices], 1.0)
            current = replica_state(rep)
            for st in names.REPLICA_STATES:
                state_fam.add_metric([*v, st], 1.0 if st == current else 0.0)
    yield from fams.values()
    yield info
    yield state_fam


def registry_for(agent: _Agent, node: str) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(agent, node))
    return reg


def serve(agent: _Agent, node: str, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from a background thread."""
    start_http_server(port, addr, registry=registry_for(agent, node))
