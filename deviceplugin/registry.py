"""The node-local buffer registry, and its publisher to the DPU agent.

Workers register their input buffers here (DESIGN section 4, step 5).  The protocol is
:mod:`conspirator.wire.registration` (the worker's side is ``conspirator.runtime``): a
``SOCK_SEQPACKET`` unix socket, one frame per packet, the buffer's descriptors passed with
``SCM_RIGHTS`` (the control memfd, the doorbell and completion eventfds, and the data
memfd, or a CUDA IPC handle in the body instead of the data memfd where a GPU exists).

For every registration the registry

1. finds out who is calling: the peer's PID from ``SO_PEERCRED`` (in the daemon's PID
   namespace: the DaemonSet runs with ``hostPID``), its pod from ``/proc/<pid>/cgroup``
   (the kubelet puts each pod under a cgroup named after the pod's UID), the pod from the
   API server;
2. refuses a buffer for a job the pod does not run: the job ``namespace/name`` the worker
   names must be the pod's namespace and the job the operator set on the pod (label
   ``conspirator.io/job`` or the ``CONSPIRATOR_JOB`` variable of its spec);
3. checks the descriptors: the right count and kinds (memfd, eventfd), memfds sealed
   against shrinking and large enough for the declared geometry;
4. names the buffer (a node-unique id), keeps the descriptors, and publishes it to the
   DPU agent with the pod's identity and MIG devices attached.

A buffer is withdrawn when the worker withdraws it, when its connection closes (the
worker exited), and when its pod is gone from the API server (:meth:`Registry.prune`,
called by the daemon's reconcile pass).

The channel to the agent (:class:`AgentPublisher`) is the registry -> agent hop of the same
protocol: the registry connects to the agent's publish socket, proves it holds the node
token (``HELLO(mode=PUBLISHER)``, ``CHALLENGE``, ``AUTH`` with an HMAC over both nonces,
``WELCOME``), then sends ``PUBLISH`` (with the descriptors) and ``WITHDRAW``, each
acknowledged.  After every (re)connection it publishes every live buffer again, so an
agent that restarts recovers the node's buffers.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import queue
import re
import select
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conspirator.deviceplugin.kube import Cluster, PodInfo
from conspirator.deviceplugin.metrics import Metrics
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
    TARGET_MEMFD,
    BufferSpec,
    Publication,
    json_body,
    parse_json,
    parse_withdraw,
    publish_frame,
    recv_packet,
    send_frame,
    withdraw_frame,
)
from conspirator.wire.shm import Geometry, LayoutError, check_memfd

log = logging.getLogger(__name__)

JOB_LABEL = "conspirator.io/job"
JOB_ENV = "CONSPIRATOR_JOB"
MAX_BUFFERS_PER_CONNECTION = 16
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def pod_uid_of_cgroup(text: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` file (cgroup v1 or v2; cgroupfs or systemd
    drivers: ``.../pod<uid>/<container>`` or ``...-pod<uid_with_underscores>.slice``)."""
    for line in text.splitlines():
        m = _POD_UID.search(line.rsplit(":", 1)[-1])
        if m:
            return m.group(1).replace("_", "-")
    return None


def pod_uid_of_pid(pid: int, proc: Path = Path("/proc")) -> str | None:
    try:
        return pod_uid_of_cgroup((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return None


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


class Refused(Exception):  # noqa: N818 - a refusal, not an error of ours
    """A registration the registry will not accept (sent back as REGISTRATION_REFUSED)."""


@dataclass
class Entry:
    """A registered buffer."""

    buffer_id: int
    spec: BufferSpec
    fds: list[int]
    pod: PodInfo
    peer_pid: int
    devices: list[str]
    connection: int

    def publication(self, node: str) -> Publication:
        extra = {"pod": f"{self.pod.namespace}/{self.pod.name}",
                 "peer_pid": str(self.peer_pid)}
        if self.devices:
            extra["devices"] = ",".join(self.devices)
        return Publication(buffer_id=self.buffer_id, spec=self.spec, node=node,
                           pod_uid=self.pod.uid, extra=extra)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


Identify = Callable[[int], str | None]
"""PID -> pod UID."""
Resolve = Callable[[str], PodInfo | None]
"""Pod UID -> the pod (from the API server)."""
DevicesOf = Callable[[PodInfo], list[str]]
"""A pod -> the MIG devices the kubelet gave it."""


class Registry:
    """The registry socket and the buffers registered through it."""

    def __init__(self, node: str, socket_path: Path, resolve: Resolve,
                 identify: Identify = pod_uid_of_pid,
                 devices_of: DevicesOf | None = None,
                 publisher: AgentPublisher | None = None,
                 metrics: Metrics | None = None) -> None:
        self.node = node
        self.socket_path = socket_path
        self.resolve = resolve
        self.identify = identify
        self.devices_of = devices_of or (lambda pod: [])
        self.publisher = publisher
        self.metrics = metrics
        self.entries: dict[int, Entry] = {}
        self._ids = itertools.count(1)
        self._conns = itertools.count(1)
        self._sockets: dict[int, socket.socket] = {}
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        if publisher is not None:
            publisher.snapshot = self.snapshot
            publisher.lookup = self.publication

    # ---- serving --------------------------------------------------------------------

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
        log.info("buffer registry listening on %s", self.socket_path)

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

    # ---- one worker connection ------------------------------------------------------

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
                    self._send(conn, encode(MsgType.ERROR, encode_error(exc.message), 0,
                                            exc.code))
                    return  # a malformed frame closes the connection
                rid = frame.header.request_id
                if frame.type is MsgType.REGISTER:
                    try:
                        entry = self._register(frame.body, fds, pid, cid)
                    except Refused as exc:
                        for fd in fds:
                            os.close(fd)
                        self._count("refused")
                        log.warning("registration refused (pid %d): %s", pid, exc)
                        self._send(conn, encode(MsgType.ERROR, encode_error(str(exc)), rid,
                                                ErrorCode.REGISTRATION_REFUSED))
                        continue
                    except ProtocolError as exc:
                        for fd in fds:
                            os.close(fd)
                        self._send(conn, encode(MsgType.ERROR, encode_error(exc.message),
                                                rid, exc.code))
                        return
                    self._count("ok")
                    self._send(conn, encode(MsgType.REGISTERED,
                                            json_body({"buffer_id": entry.buffer_id}), rid))
                    if self.publisher is not None:
                        self.publisher.publish(entry.buffer_id)
                    continue
                for fd in fds:
                    os.close(fd)
                if frame.type is MsgType.WITHDRAW:
                    try:
                        bid, _reason = parse_withdraw(frame.body)
                    except ProtocolError as exc:
                        self._send(conn, encode(MsgType.ERROR, encode_error(exc.message), rid,
                                                exc.code))
                        return
                    with self._lock:
                        mine = self.entries.get(bid)
                        ok = mine is not None and mine.connection == cid
                    if ok:
                        self.withdraw(bid, "worker withdrew")
                    self._send(conn, encode(MsgType.ACK, json_body(
                        {"buffer_id": bid, "ok": ok}), rid))
                elif frame.type is MsgType.PING:
                    self._send(conn, encode(MsgType.PONG, b"", rid))
                elif frame.type is MsgType.BYE:
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

    @staticmethod
    def _send(conn: socket.socket, frame: bytes) -> None:
        with contextlib.suppress(OSError):
            send_frame(conn, frame)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.buffer_registrations.labels(self.node, result).inc()
            self.metrics.buffers.labels(self.node).set(self.count())

    def _register(self, body: bytes, fds: list[int], pid: int, cid: int) -> Entry:
        spec = BufferSpec.from_dict(parse_json(body))  # ProtocolError: malformed
        uid = self.identify(pid)
        if uid is None:
            raise Refused(f"process {pid} is not in a pod")
        pod = self.resolve(uid)
        if pod is None:
            raise Refused(f"pod {uid} of process {pid} is not known on node {self.node}")
        if not pod.alive or pod.deleting:
            raise Refused(f"pod {pod.namespace}/{pod.name} is terminating")
        ns, _, job = spec.job.partition("/")
        jobs = {pod.labels.get(JOB_LABEL, "")} | set(pod.env.get(JOB_ENV, ()))
        if ns != pod.namespace or job not in jobs:
            raise Refused(f"pod {pod.namespace}/{pod.name} runs no worker of job {spec.job}")
        self._check_fds(spec, fds)
        with self._lock:
            if sum(1 for e in self.entries.values() if e.connection == cid) >= \
                    MAX_BUFFERS_PER_CONNECTION:
                raise Refused(f"at most {MAX_BUFFERS_PER_CONNECTION} buffers per connection")
            entry = Entry(buffer_id=next(self._ids), spec=spec, fds=list(fds), pod=pod,
                          peer_pid=pid, devices=self.devices_of(pod), connection=cid)
            self.entries[entry.buffer_id] = entry
        log.info("buffer %d registered: job %s replica %s, pod %s/%s, %d x %d bytes (%s)",
                 entry.buffer_id, spec.job, spec.replica, pod.namespace, pod.name,
                 spec.slots, spec.slot_bytes, spec.target)
        return entry

    @staticmethod
    def _check_fds(spec: BufferSpec, fds: list[int]) -> None:
        if len(fds) != spec.nfds:
            raise Refused(f"a {spec.target} buffer comes with {spec.nfds} descriptors, "
                          f"got {len(fds)}")
        want = ["memfd", "eventfd", "eventfd"] + (["memfd"] if spec.target == TARGET_MEMFD
                                                  else [])
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

    # ---- withdrawal -----------------------------------------------------------------

    def withdraw(self, buffer_id: int, reason: str) -> bool:
        with self._lock:
            entry = self.entries.pop(buffer_id, None)
        if entry is None:
            return False
        log.info("buffer %d withdrawn: %s", buffer_id, reason)
        entry.close()
        if self.publisher is not None:
            self.publisher.withdraw(buffer_id, reason)
        if self.metrics is not None:
            self.metrics.buffers.labels(self.node).set(self.count())
        return True

    def prune(self, alive: set[str]) -> int:
        """Withdraw the buffers of pods that are gone, and close their connections."""
        with self._lock:
            dead = [(b, e.connection) for b, e in self.entries.items() if e.pod.uid not in alive]
        for bid, cid in dead:
            self.withdraw(bid, "pod exited")
            with self._lock:
                s = self._sockets.get(cid)
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        return len(dead)

    # ---- views ----------------------------------------------------------------------

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


class AgentPublisher:
    """The registry's authenticated channel to the DPU agent's publish socket."""

    def __init__(self, node: str, socket_path: Path, token: str | bytes,
                 retry: float = 1.0, timeout: float = 10.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.node = node
        self.socket_path = socket_path
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

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="agent-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._ops.put(("stop", 0, ""))
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---- the connection -------------------------------------------------------------

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            self.connected = value
            if self.on_change is not None:
                self.on_change(value)

    def _call(self, sock: socket.socket, frame: bytes, fds: list[int],
              expect: MsgType) -> bytes:
        send_frame(sock, frame, fds)
        reply, got = recv_packet(sock, REGISTRY_REPLIES)
        for fd in got:
            os.close(fd)
        if reply.type is MsgType.ERROR:
            code, msg = decode_error(reply.header, reply.body)
            raise ConnectionError(f"agent refused: {code.name}: {msg}")
        if reply.type is not expect:
            raise ConnectionError(f"agent answered {reply.type.name}, expected {expect.name}")
        return reply.body

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.socket_path))
            hello = Hello(identity=self.node, mode=Mode.PUBLISHER, nonce=auth.new_nonce())
            body = self._call(s, encode(MsgType.HELLO, hello.encode(), 0), [],
                              MsgType.CHALLENGE)
            ch = Challenge.decode(body)
            mac = auth.prove(self.token, hello, ch.nonce, ch.version)
            self._call(s, encode(MsgType.AUTH, mac, 0), [], MsgType.WELCOME)
        except BaseException:
            s.close()
            raise
        return s

    def _send_publication(self, sock: socket.socket, pub: Publication, fds: list[int]) -> None:
        try:
            body = self._call(sock, publish_frame(pub, next(self._ids)), fds, MsgType.ACK)
        finally:
            for fd in fds:
                os.close(fd)
        ack = parse_json(body)
        if ack.get("ok") is not True:
            log.warning("agent refused buffer %d: %s", pub.buffer_id, ack.get("error"))
            return
        self.published.add(pub.buffer_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = self._connect()
            except (OSError, ConnectionError, ProtocolError) as exc:
                self.last_error = str(exc)
                log.debug("agent at %s: %s", self.socket_path, exc)
                self._stop.wait(self.retry)
                continue
            log.info("connected to the DPU agent at %s", self.socket_path)
            try:
                self._session(sock)
            except (OSError, ConnectionError, ProtocolError) as exc:
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
            elif op == "withdraw" and bid in self.published:
                self._call(sock, withdraw_frame(bid, reason, next(self._ids)), [], MsgType.ACK)
                self.published.discard(bid)


def make_registry(args: argparse.Namespace, cluster: Cluster, metrics: Metrics,
                  devices_of: DevicesOf | None = None
                  ) -> tuple[Registry, Callable[[], None]]:
    """The registry the ``node-daemon`` flags describe, and the function that serves it."""
    publisher = None
    if args.agent_socket and args.agent_token_file:
        token = Path(args.agent_token_file).read_text().strip()
        publisher = AgentPublisher(args.node_name, Path(args.agent_socket), token)

    def resolve(uid: str) -> PodInfo | None:
        return next((p for p in cluster.pods() if p.uid == uid), None)

    registry = Registry(args.node_name, Path(args.registry_socket), resolve,
                        devices_of=devices_of, publisher=publisher, metrics=metrics)
    registry.listen()
    return registry, registry.serve


__all__ = [
    "AgentPublisher",
    "Entry",
    "Registry",
    "fd_kind",
    "make_registry",
    "peer_credentials",
    "pod_uid_of_cgroup",
    "pod_uid_of_pid",
]
