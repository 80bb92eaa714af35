"""A test subscriber for the registry's publisher: the agent's side of the registry ->
agent channel (its publish socket), for the unit and end-to-end tests.

It authenticates the publisher with the node token through the agent's own handshake
(:mod:`conspirator.wire.handshake`) and answers it with the agent's own replies
(:func:`conspirator.wire.publishing.answer_publisher`), recording every PUBLISH (with the
descriptors it received) and WITHDRAW.  The real agent is ``conspirator.dpu_agent``; this
one lets a test see exactly what was published.
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

from conspirator.wire.frames import PUBLISHER_TO_AGENT, Mode, ProtocolError
from conspirator.wire.handshake import ServerHandshake, publisher_welcome, refusal
from conspirator.wire.publishing import answer_publisher
from conspirator.wire.registration import Publication, recv_packet, send_frame


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

    def _token_of(self, mode: Mode, name: str) -> str | None:
        return self.token if mode is Mode.PUBLISHER and name == self.node else None

    def _serve(self, conn: socket.socket) -> None:
        try:
            hs = ServerHandshake(self._token_of, (Mode.PUBLISHER,))
            try:
                send_frame(conn, hs.on_hello(recv_packet(conn, PUBLISHER_TO_AGENT)[0]))
                hs.on_auth(recv_packet(conn, PUBLISHER_TO_AGENT)[0])
            except ProtocolError as e:
                with self._cond:
                    self.refused += 1
                    self._cond.notify_all()
                send_frame(conn, refusal(e))
                return
            send_frame(conn, publisher_welcome(hs.version))
            with self._cond:
                self.sessions += 1
                self._cond.notify_all()
            while True:
                frame, fds = recv_packet(conn, PUBLISHER_TO_AGENT)
                reply = answer_publisher(frame, fds, self)
                if reply is None:
                    return
                send_frame(conn, reply)
        except (OSError, ProtocolError):
            pass
        finally:
            conn.close()

    # -- PublishSink: what the publisher sent, for the test to see

    def publish(self, pub: Publication, fds: list[int]) -> None:
        with self._cond:
            old = self.published.pop(pub.buffer_id, None)
            if old is not None:
                for fd in old.fds:
                    os.close(fd)
            self.published[pub.buffer_id] = Received(pub, fds)
            self._cond.notify_all()

    def withdraw(self, buffer_id: int, reason: str) -> bool:
        with self._cond:
            r = self.published.pop(buffer_id, None)
            if r is not None:
                for fd in r.fds:
                    os.close(fd)
            self.withdrawn.append((buffer_id, reason))
            self._cond.notify_all()
        return True

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
