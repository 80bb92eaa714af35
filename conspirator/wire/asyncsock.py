"""asyncio socket helpers for frames on non-blocking sockets, before (or without) a
transport: a stream's handshake frames, SEQPACKET packets with their SCM_RIGHTS
descriptors (the blocking twins are in :mod:`conspirator.wire.registration`)."""

from __future__ import annotations

import array
import asyncio
import socket

from conspirator.wire.frames import CONTROL_MAX, HEADER_SIZE, Frame, MsgType, parse_header
from conspirator.wire.registration import MAX_FDS, decode_packet


async def wait_fd(sock: socket.socket, write: bool = False) -> None:
    """Until the socket is writable (``write``) or readable (EOF included)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes of a stream; ConnectionError if it ends first."""
    loop = asyncio.get_running_loop()
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = await loop.sock_recv_into(sock, mv[got:])
        if k == 0:
            raise ConnectionError("peer closed during the handshake")
        got += k
    return bytes(buf)


async def recv_frame(sock: socket.socket, allowed: frozenset[MsgType]) -> Frame:
    """One control frame of a stream (ProtocolError for a malformed one)."""
    h = parse_header(await recv_exact(sock, HEADER_SIZE), allowed, CONTROL_MAX)
    body = await recv_exact(sock, h.length) if h.length else b""
    return Frame(h, body)


async def send_packet(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """One frame with ``fds`` attached (on a stream socket the rest of a short send goes
    without them)."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    while True:
        try:
            n = sock.sendmsg([data], anc)
        except BlockingIOError:
            await wait_fd(sock, True)
            continue
        if n != len(data):
            await asyncio.get_running_loop().sock_sendall(sock, data[n:])
        return


async def recv_packet(sock: socket.socket, allowed: frozenset[MsgType]
                      ) -> tuple[Frame, list[int]]:
    """One SEQPACKET packet: a frame and its descriptors (see wire.registration)."""
    fds = array.array("i")
    while True:
        try:
            data, anc, flags, _ = sock.recvmsg(CONTROL_MAX + 64,
                                               socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
            break
        except BlockingIOError:
            await wait_fd(sock)
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    return decode_packet(data, flags, list(fds), allowed)
