"""Reading the DPU agents' metrics endpoints: how the operator sees the real load.

Why scraping (docs/operator.md, "Observed load"): the agents hold no API token (the chart
gives them none, so a compromised DPU cannot write cluster state), and 1,000 agents
patching ``GPUNode.status`` every few seconds would cost the API server hundreds of writes
a second for numbers only the operator reads.  A pull over HTTP is what Prometheus does at
that scale: one GET per agent per interval, bounded concurrency, a timeout per agent, and
an agent that does not answer only drops out of this round.

Targets are the GPUNodes whose DPU agent reports an endpoint; the metrics port is the
chart's ``dpuAgent.metricsPort`` (``--agent-metrics-port``), on the endpoint's host.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from conspirator.observe import AgentObservation, parse_agent_metrics
from conspirator.operator.agentload import AgentReport, ReplicaSample
from conspirator.operator.autoscale import JobLoad
from conspirator.operator.views import NodeView

log = logging.getLogger("conspirator.operator")

Parse = Callable[[str, str], AgentReport]
"""(node, exposition text) -> the agent's report; raises ``ValueError`` on bad text."""


def report_of(node: str, obs: AgentObservation) -> AgentReport:
    """The operator's view of one agent's observation.  A replica is named by the first
    device id the kubelet gave its pod (``InferenceJob.status.replicas[].deviceID``), else
    by its pod's name; replicas draining or drained are not throughput samples."""
    jobs = {k: JobLoad(offered_rps=j.offered_rps, served_rps=j.served_rps,
                       errors_rps=j.error_rps, p50_ms=j.p50_ms, p99_ms=j.p99_ms,
                       outstanding=j.outstanding, waiting=j.waiting, window_s=j.window_s,
                       replicas=sum(1 for r in j.replicas if r.state == "ready"))
            for k, j in obs.jobs.items()}
    reps = tuple(ReplicaSample(job=k, replica=r.devices[0] if r.devices else r.replica,
                               throughput_rps=r.throughput_rps, outstanding=r.outstanding,
                               pod=r.pod)
                 for k, j in sorted(obs.jobs.items()) for r in j.replicas
                 if r.state == "ready")
    return AgentReport(node, jobs, reps)


def parse(node: str, text: str) -> AgentReport:
    """:data:`Parse` with the agent's own parser (``conspirator.observe``); raises
    ``ValueError`` (its ``MalformedMetricsError``) for text that is not an agent's."""
    return report_of(node, parse_agent_metrics(text))


@dataclass(frozen=True, slots=True)
class Target:
    node: str
    url: str


def targets(nodes: Iterable[NodeView], metrics_port: int) -> list[Target]:
    """One target per node whose DPU agent has an endpoint, sorted by node."""
    out = []
    for n in sorted(nodes, key=lambda n: n.name):
        ep = n.dpu.endpoint
        if not ep or n.dpu.missing:
            continue
        host = ep.rsplit(":", 1)[0] if ":" in ep else ep
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        hostpart = f"[{host}]" if ":" in host else host
        out.append(Target(n.name, f"http://{hostpart}:{metrics_port}/metrics"))
    return out


@dataclass(slots=True)
class RoundStats:
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0


async def scrape(session: aiohttp.ClientSession, ts: list[Target], parse: Parse,
                 concurrency: int = 64, timeout_s: float = 5.0
                 ) -> tuple[list[AgentReport], RoundStats]:
    """Every target once; failures are logged at debug and counted, never raised."""
    sem = asyncio.Semaphore(concurrency)
    stats = RoundStats()
    reports: list[AgentReport] = []
    t0 = time.monotonic()

    async def one(t: Target) -> None:
        async with sem:
            try:
                async with session.get(
                        t.url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    text = await resp.text()
                reports.append(parse(t.node, text))
                stats.ok += 1
            except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as e:
                stats.failed += 1
                log.debug("agent metrics of %s (%s) not read: %s", t.node, t.url, e)

    await asyncio.gather(*(one(t) for t in ts))
    stats.seconds = time.monotonic() - t0
    return sorted(reports, key=lambda r: r.node), stats


async def scrape_loop(nodes: Callable[[], Mapping[str, NodeView]], metrics_port: int,
                      interval: float, parse: Parse,
                      deliver: Callable[[list[AgentReport], RoundStats], Awaitable[object]],
                      active: Callable[[], Awaitable[bool]]) -> None:
    """Every ``interval`` seconds (while this operator replica is the active one), scrape
    the agents and hand the round to ``deliver``."""
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(interval)
            try:
                if not await active():
                    continue
                ts = targets(nodes().values(), metrics_port)
                if not ts:
                    continue
                reports, stats = await scrape(session, ts, parse)
                await deliver(reports, stats)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("observing the agents' load failed: %s", e)


__all__ = ["Parse", "RoundStats", "Target", "parse", "report_of", "scrape", "scrape_loop",
           "targets"]
