"""The asyncio agent: listeners, handshakes and the per-connection protocols.

Listeners (any subset):

* TCP (``Mode.INLINE``): request bytes travel in REQUEST frames and are received straight
  into a pooled staging buffer (``asyncio.BufferedProtocol``: the kernel copies from the
  socket into staging, no intermediate ``bytes``);
* a unix stream socket for clients on the same host (``Mode.LOCAL``): after the handshake
  the agent hands the client a staging region (a sealed memfd, SCM_RIGHTS) that the client
  writes into before sending a small STAGED frame: the one-sided model of RDMA, without
  the NIC;
* RDMA (``Mode.RDMA``, TCP for the handshake and the STAGED frames): the staging region is
  a registered memory region and the client RDMA-WRITEs into it (:mod:`.rdma`);
* the publish socket (unix ``SOCK_SEQPACKET``) where the node's buffer registry, after
  authenticating with the node token, publishes and withdraws worker buffers.

A malformed frame gets an ERROR frame and the connection is closed; it never reaches the
rest of the agent.  Handshakes are bounded in time.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import mmap
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any, cast

from conspirator.wire import auth
from conspirator.wire.frames import (
    CONTROL_MAX,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_VERSION,
    MIN_VERSION,
    PUBLISHER_TO_AGENT,
    VERSION,
    Challenge,
    ErrorCode,
    Frame,
    FrameDecoder,
    Header,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    Welcome,
    decode_auth,
    decode_staged,
    encode,
    encode_error,
    parse_header,
)
from conspirator.wire.native import Impl
from conspirator.wire.registration import (
    Publication,
    decode_packet,
    json_body,
    parse_json,
    parse_withdraw,
)
from conspirator.wire.shm import LayoutError, new_memfd

from .core import AgentConfig, AgentCore, Pending, Session, no_kick
from .poller import BusyPoller
from .staging import StagingBuffer, StagingPool
from .tokens import TokenStore

log = logging.getLogger("conspirator.dpu_agent")

HANDSHAKE_TYPES = frozenset({MsgType.HELLO})
AUTH_TYPES = frozenset({MsgType.AUTH})
INLINE_TYPES = frozenset({MsgType.REQUEST, MsgType.PING, MsgType.PONG, MsgType.BYE,
                          MsgType.ERROR})
STAGED_TYPES = frozenset({MsgType.STAGED, MsgType.PING, MsgType.PONG, MsgType.BYE,
                          MsgType.ERROR})
SWEEP_EVERY = 0.25
_RESPONSE_HEADER = HEADER.pack
_RESPONSE = int(MsgType.RESPONSE)


class ConnSession(Session):
    """A client connection's session: answers go out on its transport."""

    def __init__(self, agent: Agent, job: str, window: int, mode: Mode) -> None:
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
        self._queue(encode(MsgType.ERROR, encode_error(message), request_id, int(code)))

    def fatal(self, code: ErrorCode, message: str) -> None:
        """Refuse the connection: one ERROR frame, then close."""
        self.agent.core.stats.protocol_errors += 1
        log.info("closing a %s connection of %s: %s: %s", self.mode.name.lower(), self.job,
                 code.name, message)
        self.send_error(0, code, message)
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


class _BaseProtocol:
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


class InlineProtocol(_BaseProtocol, asyncio.BufferedProtocol):
    """TCP data phase: headers into a small buffer, payloads straight into staging."""

    HEADER, BODY, PAYLOAD, DISCARD, WAIT = range(5)

    def __init__(self, agent: Agent, session: ConnSession) -> None:
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
            core.stats.errors += 1
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
        buf = self.agent.pool.acquire(self._header.length)
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
            pool = self.agent.pool
            p.src, p.src_off = buf.mm, 0
            p.release = lambda: pool.release(buf)
        elif p.length:
            p.src, p.src_off, self._private = self._private, 0, None
        if p.done:  # answered meanwhile (timeout)
            p.free_source()
            return
        self.agent.core.submit(p)

    def _drop_current(self) -> None:
        if self._staging is not None:
            self.agent.pool.release(self._staging)
            self._staging = None
        if self._state == self.WAIT:
            self.agent.pool.cancel(self._staging_available)
        self._pending = None


class StagedProtocol(_BaseProtocol, asyncio.Protocol):
    """One-sided data phase (local or RDMA): the bytes are already in the connection's
    staging region; STAGED frames say where."""

    def __init__(self, agent: Agent, session: ConnSession, region: Any, slots: int,
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
        finally:  # end_batch, inline
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
                    core.stats.errors += 1
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


# ---------------------------------------------------------------------- the agent


class Agent:
    """The DPU agent: ``await start()``, then it serves until ``await close()``."""

    def __init__(self, config: AgentConfig, tokens: TokenStore, *,
                 tcp: tuple[str, int] | None = ("0.0.0.0", 7470),
                 local_path: str | None = None, publish_path: str | None = None,
                 rdma_device: str | None = None, native: Impl | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.tcp = tcp
        self.local_path = local_path
        self.publish_path = publish_path
        self.rdma_device = rdma_device
        self.native = native
        self.core: AgentCore = AgentCore(config, native)
        self.pool = StagingPool(config.staging_budget, config.max_payload)
        self.sessions: set[ConnSession] = set()
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tcp_port = 0
        self._closed = asyncio.Event()
        self.poller: BusyPoller | None = None

    # -- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.core.loop = loop
        if self.config.busy_poll_us > 0:
            self.poller = BusyPoller(self.core, self.config.busy_poll_us)
            self.poller.start(loop)
        if self.tcp is not None:
            s = socket.create_server(self.tcp, reuse_port=False, backlog=128)
            s.setblocking(False)
            self.tcp_port = s.getsockname()[1]
            self._listen(s, self._accept_tcp)
        if self.local_path is not None:
            self._listen(self._unix_listener(self.local_path, socket.SOCK_STREAM),
                         self._accept_local)
        if self.publish_path is not None:
            self._listen(self._unix_listener(self.publish_path, socket.SOCK_SEQPACKET),
                         self._accept_publisher)
        self._spawn(self._sweeper())
        log.info("agent up: tcp %s, local %s, publish %s, epoch %x",
                 self.tcp_port or "-", self.local_path or "-", self.publish_path or "-",
                 self.core.epoch)

    @staticmethod
    def _unix_listener(path: str, kind: int) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
        s.bind(path)
        os.chmod(path, 0o660)
        s.listen(128)
        s.setblocking(False)
        return s

    def _listen(self, sock: socket.socket,
                handler: Callable[[socket.socket], Any]) -> None:
        self._listeners.append(sock)
        self._spawn(self._accept_loop(sock, handler))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _accept_loop(self, sock: socket.socket,
                           handler: Callable[[socket.socket], Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.05)
                continue
            conn.setblocking(False)
            self.core.stats.connections += 1
            self._spawn(handler(conn))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                self.core.sweep()
            except Exception:
                log.exception("sweep failed")

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self, reason: str = "the agent is shutting down") -> None:
        if self.poller is not None:
            self.poller.stop()
        self.core.shutdown(reason)
        for s in list(self.sessions):
            s.fatal(ErrorCode.SHUTTING_DOWN, reason)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for lsock in self._listeners:
            lsock.close()
        for path in (self.local_path, self.publish_path):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        await asyncio.sleep(0)
        self.pool.close()
        self._closed.set()

    # -- handshake (raw socket, before any transport exists)

    async def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            k = await loop.sock_recv_into(sock, mv[got:])
            if k == 0:
                raise ConnectionError("peer closed during the handshake")
            got += k
        return bytes(buf)

    async def _recv_frame(self, sock: socket.socket, allowed: frozenset[MsgType]) -> Frame:
        h = parse_header(await self._recv_exact(sock, HEADER_SIZE), allowed, CONTROL_MAX)
        body = await self._recv_exact(sock, h.length) if h.length else b""
        return Frame(h, body)

    async def _handshake(self, sock: socket.socket, modes: tuple[Mode, ...]
                         ) -> tuple[Hello, int]:
        loop = asyncio.get_running_loop()
        f = await self._recv_frame(sock, HANDSHAKE_TYPES)
        hello = Hello.decode(f.body)
        if hello.mode not in modes:
            raise ProtocolError(ErrorCode.BAD_FRAME,
                                f"mode {hello.mode.name} is not served on this socket")
        version = min(hello.max_version, MAX_VERSION)
        if version < max(hello.min_version, MIN_VERSION):
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"this agent speaks versions {MIN_VERSION}..{MAX_VERSION}")
        nonce = auth.new_nonce()
        await loop.sock_sendall(sock, encode(MsgType.CHALLENGE,
                                             Challenge(nonce, version).encode()))
        f = await self._recv_frame(sock, AUTH_TYPES)
        mac = decode_auth(f.body)
        token = self.tokens.token_for(hello.mode, hello.identity)
        if not auth.verify(token, hello, nonce, version, mac):
            self.core.stats.auth_failures += 1
            raise ProtocolError(ErrorCode.AUTH_FAILED,
                                f"authentication failed for {hello.identity}")
        return hello, version

    async def _refuse(self, sock: socket.socket, e: ProtocolError) -> None:
        self.core.stats.protocol_errors += 1
        log.info("refused a connection: %s", e)
        with contextlib.suppress(OSError):
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(
                sock, encode(MsgType.ERROR, encode_error(e.message), 0, int(e.code))), 1.0)

    def _welcome(self, session: ConnSession, version: int, staging_slots: int = 0,
                 staging_slot_bytes: int = 0) -> bytes:
        cfg = self.config
        w = Welcome(version, session.window, cfg.max_payload, cfg.max_result, staging_slots,
                    staging_slot_bytes, self.core.buffers_of(session.job))
        return encode(MsgType.WELCOME, w.encode())

    async def _client(self, sock: socket.socket, modes: tuple[Mode, ...]) -> None:
        try:
            hello, version = await asyncio.wait_for(self._handshake(sock, modes),
                                                    self.config.handshake_timeout)
        except ProtocolError as e:
            await self._refuse(sock, e)
            sock.close()
            return
        except (TimeoutError, ConnectionError, OSError) as e:
            log.info("handshake abandoned: %s", e or type(e).__name__)
            sock.close()
            return
        if self.core.shutting_down:
            await self._refuse(sock, ProtocolError(ErrorCode.SHUTTING_DOWN, "shutting down"))
            sock.close()
            return
        session = ConnSession(self, hello.identity, self.config.window, hello.mode)
        try:
            if hello.mode is Mode.INLINE:
                await self._start_inline(sock, session, version)
            elif hello.mode is Mode.LOCAL:
                await self._start_local(sock, session, version)
            else:
                from .rdma import start_rdma_session

                await start_rdma_session(self, sock, session, version)
        except ProtocolError as e:
            await self._refuse(sock, e)
            sock.close()
        except (ConnectionError, OSError, TimeoutError) as e:
            log.info("connection of %s failed during setup: %s", hello.identity, e)
            sock.close()

    async def _accept_tcp(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        modes = (Mode.INLINE, Mode.RDMA) if self.rdma_device is not None else (Mode.INLINE,)
        await self._client(sock, modes)

    async def _accept_local(self, sock: socket.socket) -> None:
        await self._client(sock, (Mode.LOCAL,))

    async def _start_inline(self, sock: socket.socket, session: ConnSession,
                            version: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, self._welcome(session, version))
        proto = InlineProtocol(self, session)
        self.sessions.add(session)
        await loop.connect_accepted_socket(lambda: proto, sock)

    async def _start_local(self, sock: socket.socket, session: ConnSession,
                           version: int) -> None:
        loop = asyncio.get_running_loop()
        slots, slot_bytes = session.window, self.config.local_slot_bytes
        fd = new_memfd("conspirator-staging", slots * slot_bytes)
        try:
            region = mmap.mmap(fd, slots * slot_bytes, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
            frame = self._welcome(session, version, slots, slot_bytes)
            await sendmsg_async(sock, frame, [fd])
        finally:
            os.close(fd)
        proto = StagedProtocol(self, session, region, slots, slot_bytes,
                               lambda: _close_quietly(region))
        self.sessions.add(session)
        await loop.connect_accepted_socket(lambda: proto, sock)

    def staged_protocol(self, session: ConnSession, region: Any, slots: int, slot_bytes: int,
                        on_close: Callable[[], None]) -> StagedProtocol:
        self.sessions.add(session)
        return StagedProtocol(self, session, region, slots, slot_bytes, on_close)

    # -- the publish channel

    async def _accept_publisher(self, sock: socket.socket) -> None:
        owner = object()
        name = "?"
        try:
            hello, _version = await asyncio.wait_for(self._publisher_handshake(sock),
                                                    self.config.handshake_timeout)
            name = hello.identity
            log.info("publisher %s connected", name)
            while True:
                frame, fds = await recv_packet_async(sock, PUBLISHER_TO_AGENT)
                reply = self._publisher_frame(frame, fds, owner)
                if reply is None:
                    break
                await sendmsg_async(sock, reply, [])
        except ProtocolError as e:
            self.core.stats.protocol_errors += 1
            log.info("publisher %s refused: %s", name, e)
            with contextlib.suppress(OSError):
                await asyncio.wait_for(sendmsg_async(
                    sock, encode(MsgType.ERROR, encode_error(e.message), 0, int(e.code)), []),
                    1.0)
        except (ConnectionError, OSError, TimeoutError) as e:
            log.info("publisher %s gone: %s", name, e or type(e).__name__)
        finally:
            sock.close()
            self.core.withdraw_owner(owner, f"publisher {name} disconnected")

    async def _publisher_handshake(self, sock: socket.socket) -> tuple[Hello, int]:
        frame, fds = await recv_packet_async(sock, frozenset({MsgType.HELLO}))
        _close_fds(fds)
        hello = Hello.decode(frame.body)
        if hello.mode is not Mode.PUBLISHER:
            raise ProtocolError(ErrorCode.BAD_FRAME, "only publishers use this socket")
        version = min(hello.max_version, MAX_VERSION)
        if version < max(hello.min_version, MIN_VERSION):
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, "no common version")
        nonce = auth.new_nonce()
        await sendmsg_async(sock, encode(MsgType.CHALLENGE, Challenge(nonce, version).encode()),
                            [])
        frame, fds = await recv_packet_async(sock, AUTH_TYPES)
        _close_fds(fds)
        token = self.tokens.token_for(Mode.PUBLISHER, hello.identity)
        if not auth.verify(token, hello, nonce, version, decode_auth(frame.body)):
            self.core.stats.auth_failures += 1
            raise ProtocolError(ErrorCode.AUTH_FAILED,
                                f"publisher {hello.identity} failed authentication")
        w = Welcome(version, 1, 0, 0, 0, 0, ())
        await sendmsg_async(sock, encode(MsgType.WELCOME, w.encode()), [])
        return hello, version

    def _publisher_frame(self, frame: Frame, fds: list[int], owner: object) -> bytes | None:
        h = frame.header
        if h.type is MsgType.PUBLISH:
            try:
                pub = Publication.from_dict(parse_json(frame.body))
                self.core.publish(pub, fds, owner)
            except (ProtocolError, LayoutError, OSError, ValueError, RuntimeError) as e:
                _close_fds(fds)
                msg = e.message if isinstance(e, ProtocolError) else str(e)
                log.warning("publication refused: %s", msg)
                return encode(MsgType.ACK, json_body({"ok": False, "error": msg[:500]}),
                              h.request_id)
            return encode(MsgType.ACK, json_body({"ok": True, "buffer_id": pub.buffer_id}),
                          h.request_id)
        _close_fds(fds)
        if h.type is MsgType.WITHDRAW:
            try:
                bid, reason = parse_withdraw(frame.body)
            except ProtocolError as e:
                return encode(MsgType.ACK, json_body({"ok": False, "error": e.message}),
                              h.request_id)
            rep = self.core.replicas.get(bid)
            ok = rep is not None and rep.owner is owner and self.core.withdraw(
                bid, reason or "withdrawn by the registry")
            return encode(MsgType.ACK, json_body({"ok": ok, "buffer_id": bid}), h.request_id)
        if h.type is MsgType.PING:
            return encode(MsgType.PONG, frame.body, h.request_id)
        return None  # BYE


# ---------------------------------------------------------------------- helpers


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _close_quietly(region: Any) -> None:
    with contextlib.suppress(BufferError, ValueError):
        region.close()


async def _wait_fd(sock: socket.socket, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def sendmsg_async(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    while True:
        try:
            n = sock.sendmsg([data], anc)
        except BlockingIOError:
            await _wait_fd(sock, True)
            continue
        if n != len(data):  # stream socket: the rest goes without descriptors
            await asyncio.get_running_loop().sock_sendall(sock, data[n:])
        return


async def recv_packet_async(sock: socket.socket, allowed: frozenset[MsgType]
                            ) -> tuple[Frame, list[int]]:
    """One SEQPACKET packet: a frame and its descriptors (see wire.registration)."""
    fds = array.array("i")
    while True:
        try:
            data, anc, flags, _ = sock.recvmsg(CONTROL_MAX + 64,
                                               socket.CMSG_SPACE(4 * fds.itemsize))
            break
        except BlockingIOError:
            await _wait_fd(sock, False)
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    return decode_packet(data, flags, list(fds), allowed)
