"""Fuzzing the frame parsers (hypothesis): at least 100,000 inputs in all, no crash, no hang.

Targets: the generic frame decoder on every channel's types, every body decoder, the
one-sided fast path's STAGED batch parser (C and Python, which must agree), the
registration JSON, and the agent's real per-connection state machines (the TCP receive
protocol that lands payloads in staging, and the one-sided protocol), fed arbitrary byte
streams in arbitrary chunks.  "No crash" means the only exception a parser may raise is
ProtocolError (the agent's protocols raise nothing: they answer with an ERROR frame and
close).  "No hang" is checked by an interval timer around every single input.

Inputs are half random bytes and half mutations of valid frames (flipped bits, cut,
duplicated, spliced), so most reach past the magic and the header checks.
"""

from __future__ import annotations

import asyncio
import mmap
import signal
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conspirator.client.aio import AsyncClient, _Protocol
from conspirator.client.base import Address
from conspirator.dpu_agent.core import AgentConfig
from conspirator.dpu_agent.inline import InlineProtocol
from conspirator.dpu_agent.server import Agent
from conspirator.dpu_agent.session import ConnSession
from conspirator.dpu_agent.staged import StagedProtocol
from conspirator.dpu_agent.tokens import StaticTokens
from conspirator.wire import native
from conspirator.wire.frames import (
    AGENT_TO_CLIENT,
    CLIENT_TO_AGENT,
    PUBLISHER_TO_AGENT,
    REGISTRY_REPLIES,
    WORKER_TO_REGISTRY,
    BufferInfo,
    Challenge,
    ErrorCode,
    FrameDecoder,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    RdmaInfo,
    Welcome,
    decode_auth,
    decode_error,
    decode_staged,
    encode,
    encode_staged,
    pack_header,
)
from conspirator.wire.registration import BufferSpec, Publication, parse_json

#: Inputs per target (more where an input is cheap); together at least FUZZ_TOTAL.
EXAMPLES = {"decoder": 12_000, "bodies": 10_000, "inline": 12_000, "staged": 8_000,
            "client": 5_000, "headers": 24_000, "json": 24_000, "specs": 5_000,
            "staged_batch": 10_000}
FUZZ_TOTAL = 100_000
COUNTS: dict[str, int] = {}


def fuzz(target: str) -> Callable[[Any], Any]:
    return settings(max_examples=EXAMPLES[target], deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

JOB = "team-a/job"
SEEDS = [
    encode(MsgType.HELLO, Hello(JOB, Mode.INLINE, b"n" * 16).encode()),
    encode(MsgType.AUTH, b"m" * 32),
    pack_header(MsgType.REQUEST, 1, 40) + b"p" * 40,
    pack_header(MsgType.REQUEST, 2, 0, 7),
    encode(MsgType.STAGED, encode_staged(1, 100), 3, 0),
    encode(MsgType.PING, b"12345678", 4),
    encode(MsgType.BYE),
    encode(MsgType.RESPONSE, b"result", 5, 9),
    encode(MsgType.ERROR, b"oops", 6, int(ErrorCode.TIMEOUT)),
    encode(MsgType.WELCOME, Welcome(1, 4, 1 << 20, 1 << 16, 2, 4096,
                                    (BufferInfo(1, 2, 4096, 1.0),)).encode()),
    encode(MsgType.CHALLENGE, Challenge(b"c" * 16, 1).encode()),
    encode(MsgType.RDMA_INFO, RdmaInfo(1, 2, 3, b"g" * 16, 4, 5, 6).encode()),
    encode(MsgType.REGISTER, b'{"job":"team-a/job","replica":"r","slots":2,"slot_bytes":64,'
                             b'"result_bytes":8,"shape":[64],"weight":2.5}', 1),
    encode(MsgType.PUBLISH, b'{"buffer_id":3,"spec":{"job":"a/b","replica":"r","slots":1,'
                            b'"slot_bytes":1,"result_bytes":0},"extra":{"k":"v"}}', 2),
    encode(MsgType.WITHDRAW, b'{"buffer_id":3,"reason":"x"}', 3),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == 0 and data:  # flip bits
            data[pos] ^= draw(st.integers(1, 255))
        elif op == 1:  # cut
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == 2:  # insert junk
            data[pos:pos] = draw(st.binary(max_size=32))
        elif op == 3 and len(data) >= 24:  # a hostile length field
            struct.pack_into("<I", data, 16, draw(st.integers(0, 2**32 - 1)))
        else:  # duplicate a slice
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 48))]
    return bytes(data)


streams = st.one_of(st.binary(max_size=300), mutated())
chunkings = st.lists(st.integers(1, 64), min_size=1, max_size=8)


class HangError(Exception):
    pass


@contextmanager
def no_hang(seconds: float = 2.0) -> Iterator[None]:
    def alarm(*_: Any) -> None:
        raise HangError(f"parser did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        yield data[i:i + n]
        i += n
        k += 1


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


# ---------------------------------------------------------------- pure parsers

DECODERS: list[Callable[[bytes], object]] = [
    Hello.decode, Welcome.decode, Challenge.decode, RdmaInfo.decode, decode_staged,
    decode_auth, lambda b: BufferSpec.from_dict(parse_json(b)),
    lambda b: Publication.from_dict(parse_json(b)),
]
CHANNELS = [CLIENT_TO_AGENT, AGENT_TO_CLIENT, PUBLISHER_TO_AGENT, WORKER_TO_REGISTRY,
            REGISTRY_REPLIES]


@pytest.mark.slow
@fuzz("decoder")
@given(data=streams, sizes=chunkings, channel=st.sampled_from(CHANNELS))
def test_fuzz_frame_decoder(data: bytes, sizes: list[int],
                            channel: frozenset[MsgType]) -> None:
    count("decoder")
    with no_hang():
        dec = FrameDecoder(channel, 1 << 16)
        try:
            for c in chunks(data, sizes):
                for f in dec.feed(c):
                    assert f.header.type in channel and len(f.body) == f.header.length
                    if f.type is MsgType.ERROR:
                        decode_error(f.header, f.body)
        except ProtocolError as e:
            assert isinstance(e.code, ErrorCode)


@pytest.mark.slow
@fuzz("bodies")
@given(data=streams)
def test_fuzz_body_decoders(data: bytes) -> None:
    count("bodies")
    body = data[24:] if len(data) > 24 and data[:4] == b"CNSP" else data
    with no_hang():
        for decode in DECODERS:
            with suppress(ProtocolError):
                decode(body)


# ---------------------------------------------------------------- the agent's protocols


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    cfg = AgentConfig(window=4, max_payload=1 << 12, staging_budget=1 << 16,
                      local_slot_bytes=256)
    yield Agent(cfg, StaticTokens({JOB: "t"}), tcp=None)


def agent_outputs_are_frames(out: bytes) -> None:
    dec = FrameDecoder(AGENT_TO_CLIENT, 1 << 16)
    for f in dec.feed(out):
        assert f.type in (MsgType.ERROR, MsgType.PONG, MsgType.RESPONSE)


@pytest.mark.slow
@fuzz("inline")
@given(data=streams, sizes=chunkings)
def test_fuzz_agent_tcp_protocol(agent: Agent, data: bytes, sizes: list[int]) -> None:
    """The real InlineProtocol, driven like asyncio drives it (get_buffer/buffer_updated)."""
    count("inline")
    t = FakeTransport()
    s = ConnSession(agent, JOB, agent.config.window, Mode.INLINE)
    p = InlineProtocol(agent, s)
    p.connection_made(t)
    with no_hang():
        for c in chunks(data, sizes):
            view = c
            while view and not t.closed and not t.paused:
                buf = p.get_buffer(len(view))
                n = min(len(buf), len(view))
                assert n > 0
                buf[:n] = view[:n]
                p.buffer_updated(n)
                view = view[n:]
            if t.closed or t.paused:
                break
        p.connection_lost(None)
    agent_outputs_are_frames(bytes(t.out))
    assert agent.pool.in_use == 0  # nothing leaked from staging
    assert not s.inflight
    agent.core.jobs.clear()  # requests queued for the (replica-less) job go with the session


@pytest.mark.slow
@fuzz("staged")
@given(data=streams, sizes=chunkings)
def test_fuzz_agent_one_sided_protocol(agent: Agent, data: bytes, sizes: list[int]) -> None:
    count("staged")
    t = FakeTransport()
    s = ConnSession(agent, JOB, agent.config.window, Mode.LOCAL)
    region = mmap.mmap(-1, 4 * 256)
    p = StagedProtocol(agent, s, region, 4, 256, region.close)
    p.connection_made(t)
    with no_hang():
        for c in chunks(data, sizes):
            if t.closed:
                break
            p.data_received(c)
        p.connection_lost(None)
    agent_outputs_are_frames(bytes(t.out))
    assert (not s.inflight and not p.busy) or t.closed
    agent.core.jobs.clear()


@pytest.mark.slow
@fuzz("client")
@given(data=streams, sizes=chunkings)
def test_fuzz_client_protocol(data: bytes, sizes: list[int]) -> None:
    """What a client does with whatever an agent (or an impostor) sends back."""
    count("client")
    c = AsyncClient(Address.parse("tcp://127.0.0.1:1"), JOB)
    c.welcome = Welcome(1, 4, 1 << 12, 1 << 12, 0, 0, ())
    loop = asyncio.new_event_loop()
    try:
        c._window = asyncio.Semaphore(4)
        for rid in (1, 2, 5):
            c._pending[rid] = (loop.create_future(), -1)
        proto = _Protocol(c)
        t = FakeTransport()
        c._transport = t
        with no_hang():
            for chunk in chunks(data, sizes):
                proto.data_received(chunk)
                if t.closed:
                    break
            proto.connection_lost(None)
        assert not c._pending  # every request ended, one way or another
    finally:
        loop.close()


@st.composite
def staged_batches(draw: st.DrawFn) -> bytes:
    """Runs of STAGED frames (what the one-sided fast path parses), mutated like the
    other streams, so most inputs are whole frames with one field wrong."""
    frames = [encode(MsgType.STAGED, encode_staged(draw(st.integers(0, 2**32 - 1)),
                                                   draw(st.integers(0, 2**32 - 1))),
                     draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32 - 1)))
              for _ in range(draw(st.integers(0, 6)))]
    data = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 2))
        if op == 0:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == 1:
            del data[pos:pos + draw(st.integers(1, 40))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


@pytest.mark.slow
@fuzz("staged_batch")
@given(data=st.one_of(staged_batches(), streams))
def test_fuzz_staged_batch_parsers(data: bytes) -> None:
    """The one-sided fast path's parser, C and Python: the same answer, never a hang."""
    count("staged_batch")
    with no_hang():
        results = [impl.parse_staged(data) for impl in native.implementations()]
    assert all(r == results[0] for r in results), results
    if results[0] is not None:
        assert len(results[0]) * 32 == len(data)


@pytest.mark.slow
@fuzz("headers")
@given(data=st.binary(min_size=0, max_size=64))
def test_fuzz_raw_headers(data: bytes) -> None:
    """Headers that are random after a valid magic and version."""
    count("headers")
    raw = (b"CNSP\x01" + data)[:24].ljust(24, b"\x00")
    with no_hang():
        for channel in CHANNELS:
            with suppress(ProtocolError):
                FrameDecoder(channel, 1 << 16).feed(raw + data)


@pytest.mark.slow
@fuzz("json")
@given(data=st.binary(max_size=200))
def test_fuzz_json_bodies(data: bytes) -> None:
    count("json")
    with no_hang():
        for decode in DECODERS[-2:]:
            with suppress(ProtocolError):
                decode(b'{"job":' + data + b"}")


@pytest.mark.slow
@fuzz("specs")
@given(spec=st.dictionaries(st.sampled_from(["job", "replica", "slots", "slot_bytes",
                                             "result_bytes", "target", "shape", "dtype",
                                             "weight", "pid", "cuda_ipc_handle",
                                             "cuda_device", "x"]),
                            st.one_of(st.none(), st.booleans(), st.integers(),
                                      st.floats(allow_nan=True), st.text(max_size=20),
                                      st.lists(st.integers(), max_size=10),
                                      st.dictionaries(st.text(max_size=4), st.integers(),
                                                      max_size=3))))
def test_fuzz_buffer_specs(spec: dict[str, Any]) -> None:
    count("specs")
    with no_hang(), suppress(ProtocolError):
        BufferSpec.from_dict(spec)


def test_zz_fuzz_total_reaches_100k() -> None:
    """Runs last in this module (pytest keeps file order): the fuzz tests together fed at
    least 100,000 inputs."""
    if len(COUNTS) < len(EXAMPLES):
        pytest.skip("only part of the fuzz targets ran in this session")
    assert sum(COUNTS.values()) >= FUZZ_TOTAL, COUNTS
