"""A test subscriber for the registry's publisher: the agent's side of the registry ->
agent channel (its publish socket), for the unit and end-to-end tests.

It authenticates the publisher with the node token exactly as the protocol says
(HELLO(mode=PUBLISHER), CHALLENGE, AUTH with the HMAC, WELCOME or ERROR(AUTH_FAILED)),
then records every PUBLISH (with the descriptors it received) and WITHDRAW, acknowledging
each.  The real agent is ``conspirator.dpu_agent``; this one lets a test see exactly what
was published.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conspirator.wire import auth
from conspirator.wire.frames import (
    PUBLISHER_TO_AGENT,
    Challenge,
    ErrorCode,
    Hello,
    MsgType,
    Welcome,
    decode_auth,
    encode,
    encode_error,
)
from conspirator.wire.registration import (
    Publication,
    json_body,
    parse_json,
    parse_withdraw,
    recv_packet,
    send_frame,
)


@dataclass
class Received:
    publication: Publication
    fds: list[int]


@dataclass
class TestAgent:
    __test__ = False

    socket_path: Path
    token: str
    node: str = "node-1"
    published: dict[int, Received] = field(default_factory=dict)
    withdrawn: list[tuple[int, str]] = field(default_factory=list)
    sessions: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def start(self) -> TestAgent:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(str(self.socket_path))
        s.listen(4)
        self._listener = s
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        with self._cond:
            for r in self.published.values():
                for fd in r.fds:
                    os.close(fd)
            self.published.clear()
        if self.socket_path.exists():
            self.socket_path.unlink()

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            frame, _ = recv_packet(conn, PUBLISHER_TO_AGENT)
            hello = Hello.decode(frame.body)
            nonce = auth.new_nonce()
            send_frame(conn, encode(MsgType.CHALLENGE, Challenge(nonce, 1).encode()))
            frame, _ = recv_packet(conn, PUBLISHER_TO_AGENT)
            ok = frame.type is MsgType.AUTH and hello.identity == self.node and auth.verify(
                self.token, hello, nonce, 1, decode_auth(frame.body))
            if not ok:
                with self._cond:
                    self.refused += 1
                    self._cond.notify_all()
                send_frame(conn, encode(MsgType.ERROR, encode_error("authentication failed"),
                                        0, ErrorCode.AUTH_FAILED))
                return
            send_frame(conn, encode(MsgType.WELCOME, Welcome(1, 1, 0, 0, 0, 0, ()).encode()))
            with self._cond:
                self.sessions += 1
                self._cond.notify_all()
            while True:
                frame, fds = recv_packet(conn, PUBLISHER_TO_AGENT)
                rid = frame.header.request_id
                if frame.type is MsgType.PUBLISH:
                    pub = Publication.from_dict(parse_json(frame.body))
                    with self._cond:
                        old = self.published.pop(pub.buffer_id, None)
                        if old is not None:
                            for fd in old.fds:
                                os.close(fd)
                        self.published[pub.buffer_id] = Received(pub, fds)
                        self._cond.notify_all()
                    send_frame(conn, encode(MsgType.ACK, json_body(
                        {"buffer_id": pub.buffer_id, "ok": True}), rid))
                elif frame.type is MsgType.WITHDRAW:
                    bid, reason = parse_withdraw(frame.body)
                    with self._cond:
                        r = self.published.pop(bid, None)
                        if r is not None:
                            for fd in r.fds:
                                os.close(fd)
                        self.withdrawn.append((bid, reason))
                        self._cond.notify_all()
                    send_frame(conn, encode(MsgType.ACK, json_body(
                        {"buffer_id": bid, "ok": True}), rid))
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            conn.close()

    def wait(self, what: str, probe: Callable[[], object], timeout: float = 20) -> object:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = probe()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"test agent: timed out waiting for {what}")
                self._cond.wait(min(left, 0.2))
