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
    # Limits a network service keeps (docs/datapath.md, "Limits"); 0 turns one off.
    max_handshakes: int = 256  # connections in their handshake at once; past it the oldest goes
    max_connections: int = 1024  # authenticated client connections, all jobs together
    max_connections_per_job: int = 256  # authenticated client connections of one job
    idle_timeout: float = 300.0  # close a connection with nothing in flight, silent this long
    fair_staging: bool = True  # each job with replicas here holds at most its share of staging
    local_slot_bytes: int = 4 << 20  # staging slot of a one-sided (local/RDMA) client
    busy_poll_us: int = 0  # poll instead of sleeping for this long after an event (0: off)
    observe_window: float = 60.0  # the window of the observed load (``load.py``), seconds
    observe_slice: float = 5.0  # how often the window's snapshots are taken, seconds
    oip_window: int = 64  # Open Inference Protocol calls of one job in the core at once


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
    handshakes_evicted: int = 0  # pending handshakes closed to make room (max_handshakes)
    connections_refused: int = 0  # authenticated but over max_connections(_per_job)
    idle_closed: int = 0  # closed after idle_timeout
    copy_ns: int = 0  # time inside the copy engine (staging -> slot)
    copy_bytes: int = 0
    idle_poll_ns: int = 0  # busy polling that found nothing (``poller.py``)
