"""The one-sided data phase (``Mode.LOCAL`` over a unix socket, ``Mode.RDMA``): the
request bytes are already in the connection's staging region (the client wrote them, or
RDMA-WROTE them); small STAGED frames say where.  The steady state, whole STAGED frames,
is handled without the frame decoder, a read's frames in one call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from conspirator.dpu_agent.core import no_kick
from conspirator.dpu_agent.session import ConnSession, Serving, SessionProtocol
from conspirator.dpu_agent.state import Pending
from conspirator.wire.frames import (
    CONTROL_MAX,
    ErrorCode,
    Frame,
    FrameDecoder,
    MsgType,
    ProtocolError,
    decode_staged,
)

log = logging.getLogger("conspirator.dpu_agent")

STAGED_TYPES = frozenset({MsgType.STAGED, MsgType.PING, MsgType.PONG, MsgType.BYE,
                          MsgType.ERROR})


class StagedProtocol(SessionProtocol, asyncio.Protocol):
    """One-sided data phase (local or RDMA): the bytes are already in the connection's
    staging region; STAGED frames say where."""

    def __init__(self, agent: Serving, session: ConnSession, region: Any, slots: int,
                 slot_bytes: int, on_close: Callable[[], None]) -> None:
        self.agent = agent
        self.session = session
        self.region = region
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.busy: set[int] = set()
        self._decoder = FrameDecoder(STAGED_TYPES, CONTROL_MAX)
        self._mid_frame = False  # the decoder holds part of a frame
        self._on_close = on_close

    def data_received(self, data: bytes) -> None:
        self.session.rx += 1
        core = self.agent.core
        if core.kick is not no_kick:
            core.kick()
        core.batch_depth += 1  # doorbells and answers leave once, at the end of the batch
        try:
            # The steady state: whole STAGED frames, handled without the decoder.
            batch = None if self._mid_frame else core.native.parse_staged(data)
            if batch is not None:
                self._staged(batch)
            else:
                for f in self._decoder.feed(data):
                    self._frame(f)
                self._mid_frame = self._decoder.mid_frame
        except ProtocolError as e:
            self.session.fatal(e.code, e.message)
            self._decoder = FrameDecoder(frozenset(), CONTROL_MAX)
            self._mid_frame = False
        except Exception as e:
            log.exception("internal error on a connection of %s", self.session.job)
            self.session.fatal(ErrorCode.INTERNAL, type(e).__name__)
        finally:  # the batch ends: doorbells and answers leave
            core.batch_depth -= 1
            if not core.batch_depth and (core.batch_ring or core.batch_flush):
                core.drain_batch()

    def _frame(self, f: Frame) -> None:
        if self.session.transport is None or self.session.transport.is_closing():
            return
        h = f.header
        if h.type is not MsgType.STAGED:
            self._control(h, f.body)
            return
        slot, length = decode_staged(f.body)
        self._staged(((h.request_id, h.aux, slot, length),))

    def _staged(self, frames: Iterable[tuple[int, int, int, int]]) -> None:
        """STAGED frames ``(request_id, aux, slot, length)``: admit and submit each (one
        call for a whole read, the one-sided hot path)."""
        s = self.session
        core = self.agent.core
        busy = self.busy
        for request_id, aux, slot, length in frames:
            if s.transport is None or s.transport.is_closing():
                return
            if slot >= self.slots or length > self.slot_bytes:
                raise ProtocolError(ErrorCode.BAD_FRAME,
                                    f"staging slot {slot} / {length} bytes outside the region "
                                    f"({self.slots} x {self.slot_bytes})")
            if slot in busy:
                s.send_error(request_id, ErrorCode.WINDOW_EXCEEDED,
                             f"staging slot {slot} is still in use")
                continue
            job = core.jobs.get(s.job)
            # core.check's fast path inline: any replica, a new id, a size some slot takes.
            if (aux or request_id in s.inflight or core.shutting_down or job is None
                    or (job.slot_max and length > job.slot_max)):
                refusal = core.check(s, request_id, aux, length)
                if refusal is not None:
                    core.refused(s)
                    s.send_error(request_id, *refusal)
                    continue
            busy.add(slot)
            p = Pending(s, request_id, aux, length, self.region, slot * self.slot_bytes)
            p.held, p.held_slot = busy, slot
            core.submit(p, True)
            if len(s.inflight) >= s.window:
                s.admitted()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._mid_frame:
            log.info("a client of %s disconnected mid-frame", self.session.job)
        self.agent.core.drop_session(self.session)
        self.session.transport = None
        self.agent.sessions.discard(self.session)
        self._on_close()
