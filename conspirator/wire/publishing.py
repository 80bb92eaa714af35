"""The registry -> agent channel, both ends (DESIGN section 4, step 5).

The worker registry connects to the agent's publish socket (unix ``SOCK_SEQPACKET``),
proves it holds the node token (the handshake of :mod:`conspirator.wire.handshake` with
``Mode.PUBLISHER``), then sends ``PUBLISH`` (with the buffer's descriptors) and
``WITHDRAW``, each acknowledged::

    PUBLISH   {Publication}           + the fds           <- ACK {"buffer_id", "ok"[, "error"]}
    DRAIN     {"buffer_id", "reason"}                     <- ACK
    WITHDRAW  {"buffer_id", "reason"}                     <- ACK
    PING                                                  <- PONG

After every (re)connection it publishes every live buffer again, so an agent that restarts
recovers the node's buffers; an agent that sees a publisher disconnect withdraws that
publisher's buffers.  :class:`AgentPublisher` is the registry's end (blocking, a thread);
:func:`answer_publisher` is the agent's answer to each frame, for any :class:`PublishSink`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from conspirator.wire.frames import REGISTRY_REPLIES, Frame, Mode, MsgType, ProtocolError, encode
from conspirator.wire.handshake import ClientHandshake, expect
from conspirator.wire.registration import (
    Publication,
    drain_frame,
    json_body,
    parse_json,
    parse_withdraw,
    publish_frame,
    recv_packet,
    send_frame,
    withdraw_frame,
)
from conspirator.wire.shm import LayoutError

log = logging.getLogger(__name__)

#: What may refuse a publication on the agent's side (sent back in the ACK).
PUBLISH_REFUSALS = (ProtocolError, LayoutError, OSError, ValueError, RuntimeError)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# ----------------------------------------------------------------------- the agent's end


class PublishSink(Protocol):
    """Where an authenticated publisher's buffers go (the agent's core, a test's record)."""

    def publish(self, pub: Publication, fds: list[int]) -> None:
        """Take the buffer and its descriptors, or raise one of :data:`PUBLISH_REFUSALS`
        (the descriptors are then still the caller's)."""
        ...

    def withdraw(self, buffer_id: int, reason: str) -> bool:
        """Withdraw a buffer this publisher published; whether there was one."""
        ...


def answer_publisher(frame: Frame, fds: list[int], sink: PublishSink) -> bytes | None:
    """The reply to one frame of an authenticated publisher; None for BYE (close).  The
    descriptors that came with the frame are the sink's or closed."""
    h = frame.header
    if h.type is MsgType.PUBLISH:
        try:
            pub = Publication.from_dict(parse_json(frame.body))
            sink.publish(pub, fds)
        except PUBLISH_REFUSALS as e:
            _close_all(fds)
            msg = e.message if isinstance(e, ProtocolError) else str(e)
            log.warning("publication refused: %s", msg)
            return encode(MsgType.ACK, json_body({"ok": False, "error": msg[:500]}),
                          h.request_id)
        return encode(MsgType.ACK, json_body({"ok": True, "buffer_id": pub.buffer_id}),
                      h.request_id)
    _close_all(fds)
    if h.type is MsgType.DRAIN:
        try:
            bid, reason = parse_withdraw(frame.body)
        except ProtocolError as e:
            return encode(MsgType.ACK, json_body({"ok": False, "error": e.message}),
                          h.request_id)
        drain = getattr(sink, "drain", None)  # a DrainSink; PublishSink leaves it out
        if drain is None:
            return encode(MsgType.ACK, json_body({"ok": False, "buffer_id": bid,
                                                  "error": "this agent does not drain"}),
                          h.request_id)
        ok = bool(drain(bid, reason or "the worker is stopping"))
        return encode(MsgType.ACK, json_body({"ok": ok, "buffer_id": bid}), h.request_id)
    if h.type is MsgType.WITHDRAW:
        try:
            bid, reason = parse_withdraw(frame.body)
        except ProtocolError as e:
            return encode(MsgType.ACK, json_body({"ok": False, "error": e.message}),
                          h.request_id)
        ok = sink.withdraw(bid, reason or "withdrawn by the registry")
        return encode(MsgType.ACK, json_body({"ok": ok, "buffer_id": bid}), h.request_id)
    if h.type is MsgType.PING:
        return encode(MsgType.PONG, frame.body, h.request_id)
    return None  # BYE


class DrainSink(PublishSink, Protocol):
    """A sink that can also drain a buffer (the agent's core)."""

    def drain(self, buffer_id: int, reason: str) -> bool:
        """Send the buffer nothing new; whether this publisher published it."""
        ...


# -------------------------------------------------------------------- the registry's end


class AgentPublisher:
    """The registry's authenticated channel to the DPU agent's publish socket."""

    def __init__(self, node: str, socket_path: Path, token: str | bytes,
                 retry: float = 1.0, timeout: float = 10.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.node = node
        self.socket_path = Path(socket_path)
        self.token = token
        self.retry = retry
        self.timeout = timeout
        self.on_change = on_change
        self.connected = False
        self.snapshot: Callable[[], list[tuple[Publication, list[int]]]] = list
        self.lookup: Callable[[int], tuple[Publication, list[int]] | None] = lambda b: None
        self._ops: queue.Queue[tuple[str, int, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self.published: set[int] = set()
        self.last_error: str = ""

    def publish(self, buffer_id: int) -> None:
        self._ops.put(("publish", buffer_id, ""))

    def withdraw(self, buffer_id: int, reason: str) -> None:
        self._ops.put(("withdraw", buffer_id, reason))

    def drain(self, buffer_id: int, reason: str = "the worker is stopping") -> None:
        self._ops.put(("drain", buffer_id, reason))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="agent-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._ops.put(("stop", 0, ""))
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---- the connection

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            self.connected = value
            if self.on_change is not None:
                self.on_change(value)

    def _call(self, sock: socket.socket, frame: bytes, fds: list[int]) -> Frame:
        send_frame(sock, frame, fds)
        reply, got = recv_packet(sock, REGISTRY_REPLIES)
        _close_all(got)
        return reply

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.socket_path))
            hs = ClientHandshake(self.node, Mode.PUBLISHER, self.token)
            auth = hs.on_challenge(self._call(s, hs.hello_frame(), []))
            hs.on_welcome(self._call(s, auth, []))
        except BaseException:
            s.close()
            raise
        return s

    def _acked(self, sock: socket.socket, frame: bytes, fds: list[int]) -> dict[str, Any]:
        return parse_json(expect(self._call(sock, frame, fds), MsgType.ACK).body)

    def _send_publication(self, sock: socket.socket, pub: Publication, fds: list[int]) -> None:
        try:
            ack = self._acked(sock, publish_frame(pub, next(self._ids)), fds)
        finally:
            _close_all(fds)
        if ack.get("ok") is not True:
            log.warning("agent refused buffer %d: %s", pub.buffer_id, ack.get("error"))
            return
        self.published.add(pub.buffer_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = self._connect()
            except (OSError, ProtocolError) as exc:
                self.last_error = str(exc)
                log.debug("agent at %s: %s", self.socket_path, exc)
                self._stop.wait(self.retry)
                continue
            log.info("connected to the DPU agent at %s", self.socket_path)
            try:
                self._session(sock)
            except (OSError, ProtocolError) as exc:
                self.last_error = str(exc)
                log.warning("DPU agent connection lost: %s", exc)
            finally:
                sock.close()
                self.published.clear()
                self._set_connected(False)
            self._stop.wait(self.retry)

    def _session(self, sock: socket.socket) -> None:
        # Everything already queued is covered by the snapshot.
        while True:
            try:
                self._ops.get_nowait()
            except queue.Empty:
                break
        self.published.clear()
        for pub, fds in self.snapshot():
            self._send_publication(sock, pub, fds)
        self._set_connected(True)
        while not self._stop.is_set():
            try:
                op, bid, reason = self._ops.get(timeout=0.5)
            except queue.Empty:
                # Nothing to send: notice an agent that went away.
                r, _, _ = select.select([sock], [], [], 0)
                if r and not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    raise ConnectionError("the agent closed the connection") from None
                continue
            if op == "stop":
                return
            if op == "publish":
                found = self.lookup(bid)
                if found is not None and bid not in self.published:
                    self._send_publication(sock, *found)
            elif op == "drain" and bid in self.published:
                ack = self._acked(sock, drain_frame(bid, reason, next(self._ids)), [])
                if ack.get("ok") is not True:
                    log.warning("agent did not drain buffer %d: %s", bid, ack.get("error"))
            elif op == "withdraw" and bid in self.published:
                self._acked(sock, withdraw_frame(bid, reason, next(self._ids)), [])
                self.published.discard(bid)
