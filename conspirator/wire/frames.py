"""Frames of the data-path wire protocol (DESIGN section 6), version 1.

Every message on every data-path channel (client <-> agent over TCP or a unix socket, worker
<-> buffer registry, registry -> agent) is one frame: a fixed 24-byte little-endian header
followed by ``length`` body bytes::

    offset size field
    0      4    magic       b"CNSP"
    4      1    version     protocol version of this frame (1)
    5      1    type        MsgType
    6      2    flags       0 in version 1 (anything else is refused)
    8      8    request_id  chosen by the client, non-zero for requests; 0 = the connection
    16     4    length      body bytes that follow
    20     4    aux         per type: REQUEST/STAGED target buffer id (0 = any replica),
                            RESPONSE the buffer id that served it, ERROR the ErrorCode

Bodies are fixed structs (below) except REQUEST (the raw input bytes), RESPONSE (the raw
result bytes), ERROR (a UTF-8 message) and the registry channel's JSON bodies.

Everything here is pure and total: a malformed input raises :class:`ProtocolError`, never
anything else, and never reads past a declared length (the fuzz tests hold it to that).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"CNSP"
VERSION = 1
MIN_VERSION = 1
MAX_VERSION = 1

HEADER = struct.Struct("<4sBBHQII")
HEADER_SIZE = HEADER.size  # 24
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

#: Largest body of any frame other than REQUEST/RESPONSE (handshake, errors, registry JSON).
CONTROL_MAX = 64 * 1024
#: Hard ceiling of a REQUEST/RESPONSE body in version 1; agents advertise a smaller one.
PAYLOAD_CEILING = 1 << 30
#: Longest ERROR message.
ERROR_MESSAGE_MAX = 1024
NONCE_SIZE = 16
MAC_SIZE = 32
ANY_BUFFER = 0


class MsgType(IntEnum):
    # client <-> agent
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    REQUEST = 5
    RESPONSE = 6
    ERROR = 7
    PING = 8
    PONG = 9
    BYE = 10
    STAGED = 11
    RDMA_INFO = 12
    # worker <-> registry, registry -> agent (JSON bodies, descriptors by SCM_RIGHTS)
    REGISTER = 32
    REGISTERED = 33
    PUBLISH = 34
    WITHDRAW = 35
    ACK = 36
    DRAIN = 37  # worker -> registry -> agent: send this buffer nothing new (graceful stop)


class Mode(IntEnum):
    """What a connection is for; part of the HELLO and of the authenticated MAC."""

    INLINE = 0  # payload bytes travel inside REQUEST frames (TCP)
    LOCAL = 1  # one-sided: the client writes into agent staging shared over a unix socket
    RDMA = 2  # one-sided: the client RDMA-WRITEs into registered agent staging
    PUBLISHER = 3  # the node's buffer registry publishing/withdrawing worker buffers


class ErrorCode(IntEnum):
    BAD_FRAME = 1
    UNSUPPORTED_VERSION = 2
    AUTH_FAILED = 3
    NOT_AUTHENTICATED = 4
    TARGET_REFUSED = 5
    PAYLOAD_TOO_LARGE = 6
    NO_REPLICA = 7
    REPLICA_FAILED = 8
    WORKER_ERROR = 9
    RESULT_TOO_LARGE = 10
    TIMEOUT = 11
    SHUTTING_DOWN = 12
    WINDOW_EXCEEDED = 13
    INTERNAL = 14
    DUPLICATE_REQUEST = 15
    CONNECTION_LOST = 16
    REGISTRATION_REFUSED = 17
    BAD_INPUT = 18
    TOO_MANY_CONNECTIONS = 19
    IDLE_TIMEOUT = 20


class ProtocolError(Exception):
    """A frame that breaks the protocol: the connection that sent it is closed."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


CLIENT_TO_AGENT = frozenset({MsgType.HELLO, MsgType.AUTH, MsgType.REQUEST, MsgType.STAGED,
                             MsgType.PING, MsgType.PONG, MsgType.BYE, MsgType.RDMA_INFO,
                             MsgType.ERROR})
AGENT_TO_CLIENT = frozenset({MsgType.CHALLENGE, MsgType.WELCOME, MsgType.RESPONSE,
                             MsgType.ERROR, MsgType.PING, MsgType.PONG, MsgType.BYE,
                             MsgType.RDMA_INFO})
PUBLISHER_TO_AGENT = frozenset({MsgType.HELLO, MsgType.AUTH, MsgType.PUBLISH,
                                MsgType.WITHDRAW, MsgType.DRAIN, MsgType.PING, MsgType.BYE})
WORKER_TO_REGISTRY = frozenset({MsgType.REGISTER, MsgType.WITHDRAW, MsgType.DRAIN,
                                MsgType.PING, MsgType.BYE})
REGISTRY_REPLIES = frozenset({MsgType.REGISTERED, MsgType.ACK, MsgType.ERROR,
                              MsgType.CHALLENGE, MsgType.WELCOME, MsgType.PONG})
_PAYLOAD_TYPES = frozenset({MsgType.REQUEST, MsgType.RESPONSE})


@dataclass(slots=True)
class Header:
    type: MsgType
    flags: int
    request_id: int
    length: int
    aux: int
    version: int = VERSION

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, self.version, self.type, self.flags, self.request_id,
                           self.length, self.aux)


@dataclass(slots=True)
class Frame:
    header: Header
    body: bytes

    @property
    def type(self) -> MsgType:
        return self.header.type


def pack_header(mtype: MsgType, request_id: int, length: int, aux: int = 0) -> bytes:
    """The 24 header bytes of a version-1 frame (the body is sent separately)."""
    return HEADER.pack(MAGIC, VERSION, mtype, 0, request_id, length, aux)


def encode(mtype: MsgType, body: bytes = b"", request_id: int = 0, aux: int = 0) -> bytes:
    return pack_header(mtype, request_id, len(body), aux) + body


_TYPES = {int(t): t for t in MsgType}


def parse_header(data: bytes | bytearray | memoryview, allowed: frozenset[MsgType],
                 max_payload: int) -> Header:
    """Validate the 24 bytes of a header.

    ``allowed`` are the types this side accepts on this channel; ``max_payload`` bounds
    REQUEST/RESPONSE bodies (every other type is bounded by :data:`CONTROL_MAX`).
    """
    if len(data) != HEADER_SIZE:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"header is {len(data)} bytes, not 24")
    magic, version, mtype, flags, request_id, length, aux = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"bad magic {bytes(magic)!r}")
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"frame version {version}; this side speaks "
                            f"{MIN_VERSION}..{MAX_VERSION}")
    t = _TYPES.get(mtype)
    if t is None or t not in allowed:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unexpected message type {mtype}")
    if flags:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown flags {flags:#x}")
    limit = min(max_payload, PAYLOAD_CEILING) if t in _PAYLOAD_TYPES else CONTROL_MAX
    if length > limit:
        code = ErrorCode.PAYLOAD_TOO_LARGE if t in _PAYLOAD_TYPES else ErrorCode.BAD_FRAME
        raise ProtocolError(code, f"{t.name} body of {length} bytes exceeds {limit}")
    if t in (MsgType.REQUEST, MsgType.STAGED) and request_id == 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, "request id 0 is reserved")
    return Header(t, flags, request_id, length, aux, version)


class FrameDecoder:
    """Incremental decoder: bytes in (any chunking), whole frames out.

    The agent's TCP path uses :func:`parse_header` directly and receives REQUEST bodies
    straight into staging buffers; this decoder serves clients, the registry and tests.
    """

    def __init__(self, allowed: frozenset[MsgType], max_payload: int = CONTROL_MAX) -> None:
        self.allowed = allowed
        self.max_payload = max_payload
        self._buf = bytearray()
        self._header: Header | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def mid_frame(self) -> bool:
        return self._header is not None or bool(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        buf = bytes(self._buf) + bytes(data) if self._buf else bytes(data)
        out: list[Frame] = []
        pos, end = 0, len(buf)
        header = self._header
        try:
            while True:
                if header is None:
                    if end - pos < HEADER_SIZE:
                        break
                    header = parse_header(buf[pos:pos + HEADER_SIZE], self.allowed,
                                          self.max_payload)
                    pos += HEADER_SIZE
                if end - pos < header.length:
                    break
                out.append(Frame(header, buf[pos:pos + header.length]))
                pos += header.length
                header = None
        finally:
            self._header = header
            self._buf = bytearray(buf[pos:]) if pos < end else bytearray()
        return out


# --------------------------------------------------------------------------- bodies

_JOB_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
_NODE_RE = re.compile(r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")

HELLO_FIXED = struct.Struct("<HHB16sH")


def valid_job(job: str) -> bool:
    """A job is named ``namespace/name`` with Kubernetes' naming rules."""
    return bool(_JOB_RE.match(job))


def valid_identity(mode: Mode, name: str) -> bool:
    return valid_node(name) if mode is Mode.PUBLISHER else valid_job(name)


def valid_node(name: str) -> bool:
    return bool(_NODE_RE.match(name))


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of a connection: who the client says it is and how it will send."""

    identity: str  # "namespace/job" for clients, the node name for a publisher
    mode: Mode
    nonce: bytes
    min_version: int = MIN_VERSION
    max_version: int = MAX_VERSION

    def encode(self) -> bytes:
        ident = self.identity.encode()
        return HELLO_FIXED.pack(self.min_version, self.max_version, self.mode, self.nonce,
                                len(ident)) + ident

    @classmethod
    def decode(cls, body: bytes) -> Hello:
        if len(body) < HELLO_FIXED.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, "HELLO too short")
        lo, hi, mode, nonce, n = HELLO_FIXED.unpack_from(body)
        if len(body) != HELLO_FIXED.size + n:
            raise ProtocolError(ErrorCode.BAD_FRAME, "HELLO length does not match its name")
        if lo > hi:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"HELLO version range {lo}..{hi}")
        try:
            m = Mode(mode)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown mode {mode}") from None
        try:
            ident = body[HELLO_FIXED.size:].decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_FRAME, "HELLO name is not ASCII") from None
        if not valid_identity(m, ident):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"invalid name {ident[:80]!r}")
        return cls(ident, m, nonce, lo, hi)


CHALLENGE = struct.Struct("<16sH")


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    version: int

    def encode(self) -> bytes:
        return CHALLENGE.pack(self.nonce, self.version)

    @classmethod
    def decode(cls, body: bytes) -> Challenge:
        if len(body) != CHALLENGE.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, "CHALLENGE has the wrong size")
        nonce, version = CHALLENGE.unpack(body)
        return cls(nonce, version)


def decode_auth(body: bytes) -> bytes:
    if len(body) != MAC_SIZE:
        raise ProtocolError(ErrorCode.BAD_FRAME, "AUTH must carry a 32-byte MAC")
    return body


WELCOME_FIXED = struct.Struct("<HIIIIIH")
BUFFER_ENTRY = struct.Struct("<IIIf")
MAX_WELCOME_BUFFERS = (CONTROL_MAX - WELCOME_FIXED.size) // BUFFER_ENTRY.size


@dataclass(frozen=True, slots=True)
class BufferInfo:
    """One replica's input buffer as the client sees it (it may name it as a target)."""

    buffer_id: int
    slots: int
    slot_bytes: int
    weight: float


@dataclass(frozen=True, slots=True)
class Welcome:
    version: int
    window: int  # most requests this connection may have outstanding
    max_payload: int
    max_result: int
    staging_slots: int  # one-sided modes: slots of the staging region given to the client
    staging_slot_bytes: int
    buffers: tuple[BufferInfo, ...]

    def encode(self) -> bytes:
        bufs = self.buffers[:MAX_WELCOME_BUFFERS]
        return WELCOME_FIXED.pack(self.version, self.window, self.max_payload,
                                  self.max_result, self.staging_slots,
                                  self.staging_slot_bytes, len(bufs)) + b"".join(
            BUFFER_ENTRY.pack(b.buffer_id, b.slots, b.slot_bytes, b.weight) for b in bufs)

    @classmethod
    def decode(cls, body: bytes) -> Welcome:
        if len(body) < WELCOME_FIXED.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, "WELCOME too short")
        version, window, maxp, maxr, sslots, sbytes, n = WELCOME_FIXED.unpack_from(body)
        if len(body) != WELCOME_FIXED.size + n * BUFFER_ENTRY.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, "WELCOME buffer list length mismatch")
        if window == 0:
            raise ProtocolError(ErrorCode.BAD_FRAME, "WELCOME with a zero window")
        bufs = tuple(BufferInfo(*BUFFER_ENTRY.unpack_from(body, WELCOME_FIXED.size
                                                          + i * BUFFER_ENTRY.size))
                     for i in range(n))
        return cls(version, window, maxp, maxr, sslots, sbytes, bufs)


STAGED = struct.Struct("<II")


#: A whole STAGED frame: header and body (the one-sided transports' steady state).
STAGED_FRAME = struct.Struct("<4sBBHQIIII")


def parse_staged_frames(data: bytes | bytearray | memoryview
                        ) -> list[tuple[int, int, int, int]] | None:
    """``data`` as whole, well-formed STAGED frames: ``(request_id, aux, slot, length)``
    each; None when it is anything else (a partial frame, another type, a bad field), for
    :class:`FrameDecoder` to handle (and refuse) frame by frame.

    The checks are exactly those :func:`parse_header` and :func:`decode_staged` make on a
    STAGED frame, so the fast path accepts nothing the decoder would refuse.
    """
    if not data or len(data) % STAGED_FRAME.size:
        return None
    out = []
    for magic, version, mtype, flags, request_id, length, aux, slot, n in \
            STAGED_FRAME.iter_unpack(data):
        if (magic != MAGIC or not MIN_VERSION <= version <= MAX_VERSION
                or mtype != MsgType.STAGED or flags or length != STAGED.size
                or request_id == 0):
            return None
        out.append((request_id, aux, slot, n))
    return out


def encode_staged(slot: int, length: int) -> bytes:
    return STAGED.pack(slot, length)


def decode_staged(body: bytes) -> tuple[int, int]:
    if len(body) != STAGED.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, "STAGED body must be 8 bytes")
    slot, length = STAGED.unpack(body)
    return int(slot), int(length)


def encode_error(message: str) -> bytes:
    return message.encode("utf-8", "replace")[:ERROR_MESSAGE_MAX]


def decode_error(header: Header, body: bytes) -> tuple[ErrorCode, str]:
    try:
        code = ErrorCode(header.aux)
    except ValueError:
        code = ErrorCode.INTERNAL
    return code, body[:ERROR_MESSAGE_MAX].decode("utf-8", "replace")


RDMA_INFO = struct.Struct("<IIH16sQII")


@dataclass(frozen=True, slots=True)
class RdmaInfo:
    """Queue-pair and memory-region coordinates exchanged to connect an RC QP."""

    qpn: int
    psn: int
    lid: int
    gid: bytes
    addr: int = 0
    rkey: int = 0
    region_bytes: int = 0

    def encode(self) -> bytes:
        return RDMA_INFO.pack(self.qpn, self.psn, self.lid, self.gid, self.addr, self.rkey,
                              self.region_bytes)

    @classmethod
    def decode(cls, body: bytes) -> RdmaInfo:
        if len(body) != RDMA_INFO.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, "RDMA_INFO has the wrong size")
        return cls(*RDMA_INFO.unpack(body))
