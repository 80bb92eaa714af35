"""The TCP data phase (``Mode.INLINE``): request bytes travel in REQUEST frames and are
received straight into a pooled staging buffer (``asyncio.BufferedProtocol``: the kernel
copies from the socket into staging, no intermediate ``bytes``).  A malformed frame gets an
ERROR frame and the connection is closed; it never reaches the rest of the agent.
"""

from __future__ import annotations

import asyncio
import logging

from conspirator.dpu_agent.core import no_kick
from conspirator.dpu_agent.session import ConnSession, Serving, SessionProtocol
from conspirator.dpu_agent.staging import StagingBuffer
from conspirator.dpu_agent.state import Pending
from conspirator.wire.frames import (
    HEADER_SIZE,
    ErrorCode,
    Header,
    MsgType,
    ProtocolError,
    parse_header,
)

log = logging.getLogger("conspirator.dpu_agent")

INLINE_TYPES = frozenset({MsgType.REQUEST, MsgType.PING, MsgType.PONG, MsgType.BYE,
                          MsgType.ERROR})


class InlineProtocol(SessionProtocol, asyncio.BufferedProtocol):
    """TCP data phase: headers into a small buffer, payloads straight into staging."""

    HEADER, BODY, PAYLOAD, DISCARD, WAIT = range(5)

    def __init__(self, agent: Serving, session: ConnSession) -> None:
        self.agent = agent
        self.session = session
        self._hdr = bytearray(HEADER_SIZE)
        self._hdr_mv = memoryview(self._hdr)
        self._state = self.HEADER
        self._pos = 0
        self._need = HEADER_SIZE
        self._header: Header | None = None
        self._body = bytearray()
        self._dest: memoryview = self._hdr_mv
        self._staging: StagingBuffer | None = None
        self._pending: Pending | None = None
        self._scratch = bytearray(1 << 16)
        self._private: bytearray | None = None

    # -- asyncio.BufferedProtocol

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == self.DISCARD:
            return memoryview(self._scratch)[:min(len(self._scratch), self._need - self._pos)]
        if self._state == self.WAIT:
            # Reading should be paused while we wait for staging; if a read still comes,
            # take the bytes into a private buffer rather than lose them.
            self._use_private_buffer()
        return self._dest[self._pos:self._need]

    def buffer_updated(self, nbytes: int) -> None:
        self.session.rx += 1
        core = self.agent.core
        if core.kick is not no_kick:
            core.kick()
        self._pos += nbytes
        try:
            while self._pos >= self._need:
                if not self._advance():
                    break
        except ProtocolError as e:
            self.session.fatal(e.code, e.message)
            self._state = self.DISCARD
            self._pos, self._need = 0, 1 << 62
        except Exception as e:  # never let one connection take the agent down
            log.exception("internal error on a connection of %s", self.session.job)
            self.session.fatal(ErrorCode.INTERNAL, f"{type(e).__name__}")
            self._state = self.DISCARD
            self._pos, self._need = 0, 1 << 62

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.session
        if self._state != self.HEADER or self._pos:
            log.info("a client of %s disconnected mid-frame", s.job)
        self._drop_current()
        self.agent.core.drop_session(s)
        s.transport = None
        self.agent.sessions.discard(s)

    # -- state machine

    def _expect(self, state: int, dest: memoryview, n: int) -> None:
        self._state, self._dest, self._pos, self._need = state, dest, 0, n

    def _next_header(self) -> None:
        self._header = None
        self._expect(self.HEADER, self._hdr_mv, HEADER_SIZE)

    def _advance(self) -> bool:
        """One step after the current part completed; False to stop the loop."""
        if self._state == self.HEADER:
            return self._on_header()
        if self._state == self.BODY:
            assert self._header is not None
            self._control(self._header, bytes(self._body))
            self._next_header()
            return True
        if self._state == self.PAYLOAD:
            self._on_payload()
            return True
        if self._state == self.DISCARD:
            self._next_header()
            return True
        return False

    def _on_header(self) -> bool:
        cfg = self.agent.core.config
        h = parse_header(self._hdr_mv, INLINE_TYPES, cfg.max_payload)
        self._header = h
        if h.type is not MsgType.REQUEST:
            self._body = bytearray(h.length)
            if h.length:
                self._expect(self.BODY, memoryview(self._body), h.length)
            else:
                self._control(h, b"")
                self._next_header()
            return True
        s, core = self.session, self.agent.core
        refusal = core.check(s, h.request_id, h.aux, h.length)
        if refusal is not None:
            s.send_error(h.request_id, *refusal)
            core.refused(s)
            if h.length:
                self._expect(self.DISCARD, memoryview(self._scratch), h.length)
            else:
                self._next_header()
            return True
        p = Pending(s, h.request_id, h.aux, h.length)
        core.admit(p)
        self._pending = p
        s.admitted()
        if h.length == 0:
            self._on_payload()
            return True
        return self._get_staging()

    def _get_staging(self) -> bool:
        assert self._pending is not None and self._header is not None
        buf = self.agent.pool.acquire(self._header.length, self.session.job)
        if buf is None:
            self._state = self.WAIT
            self.session.pause("staging")
            self.agent.pool.wait(self._staging_available)
            return False
        self._staging = buf
        self._expect(self.PAYLOAD, memoryview(buf.mm)[:self._header.length],
                     self._header.length)
        return True

    def _staging_available(self) -> None:
        if self._state != self.WAIT or self.session.closed:
            return
        if self._get_staging():
            self.session.resume("staging")

    def _use_private_buffer(self) -> None:
        assert self._header is not None
        self.agent.pool.cancel(self._staging_available)
        self.session.resume("staging")
        priv = bytearray(self._header.length)
        self._expect(self.PAYLOAD, memoryview(priv), self._header.length)
        self._private = priv

    def _on_payload(self) -> None:
        p, self._pending = self._pending, None
        assert p is not None
        buf, self._staging = self._staging, None
        self._next_header()
        if buf is not None:
            pool, job = self.agent.pool, self.session.job
            p.src, p.src_off = buf.mm, 0
            p.release = lambda: pool.release(buf, job)
        elif p.length:
            p.src, p.src_off, self._private = self._private, 0, None
        if p.done:  # answered meanwhile (timeout)
            p.free_source()
            return
        self.agent.core.submit(p)

    def _drop_current(self) -> None:
        if self._staging is not None:
            self.agent.pool.release(self._staging, self.session.job)
            self._staging = None
        if self._state == self.WAIT:
            self.agent.pool.cancel(self._staging_available)
        self._pending = None
