"""What the sync and asyncio clients share: addresses, results, errors, and the steps of
opening a connection (the handshake of :mod:`conspirator.wire.handshake`, then the
transport's set-up), which each client drives over its own socket."""

from __future__ import annotations

import array
import mmap
import os
import socket
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from conspirator.wire.frames import (
    AGENT_TO_CLIENT,
    CONTROL_MAX,
    ErrorCode,
    Frame,
    Header,
    Mode,
    MsgType,
    ProtocolError,
    RdmaInfo,
    Welcome,
    decode_error,
    encode,
    parse_header,
)
from conspirator.wire.handshake import AGENT_HANDSHAKE_TYPES, ClientHandshake, expect

if TYPE_CHECKING:
    import numpy as np
    from typing_extensions import Buffer

    #: What a request carries: anything with the buffer protocol (bytes, memoryview, a
    #: C-contiguous numpy array...).
    Payload = Buffer | np.ndarray[Any, Any]

DEFAULT_PORT = 7470
HANDSHAKE_TYPES = AGENT_HANDSHAKE_TYPES
LOST = "the agent closed the connection during the handshake"


class RequestFailed(Exception):  # noqa: N818 - it is the request that failed
    """The agent (or the worker) answered a request with an error, or it could not be
    answered; ``code`` says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(RequestFailed):
    """The connection to the agent ended with the request unanswered."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.CONNECTION_LOST) -> None:
        super().__init__(code, message)


class HandshakeFailed(RequestFailed):
    """The agent refused the connection (wrong token, unknown job, version...)."""


@dataclass(frozen=True, slots=True)
class Response:
    request_id: int
    data: bytes
    buffer_id: int  # the replica buffer that served the request


@dataclass(frozen=True, slots=True)
class Address:
    mode: Mode
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, address: str) -> Address:
        """``tcp://host:port`` (or ``host:port``), ``unix:///path`` (same-host one-sided
        transport), ``rdma://host:port`` (RDMA, TCP for control)."""
        if "://" not in address:
            address = "tcp://" + address
        u = urlparse(address)
        if u.scheme == "unix":
            path = u.path or u.netloc
            if not path:
                raise ValueError(f"unix address without a path: {address!r}")
            return cls(Mode.LOCAL, path=path)
        if u.scheme in ("tcp", "rdma"):
            if not u.hostname:
                raise ValueError(f"address without a host: {address!r}")
            return cls(Mode.INLINE if u.scheme == "tcp" else Mode.RDMA, u.hostname,
                       u.port or DEFAULT_PORT)
        raise ValueError(f"unknown scheme {u.scheme!r} (tcp, unix, rdma)")


def byte_view(payload: Payload) -> memoryview:
    """The payload's bytes without a copy (it must be C-contiguous)."""
    view: memoryview = memoryview(payload).cast("B")  # type: ignore[arg-type]
    return view


@dataclass
class Opened:
    """A connection after its handshake: the WELCOME, and for the one-sided transports the
    staging region (and the RDMA endpoint and the agent's queue pair)."""

    welcome: Welcome
    staging: Any = None
    rdma: Any = None
    remote: RdmaInfo | None = None


Received = tuple[Frame, list[int]]
#: The steps of opening a connection: each yield is bytes to send, or None for the next
#: frame (and the descriptors that came with it), which the driver sends back in.
Steps = Generator[bytes | None, Received | None, Opened]


def next_step(steps: Steps, got: Received | None) -> bytes | Opened | None:
    """The next step after ``got`` (a frame the previous step asked for, else None), or
    the open connection once the steps are done."""
    try:
        return steps.send(got)
    except StopIteration as done:
        opened: Opened = done.value
        return opened


def _receive() -> Generator[None, Received | None, Received]:
    got = yield None
    assert got is not None
    return got


def open_steps(job: str, mode: Mode, token: str, rdma_device: str | None) -> Steps:
    """HELLO, CHALLENGE/AUTH, WELCOME, then the transport's set-up (the local staging
    region that came with WELCOME; RDMA_INFO both ways).  Raises :class:`HandshakeFailed`;
    the RDMA endpoint is closed on any failure (the driver closes the steps on its own)."""
    hs = ClientHandshake(job, mode, token)
    ep = None
    try:
        yield hs.hello_frame()
        frame, fds = yield from _receive()
        _close_fds(fds)
        yield hs.on_challenge(frame)
        frame, fds = yield from _receive()
        try:
            w = hs.on_welcome(frame)
            if mode is Mode.LOCAL and len(fds) != 1:
                raise HandshakeFailed(ErrorCode.BAD_FRAME, "no staging region came with WELCOME")
        except BaseException:
            _close_fds(fds)
            raise
        if mode is Mode.LOCAL:
            return Opened(w, map_staging(fds[0], w))
        _close_fds(fds)
        if mode is not Mode.RDMA:
            return Opened(w)
        from conspirator.wire import verbs

        ep = verbs.RcEndpoint(rdma_device, w.staging_slots * w.staging_slot_bytes,
                              remote_write=False)
        yield encode(MsgType.RDMA_INFO, ep.info().encode())
        frame, fds = yield from _receive()
        _close_fds(fds)
        remote = RdmaInfo.decode(expect(frame, MsgType.RDMA_INFO).body)
        ep.connect(remote)
        return Opened(w, ep.region(), ep, remote)
    except ProtocolError as e:
        if ep is not None:
            ep.close()
        raise HandshakeFailed(e.code, e.message) from None
    except BaseException:
        if ep is not None:
            ep.close()
        raise


#: Ancillary space for the descriptors a handshake frame may bring (a staging region).
FDS_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)


def received_fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The SCM_RIGHTS descriptors in ``recvmsg``'s ancillary data."""
    fds = array.array("i")
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    return list(fds)


def handshake_header(data: bytes) -> Header:
    """The header of a frame the agent sent during the handshake (``data`` empty: it
    closed the connection)."""
    if not data:
        raise ConnectionLost(LOST)
    try:
        return parse_header(data, HANDSHAKE_TYPES, CONTROL_MAX)
    except ProtocolError as e:
        raise HandshakeFailed(e.code, e.message) from None


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def map_staging(fd: int, w: Welcome) -> mmap.mmap:
    size = w.staging_slots * w.staging_slot_bytes
    try:
        if os.fstat(fd).st_size < size or size == 0:
            raise HandshakeFailed(ErrorCode.BAD_FRAME, "staging region smaller than announced")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def error_of(frame: Frame) -> RequestFailed:
    code, msg = decode_error(frame.header, frame.body)
    return RequestFailed(code, msg)


__all__ = ["AGENT_TO_CLIENT", "Address", "ConnectionLost", "HandshakeFailed", "RequestFailed",
           "Response"]
