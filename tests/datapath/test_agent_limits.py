"""The limits the agent keeps as a network service (dpu-agent/limits.py, staging.py): a
flood of connections that never authenticate holds a bounded number of sockets and a
legitimate client still gets in; connections per agent and per job are capped; an idle
connection is closed; one job whose replicas stall cannot take the staging another needs.
Only promised behaviour is asserted, never a time."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from conspirator.client import Client, HandshakeFailed
from conspirator.dpu_agent.core import AgentConfig
from conspirator.runtime.reference import touch
from conspirator.wire.frames import ErrorCode

from .harness import gather_futures, node, wait_for

A, B = "team-a/resnet", "team-b/bert"
TOKENS = {A: "token-a", B: "token-b"}


def config(**kw: Any) -> AgentConfig:
    base: dict[str, Any] = {"window": 8, "staging_budget": 32 << 20, "max_payload": 4 << 20,
                            "local_slot_bytes": 1 << 20, "no_replica_timeout": 1.0,
                            "request_timeout": 10.0}
    base.update(kw)
    return AgentConfig(**base)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_a_flood_of_unauthenticated_connections_stays_bounded_and_a_client_gets_in() -> None:
    # A long handshake timeout: the cap, not the timeout, bounds what the flood holds.
    with node(TOKENS, config(max_handshakes=8, handshake_timeout=60.0)) as n:
        n.worker(A, "a-0", touch)
        n.wait_replicas(1)
        port = _port(n.tcp)
        flood = []
        try:
            for i in range(64):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                if i % 2:
                    s.sendall(b"CNSP")  # half a header: a slow-loris HELLO
                flood.append(s)
            wait_for(lambda: n.stats().handshakes_evicted >= 64 - 8, 30,
                     "the oldest pending handshakes to be closed")
            assert n.lt.call(lambda: len(n.agent.limits.handshaking)) <= 8
            with Client(n.tcp, A, TOKENS[A]) as c:  # newer than the flood: it gets in
                assert c.request(b"x" * 64).buffer_id
            assert n.lt.call(lambda: len(n.agent.limits.handshaking)) <= 8
        finally:
            for s in flood:
                s.close()


def test_the_handshake_timeout_closes_silent_connections() -> None:
    with node(TOKENS, config(handshake_timeout=0.3)) as n:
        s = socket.create_connection(("127.0.0.1", _port(n.tcp)), timeout=30)
        try:
            assert s.recv(1) == b""  # the agent closed it
        finally:
            s.close()
        wait_for(lambda: n.lt.call(lambda: len(n.agent.limits.handshaking)) == 0, 10,
                 "the pending handshake to be forgotten")


def test_connections_per_job_and_per_agent_are_capped() -> None:
    with node(TOKENS, config(max_connections=3, max_connections_per_job=2)) as n:
        a1, a2 = Client(n.tcp, A, TOKENS[A]), Client(n.local, A, TOKENS[A])
        try:
            with pytest.raises(HandshakeFailed) as e:
                Client(n.tcp, A, TOKENS[A])
            assert e.value.code is ErrorCode.TOO_MANY_CONNECTIONS
            b1 = Client(n.tcp, B, TOKENS[B])  # another job still gets in
            with pytest.raises(HandshakeFailed) as e:  # now the agent is full
                Client(n.tcp, B, TOKENS[B])
            assert e.value.code is ErrorCode.TOO_MANY_CONNECTIONS
            b1.close()
            a1.close()
            wait_for(lambda: n.lt.call(lambda: len(n.agent.sessions)) == 1, 10,
                     "the closed connections to go")
            Client(n.tcp, A, TOKENS[A]).close()  # room again
            assert n.stats().connections_refused == 2
        finally:
            a2.close()


def test_an_idle_connection_is_closed_but_not_one_waiting_for_an_answer() -> None:
    gate = threading.Event()

    def gated(x: Any) -> Any:
        gate.wait(60)
        return touch(x)

    with node(TOKENS, config(idle_timeout=0.3)) as n:
        n.worker(A, "a-0", gated)
        n.wait_replicas(1)
        with Client(n.tcp, A, TOKENS[A]) as busy:
            fut = busy.submit(b"x" * 64)
            idle = Client(n.tcp, B, TOKENS[B])
            wait_for(lambda: n.stats().idle_closed >= 1, 30, "the idle connection to close")
            wait_for(lambda: n.lt.call(lambda: len(n.agent.sessions)) == 1, 10,
                     "the idle connection to go")
            # The one with a request in flight stays, however long the worker takes.
            assert n.stats().idle_closed == 1
            gate.set()
            assert fut.result(30).buffer_id
            idle.close()


def test_a_stalled_jobs_flood_cannot_take_the_staging_another_job_needs() -> None:
    """Job A's replica stalls with 1 MiB requests piling up in staging: A holds at most its
    share (half of it with two jobs here), and job B's request is answered meanwhile."""
    gate = threading.Event()

    def stalled(x: Any) -> Any:
        gate.wait(60)
        return touch(x)

    cfg = config(staging_budget=8 << 20, max_payload=1 << 20, window=16, request_timeout=5.0)
    with node(TOKENS, cfg) as n:
        n.worker(A, "a-0", stalled, shape=(1 << 20,), slots=1)
        n.worker(B, "b-0", touch, shape=(1 << 20,), slots=1)
        n.wait_replicas(2)
        flooders = [Client(n.tcp, A, TOKENS[A]) for _ in range(2)]
        try:
            futs = [c.submit(b"a" * (1 << 20)) for c in flooders for _ in range(8)]
            # A holds what its share allows (half: two jobs have replicas), and waits for
            # the rest: all 16 admitted, at most 4 MiB of them in staging (the whole 8 MiB
            # before per-job shares).
            wait_for(lambda: n.stats().requests >= 16, 30, "job A's requests to arrive")
            wait_for(lambda: n.lt.call(lambda: n.agent.pool.in_use) >= 4 << 20, 30,
                     "job A's requests to fill its staging")
            assert n.lt.call(lambda: n.agent.pool.in_use) <= 4 << 20
            with Client(n.tcp, B, TOKENS[B]) as b:
                assert b.request(b"b" * (1 << 20), timeout=30).buffer_id
            assert n.lt.call(lambda: n.agent.pool.held.get(A, 0)) <= 4 << 20
            gate.set()
            done, errors = gather_futures(futs)
            # Every one of A's requests ends in an answer (or its timeout): none lost.
            assert len(done) + len(errors) == 16
            assert all(getattr(e, "code", None) is ErrorCode.TIMEOUT for e in errors), errors
        finally:
            gate.set()
            for c in flooders:
                c.close()
