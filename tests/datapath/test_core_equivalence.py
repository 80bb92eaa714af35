"""The agent's hot paths carry hand-inlined copies of reference functions; each is pinned
here to its reference by an equivalence test: the same inputs through the inlined path and
through the reference leave the same state and send the same answers.

* ``AgentCore.submit``: ``admit``'s body, and for a job of one replica ``_dispatch`` /
  ``_pick`` / ``next_tag`` (the reference runs with ``JobState.single`` unset);
* ``ReplicaHandle.submit``: ``Pending.free_source``;
* ``AgentCore._reap``: the common ending, ``_deliver`` / ``_finish_ok`` / ``_end`` (the
  reference runs without the replica's direct control mapping, which only the inline
  ending reads);
* ``StagedProtocol._staged``: ``AgentCore.check``'s fast path;
* ``ConnSession.send_response``: ``encode(RESPONSE, ...)``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conspirator.dpu_agent.core import AgentConfig, AgentCore
from conspirator.dpu_agent.session import ConnSession
from conspirator.dpu_agent.staged import StagedProtocol
from conspirator.dpu_agent.state import JobState, Pending, ReplicaHandle, Session
from conspirator.wire.frames import (
    AGENT_TO_CLIENT,
    ErrorCode,
    FrameDecoder,
    Mode,
    MsgType,
    encode,
)
from conspirator.wire.registration import BufferSpec, Publication
from conspirator.wire.shm import (
    ControlBlock,
    DataBuffer,
    Geometry,
    WorkerState,
    new_eventfd,
    new_memfd,
)

JOB = "team-a/job"
SLOTS, SLOT_BYTES, RESULT_BYTES = 4, 256, 64
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


class Worker:
    """A replica's worker side: its control block and data buffer, nothing running."""

    def __init__(self, g: Geometry) -> None:
        self.g = g
        self.fds = [new_memfd("ctl", g.control_bytes), new_eventfd(), new_eventfd(),
                    new_memfd("data", g.data_bytes)]
        self.ctl = ControlBlock(self.fds[0], g, create=True)
        self.ctl.state = WorkerState.READY
        self.data = DataBuffer(self.fds[3], g, create=True)

    def publication(self, buffer_id: int) -> tuple[Publication, list[int]]:
        g = self.g
        spec = BufferSpec(job=JOB, replica=f"r{buffer_id}", slots=g.slots,
                          slot_bytes=g.slot_bytes, result_bytes=g.result_bytes)
        return Publication(buffer_id, spec), [os.dup(fd) for fd in self.fds]

    def take(self) -> list[tuple[int, int, int, int, int]]:
        return self.ctl.sq.pop_many(self.g.capacity)

    def slot(self, slot: int, n: int) -> bytes:
        return bytes(self.data.view(slot, n))

    def complete(self, tag: int, slot: int, n: int, status: int) -> None:
        if n <= self.g.result_bytes:
            view = self.ctl.result_view(slot, n)
            view[:] = bytes((slot + i) & 0xFF for i in range(n))
            view.release()
        assert self.ctl.cq.push(tag, slot, n, status, 0)

    def close(self) -> None:
        self.ctl.close()
        self.data.close()
        for fd in self.fds:
            os.close(fd)


class Recording(Session):
    """A session that keeps what it is sent; resumes from a window pause like
    ConnSession (its only state change on ``on_request_done``)."""

    def __init__(self, window: int = 64) -> None:
        super().__init__(JOB, window)
        self.sent: list[tuple[Any, ...]] = []

    def send_response(self, request_id: int, buffer_id: int, data: bytes | memoryview) -> None:
        self.sent.append(("response", request_id, buffer_id, bytes(data)))

    def send_error(self, request_id: int, code: ErrorCode, message: str) -> None:
        self.sent.append(("error", request_id, code, message))

    def on_request_done(self) -> None:
        if self.paused and len(self.inflight) < self.window:
            self.paused.discard("window")


class Side:
    """A core with one published replica of one job."""

    def __init__(self, epoch: int, max_result: int = 1 << 20) -> None:
        self.core = AgentCore(AgentConfig(max_result=max_result))
        self.core.epoch = epoch
        self.worker = Worker(Geometry(SLOTS, SLOT_BYTES, RESULT_BYTES))
        self.rep: ReplicaHandle = self.core.publish(*self.worker.publication(7), owner=self)
        self.job: JobState = self.core.jobs[JOB]
        self.staging = bytearray(bytes(range(256)) * (SLOT_BYTES * 2 // 256))

    def pending(self, session: Session, rid: int, length: int) -> Pending:
        return Pending(session, rid, 0, length, self.staging, rid % SLOT_BYTES)

    def state(self, session: Recording) -> tuple[Any, ...]:
        rep, stats = self.rep, self.core.stats
        return (list(rep.ctl.tags), sorted(rep.free_slots), sorted(rep.inflight),
                rep.outstanding_bytes, rep.submitted, rep.completed,
                sorted(session.inflight), session.answered, sorted(session.paused),
                list(session.sent), [p.request_id for p in self.job.queue],
                stats.requests, stats.responses, stats.errors, stats.dropped_no_session,
                stats.bytes_in, stats.copy_bytes, rep.responses, self.load_state())

    def load_state(self) -> tuple[Any, ...]:
        """The job's observed load (load.py), which the inlined paths keep too."""
        load = self.job.load
        return (load.requests, load.responses, load.errors, load.dropped, list(load.hist),
                load.latency_sum)

    def close(self) -> None:
        self.core.shutdown()
        self.worker.close()


@contextmanager
def frozen_clock() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "monotonic", lambda: 1000.0)
        yield


def sides(**kw: Any) -> tuple[Side, Side]:
    a = Side(epoch=0x1234, **kw)
    b = Side(epoch=0x1234, **kw)
    return a, b


ops = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(0, SLOT_BYTES + 1)),
    st.tuples(st.just("complete"), st.integers(1, 3)),
), max_size=24)


@SETTINGS
@given(ops)
def test_submit_inlines_admit_and_the_single_replica_dispatch(script: list[tuple[str, int]]
                                                             ) -> None:
    """Inline: ``submit(p, admit=True)`` on a job with one replica.  Reference:
    ``admit(p)``, then ``submit(p)`` with ``JobState.single`` unset (so ``_dispatch``,
    ``_pick`` and ``next_tag`` run)."""
    a, b = sides()
    b.job.single = None
    sa, sb = Recording(), Recording()
    done: list[tuple[int, int, int, int, int]] = []
    try:
        with frozen_clock():
            for rid, (op, arg) in enumerate(script, start=1):
                if op == "submit":
                    pa, pb = a.pending(sa, rid, arg), b.pending(sb, rid, arg)
                    a.core.submit(pa, True)
                    b.core.admit(pb)
                    b.core.submit(pb)
                    assert (pa.slot, pa.src, pa.enqueued, pa.deadline) == \
                        (pb.slot, pb.src, pb.enqueued, pb.deadline)
                    assert (pa.replica is a.rep) == (pb.replica is b.rep)
                    continue
                ea, eb = a.worker.take(), b.worker.take()
                assert ea == eb  # the same (tag, slot, length) reached both workers
                for _tag, slot, n, _, _ in ea:
                    assert a.worker.slot(slot, n) == b.worker.slot(slot, n)
                done += ea
                for tag, slot, _n, _, _ in done[:arg]:
                    a.worker.complete(tag, slot, 8, 0)
                    b.worker.complete(tag, slot, 8, 0)
                del done[:arg]
                a.core.on_completion(a.rep, woken=False)
                b.core.on_completion(b.rep, woken=False)
                assert a.state(sa) == b.state(sb)
            assert a.state(sa) == b.state(sb)
    finally:
        a.close()
        b.close()


@SETTINGS
@given(st.booleans(), st.booleans(), st.integers(0, 7), st.sets(st.integers(0, 7)))
def test_replica_submit_inlines_free_source(held: bool, release: bool, slot: int,
                                           busy: set[int]) -> None:
    """Inline: the source freed inside ``ReplicaHandle.submit``.  Reference:
    ``Pending.free_source``."""
    side = Side(epoch=1)
    try:
        out: list[tuple[Any, ...]] = []
        for inline in (True, False):
            calls: list[int] = []
            held_set = busy | {slot}
            p = side.pending(Recording(), 1, 16)
            if held:
                p.held, p.held_slot = held_set, slot
            if release:
                p.release = functools.partial(calls.append, 1)
            if inline:
                side.rep.submit(p, side.core.next_tag())
            else:
                p.free_source()
            out.append((p.src, p.held, p.release, sorted(held_set), calls))
        assert out[0] == out[1]
    finally:
        side.close()


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, RESULT_BYTES + 2), st.sampled_from([0, 0, 0, 1, 2, 3]),
                          st.booleans()), min_size=1, max_size=SLOTS),
       st.booleans(), st.booleans(), st.sampled_from([RESULT_BYTES, 16]))
def test_reap_inlines_the_common_ending(completions: list[tuple[int, int, bool]],
                                        paused: bool, closed: bool, max_result: int) -> None:
    """Inline: the ending of an OK completion in ``_reap``.  Reference: ``_deliver`` ->
    ``_finish_ok`` -> ``_end`` (forced by taking away the mapping only the inline path
    reads)."""
    a, b = sides(max_result=max_result)
    sa, sb = Recording(window=2), Recording(window=2)
    try:
        with frozen_clock():
            for rid in range(1, len(completions) + 1):
                a.core.submit(a.pending(sa, rid, 8), True)
                b.core.submit(b.pending(sb, rid, 8), True)
        entries = a.worker.take()
        assert entries == b.worker.take()
        for s in (sa, sb):
            if paused:
                s.paused.add("window")
            s.closed = closed
        for (tag, slot, _, _, _), (n, status, timed_out) in zip(entries, completions,
                                                                 strict=True):
            for side in (a, b):
                if timed_out:  # answered meanwhile: the slot still comes back
                    side.core._finish_error(side.rep.inflight[slot], ErrorCode.TIMEOUT, "late")
                side.worker.complete(tag, slot, n, status)
        b.rep._ctl_mm = None
        with frozen_clock():  # the same latencies on both sides
            a.core.on_completion(a.rep, woken=False)
            b.core.on_completion(b.rep, woken=False)
        assert a.state(sa) == b.state(sb)
    finally:
        a.close()
        b.close()


class Transport:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


def errors_of(t: Transport) -> list[tuple[int, ErrorCode]]:
    frames = FrameDecoder(AGENT_TO_CLIENT, 1 << 20).feed(bytes(t.out))
    return [(f.header.request_id, ErrorCode(f.header.aux)) for f in frames
            if f.type is MsgType.ERROR]


@SETTINGS
@given(st.booleans(), st.sampled_from([None, 0, 100, SLOT_BYTES]), st.sets(st.integers(1, 4)),
       st.sampled_from([0, 5, 6, 7, 9]), st.integers(1, 5), st.integers(0, 2 * SLOT_BYTES))
def test_staged_inlines_the_fast_path_of_check(shutting_down: bool, slot_max: int | None,
                                               inflight: set[int], aux: int, rid: int,
                                               length: int) -> None:
    """Inline: ``StagedProtocol._staged`` calls ``core.check`` only off its fast path.
    Reference: ``core.check`` on every frame.  The frame is refused with the same code,
    or admitted, either way."""
    core = AgentCore(AgentConfig())
    core.shutting_down = shutting_down
    if slot_max is not None:
        core.jobs[JOB] = JobState(JOB, slot_max=slot_max)
    # What check reads of a replica: its job, slot size and whether it drains.
    core.replicas[5] = cast(Any, SimpleNamespace(job=JOB, draining=False,
                                                 geometry=SimpleNamespace(slot_bytes=100)))
    core.replicas[6] = cast(Any, SimpleNamespace(job="team-b/other", draining=False,
                                                 geometry=SimpleNamespace(slot_bytes=SLOT_BYTES)))
    core.replicas[7] = cast(Any, SimpleNamespace(job=JOB, draining=True,
                                                 geometry=SimpleNamespace(slot_bytes=SLOT_BYTES)))
    agent = SimpleNamespace(core=core, pool=None, sessions=set())
    s = ConnSession(agent, JOB, 8, Mode.LOCAL)
    t = Transport()
    s.transport = t  # type: ignore[assignment]
    region = bytearray(4 * 2 * SLOT_BYTES)
    proto = StagedProtocol(agent, s, region, 4, 2 * SLOT_BYTES, lambda: None)
    for other in inflight:
        s.inflight[other] = Pending(s, other, 0, 0)
    expected = core.check(s, rid, aux, length)
    before = dict(s.inflight)
    proto._staged([(rid, aux, 3, length)])
    if expected is None:
        assert errors_of(t) == [] and rid in s.inflight and s.inflight[rid] is not before.get(rid)
    else:
        assert errors_of(t) == [(rid, expected[0])] and s.inflight == before
    core.jobs.clear()
    core.replicas.clear()


@SETTINGS
@given(st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=300))
def test_send_response_inlines_encode(rid: int, bid: int, data: bytes) -> None:
    """Inline: the RESPONSE header packed in ``ConnSession.send_response``.  Reference:
    ``encode(MsgType.RESPONSE, data, rid, bid)``."""
    core = AgentCore(AgentConfig())
    s = ConnSession(SimpleNamespace(core=core), JOB, 8, Mode.INLINE)
    t = Transport()
    s.transport = t  # type: ignore[assignment]
    s.send_response(rid, bid, memoryview(data))
    assert bytes(t.out) == encode(MsgType.RESPONSE, data, rid, bid)
