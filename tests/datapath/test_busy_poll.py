"""The agent with ``--busy-poll-us``: it reads the completion rings itself while polling,
parks when idle, and is woken by the eventfds again once parked; failures still end in
explicit errors."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from conspirator.client import Client, RequestFailed
from conspirator.dpu_agent.core import AgentConfig
from conspirator.runtime.reference import expected_touch, touch
from conspirator.wire.frames import ErrorCode

from .harness import gather_futures, node, stop_process, wait_for, worker_process

JOB, TOKEN = "team-a/resnet", "token-a"


def _touched(data: bytes) -> list[int]:
    return [int(v) for v in np.frombuffer(data, np.uint64)]


def polling(window_us: int = 2000, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = {"window": 8, "staging_budget": 32 << 20, "max_payload": 4 << 20,
                            "local_slot_bytes": 1 << 20, "no_replica_timeout": 1.0,
                            "request_timeout": 10.0, "busy_poll_us": window_us}
    base.update(kw)
    return AgentConfig(**base)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("transport", ["tcp", "local"])
def test_polling_agent_serves_parks_and_wakes_again(loop: str, transport: str) -> None:
    with node({JOB: TOKEN}, polling(), loop=loop) as n:
        n.worker(JOB, "r-0", touch, shape=(4096,))
        n.worker(JOB, "r-1", touch, shape=(4096,))
        n.wait_replicas(2)
        poller = n.agent.poller
        assert poller is not None
        rng = np.random.default_rng(3)
        with Client(n.tcp if transport == "tcp" else n.local, JOB, TOKEN) as c:
            payloads = [rng.bytes(int(s)) for s in rng.integers(1, 4096, 200)]
            futs = [c.submit(p) for p in payloads]
            for p, f in zip(payloads, futs, strict=True):
                assert _touched(f.result(30).data) == expected_touch(p).tolist()
            assert poller.rings_reaped > 0  # completions read off the rings, no wake-up
            # Idle: the poller counts the time it found nothing, then parks and the
            # completion eventfds wake the loop again.
            wait_for(lambda: poller.parked, 5, "the poller to park")
            # ... in the loop thread's CPU time, never more than it has spent.
            assert 0 < n.stats().idle_poll_ns <= n.lt.call(time.thread_time_ns)
            assert n.agent.core._completion_wakeups
            # A request after parking: the read kicks the poller, the answer comes back.
            for _ in range(3):
                time.sleep(0.05)
                assert _touched(c.request(b"after parking", timeout=10).data) == \
                    expected_touch(b"after parking").tolist()
        assert n.stats().requests == n.stats().responses == 203


def test_polling_agent_fails_a_dead_workers_requests_explicitly() -> None:
    with node({JOB: TOKEN}, polling(window_us=100_000)) as n:
        dies = worker_process(n.registry_path, JOB, "dies", delay=0.3, slots=2)
        lives = worker_process(n.registry_path, JOB, "lives", delay=0.0, slots=2)
        try:
            n.wait_replicas(2)
            with Client(n.local, JOB, TOKEN) as c:
                futs = [c.submit(b"w" * 512) for _ in range(40)]
                time.sleep(0.2)
                dies.kill()
                ok, errors = gather_futures(futs, 30)
                assert len(ok) + len(errors) == 40
                assert ok and errors
                assert all(isinstance(e, RequestFailed) and
                           e.code is ErrorCode.REPLICA_FAILED for e in errors), errors
                n.wait_replicas(1)
                ok2, errors2 = gather_futures([c.submit(b"v") for _ in range(20)], 30)
                assert len(ok2) == 20 and not errors2
        finally:
            stop_process(dies)
            stop_process(lives)


def test_not_polling_by_default() -> None:
    with node({JOB: TOKEN}) as n:
        n.worker(JOB, "r-0", touch, shape=(64,))
        n.wait_replicas(1)
        with Client(n.tcp, JOB, TOKEN) as c:
            assert _touched(c.request(b"x", timeout=10).data) == expected_touch(b"x").tolist()
        assert n.agent.poller is None
        assert n.stats().idle_poll_ns == 0
