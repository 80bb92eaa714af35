"""What the sync and asyncio clients share: addresses, results, errors, the handshake."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from conspirator.wire import auth
from conspirator.wire.frames import (
    AGENT_TO_CLIENT,
    Challenge,
    ErrorCode,
    Frame,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    Welcome,
    decode_error,
    encode,
)

if TYPE_CHECKING:
    import numpy as np
    from typing_extensions import Buffer

    #: What a request carries: anything with the buffer protocol (bytes, memoryview, a
    #: C-contiguous numpy array...).
    Payload = Buffer | np.ndarray[Any, Any]

DEFAULT_PORT = 7470
HANDSHAKE_TYPES = frozenset({MsgType.CHALLENGE, MsgType.WELCOME, MsgType.ERROR,
                             MsgType.RDMA_INFO})


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


def hello_frame(job: str, mode: Mode) -> tuple[Hello, bytes]:
    hello = Hello(job, mode, auth.new_nonce())
    return hello, encode(MsgType.HELLO, hello.encode())


def auth_frame(token: str, hello: Hello, challenge: Frame) -> bytes:
    expect(challenge, MsgType.CHALLENGE)
    ch = Challenge.decode(challenge.body)
    return encode(MsgType.AUTH, auth.prove(token, hello, ch.nonce, ch.version))


def expect(frame: Frame, mtype: MsgType) -> None:
    if frame.type is MsgType.ERROR:
        code, msg = decode_error(frame.header, frame.body)
        raise HandshakeFailed(code, msg)
    if frame.type is not mtype:
        raise HandshakeFailed(ErrorCode.BAD_FRAME,
                              f"expected {mtype.name}, the agent sent {frame.type.name}")


def welcome(frame: Frame) -> Welcome:
    expect(frame, MsgType.WELCOME)
    try:
        return Welcome.decode(frame.body)
    except ProtocolError as e:
        raise HandshakeFailed(e.code, e.message) from None


def map_staging(fd: int, w: Welcome) -> mmap.mmap:
    size = w.staging_slots * w.staging_slot_bytes
    try:
        if os.fstat(fd).st_size < size or size == 0:
            raise HandshakeFailed(ErrorCode.BAD_FRAME, "staging region smaller than announced")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def error_as_handshake(frame: Frame) -> HandshakeFailed:
    code, msg = decode_error(frame.header, frame.body)
    return HandshakeFailed(code, msg)


def error_of(frame: Frame) -> RequestFailed:
    code, msg = decode_error(frame.header, frame.body)
    return RequestFailed(code, msg)


__all__ = ["AGENT_TO_CLIENT", "Address", "ConnectionLost", "HandshakeFailed", "RequestFailed",
           "Response"]
