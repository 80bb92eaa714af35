"""How a worker registers its input buffer with the node (DESIGN section 4, step 5).

:class:`Registrar` is the interface the runtime uses; :class:`UnixRegistrar` is the real
implementation: a ``SOCK_SEQPACKET`` unix socket to the node daemon's buffer registry
(the path the device plugin's ``Allocate`` hands the container in
``CONSPIRATOR_REGISTRY_SOCKET``), the descriptors passed with SCM_RIGHTS.  The protocol
is :mod:`conspirator.wire.registration`.

A registration lives as long as its connection: the registry withdraws the buffer when the
socket closes, which is how the agent learns that a worker died.  The connection is
therefore kept open for the worker's lifetime; :meth:`UnixRegistrar.wait_closed` reports
the registry going away.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import threading
from collections.abc import Sequence
from typing import Protocol

from conspirator.wire.frames import (
    REGISTRY_REPLIES,
    MsgType,
    ProtocolError,
    decode_error,
)
from conspirator.wire.registration import (
    BufferSpec,
    drain_frame,
    parse_json,
    recv_packet,
    register_frame,
    send_frame,
    withdraw_frame,
)

ENV_SOCKET = "CONSPIRATOR_REGISTRY_SOCKET"


class RegistrationError(RuntimeError):
    """The registry refused the buffer or could not be reached."""


class Registrar(Protocol):
    def register(self, spec: BufferSpec, fds: Sequence[int]) -> int:
        """Hand the buffer to the node; returns its buffer id."""
        ...

    def withdraw(self, buffer_id: int) -> None: ...

    def close(self) -> None: ...


class UnixRegistrar:
    """A registration session with the node registry over its unix socket."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
            except OSError as e:
                s.close()
                raise RegistrationError(f"cannot reach the buffer registry at {self.path}: "
                                        f"{e.strerror or e}") from e
            self._sock = s
        return self._sock

    def _call(self, frame: bytes, fds: Sequence[int], expect: MsgType) -> dict[str, object]:
        with self._lock:
            sock = self._connect()
            try:
                send_frame(sock, frame, list(fds))
                reply, got = recv_packet(sock, REGISTRY_REPLIES)
            except (OSError, ConnectionError, ProtocolError) as e:
                self.close()
                raise RegistrationError(f"registry connection failed: {e}") from e
            for fd in got:
                os.close(fd)
            if reply.type is MsgType.ERROR:
                code, msg = decode_error(reply.header, reply.body)
                raise RegistrationError(f"registry refused: {code.name}: {msg}")
            if reply.type is not expect:
                raise RegistrationError(f"registry answered {reply.type.name}")
            try:
                return parse_json(reply.body)
            except ProtocolError as e:
                raise RegistrationError(str(e)) from e

    def register(self, spec: BufferSpec, fds: Sequence[int]) -> int:
        if len(fds) != spec.nfds:
            raise ValueError(f"{spec.target} registration carries {spec.nfds} descriptors")
        d = self._call(register_frame(spec, next(self._ids)), fds, MsgType.REGISTERED)
        bid = d.get("buffer_id")
        if not isinstance(bid, int) or isinstance(bid, bool) or not 0 < bid <= 0xFFFF_FFFF:
            raise RegistrationError(f"registry returned a bad buffer id {bid!r}")
        return bid

    def drain(self, buffer_id: int) -> bool:
        """Announce that the worker stops: the agent sends the buffer nothing new and sets
        the control block's drained flag once it has nothing in flight there.  False if
        the registry does not know the buffer; RegistrationError if it cannot be asked
        (a registry without DRAIN closes the connection)."""
        d = self._call(drain_frame(buffer_id, "worker stopping", next(self._ids)), (),
                       MsgType.ACK)
        return d.get("ok") is True

    def withdraw(self, buffer_id: int) -> None:
        # closing the socket withdraws everything anyway
        with contextlib.suppress(RegistrationError):
            self._call(withdraw_frame(buffer_id, "worker stopping", next(self._ids)), (),
                       MsgType.ACK)

    def wait_closed(self, timeout: float | None) -> bool:
        """True when the registry closed the session (within ``timeout`` seconds)."""
        sock = self._sock
        if sock is None:
            return True
        try:
            r, _, _ = select.select([sock], [], [], timeout)
        except (OSError, ValueError):
            return True
        if not r:
            return False
        with self._lock:
            # A call on another thread may have taken what woke us (a reply, not a
            # hang-up) while we waited for the lock; the socket's timeout would make the
            # peek below wait for more, holding the lock, so look again first.
            try:
                r, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):
                return True
            if not r:
                return False
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
        return not data

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

