"""The wire protocol's frames: round trips and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conspirator.wire import auth, native
from conspirator.wire.frames import (
    AGENT_TO_CLIENT,
    CLIENT_TO_AGENT,
    CONTROL_MAX,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    BufferInfo,
    Challenge,
    ErrorCode,
    FrameDecoder,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    RdmaInfo,
    Welcome,
    decode_auth,
    decode_error,
    decode_staged,
    encode,
    encode_error,
    encode_staged,
    pack_header,
    parse_header,
    parse_staged_frames,
    valid_job,
)


def test_header_is_24_bytes_little_endian() -> None:
    h = pack_header(MsgType.REQUEST, 0x0102030405060708, 5, 9)
    assert len(h) == HEADER_SIZE == 24
    assert h[:4] == MAGIC and h[4] == 1 and h[5] == MsgType.REQUEST
    assert h[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    hdr = parse_header(h, CLIENT_TO_AGENT, 100)
    assert (hdr.type, hdr.request_id, hdr.length, hdr.aux) == (MsgType.REQUEST,
                                                             0x0102030405060708, 5, 9)


@pytest.mark.parametrize(("raw", "code"), [
    (HEADER.pack(b"XXXX", 1, 5, 0, 1, 0, 0), ErrorCode.BAD_FRAME),
    (HEADER.pack(MAGIC, 2, 5, 0, 1, 0, 0), ErrorCode.UNSUPPORTED_VERSION),
    (HEADER.pack(MAGIC, 0, 5, 0, 1, 0, 0), ErrorCode.UNSUPPORTED_VERSION),
    (HEADER.pack(MAGIC, 1, 99, 0, 1, 0, 0), ErrorCode.BAD_FRAME),
    (HEADER.pack(MAGIC, 1, MsgType.WELCOME, 0, 1, 0, 0), ErrorCode.BAD_FRAME),  # wrong way
    (HEADER.pack(MAGIC, 1, 5, 1, 1, 0, 0), ErrorCode.BAD_FRAME),  # flags
    (HEADER.pack(MAGIC, 1, 5, 0, 0, 0, 0), ErrorCode.BAD_FRAME),  # request id 0
    (HEADER.pack(MAGIC, 1, 5, 0, 1, 101, 0), ErrorCode.PAYLOAD_TOO_LARGE),
    (HEADER.pack(MAGIC, 1, MsgType.PING, 0, 1, CONTROL_MAX + 1, 0), ErrorCode.BAD_FRAME),
    (b"short", ErrorCode.BAD_FRAME),
])
def test_bad_headers_are_refused(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_header(raw, CLIENT_TO_AGENT, 100)
    assert e.value.code is code


def test_decoder_reassembles_any_chunking() -> None:
    stream = b"".join([encode(MsgType.PING, b"abc", 7), encode(MsgType.RESPONSE, b"x" * 1000, 8, 3),
                       encode(MsgType.ERROR, encode_error("nope"), 9, int(ErrorCode.TIMEOUT))])
    for step in (1, 2, 7, 24, 25, 500, len(stream)):
        dec = FrameDecoder(AGENT_TO_CLIENT, 4096)
        frames = []
        for i in range(0, len(stream), step):
            frames += dec.feed(stream[i:i + step])
        assert [f.type for f in frames] == [MsgType.PING, MsgType.RESPONSE, MsgType.ERROR]
        assert frames[1].body == b"x" * 1000 and frames[1].header.aux == 3
        assert decode_error(frames[2].header, frames[2].body) == (ErrorCode.TIMEOUT, "nope")
        assert not dec.mid_frame


def test_decoder_reports_mid_frame() -> None:
    dec = FrameDecoder(AGENT_TO_CLIENT, 4096)
    assert dec.feed(encode(MsgType.RESPONSE, b"12345", 1)[:-2]) == []
    assert dec.mid_frame


def test_hello_round_trip_and_refusals() -> None:
    h = Hello("team-a/resnet-50", Mode.INLINE, b"n" * 16)
    assert Hello.decode(h.encode()) == h
    p = Hello("node-1.example", Mode.PUBLISHER, b"m" * 16)
    assert Hello.decode(p.encode()) == p
    body = h.encode()
    for bad in (body[:-1], body + b"x", body[:4] + b"\x09" + body[5:],
                Hello("Team/Bad", Mode.INLINE, b"n" * 16).encode(),
                Hello("nojobslash", Mode.INLINE, b"n" * 16).encode(),
                Hello("a/b", Mode.INLINE, b"n" * 16, 3, 1).encode()):
        with pytest.raises(ProtocolError):
            Hello.decode(bad)


def test_other_bodies_round_trip() -> None:
    assert Challenge.decode(Challenge(b"c" * 16, 1).encode()) == Challenge(b"c" * 16, 1)
    w = Welcome(1, 16, 1 << 20, 4096, 4, 1 << 20,
                (BufferInfo(3, 4, 4096, 1.0), BufferInfo(9, 2, 8192, 2.5)))
    assert Welcome.decode(w.encode()) == w
    assert decode_staged(encode_staged(3, 77)) == (3, 77)
    r = RdmaInfo(1, 2, 3, b"g" * 16, 4, 5, 6)
    assert RdmaInfo.decode(r.encode()) == r
    for fn, body in ((Welcome.decode, w.encode()[:-1]), (decode_staged, b"1234567"),
                     (RdmaInfo.decode, b""), (Challenge.decode, b"x"), (decode_auth, b"y" * 31)):
        with pytest.raises(ProtocolError):
            fn(body)
    with pytest.raises(ProtocolError):
        Welcome.decode(Welcome(1, 0, 1, 1, 0, 0, ()).encode())  # zero window


def test_job_names() -> None:
    assert valid_job("default/a") and valid_job("team-a/resnet.v2")
    for bad in ("a", "/a", "a/", "A/b", "a/b/c", "a b/c", "a/" + "x" * 260):
        assert not valid_job(bad)


def test_auth_binds_token_job_mode_and_nonces() -> None:
    hello = Hello("team-a/job", Mode.INLINE, b"c" * 16)
    mac = auth.prove("secret", hello, b"a" * 16, 1)
    assert auth.verify("secret", hello, b"a" * 16, 1, mac)
    assert not auth.verify("other", hello, b"a" * 16, 1, mac)
    assert not auth.verify(None, hello, b"a" * 16, 1, mac)
    assert not auth.verify("secret", hello, b"b" * 16, 1, mac)  # replay on a new challenge
    assert not auth.verify("secret", Hello("team-b/job", Mode.INLINE, b"c" * 16),
                           b"a" * 16, 1, mac)
    assert not auth.verify("secret", Hello("team-a/job", Mode.LOCAL, b"c" * 16),
                           b"a" * 16, 1, mac)


STAGED_CHANNEL = frozenset({MsgType.STAGED, MsgType.PING, MsgType.PONG, MsgType.BYE,
                            MsgType.ERROR})


def _decoded(data: bytes) -> list[tuple[int, int, int, int]] | None:
    """What the frame-by-frame decoder makes of ``data``, None unless it is only whole
    STAGED frames the decoder accepts."""
    d = FrameDecoder(STAGED_CHANNEL, CONTROL_MAX)
    try:
        frames = d.feed(data)
        out = [(f.header.request_id, f.header.aux, *decode_staged(f.body)) for f in frames
               if f.header.type is MsgType.STAGED]
    except ProtocolError:
        return None
    if d.mid_frame or len(out) != len(frames) or not frames:
        return None
    return out


def test_staged_fast_path_accepts_exactly_whole_valid_staged_frames() -> None:
    good = b"".join(encode(MsgType.STAGED, encode_staged(i, 4096 * i), 7 + i, i)
                    for i in range(5))
    assert parse_staged_frames(good) == [(7 + i, i, i, 4096 * i) for i in range(5)]
    assert parse_staged_frames(good) == _decoded(good)
    assert parse_staged_frames(b"") is None
    assert parse_staged_frames(good[:-1]) is None  # partial frame
    ping = encode(MsgType.PING, b"", 1)
    assert parse_staged_frames(good + ping + ping[:8]) is None  # another type
    for pos, value in ((0, 0), (4, 2), (5, MsgType.REQUEST), (6, 1), (16, 9)):
        bad = bytearray(good)
        bad[32 + pos] = value  # second frame: magic, version, type, flags, length
        assert parse_staged_frames(bytes(bad)) is None
    zero_id = encode(MsgType.STAGED, encode_staged(0, 1), 0)
    assert parse_staged_frames(zero_id) is None and _decoded(zero_id) is None


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 31), st.integers(0, 255)), max_size=4),
       st.integers(1, 4), st.binary(max_size=40))
def test_staged_fast_path_agrees_with_the_decoder(flips: list[tuple[int, int]], n: int,
                                                  tail: bytes) -> None:
    data = bytearray(b"".join(encode(MsgType.STAGED, encode_staged(i, i * 3), i + 1, i)
                              for i in range(n)))
    for pos, value in flips:
        data[pos % len(data)] = value
    for chunk in (bytes(data), bytes(data) + tail):
        fast = parse_staged_frames(chunk)
        # Whatever the fast path takes, the decoder takes the same way; what it leaves,
        # the decoder handles (and refuses where it must).
        if fast is not None:
            assert fast == _decoded(chunk)


@pytest.mark.skipif(native.C_MODULE is None, reason="conspirator._native was not built")
@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 31 * 4), st.integers(0, 255)), max_size=4),
       st.integers(0, 4), st.binary(max_size=40), st.booleans())
def test_native_staged_parser_agrees_with_the_python_one(
        flips: list[tuple[int, int]], n: int, tail: bytes, with_tail: bool) -> None:
    assert native.C_MODULE is not None
    data = bytearray(b"".join(encode(MsgType.STAGED, encode_staged(i * 7, (i << 20) + 1),
                                     (1 << 40) + i, i) for i in range(n)))
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    chunk = bytes(data) + (tail if with_tail else b"")
    assert native.C_MODULE.parse_staged(chunk) == parse_staged_frames(chunk)
    assert native.C_MODULE.parse_staged(memoryview(chunk)) == parse_staged_frames(chunk)
    assert native.PY.parse_staged(chunk) == parse_staged_frames(chunk)
