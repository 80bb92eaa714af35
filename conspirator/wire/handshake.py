"""The authenticated handshake, once, as two small state machines over frames (no I/O).

Every connection to the agent starts with it: a client of a job (TCP, unix or RDMA) and
the node's buffer registry publishing to the agent (``Mode.PUBLISHER``) alike::

    client / publisher                      agent (or the tests' stand-in agent)
      HELLO(name, mode, nonce_c, versions)  ->
                                            <-  CHALLENGE(nonce_a, version)   or ERROR
      AUTH(hmac(token, transcript))         ->
                                            <-  WELCOME(...)   or ERROR(AUTH_FAILED)

:class:`ServerHandshake` is the agent's side, :class:`ClientHandshake` the other: each is
fed the frames its transport read and answers with the frame bytes to send, or raises
:class:`~conspirator.wire.frames.ProtocolError` (its ``code`` is what the refusal's ERROR
frame carries: :func:`refusal`).  The transports (blocking or asyncio sockets, stream or
SEQPACKET) only move bytes.  The proof itself is :mod:`conspirator.wire.auth`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from conspirator.wire import auth
from conspirator.wire.frames import (
    MAX_VERSION,
    MIN_VERSION,
    Challenge,
    ErrorCode,
    Frame,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    Welcome,
    decode_auth,
    decode_error,
    encode,
    encode_error,
)

#: What a client may receive before its data phase: the handshake's answers, a refusal,
#: and the RDMA transport's queue-pair exchange.
AGENT_HANDSHAKE_TYPES = frozenset({MsgType.CHALLENGE, MsgType.WELCOME, MsgType.ERROR,
                                   MsgType.RDMA_INFO})

#: token_of(mode, name): the token a client of job ``name`` (or the publisher of node
#: ``name``) must prove, or None when there is none.
TokenOf = Callable[[Mode, str], str | bytes | None]


def negotiate(hello: Hello) -> int:
    """The version both sides speak: the highest in both ranges."""
    version = min(hello.max_version, MAX_VERSION)
    if version < max(hello.min_version, MIN_VERSION):
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"this side speaks versions {MIN_VERSION}..{MAX_VERSION}, the "
                            f"peer {hello.min_version}..{hello.max_version}")
    return version


def error_frame(code: ErrorCode, message: str, request_id: int = 0) -> bytes:
    """An ERROR frame: ``request_id`` 0 refuses the connection, else one request."""
    return encode(MsgType.ERROR, encode_error(message), request_id, int(code))


def refusal(e: ProtocolError) -> bytes:
    """The ERROR frame that refuses a connection for ``e`` (the connection closes after)."""
    return error_frame(e.code, e.message)


class PeerRefused(ProtocolError):  # noqa: N818 - a refusal, not an error of ours
    """The other side answered with an ERROR frame (``code`` and ``message`` are its)."""


def expect(frame: Frame, mtype: MsgType) -> Frame:
    """``frame`` if it is of type ``mtype``; :class:`PeerRefused` for an ERROR frame."""
    if frame.type is MsgType.ERROR:
        code, msg = decode_error(frame.header, frame.body)
        raise PeerRefused(code, msg)
    if frame.type is not mtype:
        raise ProtocolError(ErrorCode.BAD_FRAME,
                            f"expected {mtype.name}, the agent sent {frame.type.name}")
    return frame


def publisher_welcome(version: int) -> bytes:
    """The WELCOME a publisher gets: a window of one, no data phase."""
    return encode(MsgType.WELCOME, Welcome(version, 1, 0, 0, 0, 0, ()).encode())


class ServerHandshake:
    """The agent's side: ``on_hello`` -> CHALLENGE bytes, ``on_auth`` -> the HELLO it
    authenticated.  ``expects`` is the frame type it needs next (for the header check)."""

    def __init__(self, token_of: TokenOf, modes: Collection[Mode],
                 nonce: bytes | None = None) -> None:
        self.token_of = token_of
        self.modes = frozenset(modes)
        self.nonce = auth.new_nonce() if nonce is None else nonce
        self.hello: Hello | None = None
        self.version = 0
        self.done = False

    @property
    def expects(self) -> frozenset[MsgType]:
        if self.done:
            return frozenset()
        return frozenset({MsgType.AUTH if self.hello is not None else MsgType.HELLO})

    def _check(self, frame: Frame) -> None:
        if frame.type not in self.expects:
            raise ProtocolError(ErrorCode.BAD_FRAME,
                                f"{frame.type.name} out of turn in the handshake")

    def on_hello(self, frame: Frame) -> bytes:
        self._check(frame)
        hello = Hello.decode(frame.body)
        if hello.mode not in self.modes:
            raise ProtocolError(ErrorCode.BAD_FRAME,
                                f"mode {hello.mode.name} is not served on this socket")
        self.version = negotiate(hello)
        self.hello = hello
        return encode(MsgType.CHALLENGE, Challenge(self.nonce, self.version).encode())

    def on_auth(self, frame: Frame) -> Hello:
        """The authenticated HELLO; ``ProtocolError(AUTH_FAILED)`` for a wrong proof, an
        unknown name or a proof made for another challenge (all alike)."""
        self._check(frame)
        hello = self.hello
        assert hello is not None
        mac = decode_auth(frame.body)
        token = self.token_of(hello.mode, hello.identity)
        self.done = True
        if not auth.verify(token, hello, self.nonce, self.version, mac):
            raise ProtocolError(ErrorCode.AUTH_FAILED,
                                f"authentication failed for {hello.identity}")
        return hello


class ClientHandshake:
    """The side that proves a token: ``hello_frame()``, ``on_challenge`` -> AUTH bytes,
    ``on_welcome`` -> the agent's WELCOME.  A refusal raises :class:`PeerRefused`."""

    def __init__(self, identity: str, mode: Mode, token: str | bytes,
                 nonce: bytes | None = None) -> None:
        self.hello = Hello(identity, mode, auth.new_nonce() if nonce is None else nonce)
        self.token = token
        self.version = 0

    def hello_frame(self) -> bytes:
        return encode(MsgType.HELLO, self.hello.encode())

    def on_challenge(self, frame: Frame) -> bytes:
        if self.version:
            raise ProtocolError(ErrorCode.BAD_FRAME, "a second CHALLENGE")
        ch = Challenge.decode(expect(frame, MsgType.CHALLENGE).body)
        hello = self.hello
        if not hello.min_version <= ch.version <= hello.max_version:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"the agent chose version {ch.version}, this side speaks "
                                f"{hello.min_version}..{hello.max_version}")
        self.version = ch.version
        return encode(MsgType.AUTH, auth.prove(self.token, hello, ch.nonce, ch.version))

    def on_welcome(self, frame: Frame) -> Welcome:
        if not self.version:
            raise ProtocolError(ErrorCode.BAD_FRAME, "WELCOME before CHALLENGE")
        return Welcome.decode(expect(frame, MsgType.WELCOME).body)
