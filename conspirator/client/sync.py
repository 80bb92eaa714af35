"""The blocking client: ``Client(address, job, token).request(payload)``.

Requests may be pipelined from any number of threads (``submit`` returns a future); at
most the agent's window are outstanding at once, further submits block until one is
answered (backpressure).  A background thread reads answers.  Every future ends: with a
:class:`Response`, or with :class:`RequestFailed` naming why (including
:class:`ConnectionLost` when the connection ends first).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import threading
from concurrent.futures import Future
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

log = logging.getLogger("conspirator.client")


class Client:
    def __init__(self, address: str, job: str, token: str, *, connect_timeout: float = 5.0,
                 rdma_device: str | None = None, reader: bool = True) -> None:
        """Connect and authenticate.  ``reader=False`` leaves the connection to a caller
        that drives the protocol itself (benchmarks): no reader thread is started and
        :attr:`raw_socket` / :attr:`staging_region` expose the authenticated socket and the
        one-sided staging region."""
        self.address = Address.parse(address)
        self.job = job
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Response]] = {}
        self._plock = threading.Lock()
        self._wlock = threading.Lock()
        self._closed = False
        self._failure: RequestFailed | None = None
        self._staging: Any = None
        self._rdma: Any = None
        self._remote: RdmaInfo | None = None
        self._slots: queue.Queue[int] = queue.Queue()
        self._slot_of: dict[int, int] = {}
        self._sock = self._connect(connect_timeout)
        try:
            self.welcome = self._handshake(token, rdma_device)
        except BaseException:
            self._abort()
            raise
        self._sock.settimeout(None)
        self._window = threading.BoundedSemaphore(self.welcome.window)
        self._reader: threading.Thread | None = None
        if reader:
            self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                            name="conspirator-client-reader")
            self._reader.start()

    @property
    def raw_socket(self) -> socket.socket:
        return self._sock

    @property
    def staging_region(self) -> Any:
        return self._staging

    # -- connection

    def _abort(self) -> None:
        self._sock.close()
        if self._rdma is not None:
            self._rdma.close()

    def _connect(self, timeout: float) -> socket.socket:
        a = self.address
        if a.mode is Mode.LOCAL:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(timeout)
            try:
                s.connect(a.path)
            except OSError:
                s.close()
                raise
            return s
        s = socket.create_connection((a.host, a.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(mv[got:])
            if not k:
                raise ConnectionLost(LOST)
            got += k
        return bytes(buf)

    def _recv_frame(self) -> tuple[Frame, list[int]]:
        """One handshake frame, with any descriptors that came with its first bytes."""
        data, anc, _, _ = self._sock.recvmsg(HEADER_SIZE, FDS_SPACE)
        fds = received_fds(anc)
        try:
            if data:
                data += self._recv_exact(HEADER_SIZE - len(data))
            h = handshake_header(data)
            body = self._recv_exact(h.length) if h.length else b""
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Frame(h, body), fds

    def _handshake(self, token: str, rdma_device: str | None) -> Welcome:
        with contextlib.closing(open_steps(self.job, self.address.mode, token,
                                           rdma_device)) as steps:
            got: Received | None = None
            while not isinstance(opened := next_step(steps, got), Opened):
                if opened is None:
                    got = self._recv_frame()
                else:
                    got = None
                    self._sock.sendall(opened)
        self._staging, self._rdma, self._remote = opened.staging, opened.rdma, opened.remote
        w = opened.welcome
        for i in range(w.staging_slots if self.address.mode is not Mode.INLINE else 0):
            self._slots.put(i)
        return w

    # -- requests

    def submit(self, payload: Payload, target: int = 0, timeout: float | None = None
               ) -> Future[Response]:
        """Send one request; the future resolves with its answer."""
        mv = byte_view(payload)
        w = self.welcome
        if self._failure is not None:
            raise self._failure
        if not self._window.acquire(timeout=timeout):
            raise TimeoutError("no room in the agent's window")
        fut: Future[Response] = Future()
        rid = next(self._ids)
        slot = -1
        try:
            if self.address.mode is not Mode.INLINE:
                if mv.nbytes > w.staging_slot_bytes:
                    raise RequestFailed(ErrorCode.PAYLOAD_TOO_LARGE,
                                        f"{mv.nbytes} bytes exceed the staging slot of "
                                        f"{w.staging_slot_bytes}")
                slot = self._slots.get()
            elif mv.nbytes > w.max_payload:
                raise RequestFailed(ErrorCode.PAYLOAD_TOO_LARGE,
                                    f"{mv.nbytes} bytes exceed the agent's {w.max_payload}")
            with self._plock:
                self._pending[rid] = fut
                if slot >= 0:
                    self._slot_of[rid] = slot
            self._send(rid, target, mv, slot)
        except BaseException:
            with self._plock:
                self._pending.pop(rid, None)
                self._slot_of.pop(rid, None)
            if slot >= 0:
                self._slots.put(slot)
            self._window.release()
            raise
        return fut

    def _send(self, rid: int, target: int, mv: memoryview, slot: int) -> None:
        n = mv.nbytes
        if slot >= 0:
            off = slot * self.welcome.staging_slot_bytes
            impl.copy(self._staging, off, mv, 0, n)
            if self._rdma is not None and self._remote is not None:
                self._rdma.write(off, self._remote.addr + off, self._remote.rkey, n)
            frame = encode(MsgType.STAGED, encode_staged(slot, n), rid, target)
            with self._wlock:
                self._sock.sendall(frame)
            return
        hdr = pack_header(MsgType.REQUEST, rid, n, target)
        with self._wlock:
            if n <= 65536:
                self._sock.sendall(hdr + mv)
            else:
                self._sock.sendall(hdr)
                self._sock.sendall(mv)

    def request(self, payload: Payload, target: int = 0, timeout: float | None = None
                ) -> Response:
        return self.submit(payload, target).result(timeout)

    # -- answers

    def _read_loop(self) -> None:
        dec = FrameDecoder(AGENT_TO_CLIENT, self.welcome.max_result)
        reason = "the agent closed the connection"
        code = ErrorCode.CONNECTION_LOST
        try:
            while True:
                data = self._sock.recv(1 << 20)
                if not data:
                    break
                for f in dec.feed(data):
                    if not self._frame(f):
                        code, reason = decode_error(f.header, f.body)
                        return
        except ProtocolError as e:
            reason, code = f"bad frame from the agent: {e.message}", e.code
        except OSError as e:
            reason = f"connection error: {e}"
        finally:
            self._fail_all(reason, code)

    def _frame(self, f: Frame) -> bool:
        h = f.header
        if h.type is MsgType.RESPONSE:
            self._resolve(h.request_id, Response(h.request_id, f.body, h.aux), None)
        elif h.type is MsgType.ERROR:
            if h.request_id == 0:
                return False
            self._resolve(h.request_id, None, error_of(f))
        elif h.type is MsgType.PING:
            with self._wlock:
                self._sock.sendall(encode(MsgType.PONG, f.body, h.request_id))
        return True

    def _resolve(self, rid: int, resp: Response | None, err: RequestFailed | None) -> None:
        with self._plock:
            fut = self._pending.pop(rid, None)
            slot = self._slot_of.pop(rid, -1)
        if fut is None:
            log.warning("answer for unknown request %d", rid)
            return
        if slot >= 0:
            self._slots.put(slot)
        self._window.release()
        if err is not None:
            fut.set_exception(err)
        else:
            assert resp is not None
            fut.set_result(resp)

    def _fail_all(self, reason: str, code: ErrorCode) -> None:
        self._failure = ConnectionLost(reason, code)
        with self._plock:
            pending = list(self._pending.items())
            self._pending.clear()
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(ConnectionLost(reason, code))

    @property
    def outstanding(self) -> int:
        with self._plock:
            return len(self._pending)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with self._wlock:
                self._sock.sendall(encode(MsgType.BYE))
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._sock.close()
        if self._rdma is not None:
            self._rdma.close()
        elif self._staging is not None:
            with contextlib.suppress(BufferError):
                self._staging.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
