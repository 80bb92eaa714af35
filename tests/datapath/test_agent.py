"""The agent's refusals (security) and its behaviour when things go wrong (robustness).

Every case ends in an explicit answer: a refusal, an ERROR with the reason, or a closed
connection that the client reports as ConnectionLost; never a hang, never a silent loss.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from typing import Any

import numpy as np
import pytest

from conspirator.client import AsyncClient, Client, ConnectionLost, HandshakeFailed, RequestFailed
from conspirator.dpu_agent.core import AgentConfig
from conspirator.runtime.reference import expected_touch, touch
from conspirator.wire.frames import (
    AGENT_TO_CLIENT,
    ErrorCode,
    FrameDecoder,
    Mode,
    MsgType,
    encode,
    encode_staged,
    pack_header,
)
from conspirator.wire.handshake import ClientHandshake

from .harness import (
    gather_futures,
    node,
    stop_process,
    wait_for,
    worker_process,
)

A, B = "team-a/resnet", "team-b/bert"
TOKENS = {A: "token-a", B: "token-b"}


def small_config(**kw: Any) -> AgentConfig:
    base: dict[str, Any] = {"window": 8, "staging_budget": 32 << 20, "max_payload": 4 << 20,
                            "local_slot_bytes": 1 << 20, "no_replica_timeout": 1.0,
                            "request_timeout": 10.0}
    base.update(kw)
    return AgentConfig(**base)


def slow(seconds: float) -> Any:
    def model(x: Any) -> Any:
        time.sleep(seconds)
        return touch(x)
    return model


# ---------------------------------------------------------------- security


@pytest.mark.parametrize("transport", ["tcp", "local"])
def test_wrong_token_unknown_job_and_other_jobs_token_are_refused(transport: str) -> None:
    with node(TOKENS) as n:
        address = n.tcp if transport == "tcp" else n.local
        for job, token in ((A, "wrong"), (A, TOKENS[B]), ("team-c/none", "token-a"),
                           (B, TOKENS[A])):
            with pytest.raises(HandshakeFailed) as e:
                Client(address, job, token)
            assert e.value.code is ErrorCode.AUTH_FAILED
        assert n.stats().auth_failures == 4
        with Client(address, A, TOKENS[A]) as c:  # the right one still gets in
            assert c.welcome.window == 8


def test_a_request_naming_another_jobs_buffer_is_refused() -> None:
    with node(TOKENS) as n:
        ra = n.worker(A, "a-0", touch)
        rb = n.worker(B, "b-0", touch)
        n.wait_replicas(2)
        with Client(n.tcp, A, TOKENS[A]) as c:
            assert {b.buffer_id for b in c.welcome.buffers} == {ra.buffer_id}
            for target in (rb.buffer_id, 999_999):
                with pytest.raises(RequestFailed) as e:
                    c.request(b"x" * 100, target=target)
                assert e.value.code is ErrorCode.TARGET_REFUSED
            # outside the buffer's range: more bytes than its slots hold
            with pytest.raises(RequestFailed) as e:
                c.request(b"x" * 4097, target=ra.buffer_id)
            assert e.value.code is ErrorCode.TARGET_REFUSED
            with pytest.raises(RequestFailed) as e:
                c.request(b"x" * 4097)
            assert e.value.code is ErrorCode.PAYLOAD_TOO_LARGE
            # the connection survives its refused requests, and its own target works
            r = c.request(b"y" * 64, target=ra.buffer_id)
            assert r.buffer_id == ra.buffer_id
            assert np.frombuffer(r.data, np.uint64).tolist() == \
                expected_touch(b"y" * 64).tolist()
        with Client(n.local, B, TOKENS[B]) as c:
            with pytest.raises(RequestFailed) as e:
                c.request(b"z", target=ra.buffer_id)
            assert e.value.code is ErrorCode.TARGET_REFUSED
            assert c.request(b"z").buffer_id == rb.buffer_id


def _raw_handshake(address: tuple[str, int], job: str, token: str) -> socket.socket:
    s = socket.create_connection(address, timeout=5)
    hs = ClientHandshake(job, Mode.INLINE, token)
    dec = FrameDecoder(AGENT_TO_CLIENT, 1 << 20)

    def next_frame() -> Any:
        frames: list[Any] = []
        while not frames:
            frames = dec.feed(s.recv(4096))
        return frames[0]

    s.sendall(hs.hello_frame())
    s.sendall(hs.on_challenge(next_frame()))
    hs.on_welcome(next_frame())
    return s


def _read_error(s: socket.socket) -> tuple[int, ErrorCode]:
    dec = FrameDecoder(AGENT_TO_CLIENT, 1 << 20)
    s.settimeout(5)
    while True:
        data = s.recv(65536)
        assert data, "closed without an ERROR frame"
        for f in dec.feed(data):
            if f.type is MsgType.ERROR:
                return f.header.request_id, ErrorCode(f.header.aux)


def test_malformed_frames_close_one_connection_not_the_agent() -> None:
    with node(TOKENS) as n:
        n.worker(A, "a-0", touch)
        n.wait_replicas(1)
        addr = ("127.0.0.1", n.agent.tcp_port)
        cases = [b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10,  # not our protocol at all
                 pack_header(MsgType.WELCOME, 1, 0),  # agent-only type
                 pack_header(MsgType.REQUEST, 1, 1 << 30),  # beyond max payload
                 pack_header(MsgType.REQUEST, 0, 4),  # request id 0
                 encode(MsgType.PING, b"x" * 10)[:4] + b"\x07" + encode(MsgType.PING)[5:]]
        for junk in cases:
            s = _raw_handshake(addr, A, TOKENS[A])
            s.sendall(junk)
            rid, code = _read_error(s)
            assert rid == 0 and code in (ErrorCode.BAD_FRAME, ErrorCode.PAYLOAD_TOO_LARGE,
                                         ErrorCode.UNSUPPORTED_VERSION)
            s.close()
        # junk before the handshake, and a handshake that never finishes
        s = socket.create_connection(addr, timeout=5)
        s.sendall(b"\x00" * 100)
        assert _read_error(s)[1] is ErrorCode.BAD_FRAME
        s.close()
        with Client(n.tcp, A, TOKENS[A]) as c:
            assert len(c.request(b"still fine").data) == 24
        assert n.stats().protocol_errors >= len(cases) + 1


def test_one_sided_staging_outside_the_region_is_refused() -> None:
    with node(TOKENS) as n:
        n.worker(A, "a-0", touch)
        n.wait_replicas(1)
        c = Client(n.local, A, TOKENS[A])
        try:
            w = c.welcome
            assert w.staging_slots == 8 and w.staging_slot_bytes == 1 << 20
            with c._wlock:
                c._sock.sendall(encode(MsgType.STAGED, encode_staged(w.staging_slots, 10),
                                       5, 0))
            wait_for(lambda: c._failure is not None, 5, "the connection to close")
            assert isinstance(c._failure, ConnectionLost)
            assert c._failure.code is ErrorCode.BAD_FRAME
        finally:
            c.close()


# ---------------------------------------------------------------- robustness


def test_client_disconnecting_mid_frame_frees_its_staging() -> None:
    with node(TOKENS) as n:
        n.worker(A, "a-0", touch, shape=(1 << 20,))
        n.wait_replicas(1)
        addr = ("127.0.0.1", n.agent.tcp_port)
        for cut in (3, 24, 24 + 1000, 24 + (1 << 19)):
            s = _raw_handshake(addr, A, TOKENS[A])
            s.sendall((pack_header(MsgType.REQUEST, 1, 1 << 20) + b"p" * (1 << 20))[:cut])
            time.sleep(0.05)
            s.close()
        wait_for(lambda: n.lt.call(lambda: n.agent.pool.in_use) == 0, 5, "staging released")
        wait_for(lambda: not n.lt.call(lambda: n.agent.sessions), 5, "sessions dropped")
        with Client(n.tcp, A, TOKENS[A]) as c:
            assert len(c.request(b"q" * (1 << 20)).data) == 24


def test_client_gone_with_requests_in_flight_frees_the_slots() -> None:
    with node(TOKENS) as n:
        n.worker(A, "slow", slow(0.2), slots=2)
        n.wait_replicas(1)
        c = Client(n.tcp, A, TOKENS[A])
        futs = [c.submit(b"a" * 100) for _ in range(6)]
        time.sleep(0.05)
        c._sock.shutdown(socket.SHUT_RDWR)  # vanish without BYE
        _, errors = gather_futures(futs, 10)
        assert len(errors) == 6 and all(isinstance(e, ConnectionLost) for e in errors)
        c.close()
        with Client(n.tcp, A, TOKENS[A]) as c2:  # the slots come back
            ok, errors = gather_futures([c2.submit(b"b") for _ in range(4)], 20)
            assert len(ok) == 4 and not errors
        wait_for(lambda: n.stats().dropped_no_session >= 1, 5, "drops to be counted")


def test_worker_dying_fails_its_requests_explicitly_and_the_other_replica_serves() -> None:
    with node(TOKENS) as n:
        slow = worker_process(n.registry_path, A, "dies", delay=0.3, slots=2)
        fast = worker_process(n.registry_path, A, "lives", delay=0.0, slots=2)
        try:
            n.wait_replicas(2)
            with Client(n.tcp, A, TOKENS[A]) as c:
                futs = [c.submit(b"w" * 512) for _ in range(40)]
                time.sleep(0.2)
                slow.kill()  # SIGKILL: no goodbye
                ok, errors = gather_futures(futs, 30)
                assert len(ok) + len(errors) == 40  # every request answered one way or other
                assert all(isinstance(e, RequestFailed) and
                           e.code is ErrorCode.REPLICA_FAILED for e in errors), errors
                assert ok and errors
                n.wait_replicas(1)
                after = [c.submit(b"v") for _ in range(20)]
                ok2, errors2 = gather_futures(after, 30)
                assert len(ok2) == 20 and not errors2
        finally:
            stop_process(slow)
            stop_process(fast)


def test_no_replica_and_timeouts_end_in_errors() -> None:
    cfg = small_config(no_replica_timeout=0.5, request_timeout=1.0)
    with node(TOKENS, cfg) as n:
        with Client(n.tcp, B, TOKENS[B]) as c:
            t0 = time.monotonic()
            with pytest.raises(RequestFailed) as e:
                c.request(b"nobody home", timeout=10)
            assert e.value.code is ErrorCode.NO_REPLICA
            assert time.monotonic() - t0 < 5
        def model(x: Any) -> Any:
            if x[0] == ord("1"):
                time.sleep(2.5)  # hangs past the request timeout
            return touch(x)

        hang = n.worker(A, "hangs", model, slots=1)
        n.wait_replicas(1)
        with Client(n.tcp, A, TOKENS[A]) as c:
            futs = [c.submit(b"1"), c.submit(b"2")]  # one in the slot, one queued
            _, errors = gather_futures(futs, 10)
            assert [e.code for e in errors if isinstance(e, RequestFailed)] == \
                [ErrorCode.TIMEOUT, ErrorCode.TIMEOUT]
            # the slot comes back once the worker finishes
            wait_for(lambda: hang.served >= 1, 10, "the hung request to finish")
            assert len(c.request(b"3", timeout=10).data) == 24


def test_worker_errors_are_reported() -> None:
    def model(x: Any) -> Any:
        if x[0] == ord("E"):
            raise ValueError("bad input value")
        if x[0] == ord("B"):
            return b"x" * 5000  # larger than the result area
        return touch(x)

    with node(TOKENS) as n:
        n.worker(A, "a-0", model, result_bytes=4096)
        n.worker(B, "b-0", touch, shape=(2, 16), dtype="float32")
        n.wait_replicas(2)
        with Client(n.tcp, A, TOKENS[A]) as c:
            with pytest.raises(RequestFailed) as e:
                c.request(b"E....")
            assert e.value.code is ErrorCode.WORKER_ERROR and "bad input value" in e.value.message
            with pytest.raises(RequestFailed) as e:
                c.request(b"B....")
            assert e.value.code is ErrorCode.RESULT_TOO_LARGE
            assert c.request(b"fine").data
        with Client(n.tcp, B, TOKENS[B]) as c:
            assert c.request(np.zeros((2, 16), np.float32)).data
            with pytest.raises(RequestFailed) as e:
                c.request(np.zeros(5, np.float32))  # not the tensor's size
            assert e.value.code is ErrorCode.BAD_INPUT


def test_backpressure_bounds_staging_and_loses_nothing() -> None:
    """Four clients push 1 MiB requests at one slow replica through a staging pool that
    holds three: the agent stops reading instead of growing; every request completes."""
    cfg = small_config(staging_budget=3 << 20, max_payload=1 << 20, window=16)
    with node(TOKENS, cfg) as n:
        n.worker(A, "slow", slow(0.005), shape=(1 << 20,), slots=2)
        n.wait_replicas(1)

        async def load() -> list[Any]:
            clients = [await AsyncClient.connect(n.tcp, A, TOKENS[A]) for _ in range(4)]
            payload = os.urandom(1 << 20)
            try:
                return await asyncio.gather(*(c.request(payload) for c in clients
                                              for _ in range(15)))
            finally:
                for c in clients:
                    await c.close()

        results = asyncio.run(load())
        assert len(results) == 60
        assert n.lt.call(lambda: n.agent.pool.peak_in_use) <= 3 << 20
        assert n.lt.call(lambda: n.agent.pool.in_use) == 0


def test_agent_restart_fails_pending_requests_and_recovers_the_replicas(tmp_path: Any) -> None:
    """The agent runs as its own process and is killed (SIGKILL) with requests in flight:
    clients get ConnectionLost for each; a new agent on the same sockets gets the buffers
    again from the registry (which outlives it, like the node daemon), reclaims the slots
    the dead agent left busy, and serves."""
    import subprocess

    from conspirator.dpu_agent.localregistry import LocalRegistry

    from .harness import NODE, NODE_TOKEN, LoopThread, conspirator, short_dir

    d = short_dir()
    lt = LoopThread()
    registry = LocalRegistry(str(d / "registry.sock"), str(d / "publish.sock"), NODE,
                             NODE_TOKEN)
    lt.run(registry.start())
    (d / "node-token").write_text(NODE_TOKEN)

    def start_agent() -> tuple[subprocess.Popen[bytes], int]:
        ready = d / "ready.json"
        p = subprocess.Popen(conspirator(
            "dpu-agent", "--listen", "127.0.0.1:0", "--local-socket", str(d / "agent.sock"),
            "--publish-socket", str(d / "publish.sock"), "--token", f"{A}={TOKENS[A]}",
            "--node", NODE, "--node-token-file", str(d / "node-token"), "--window", "8",
            "--ready-file", str(ready), "--log-level", "WARNING"), cwd=d)
        wait_for(ready.exists, 30, "the agent to listen")
        import json

        port = int(json.loads(ready.read_text())["tcp_port"])
        ready.unlink()
        return p, port

    agent, port = start_agent()
    worker = worker_process(str(d / "registry.sock"), A, "w", delay=0.2, slots=2)
    try:
        wait_for(lambda: len(registry.entries) == 1 and registry.connected.is_set(), 20,
                 "the worker registered")
        c = Client(f"tcp://127.0.0.1:{port}", A, TOKENS[A])
        for _ in range(100):
            if c.welcome.buffers:
                break
            c.close()
            time.sleep(0.05)
            c = Client(f"tcp://127.0.0.1:{port}", A, TOKENS[A])
        futs = [c.submit(b"r" * 100) for _ in range(6)]
        time.sleep(0.1)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        _, errors = gather_futures(futs, 10)
        assert len(errors) == 6 and all(isinstance(e, ConnectionLost) for e in errors)
        c.close()
        with pytest.raises(OSError):
            Client(f"tcp://127.0.0.1:{port}", A, TOKENS[A], connect_timeout=1)

        agent, port = start_agent()
        wait_for(registry.connected.is_set, 20, "the registry to republish")
        deadline = time.monotonic() + 20
        while True:
            with Client(f"tcp://127.0.0.1:{port}", A, TOKENS[A]) as c:
                if c.welcome.buffers:
                    ok, errors = gather_futures([c.submit(b"s" * 10) for _ in range(8)], 30)
                    assert len(ok) == 8 and not errors
                    break
            assert time.monotonic() < deadline, "the new agent never got the buffer"
            time.sleep(0.1)
    finally:
        stop_process(worker)
        stop_process(agent)
        lt.run(registry.close())
        lt.close()
        shutil.rmtree(d, ignore_errors=True)
