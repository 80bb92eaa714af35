"""The asyncio client: ``c = await AsyncClient.connect(address, job, token)``, then
``await c.request(payload)`` from any number of tasks.

At most the agent's window of requests are outstanding; further ``request`` calls wait for
an answer (backpressure), as they also wait while the socket's write buffer is full.  A
cancelled ``request`` keeps its window place (and staging slot) until the agent answers
it, so cancellation never lets two requests share a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from typing import TYPE_CHECKING, Any

from conspirator.client.base import (
    AGENT_TO_CLIENT,
    FDS_SPACE,
    LOST,
    Address,
    ConnectionLost,
    Opened,
    Received,
    RequestFailed,
    Response,
    byte_view,
    error_of,
    handshake_header,
    next_step,
    open_steps,
    received_fds,
)
from conspirator.wire import asyncsock
from conspirator.wire.frames import (
    HEADER_SIZE,
    ErrorCode,
    Frame,
    FrameDecoder,
    Mode,
    MsgType,
    ProtocolError,
    RdmaInfo,
    Welcome,
    decode_error,
    encode,
    encode_staged,
    pack_header,
)
from conspirator.wire.native import impl

if TYPE_CHECKING:
    from conspirator.client.base import Payload


class _Protocol(asyncio.Protocol):
    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.decoder = FrameDecoder(AGENT_TO_CLIENT, client.welcome.max_result)

    def data_received(self, data: bytes) -> None:
        c = self.client
        try:
            for f in self.decoder.feed(data):
                h = f.header
                if h.type is MsgType.RESPONSE:
                    c._resolve(h.request_id, Response(h.request_id, f.body, h.aux), None)
                elif h.type is MsgType.ERROR:
                    if h.request_id == 0:
                        code, msg = decode_error(h, f.body)
                        c._fail_all(msg, code)
                        if c._transport is not None:
                            c._transport.close()
                        return
                    c._resolve(h.request_id, None, error_of(f))
                elif h.type is MsgType.PING and c._transport is not None:
                    c._transport.write(encode(MsgType.PONG, f.body, h.request_id))
        except ProtocolError as e:
            c._fail_all(f"bad frame from the agent: {e.message}", e.code)
            if c._transport is not None:
                c._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._fail_all(f"the agent closed the connection{f': {exc}' if exc else ''}",
                              ErrorCode.CONNECTION_LOST)

    def pause_writing(self) -> None:
        self.client._writable.clear()

    def resume_writing(self) -> None:
        self.client._writable.set()


class AsyncClient:
    welcome: Welcome

    def __init__(self, address: Address, job: str) -> None:
        self.address = address
        self.job = job
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Response], int]] = {}
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._failure: RequestFailed | None = None
        self._staging: Any = None
        self._rdma: Any = None
        self._remote: RdmaInfo | None = None
        self._free_slots: list[int] = []
        self._window: asyncio.Semaphore

    @classmethod
    async def connect(cls, address: str, job: str, token: str, *,
                      connect_timeout: float = 5.0, rdma_device: str | None = None
                      ) -> AsyncClient:
        self = cls(Address.parse(address), job)
        loop = asyncio.get_running_loop()
        sock = await asyncio.wait_for(self._open(), connect_timeout)
        try:
            await asyncio.wait_for(self._handshake(sock, token, rdma_device), connect_timeout)
            transport, _ = await loop.create_connection(lambda: _Protocol(self), sock=sock)
        except BaseException:
            sock.close()
            if self._rdma is not None:
                self._rdma.close()
            raise
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._window = asyncio.Semaphore(self.welcome.window)
        return self

    async def _open(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        a = self.address
        if a.mode is Mode.LOCAL:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.setblocking(False)
            try:
                await loop.sock_connect(s, a.path)
            except BaseException:
                s.close()
                raise
            return s
        infos = await loop.getaddrinfo(a.host, a.port, type=socket.SOCK_STREAM)
        last: Exception = OSError(f"cannot resolve {a.host}")
        for family, kind, proto, _, addr in infos:
            s = socket.socket(family, kind, proto)
            s.setblocking(False)
            try:
                await loop.sock_connect(s, addr)
            except OSError as e:
                s.close()
                last = e
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        raise last

    async def _recv_frame(self, sock: socket.socket) -> tuple[Frame, list[int]]:
        """One handshake frame, with any descriptors that came with its first bytes."""
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(HEADER_SIZE, FDS_SPACE)
                break
            except BlockingIOError:
                await asyncsock.wait_fd(sock)
        fds = received_fds(anc)
        try:
            try:
                if data:
                    data += await asyncsock.recv_exact(sock, HEADER_SIZE - len(data))
                h = handshake_header(data)
                body = await asyncsock.recv_exact(sock, h.length) if h.length else b""
            except ConnectionError:
                raise ConnectionLost(LOST) from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Frame(h, body), fds

    async def _handshake(self, sock: socket.socket, token: str, rdma_device: str | None
                         ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.closing(open_steps(self.job, self.address.mode, token,
                                           rdma_device)) as steps:
            got: Received | None = None
            while not isinstance(opened := next_step(steps, got), Opened):
                if opened is None:
                    got = await self._recv_frame(sock)
                else:
                    got = None
                    await loop.sock_sendall(sock, opened)
        self._staging, self._rdma, self._remote = opened.staging, opened.rdma, opened.remote
        w = self.welcome = opened.welcome
        if self.address.mode is not Mode.INLINE:
            self._free_slots = list(reversed(range(w.staging_slots)))

    # -- requests

    async def request(self, payload: Payload, target: int = 0) -> Response:
        """Send one request and wait for its answer (raises :class:`RequestFailed`)."""
        fut = await self.send(payload, target)
        return await fut

    async def send(self, payload: Payload, target: int = 0) -> asyncio.Future[Response]:
        """Send one request; the returned future resolves with its answer."""
        mv = byte_view(payload)
        n = mv.nbytes
        w = self.welcome
        staged = self.address.mode is not Mode.INLINE
        if staged and n > w.staging_slot_bytes:
            raise RequestFailed(ErrorCode.PAYLOAD_TOO_LARGE,
                                f"{n} bytes exceed the staging slot of {w.staging_slot_bytes}")
        if not staged and n > w.max_payload:
            raise RequestFailed(ErrorCode.PAYLOAD_TOO_LARGE,
                                f"{n} bytes exceed the agent's {w.max_payload}")
        await self._window.acquire()
        try:
            if self._failure is not None:
                raise self._failure
            if not self._writable.is_set():
                await self._writable.wait()
            if self._failure is not None or self._transport is None:
                raise self._failure or ConnectionLost("not connected")
        except BaseException:
            self._window.release()
            raise
        rid = next(self._ids)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        slot = self._free_slots.pop() if staged else -1
        self._pending[rid] = (fut, slot)
        t = self._transport
        if staged:
            off = slot * w.staging_slot_bytes
            impl.copy(self._staging, off, mv, 0, n)
            if self._rdma is not None and self._remote is not None:
                await asyncio.to_thread(self._rdma.write, off, self._remote.addr + off,
                                        self._remote.rkey, n)
            t.write(encode(MsgType.STAGED, encode_staged(slot, n), rid, target))
        else:
            t.write(pack_header(MsgType.REQUEST, rid, n, target))
            if n:
                t.write(mv)
        return fut

    def _resolve(self, rid: int, resp: Response | None, err: RequestFailed | None) -> None:
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        fut, slot = entry
        if slot >= 0:
            self._free_slots.append(slot)
        self._window.release()
        if fut.done():
            return
        if err is not None:
            fut.set_exception(err)
        else:
            assert resp is not None
            fut.set_result(resp)

    def _fail_all(self, reason: str, code: ErrorCode) -> None:
        if self._failure is None:
            self._failure = ConnectionLost(reason, code)
        self._writable.set()
        for rid in list(self._pending):
            self._resolve(rid, None, ConnectionLost(reason, code))

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(encode(MsgType.BYE))
            t.close()
        self._transport = None
        await asyncio.sleep(0)
        if self._rdma is not None:
            self._rdma.close()
        elif self._staging is not None:
            with contextlib.suppress(BufferError):
                self._staging.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
