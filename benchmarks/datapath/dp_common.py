"""Shared definitions of the data-path benchmark: the CPU mapping, the job, the payload
sizes, the background loads and the throughput depth (module constants), the six measured
configurations (``Arch``, ``ARCHS``) and one measurement's result (``Row``).  dp_setup.py,
dp_report.py and dp_bench.py all import from here, and this module imports none of them,
so there is no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST_CPU, DPU_CPU, CLIENT_CPU = 0, 1, 1
#: Polling window of the reserved-core agent (--busy-poll-us); 0: it sleeps between events
#: like the host-core agent.  Off by default: on 2 cores the client shares the reserved core,
#: and polling measured no better there (docs/datapath.md); with a third core, try 200.
BUSY_POLL_US = 0
JOB, TOKEN = "bench/datapath", "bench-token"
SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20)
#: name -> (percent of the host core, dp_load.py kind)
LOADS = {"none": (0, ""), "spin80": (80, "spin"), "memory80": (80, "memory")}
SLOTS = 4
DEPTH = 4


@dataclass(frozen=True)
class Arch:
    name: str
    transport: str  # tcp | one-sided
    label: str

    @property
    def key(self) -> str:
        return f"{self.name}/{self.transport}"


ARCHS = (
    Arch("worker-tcp", "tcp", "(1) worker receives over TCP"),
    Arch("direct", "one-sided", "(2) direct write, fixed buffer"),
    Arch("agent-host", "tcp", "(3) agent on host core, TCP"),
    Arch("agent-host", "one-sided", "(3) agent on host core, one-sided"),
    Arch("agent-dpu", "tcp", "(4) agent on reserved core, TCP"),
    Arch("agent-dpu", "one-sided", "(4) agent on reserved core, one-sided"),
)


@dataclass
class Row:
    arch: str
    transport: str
    load: str  # a LOADS key
    size: int
    mode: str  # latency | throughput
    requests: int = 0
    ok: int = 0
    failed: int = 0
    lost: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    gbps: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    host_cpu_us: float = 0.0  # data-path CPU time on the host core per request
    agent_cpu_us: float = 0.0
    client_cpu_us: float = 0.0
    agent_idle_poll_us: float = 0.0  # of agent_cpu_us: busy polling that found nothing
    agent_move_gbps: float = 0.0  # payload bytes per second of agent CPU time (less idle polls)
    agent_copy_gbps: float = 0.0  # the copy engine's own rate inside the agent
