"""The handshake's two state machines (conspirator.wire.handshake), frame against frame,
with no socket: what every transport (the clients, the agent, the publisher, the tests'
stand-in agent) drives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conspirator.wire.frames import (
    CLIENT_TO_AGENT,
    ERROR_MESSAGE_MAX,
    MAX_VERSION,
    MIN_VERSION,
    PUBLISHER_TO_AGENT,
    REGISTRY_REPLIES,
    ErrorCode,
    Frame,
    FrameDecoder,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    Welcome,
    decode_error,
    encode,
)
from conspirator.wire.handshake import (
    AGENT_HANDSHAKE_TYPES,
    ClientHandshake,
    PeerRefused,
    ServerHandshake,
    error_frame,
    negotiate,
    publisher_welcome,
    refusal,
)

JOB, TOKEN = "team-a/resnet", "token-a"
TOKENS = {(Mode.INLINE, JOB): TOKEN, (Mode.PUBLISHER, "node-1"): "node-token"}


def token_of(mode: Mode, name: str) -> str | None:
    return TOKENS.get((mode, name))


def frame(data: bytes, allowed: frozenset[MsgType] = CLIENT_TO_AGENT | AGENT_HANDSHAKE_TYPES
          ) -> Frame:
    [f] = FrameDecoder(allowed).feed(data)
    return f


def server(modes: tuple[Mode, ...] = (Mode.INLINE,)) -> ServerHandshake:
    return ServerHandshake(token_of, modes)


def welcome_bytes(version: int) -> bytes:
    return encode(MsgType.WELCOME, Welcome(version, 4, 1 << 20, 1 << 16, 0, 0, ()).encode())


def test_an_accepted_client_and_its_welcome() -> None:
    c, s = ClientHandshake(JOB, Mode.INLINE, TOKEN), server()
    assert s.expects == {MsgType.HELLO}
    challenge = s.on_hello(frame(c.hello_frame()))
    assert s.expects == {MsgType.AUTH} and s.version == MAX_VERSION
    hello = s.on_auth(frame(c.on_challenge(frame(challenge))))
    assert hello == c.hello and (hello.identity, hello.mode) == (JOB, Mode.INLINE)
    assert s.done and s.expects == frozenset() and c.version == s.version
    assert c.on_welcome(frame(welcome_bytes(s.version))).window == 4


def test_a_publisher_is_authenticated_with_the_node_token() -> None:
    c = ClientHandshake("node-1", Mode.PUBLISHER, "node-token")
    s = server((Mode.PUBLISHER,))
    challenge = s.on_hello(frame(c.hello_frame(), PUBLISHER_TO_AGENT))
    s.on_auth(frame(c.on_challenge(frame(challenge, REGISTRY_REPLIES)), PUBLISHER_TO_AGENT))
    w = c.on_welcome(frame(publisher_welcome(s.version), REGISTRY_REPLIES))
    assert (w.window, w.max_payload, w.buffers) == (1, 0, ())


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_the_version_is_the_highest_both_speak(lo: int, hi: int) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    hello = Hello(JOB, Mode.INLINE, b"n" * 16, lo, hi)
    common = [v for v in range(MIN_VERSION, MAX_VERSION + 1) if lo <= v <= hi]
    if common:
        assert negotiate(hello) == max(common)
        return
    with pytest.raises(ProtocolError) as e:
        negotiate(hello)
    assert e.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_a_refused_version_gets_the_error_frame() -> None:
    hello = Hello(JOB, Mode.INLINE, b"n" * 16, MAX_VERSION + 1, MAX_VERSION + 3)
    s = server()
    with pytest.raises(ProtocolError) as e:
        s.on_hello(frame(encode(MsgType.HELLO, hello.encode())))
    f = frame(refusal(e.value))
    assert f.type is MsgType.ERROR and f.header.request_id == 0
    code, message = decode_error(f.header, f.body)
    assert code is ErrorCode.UNSUPPORTED_VERSION and f"{MIN_VERSION}..{MAX_VERSION}" in message
    # ...which the client reads as the agent's refusal.
    c = ClientHandshake(JOB, Mode.INLINE, TOKEN)
    with pytest.raises(PeerRefused) as r:
        c.on_challenge(f)
    assert r.value.code is ErrorCode.UNSUPPORTED_VERSION and r.value.message == message


def test_the_client_refuses_a_version_it_did_not_offer() -> None:
    c = ClientHandshake(JOB, Mode.INLINE, TOKEN)
    challenge = ServerHandshake(token_of, (Mode.INLINE,)).on_hello(frame(c.hello_frame()))
    tampered = bytearray(challenge)
    tampered[-2:] = (MAX_VERSION + 1).to_bytes(2, "little")
    with pytest.raises(ProtocolError) as e:
        c.on_challenge(frame(bytes(tampered)))
    assert e.value.code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(("identity", "mode", "token"), [
    (JOB, Mode.INLINE, "wrong"),                  # a wrong token
    ("team-b/bert", Mode.INLINE, TOKEN),          # an unknown job, answered the same way
    ("node-1", Mode.PUBLISHER, TOKEN),            # a job's token for the node
])
def test_a_bad_proof_is_refused(identity: str, mode: Mode, token: str) -> None:
    c = ClientHandshake(identity, mode, token)
    s = server((Mode.INLINE, Mode.PUBLISHER))
    auth = c.on_challenge(frame(s.on_hello(frame(c.hello_frame(), PUBLISHER_TO_AGENT))))
    with pytest.raises(ProtocolError) as e:
        s.on_auth(frame(auth))
    assert e.value.code is ErrorCode.AUTH_FAILED
    assert e.value.message == f"authentication failed for {identity}"


def test_a_mac_of_the_wrong_size_is_a_bad_frame() -> None:
    c, s = ClientHandshake(JOB, Mode.INLINE, TOKEN), server()
    s.on_hello(frame(c.hello_frame()))
    with pytest.raises(ProtocolError) as e:
        s.on_auth(frame(encode(MsgType.AUTH, b"m" * 31)))
    assert e.value.code is ErrorCode.BAD_FRAME


def test_a_replayed_proof_fails_on_a_new_challenge() -> None:
    c, first = ClientHandshake(JOB, Mode.INLINE, TOKEN), server()
    hello = frame(c.hello_frame())
    auth = frame(c.on_challenge(frame(first.on_hello(hello))))
    first.on_auth(auth)  # accepted once...
    again = server()
    again.on_hello(hello)
    with pytest.raises(ProtocolError) as e:  # ...and refused when recorded and replayed
        again.on_auth(auth)
    assert e.value.code is ErrorCode.AUTH_FAILED


def test_a_short_or_repeated_challenge_is_a_bad_frame() -> None:
    c = ClientHandshake(JOB, Mode.INLINE, TOKEN)
    with pytest.raises(ProtocolError) as e:
        c.on_challenge(frame(encode(MsgType.CHALLENGE, b"c" * 17)))
    assert e.value.code is ErrorCode.BAD_FRAME
    challenge = frame(server().on_hello(frame(c.hello_frame())))
    c.on_challenge(challenge)
    with pytest.raises(ProtocolError, match="a second CHALLENGE"):
        c.on_challenge(challenge)


def test_frames_out_of_turn_and_modes_not_served() -> None:
    c = ClientHandshake(JOB, Mode.INLINE, TOKEN)
    with pytest.raises(ProtocolError, match="AUTH out of turn"):
        server().on_auth(frame(encode(MsgType.AUTH, b"m" * 32)))
    with pytest.raises(ProtocolError, match="mode INLINE is not served"):
        server((Mode.PUBLISHER,)).on_hello(frame(c.hello_frame()))
    with pytest.raises(ProtocolError, match="WELCOME before CHALLENGE"):
        c.on_welcome(frame(welcome_bytes(1)))
    with pytest.raises(ProtocolError, match="expected CHALLENGE, the agent sent WELCOME"):
        c.on_challenge(frame(welcome_bytes(1)))


@given(st.sampled_from(list(ErrorCode)), st.text(max_size=2000), st.integers(0, 2**64 - 1))
def test_the_error_frame_helper(code: ErrorCode, message: str, request_id: int) -> None:
    f = frame(error_frame(code, message, request_id))
    assert f.type is MsgType.ERROR and f.header.request_id == request_id
    assert decode_error(f.header, f.body)[0] is code
    assert f.body == message.encode("utf-8", "replace")[:ERROR_MESSAGE_MAX]
