"""A client connection after its handshake: its :class:`ConnSession` (answers batched
into one write per event-loop iteration, reading paused for the window, staging or a full
socket) and what its data-phase protocols share (:class:`SessionProtocol`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from conspirator.dpu_agent.core import AgentCore
from conspirator.dpu_agent.limits import Limits
from conspirator.dpu_agent.staging import StagingPool
from conspirator.dpu_agent.state import Session
from conspirator.wire.frames import HEADER, MAGIC, VERSION, ErrorCode, Header, Mode, MsgType, encode
from conspirator.wire.handshake import error_frame

log = logging.getLogger("conspirator.dpu_agent")

_RESPONSE_HEADER = HEADER.pack
_RESPONSE = int(MsgType.RESPONSE)


class Serving(Protocol):
    """What a connection needs of the agent that serves it."""

    @property
    def core(self) -> AgentCore: ...
    @property
    def pool(self) -> StagingPool: ...
    @property
    def sessions(self) -> set[ConnSession]: ...
    @property
    def limits(self) -> Limits: ...


class ConnSession(Session):
    """A client connection's session: answers go out on its transport."""

    def __init__(self, agent: Serving, job: str, window: int, mode: Mode) -> None:
        super().__init__(job, window)
        self.agent = agent
        self.mode = mode
        self.transport: asyncio.Transport | None = None
        # Answers produced in one event-loop iteration leave in one write (one syscall).
        self._out: list[bytes] = []

    def _queue(self, frame: bytes) -> None:
        core = self.agent.core
        if not self._out:
            if core.batching:  # leaves when the batch ends
                core.flush_later(self)
            elif core.loop is None:  # not serving (driven directly by tests)
                self._out.append(frame)
                self.flush()
                return
            else:
                core.loop.call_soon(self.flush)
        self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, []
        t = self.transport
        if out and t is not None and not t.is_closing():
            t.write(out[0] if len(out) == 1 else b"".join(out))

    def send_response(self, request_id: int, buffer_id: int, data: bytes | memoryview) -> None:
        frame = _RESPONSE_HEADER(MAGIC, VERSION, _RESPONSE, 0, request_id, len(data),
                                 buffer_id) + data
        if self._out and self.agent.core.batch_depth:  # the common case: a batch is open
            self._out.append(frame)
        else:
            self._queue(frame)

    def send_error(self, request_id: int, code: ErrorCode, message: str) -> None:
        self._queue(error_frame(code, message, request_id))

    def fatal(self, code: ErrorCode, message: str) -> None:
        """Refuse the connection: one ERROR frame, then close."""
        self.agent.core.stats.protocol_errors += 1
        log.info("closing a %s connection of %s: %s: %s", self.mode.name.lower(), self.job,
                 code.name, message)
        self.send_error(0, code, message)
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def close_idle(self, timeout: float) -> None:
        """Close the connection after ``timeout`` seconds without traffic (limits.py)."""
        log.info("closing an idle %s connection of %s (%g s)", self.mode.name.lower(),
                 self.job, timeout)
        self.send_error(0, ErrorCode.IDLE_TIMEOUT,
                        f"idle for {timeout:g} s with nothing in flight")
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def pause(self, reason: str) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if (not self.paused and self.transport is not None
                    and not self.transport.is_closing()):
                self.transport.resume_reading()

    def admitted(self) -> None:
        if len(self.inflight) >= self.window:
            self.pause("window")

    def on_request_done(self) -> None:
        if self.paused and len(self.inflight) < self.window:
            self.resume("window")


class SessionProtocol:
    """What the data-phase protocols share: the session's transport, flow control, and
    the control frames (PING, BYE, a client's ERROR)."""

    session: ConnSession

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.session.transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        self.session.pause("write")

    def resume_writing(self) -> None:
        self.session.resume("write")

    def _control(self, header: Header, body: bytes) -> None:
        s = self.session
        if header.type is MsgType.PING:
            if s.transport is not None:
                s.transport.write(encode(MsgType.PONG, body, header.request_id))
        elif header.type is MsgType.BYE:
            if s.transport is not None:
                s.transport.close()
        elif header.type is MsgType.ERROR:
            log.info("client of %s reported an error: %r", s.job, body[:200])
            if s.transport is not None:
                s.transport.close()
        # PONG: nothing to do
