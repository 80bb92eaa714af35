"""Architecture (1) of the data-path benchmark: the worker receives over TCP itself.

No agent and no staging: the worker process (on a host core) accepts clients, does the
same handshake as the agent, receives each REQUEST's bytes straight into its own input
buffer (``recv_into``), runs the model and answers on the connection.  The network receive
therefore runs on the host core, which is what the DPU agent is there to avoid.

    python dp_worker_tcp.py --job ns/name --token T --size BYTES --cpu 0 --port-file F
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conspirator.runtime.reference import MODELS
from conspirator.runtime.replica import Result
from conspirator.wire import auth
from conspirator.wire.frames import (
    CONTROL_MAX,
    HEADER_SIZE,
    Challenge,
    ErrorCode,
    Frame,
    Header,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
    Welcome,
    decode_auth,
    encode,
    encode_error,
    pack_header,
    parse_header,
)

REQUEST_TYPES = frozenset({MsgType.REQUEST, MsgType.BYE, MsgType.PING})


class WorkerProtocol(asyncio.BufferedProtocol):
    """Headers into a small buffer, payloads into the worker's input tensor."""

    def __init__(self, size: int, model: Callable[[Any], Result], dtype: str) -> None:
        self.input = np.zeros(size, np.uint8)  # this connection's input tensor
        self.size = size
        self.model = model
        self.dtype = np.dtype(dtype)
        self.hdr = bytearray(HEADER_SIZE)
        self.dest: memoryview = memoryview(self.hdr)
        self.pos = 0
        self.header: Header | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.dest[self.pos:]

    def buffer_updated(self, nbytes: int) -> None:
        self.pos += nbytes
        while self.pos == len(self.dest):
            if self.header is None:
                try:
                    h = parse_header(self.hdr, REQUEST_TYPES, self.size)
                except ProtocolError as e:
                    self.fail(e)
                    return
                if h.type is not MsgType.REQUEST:
                    if self.transport is not None:
                        self.transport.close()
                    return
                self.header = h
                self.dest, self.pos = self.input.data.cast("B")[:h.length], 0
                if h.length:
                    return
            h, self.header = self.header, None
            out = np.asarray(self.model(self.input[:h.length].view(self.dtype)))
            if self.transport is not None:
                self.transport.write(pack_header(MsgType.RESPONSE, h.request_id, out.nbytes, 1)
                                     + out.tobytes())
            self.dest, self.pos = memoryview(self.hdr), 0

    def fail(self, e: ProtocolError) -> None:
        if self.transport is not None:
            self.transport.write(encode(MsgType.ERROR, encode_error(e.message), 0, int(e.code)))
            self.transport.close()


async def recv_frame(sock: socket.socket) -> Frame:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < HEADER_SIZE:
        chunk = await loop.sock_recv(sock, HEADER_SIZE - len(data))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    h = parse_header(data, frozenset({MsgType.HELLO, MsgType.AUTH}), CONTROL_MAX)
    body = b""
    while len(body) < h.length:
        chunk = await loop.sock_recv(sock, h.length - len(body))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        body += chunk
    return Frame(h, body)


async def serve_client(sock: socket.socket, job: str, token: str, size: int,
                       model: Callable[[Any], Result], dtype: str) -> None:
    loop = asyncio.get_running_loop()
    try:
        hello = Hello.decode((await recv_frame(sock)).body)
        nonce = auth.new_nonce()
        await loop.sock_sendall(sock, encode(MsgType.CHALLENGE, Challenge(nonce, 1).encode()))
        mac = decode_auth((await recv_frame(sock)).body)
        if hello.mode is not Mode.INLINE or hello.identity != job or \
                not auth.verify(token, hello, nonce, 1, mac):
            raise ProtocolError(ErrorCode.AUTH_FAILED, "authentication failed")
        await loop.sock_sendall(sock, encode(MsgType.WELCOME, Welcome(
            1, 1, size, 1 << 16, 0, 0, ()).encode()))
    except (ProtocolError, ConnectionError, OSError):
        sock.close()
        return
    await loop.connect_accepted_socket(lambda: WorkerProtocol(size, model, dtype), sock)


async def amain(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    model = MODELS[args.model]()  # loaded before the port is published; one for all clients
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    tmp = Path(str(args.port_file) + ".tmp")
    tmp.write_text(json.dumps({"tcp_port": srv.getsockname()[1], "pid": os.getpid()}))
    tmp.rename(args.port_file)
    tasks: set[asyncio.Task[Any]] = set()
    while True:
        conn, _ = await loop.sock_accept(srv)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = loop.create_task(serve_client(conn, args.job, args.token, args.size, model,
                                          args.dtype))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--cpu", type=int)
    p.add_argument("--model", choices=sorted(MODELS), default="touch")
    p.add_argument("--dtype", default="uint8", help="the model's input dtype")
    p.add_argument("--port-file", type=Path, required=True)
    a = p.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    asyncio.run(amain(a))


if __name__ == "__main__":
    main()
