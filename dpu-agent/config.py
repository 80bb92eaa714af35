"""The agent's settings (:class:`AgentConfig`, from ``conspirator dpu-agent``'s flags) and
its global counters (:class:`Stats`, bumped by the request path, read by the metrics).
``conspirator.dpu_agent.core`` re-exports both."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AgentConfig:
    window: int = 16  # outstanding requests per connection
    max_payload: int = 64 << 20
    max_result: int = 64 << 20
    staging_budget: int = 512 << 20
    request_timeout: float = 30.0
    no_replica_timeout: float = 5.0
    handshake_timeout: float = 5.0
    local_slot_bytes: int = 4 << 20  # staging slot of a one-sided (local/RDMA) client
    busy_poll_us: int = 0  # poll instead of sleeping for this long after an event (0: off)
    observe_window: float = 60.0  # the window of the observed load (``load.py``), seconds
    observe_slice: float = 5.0  # how often the window's snapshots are taken, seconds


@dataclass
class Stats:
    requests: int = 0
    responses: int = 0
    errors: int = 0
    dropped_no_session: int = 0
    bytes_in: int = 0
    connections: int = 0
    protocol_errors: int = 0
    auth_failures: int = 0
    copy_ns: int = 0  # time inside the copy engine (staging -> slot)
    copy_bytes: int = 0
    idle_poll_ns: int = 0  # busy polling that found nothing (``poller.py``)
