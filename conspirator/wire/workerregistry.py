"""The worker registry: where workers register their input buffers (DESIGN section 4,
step 5), once for the node daemon and for the agent's ``--local-registry``.

The protocol is :mod:`conspirator.wire.registration` (the worker's side is
``conspirator.runtime``): a ``SOCK_SEQPACKET`` unix socket, one frame per packet, the
buffer's descriptors passed with ``SCM_RIGHTS`` (the control memfd, the doorbell and
completion eventfds, and the data memfd, or a CUDA IPC handle in the body instead of the
data memfd where a GPU exists).  For every registration the registry

1. asks its :class:`IdentityPolicy` who the caller is (the peer's PID from
   ``SO_PEERCRED``, the buffer spec it claims): the node daemon's policy maps the PID to
   its pod and refuses a job the pod does not run; :class:`TrustClaims` (development,
   tests, benchmarks) believes the claim;
2. checks the descriptors: the right count and kinds (memfd, eventfd), memfds sealed
   against shrinking and large enough for the declared geometry;
3. names the buffer (a node-unique id), keeps the descriptors, and hands it to its
   :class:`~conspirator.wire.publishing.AgentPublisher`, which publishes it to the agent
   with the caller's identity attached.

A worker that stops gracefully first sends DRAIN: the registry marks the buffer draining
(its publications say so from then on) and tells the agent, which sends it nothing new.
A buffer is withdrawn when the worker withdraws it, when its connection closes (the
worker exited), and when the policy's owner says the caller is gone
(:meth:`WorkerRegistry.withdraw_callers`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from conspirator.wire.frames import WORKER_TO_REGISTRY, ErrorCode, MsgType, ProtocolError, encode
from conspirator.wire.handshake import error_frame
from conspirator.wire.publishing import AgentPublisher
from conspirator.wire.registration import (
    TARGET_MEMFD,
    BufferSpec,
    Publication,
    json_body,
    parse_json,
    parse_withdraw,
    recv_packet,
    send_frame,
)
from conspirator.wire.shm import Geometry, LayoutError, check_memfd

log = logging.getLogger(__name__)

MAX_BUFFERS_PER_CONNECTION = 16


class Refused(Exception):  # noqa: N818 - a refusal, not an error of ours
    """A registration the registry will not accept (sent back as REGISTRATION_REFUSED)."""


@dataclass(frozen=True)
class Caller:
    """Who registered a buffer, as the identity policy found out."""

    pid: int
    pod_uid: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)  # attached to the publication
    name: str = ""  # for the log

    def __str__(self) -> str:
        return self.name or f"pid {self.pid}"


class IdentityPolicy(Protocol):
    def identify(self, pid: int, spec: BufferSpec) -> Caller:
        """Who process ``pid`` is, if it may register ``spec``; :class:`Refused` if not."""
        ...


#: check(pid, spec) -> None to accept, or the reason to refuse.
Check = Callable[[int, BufferSpec], str | None]


class TrustClaims:
    """Believe the job a worker names (no node daemon: development, tests, benchmarks);
    ``check`` may still refuse."""

    def __init__(self, check: Check | None = None) -> None:
        self.check = check

    def identify(self, pid: int, spec: BufferSpec) -> Caller:
        why = self.check(pid, spec) if self.check is not None else None
        if why:
            raise Refused(why)
        return Caller(pid)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def fd_kind(fd: int) -> str:
    """``memfd``, ``eventfd`` or what else the descriptor is."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "unknown"
    if target.startswith("/memfd:"):
        return "memfd"
    if target == "anon_inode:[eventfd]":
        return "eventfd"
    return target


def check_descriptors(spec: BufferSpec, fds: list[int]) -> None:
    """Refuse descriptors that are not what ``spec`` says, or memfds that could shrink."""
    if len(fds) != spec.nfds:
        raise Refused(f"a {spec.target} buffer comes with {spec.nfds} descriptors, "
                      f"got {len(fds)}")
    want = ["memfd", "eventfd", "eventfd"] + (["memfd"] if spec.target == TARGET_MEMFD else [])
    kinds = [fd_kind(fd) for fd in fds]
    if kinds != want:
        raise Refused(f"descriptors are {kinds}, expected {want}")
    g = Geometry(spec.slots, spec.slot_bytes, spec.result_bytes)
    try:
        check_memfd(fds[0], g.control_bytes, "control block")
        if spec.target == TARGET_MEMFD:
            check_memfd(fds[3], g.data_bytes, "input buffer")
    except LayoutError as exc:
        raise Refused(str(exc)) from exc


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class RegistryEntry:
    """A registered buffer."""

    buffer_id: int
    spec: BufferSpec
    fds: list[int]
    caller: Caller
    connection: int
    draining: bool = False

    def publication(self, node: str) -> Publication:
        return Publication(buffer_id=self.buffer_id, spec=self.spec, node=node,
                           pod_uid=self.caller.pod_uid, extra=dict(self.caller.extra),
                           draining=self.draining)

    def close(self) -> None:
        _close_all(self.fds)
        self.fds = []


class WorkerRegistry:
    """The registry socket and the buffers registered through it (one thread per worker
    connection; :meth:`serve` accepts, :meth:`start` serves in the background)."""

    def __init__(self, node: str, socket_path: Path, policy: IdentityPolicy,
                 publisher: AgentPublisher | None = None) -> None:
        self.node = node
        self.socket_path = Path(socket_path)
        self.policy = policy
        self.publisher = publisher
        self.entries: dict[int, RegistryEntry] = {}
        self._ids = itertools.count(1)
        self._conns = itertools.count(1)
        self._sockets: dict[int, socket.socket] = {}
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        if publisher is not None:
            publisher.snapshot = self.snapshot
            publisher.lookup = self.publication

    # ---- hooks (the node daemon counts)

    def registered(self, result: str) -> None:
        """A registration ended: ``ok``, or ``refused``."""

    def changed(self) -> None:
        """The number of buffers changed."""

    # ---- serving

    def listen(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        s.bind(str(self.socket_path))
        # Workers run as any user; who they are is checked per connection, not by mode bits.
        os.chmod(self.socket_path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP
                 | stat.S_IROTH | stat.S_IWOTH)
        s.listen(64)
        self._listener = s
        log.info("worker registry listening on %s", self.socket_path)

    def serve(self) -> None:
        """Accept workers until :meth:`close` (listens first if needed)."""
        if self._listener is None:
            self.listen()
        assert self._listener is not None
        if self.publisher is not None:
            self.publisher.start()
        listener = self._listener
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stop.is_set():
                    return
                raise
            threading.Thread(target=self._session, args=(conn,), daemon=True,
                             name="registry-conn").start()

    def start(self) -> None:
        """Listen, then serve in a daemon thread."""
        self.listen()
        threading.Thread(target=self.serve, daemon=True, name="registry").start()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            for s in list(self._sockets.values()):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            for e in self.entries.values():
                e.close()
            self.entries.clear()
        if self.publisher is not None:
            self.publisher.stop()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    # ---- one worker connection

    def _session(self, conn: socket.socket) -> None:
        cid = next(self._conns)
        with self._lock:
            self._sockets[cid] = conn
        try:
            pid, _uid, _gid = peer_credentials(conn)
            while not self._stop.is_set():
                try:
                    frame, fds = recv_packet(conn, WORKER_TO_REGISTRY)
                except ConnectionError:
                    return
                except ProtocolError as exc:
                    _send(conn, error_frame(exc.code, exc.message))
                    return  # a malformed frame closes the connection
                if not self._frame(conn, cid, pid, frame.type, frame.header.request_id,
                                   frame.body, fds):
                    return
        except OSError as exc:
            log.debug("registry connection %d: %s", cid, exc)
        finally:
            with self._lock:
                self._sockets.pop(cid, None)
                gone = [b for b, e in self.entries.items() if e.connection == cid]
            for bid in gone:
                self.withdraw(bid, "worker disconnected")
            conn.close()

    def _frame(self, conn: socket.socket, cid: int, pid: int, mtype: MsgType, rid: int,
               body: bytes, fds: list[int]) -> bool:
        """Answer one frame; False to close the connection."""
        if mtype is MsgType.REGISTER:
            try:
                entry = self._register(body, fds, pid, cid)
            except Refused as exc:
                _close_all(fds)
                self.registered("refused")
                log.warning("registration refused (pid %d): %s", pid, exc)
                _send(conn, error_frame(ErrorCode.REGISTRATION_REFUSED, str(exc), rid))
                return True
            except ProtocolError as exc:
                _close_all(fds)
                _send(conn, error_frame(exc.code, exc.message, rid))
                return False
            self.registered("ok")
            _send(conn, encode(MsgType.REGISTERED, json_body({"buffer_id": entry.buffer_id}),
                               rid))
            if self.publisher is not None:
                self.publisher.publish(entry.buffer_id)
            return True
        _close_all(fds)
        if mtype is MsgType.WITHDRAW:
            try:
                bid, _reason = parse_withdraw(body)
            except ProtocolError as exc:
                _send(conn, error_frame(exc.code, exc.message, rid))
                return False
            with self._lock:
                mine = self.entries.get(bid)
                ok = mine is not None and mine.connection == cid
            if ok:
                self.withdraw(bid, "worker withdrew")
            _send(conn, encode(MsgType.ACK, json_body({"buffer_id": bid, "ok": ok}), rid))
        elif mtype is MsgType.DRAIN:
            try:
                bid, _reason = parse_withdraw(body)
            except ProtocolError as exc:
                _send(conn, error_frame(exc.code, exc.message, rid))
                return False
            ok = self.drain(bid, cid)
            _send(conn, encode(MsgType.ACK, json_body({"buffer_id": bid, "ok": ok}), rid))
        elif mtype is MsgType.PING:
            _send(conn, encode(MsgType.PONG, b"", rid))
        return mtype is not MsgType.BYE

    def _register(self, body: bytes, fds: list[int], pid: int, cid: int) -> RegistryEntry:
        spec = BufferSpec.from_dict(parse_json(body))  # ProtocolError: malformed
        caller = self.policy.identify(pid, spec)
        check_descriptors(spec, fds)
        with self._lock:
            if sum(1 for e in self.entries.values() if e.connection == cid) >= \
                    MAX_BUFFERS_PER_CONNECTION:
                raise Refused(f"at most {MAX_BUFFERS_PER_CONNECTION} buffers per connection")
            entry = RegistryEntry(buffer_id=next(self._ids), spec=spec, fds=list(fds),
                                  caller=caller, connection=cid)
            self.entries[entry.buffer_id] = entry
        log.info("buffer %d registered: job %s replica %s, %s, %d x %d bytes (%s)",
                 entry.buffer_id, spec.job, spec.replica, caller, spec.slots,
                 spec.slot_bytes, spec.target)
        self.changed()
        return entry

    # ---- withdrawal

    def withdraw(self, buffer_id: int, reason: str) -> bool:
        with self._lock:
            entry = self.entries.pop(buffer_id, None)
        if entry is None:
            return False
        log.info("buffer %d withdrawn: %s", buffer_id, reason)
        entry.close()
        if self.publisher is not None:
            self.publisher.withdraw(buffer_id, reason)
        self.changed()
        return True

    def drain(self, buffer_id: int, connection: int) -> bool:
        """The worker on ``connection`` drains its buffer: no new request for it."""
        with self._lock:
            entry = self.entries.get(buffer_id)
            if entry is None or entry.connection != connection:
                return False
            first, entry.draining = not entry.draining, True
        if first:
            log.info("buffer %d draining (job %s replica %s)", buffer_id, entry.spec.job,
                     entry.spec.replica)
            if self.publisher is not None:
                self.publisher.drain(buffer_id)
        return True

    def withdraw_callers(self, gone: Callable[[Caller], bool], reason: str) -> int:
        """Withdraw the buffers of callers that are ``gone``, and hang up on them."""
        with self._lock:
            dead = [(b, e.connection) for b, e in self.entries.items() if gone(e.caller)]
        for bid, cid in dead:
            self.withdraw(bid, reason)
            with self._lock:
                s = self._sockets.get(cid)
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        return len(dead)

    # ---- views

    def snapshot(self) -> list[tuple[Publication, list[int]]]:
        with self._lock:
            return [(e.publication(self.node), [os.dup(fd) for fd in e.fds])
                    for e in self.entries.values()]

    def publication(self, buffer_id: int) -> tuple[Publication, list[int]] | None:
        with self._lock:
            e = self.entries.get(buffer_id)
            if e is None:
                return None
            return e.publication(self.node), [os.dup(fd) for fd in e.fds]

    def count(self) -> int:
        with self._lock:
            return len(self.entries)

    def agent_connected(self) -> bool:
        return self.publisher is not None and self.publisher.connected


def _send(conn: socket.socket, frame: bytes) -> None:
    with contextlib.suppress(OSError):
        send_frame(conn, frame)
