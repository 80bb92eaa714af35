"""A minimal node buffer registry: the node daemon's stand-in for development, the fast
integration tests and the benchmarks (``conspirator dpu-agent --local-registry PATH``).

It speaks the real protocols on both sides (:mod:`conspirator.wire.registration`): workers
register over its unix ``SOCK_SEQPACKET`` socket with SCM_RIGHTS; it publishes to the
agent's publish socket after authenticating with the node token, re-publishes everything
after the agent restarts, and withdraws a worker's buffers when the worker's connection
closes (the worker died or stopped).

What it does *not* do, and the node daemon (``conspirator.deviceplugin``) must: find out
which pod a caller is (``SO_PEERCRED`` pid -> cgroup -> pod UID) and check that the pod
belongs to the job it claims.  Here ``check`` is a hook, by default trusting the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from conspirator.wire import auth
from conspirator.wire.frames import (
    REGISTRY_REPLIES,
    WORKER_TO_REGISTRY,
    Challenge,
    ErrorCode,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    decode_error,
    encode,
    encode_error,
)
from conspirator.wire.registration import (
    BufferSpec,
    Publication,
    json_body,
    parse_json,
    parse_withdraw,
    publish_frame,
    withdraw_frame,
)

from .server import recv_packet_async, sendmsg_async

log = logging.getLogger("conspirator.registry")

#: check(pid, spec) -> None to accept, or a reason to refuse.
Check = Callable[[int, BufferSpec], str | None]


@dataclass
class Entry:
    buffer_id: int
    spec: BufferSpec
    fds: list[int]
    conn: socket.socket
    pid: int


def peer_pid(sock: socket.socket) -> int:
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    pid: int = struct.unpack("3i", data)[0]
    return pid


class LocalRegistry:
    def __init__(self, socket_path: str, agent_publish_path: str, node: str,
                 node_token: str, check: Check | None = None) -> None:
        self.socket_path = socket_path
        self.agent_publish_path = agent_publish_path
        self.node = node
        self.node_token = node_token
        self.check = check
        self.entries: dict[int, Entry] = {}
        self._ids = itertools.count(1)
        self._ops: asyncio.Queue[tuple[bytes, list[int]]] = asyncio.Queue()
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.publishes = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        s.bind(self.socket_path)
        os.chmod(self.socket_path, 0o666)
        s.listen(64)
        s.setblocking(False)
        self._listener = s
        self._spawn(self._accept_loop())
        self._spawn(self._publisher_loop())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        for e in self.entries.values():
            _close_all(e.fds)
        self.entries.clear()

    # -- workers

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            conn.setblocking(False)
            self._spawn(self._worker(conn))

    async def _worker(self, conn: socket.socket) -> None:
        pid = peer_pid(conn)
        mine: set[int] = set()
        try:
            while True:
                frame, fds = await recv_packet_async(conn, WORKER_TO_REGISTRY)
                h = frame.header
                if h.type is MsgType.REGISTER:
                    reply = self._register(conn, pid, frame.body, fds, mine, h.request_id)
                elif h.type is MsgType.WITHDRAW:
                    _close_all(fds)
                    bid, _ = parse_withdraw(frame.body)
                    ok = bid in mine and self._withdraw(bid, "withdrawn by the worker")
                    mine.discard(bid)
                    reply = json_body({"ok": ok, "buffer_id": bid})
                    await sendmsg_async(conn, encode(MsgType.ACK, reply, h.request_id), [])
                    continue
                elif h.type is MsgType.PING:
                    _close_all(fds)
                    await sendmsg_async(conn, encode(MsgType.PONG, b"", h.request_id), [])
                    continue
                else:  # BYE
                    _close_all(fds)
                    break
                await sendmsg_async(conn, reply, [])
        except ProtocolError as e:
            log.info("worker pid %d sent a bad frame: %s", pid, e)
            with contextlib.suppress(OSError):
                conn.send(encode(MsgType.ERROR, encode_error(e.message), 0, int(e.code)))
        except (ConnectionError, OSError) as e:
            log.debug("worker pid %d gone: %s", pid, e)
        finally:
            conn.close()
            for bid in mine:
                self._withdraw(bid, f"worker pid {pid} exited")

    def _register(self, conn: socket.socket, pid: int, body: bytes, fds: list[int],
                  mine: set[int], request_id: int) -> bytes:
        """The reply frame to a REGISTER: REGISTERED or ERROR(REGISTRATION_REFUSED)."""
        def refuse(msg: str) -> bytes:
            _close_all(fds)
            log.info("refused a registration from pid %d: %s", pid, msg)
            return encode(MsgType.ERROR, encode_error(msg), request_id,
                          int(ErrorCode.REGISTRATION_REFUSED))

        try:
            spec = BufferSpec.from_dict(parse_json(body))
        except ProtocolError as e:
            return refuse(e.message)
        if len(fds) != spec.nfds:
            return refuse(f"{spec.target} registration needs {spec.nfds} descriptors, "
                          f"got {len(fds)}")
        if self.check is not None:
            why = self.check(pid, spec)
            if why:
                return refuse(why)
        bid = next(self._ids)
        self.entries[bid] = Entry(bid, spec, fds, conn, pid)
        mine.add(bid)
        self._publish(bid)
        log.info("registered buffer %d: %s replica %s (pid %d)", bid, spec.job, spec.replica,
                 pid)
        return encode(MsgType.REGISTERED, json_body({"buffer_id": bid}), request_id)

    def _publish(self, bid: int) -> None:
        e = self.entries[bid]
        pub = Publication(bid, e.spec, node=self.node)
        # The op owns duplicates: the worker may be withdrawn before the op is sent.
        self._ops.put_nowait((publish_frame(pub, bid), [os.dup(fd) for fd in e.fds]))

    def _withdraw(self, bid: int, reason: str) -> bool:
        e = self.entries.pop(bid, None)
        if e is None:
            return False
        _close_all(e.fds)
        self._ops.put_nowait((withdraw_frame(bid, reason, bid), []))
        return True

    # -- the agent

    async def _publisher_loop(self) -> None:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, self.agent_publish_path)
                await self._authenticate(sock)
                # A fresh agent knows nothing: publish every live buffer, drop stale ops.
                while not self._ops.empty():
                    _close_all(self._ops.get_nowait()[1])
                for bid in list(self.entries):
                    self._publish(bid)
                self.connected.set()
                log.info("publishing to the agent at %s", self.agent_publish_path)
                while True:
                    frame, fds = await self._next_op(sock)
                    try:
                        await sendmsg_async(sock, frame, fds)
                    finally:
                        _close_all(fds)
                    reply, got = await recv_packet_async(sock, REGISTRY_REPLIES)
                    _close_all(got)
                    if reply.type is MsgType.ERROR:
                        code, msg = decode_error(reply.header, reply.body)
                        raise ConnectionError(f"agent: {code.name}: {msg}")
                    d = parse_json(reply.body)
                    self.publishes += 1
                    if not d.get("ok", False):
                        log.warning("agent refused: %s", d.get("error", d))
            except (OSError, ConnectionError, ProtocolError) as e:
                log.debug("agent publish channel: %s", e)
            finally:
                self.connected.clear()
                sock.close()
            await asyncio.sleep(0.1)

    async def _next_op(self, sock: socket.socket) -> tuple[bytes, list[int]]:
        """The next op to send; raises ConnectionError if the agent goes away meanwhile
        (an idle channel must still notice an agent restart)."""
        get = asyncio.ensure_future(self._ops.get())
        gone = asyncio.ensure_future(_wait_readable(sock))
        try:
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get.done() and not get.cancelled():
                return get.result()
            raise ConnectionError("the agent closed the publish channel")
        finally:
            # Both helpers finish here: the watcher must remove its reader before anyone
            # else adds one on the same fd.  (asyncio.wait never swallows a cancellation
            # of this task, unlike awaiting the cancelled helpers would.)
            for t in (gone, get):
                if not t.done():
                    t.cancel()
            await asyncio.wait({gone, get})

    async def _authenticate(self, sock: socket.socket) -> None:
        hello = Hello(self.node, Mode.PUBLISHER, auth.new_nonce())
        await sendmsg_async(sock, encode(MsgType.HELLO, hello.encode()), [])
        frame, fds = await recv_packet_async(sock, REGISTRY_REPLIES)
        _close_all(fds)
        if frame.type is not MsgType.CHALLENGE:
            raise ConnectionError(f"agent answered {frame.type.name} to HELLO")
        ch = Challenge.decode(frame.body)
        mac = auth.prove(self.node_token, hello, ch.nonce, ch.version)
        await sendmsg_async(sock, encode(MsgType.AUTH, mac), [])
        frame, fds = await recv_packet_async(sock, REGISTRY_REPLIES)
        _close_all(fds)
        if frame.type is not MsgType.WELCOME:
            code, msg = decode_error(frame.header, frame.body)
            raise ConnectionError(f"agent refused the publisher: {code.name}: {msg}")


async def _wait_readable(sock: socket.socket) -> None:
    """Returns when the socket is readable: here only EOF or an unexpected frame."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
