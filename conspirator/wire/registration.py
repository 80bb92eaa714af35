"""Buffer registration: worker -> node registry -> DPU agent (DESIGN section 4, step 5).

Both hops are unix ``SOCK_SEQPACKET`` sockets carrying one frame (:mod:`.frames`) per
packet, so a packet's SCM_RIGHTS descriptors belong to exactly that frame.  Bodies are JSON
objects checked here field by field.

worker -> registry (the socket the device plugin's ``Allocate`` mounts into the container)::

    REGISTER  {BufferSpec}            + fds: control memfd, doorbell eventfd,
                                            completion eventfd[, data memfd]
    <- REGISTERED {"buffer_id": N}     or ERROR(REGISTRATION_REFUSED, why)
    DRAIN     {"buffer_id": N}        <- ACK {"buffer_id": N, "ok": true}: send me
                                       nothing new (the agent sets the control block's
                                       drained flag once nothing is in flight)
    WITHDRAW  {"buffer_id": N}        (or just close: the registry withdraws on EOF)

registry -> agent (the agent's publish socket; the registry authenticates with the node
token through HELLO(mode=PUBLISHER)/CHALLENGE/AUTH/WELCOME first)::

    PUBLISH   {Publication}           + the same fds, in the same order
    <- ACK    {"buffer_id": N, "ok": true} or {"ok": false, "error": "..."}
    DRAIN     {"buffer_id": N, "reason": "..."}
    <- ACK
    WITHDRAW  {"buffer_id": N, "reason": "..."}
    <- ACK

A publication of a buffer whose worker is draining says so (``"draining": true``), so an
agent that starts (or restarts) mid-drain never sends it a new request.

The registry is the naming authority for ``buffer_id`` (non-zero, unique per node while
the registry lives), and the authority for *which job* a buffer belongs to: it must check
the caller (``SO_PEERCRED`` -> pod) before trusting ``BufferSpec.job``.  The agent trusts
what an authenticated publisher says.  After (re)connecting, a registry publishes every
live buffer again; an agent that sees a publisher disconnect withdraws that publisher's
buffers.
"""

from __future__ import annotations

import array
import json
import math
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from conspirator.wire.frames import (
    CONTROL_MAX,
    ErrorCode,
    Frame,
    FrameDecoder,
    MsgType,
    ProtocolError,
    encode,
    valid_job,
)

TARGET_MEMFD = "memfd"
TARGET_CUDA_IPC = "cuda-ipc"
TARGETS = (TARGET_MEMFD, TARGET_CUDA_IPC)
MAX_FDS = 4
MAX_SLOTS = 1024
MAX_SLOT_BYTES = 1 << 30
MAX_RESULT_BYTES = 64 << 20
_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                     "float16", "bfloat16", "float32", "float64"})


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...],
         default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"missing field {key!r}")
        return default
    v = d[key]
    if isinstance(v, bool) and typ is not bool and bool not in (
            typ if isinstance(typ, tuple) else (typ,)):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"field {key!r} must not be a boolean")
    if not isinstance(v, typ):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"field {key!r} has the wrong type")
    return v


def _int_in(d: dict[str, Any], key: str, lo: int, hi: int, default: Any = ...) -> int:
    v: int = _get(d, key, int, default)
    if not lo <= v <= hi:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"field {key!r}={v} outside [{lo}, {hi}]")
    return v


def _name(d: dict[str, Any], key: str, default: Any = ...) -> str:
    v: str = _get(d, key, str, default)
    if len(v) > 253 or not v.isprintable():
        raise ProtocolError(ErrorCode.BAD_FRAME, f"field {key!r} is not a valid name")
    return v


@dataclass(frozen=True, slots=True)
class BufferSpec:
    """What a worker registers: one input buffer of ``slots`` x ``slot_bytes``.

    ``weight`` is the replica's throughput estimate (requests/s) from the placement; the
    dispatcher shares work in proportion to it.  ``cuda_ipc_handle`` (hex, 64 bytes) and
    ``cuda_device`` describe a device-memory buffer (``target == "cuda-ipc"``); a memfd
    buffer travels as the fourth descriptor instead.
    """

    job: str
    replica: str
    slots: int
    slot_bytes: int
    result_bytes: int
    target: str = TARGET_MEMFD
    shape: tuple[int, ...] = ()
    dtype: str = "uint8"
    weight: float = 1.0
    pid: int = 0
    cuda_ipc_handle: str = ""
    cuda_device: int = -1

    @property
    def nfds(self) -> int:
        return 4 if self.target == TARGET_MEMFD else 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BufferSpec:
        job = _name(d, "job")
        if not valid_job(job):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"job {job[:80]!r} is not namespace/name")
        target = _get(d, "target", str, TARGET_MEMFD)
        if target not in TARGETS:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown target {target[:40]!r}")
        shape_raw = _get(d, "shape", list, [])
        if len(shape_raw) > 8 or not all(isinstance(x, int) and not isinstance(x, bool)
                                         and 0 < x <= MAX_SLOT_BYTES for x in shape_raw):
            raise ProtocolError(ErrorCode.BAD_FRAME, "shape must be up to 8 positive ints")
        dtype = _get(d, "dtype", str, "uint8")
        if dtype not in _DTYPES:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"unsupported dtype {dtype[:20]!r}")
        weight = float(_get(d, "weight", (int, float), 1.0))
        if not (math.isfinite(weight) and 0 < weight <= 1e9):
            raise ProtocolError(ErrorCode.BAD_FRAME, "weight must be positive and finite")
        handle = _get(d, "cuda_ipc_handle", str, "")
        if target == TARGET_CUDA_IPC and (len(handle) != 128 or not _is_hex(handle)):
            raise ProtocolError(ErrorCode.BAD_FRAME, "cuda-ipc needs a 64-byte hex handle")
        return cls(
            job=job,
            replica=_name(d, "replica"),
            slots=_int_in(d, "slots", 1, MAX_SLOTS),
            slot_bytes=_int_in(d, "slot_bytes", 1, MAX_SLOT_BYTES),
            result_bytes=_int_in(d, "result_bytes", 0, MAX_RESULT_BYTES),
            target=target,
            shape=tuple(shape_raw),
            dtype=dtype,
            weight=weight,
            pid=_int_in(d, "pid", 0, 1 << 31, 0),
            cuda_ipc_handle=handle,
            cuda_device=_int_in(d, "cuda_device", -1, 1024, -1),
        )


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Publication:
    """A registered buffer as the registry publishes it to the agent."""

    buffer_id: int
    spec: BufferSpec
    node: str = ""
    pod_uid: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    draining: bool = False  # the worker announced DRAIN: no new request for it

    def to_dict(self) -> dict[str, Any]:
        return {"buffer_id": self.buffer_id, "spec": self.spec.to_dict(), "node": self.node,
                "pod_uid": self.pod_uid, "extra": dict(self.extra),
                "draining": self.draining}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Publication:
        extra = _get(d, "extra", dict, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ProtocolError(ErrorCode.BAD_FRAME, "extra must map strings to strings")
        return cls(buffer_id=_int_in(d, "buffer_id", 1, 0xFFFF_FFFF),
                   spec=BufferSpec.from_dict(_get(d, "spec", dict)),
                   node=_name(d, "node", ""), pod_uid=_name(d, "pod_uid", ""), extra=extra,
                   draining=_get(d, "draining", bool, False))


def json_body(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > CONTROL_MAX:
        raise ValueError("control message too large")
    return data


#: Control messages nest a few levels; refusing many brackets up front keeps json from
#: recursing (a RecursionError leaves CPython 3.11's recursion accounting skewed).
MAX_BRACKETS = 256


def parse_json(body: bytes) -> dict[str, Any]:
    if body.count(b"[") + body.count(b"{") > MAX_BRACKETS:
        raise ProtocolError(ErrorCode.BAD_FRAME, "body nests too deeply")
    try:
        d = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_FRAME, "body is not JSON") from None
    if not isinstance(d, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "body is not a JSON object")
    return d


# ------------------------------------------------------------------ SEQPACKET + SCM_RIGHTS

def send_frame(sock: socket.socket, frame: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one frame as one packet, with ``fds`` attached (SCM_RIGHTS)."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([frame], anc)


def recv_packet(sock: socket.socket, allowed: frozenset[MsgType]) -> tuple[Frame, list[int]]:
    """Receive one packet: exactly one frame and the descriptors that came with it.

    Raises ``ConnectionError`` at EOF and :class:`ProtocolError` for a malformed packet; in
    both cases any received descriptors are closed first.
    """
    fds = array.array("i")
    data, anc, flags, _ = sock.recvmsg(CONTROL_MAX + 64,
                                       socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            n = len(cdata) - (len(cdata) % fds.itemsize)
            fds.frombytes(cdata[:n])
    return decode_packet(data, flags, list(fds), allowed)


def decode_packet(data: bytes, flags: int, fds: list[int],
                  allowed: frozenset[MsgType]) -> tuple[Frame, list[int]]:
    import os

    try:
        if not data:
            raise ConnectionError("peer closed the registration socket")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ProtocolError(ErrorCode.BAD_FRAME, "packet or its descriptors truncated")
        frames = FrameDecoder(allowed, CONTROL_MAX).feed(data)
        if len(frames) != 1 or len(frames[0].body) + 24 != len(data):
            raise ProtocolError(ErrorCode.BAD_FRAME, "a packet must hold exactly one frame")
        return frames[0], fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def register_frame(spec: BufferSpec, request_id: int = 1) -> bytes:
    return encode(MsgType.REGISTER, json_body(spec.to_dict()), request_id)


def publish_frame(pub: Publication, request_id: int = 1) -> bytes:
    return encode(MsgType.PUBLISH, json_body(pub.to_dict()), request_id)


def withdraw_frame(buffer_id: int, reason: str = "", request_id: int = 1) -> bytes:
    return encode(MsgType.WITHDRAW, json_body({"buffer_id": buffer_id,
                                               "reason": reason[:200]}), request_id)


def drain_frame(buffer_id: int, reason: str = "", request_id: int = 1) -> bytes:
    return encode(MsgType.DRAIN, json_body({"buffer_id": buffer_id,
                                            "reason": reason[:200]}), request_id)


def parse_withdraw(body: bytes) -> tuple[int, str]:
    """The body of WITHDRAW, and of DRAIN (the same fields)."""
    d = parse_json(body)
    return _int_in(d, "buffer_id", 1, 0xFFFF_FFFF), _get(d, "reason", str, "")[:200]
