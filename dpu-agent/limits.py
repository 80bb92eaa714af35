"""Limits the agent keeps as a network service (docs/datapath.md, "Limits"), each a setting
of :class:`~conspirator.dpu_agent.config.AgentConfig` (0 turns it off):

* ``max_handshakes``: connections in their handshake at once.  Past it the *oldest* is
  closed, so a flood of connections that never authenticate holds a bounded number of file
  descriptors and bytes, and a client that completes its handshake (newer than the flood's)
  still gets through; ``handshake_timeout`` closes each pending one anyway.
* ``max_connections`` and ``max_connections_per_job``: authenticated client connections,
  all jobs together and of one job; one more is refused after its handshake with
  ``TOO_MANY_CONNECTIONS`` (the job is known only then).
* ``idle_timeout``: a connection with nothing in flight that sent nothing for this long is
  closed with ``IDLE_TIMEOUT`` (a PING counts as traffic: clients keep alive with it).

Per-job fairness of staging is the staging pool's (:mod:`.staging`, ``fair_staging``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from conspirator.dpu_agent.config import AgentConfig, Stats
from conspirator.dpu_agent.state import Session
from conspirator.wire.frames import ErrorCode, ProtocolError


class Limits:
    def __init__(self, config: AgentConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        # Insertion-ordered: the first is the oldest pending handshake.
        self.handshaking: dict[socket.socket, None] = {}

    def handshake_started(self, sock: socket.socket) -> None:
        """``sock`` starts its handshake; evict the oldest pending ones past the cap (a
        shut-down socket ends its handshake at once: its read sees the end of stream)."""
        self.handshaking[sock] = None
        cap = self.config.max_handshakes
        while cap > 0 and len(self.handshaking) > cap:
            oldest = next(iter(self.handshaking))
            del self.handshaking[oldest]
            self.stats.handshakes_evicted += 1
            with contextlib.suppress(OSError):
                oldest.shutdown(socket.SHUT_RDWR)

    def handshake_ended(self, sock: socket.socket) -> None:
        self.handshaking.pop(sock, None)

    def refusal(self, job: str, sessions: Iterable[Session]) -> ProtocolError | None:
        """Why one more connection of ``job`` is refused, given the open ``sessions``."""
        cfg = self.config
        total = mine = 0
        for s in sessions:
            total += 1
            mine += s.job == job
        if cfg.max_connections and total >= cfg.max_connections:
            return ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS,
                                 f"the agent serves {total} connections "
                                 f"(max_connections {cfg.max_connections})")
        if cfg.max_connections_per_job and mine >= cfg.max_connections_per_job:
            return ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS,
                                 f"job {job} has {mine} connections "
                                 f"(max_connections_per_job {cfg.max_connections_per_job})")
        return None

    def idle(self, sessions: Iterable[Session], now: float) -> list[Session]:
        """The sessions idle past ``idle_timeout``: nothing in flight, nothing received since
        ``idle_since`` (kept here from the sessions' receive counters)."""
        timeout = self.config.idle_timeout
        out: list[Session] = []
        for s in sessions:
            if s.inflight or s.rx != s.rx_seen:
                s.rx_seen, s.idle_since = s.rx, now
            elif timeout > 0 and now - s.idle_since >= timeout:
                out.append(s)
        return out
