"""The agent's Prometheus metrics, read from its counters at scrape time.

The request path only bumps the plain integers of :class:`~.core.Stats` (no locks, no
prometheus-client calls per request); :class:`AgentCollector` turns them, the staging pool
and the published replicas into ``conspirator_agent_*`` families when Prometheus scrapes.
:func:`serve` exposes them over HTTP, which is also what the chart's probes ask.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conspirator.dpu_agent.core import AgentCore
from conspirator.dpu_agent.staging import StagingPool

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


def registry_for(agent: _Agent, node: str) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(agent, node))
    return reg


def serve(agent: _Agent, node: str, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from a background thread."""
    start_http_server(port, addr, registry=registry_for(agent, node))
