"""Connections from accept on: the shared handshake
(:class:`~conspirator.wire.handshake.ServerHandshake`) on the raw socket, bounded in time,
then for a client its transport's set-up (:mod:`.sessionstart`, :mod:`.rdma`), for the
node's buffer registry (the publish socket) its PUBLISH and WITHDRAW frames
(:func:`~conspirator.wire.publishing.answer_publisher`).  A refusal is one ERROR frame,
then the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from conspirator.dpu_agent.core import AgentCore
from conspirator.dpu_agent.rdma import start_rdma
from conspirator.dpu_agent.session import ConnSession, Serving
from conspirator.dpu_agent.sessionstart import SessionStart, start_inline, start_local
from conspirator.dpu_agent.tokens import TokenStore
from conspirator.wire import asyncsock
from conspirator.wire.frames import (
    PUBLISHER_TO_AGENT,
    ErrorCode,
    Frame,
    Hello,
    Mode,
    MsgType,
    ProtocolError,
)
from conspirator.wire.handshake import ServerHandshake, publisher_welcome, refusal
from conspirator.wire.publishing import answer_publisher
from conspirator.wire.registration import Publication

log = logging.getLogger("conspirator.dpu_agent")

STARTS: dict[Mode, Callable[[SessionStart], Awaitable[None]]] = {
    Mode.INLINE: start_inline, Mode.LOCAL: start_local, Mode.RDMA: start_rdma}


Recv = Callable[[frozenset[MsgType]], Awaitable[Frame]]
Send = Callable[[bytes], Awaitable[None]]


async def handshake(hs: ServerHandshake, recv: Recv, send: Send) -> Hello:
    """Drive the agent's side of the handshake over a transport."""
    await send(hs.on_hello(await recv(hs.expects)))
    return hs.on_auth(await recv(hs.expects))


async def refuse(core: AgentCore, sock: socket.socket, e: ProtocolError) -> None:
    """Count and log the refusal and send its ERROR frame (at most a second)."""
    core.stats.protocol_errors += 1
    if e.code is ErrorCode.AUTH_FAILED:
        core.stats.auth_failures += 1
    log.info("refused a connection: %s", e)
    with contextlib.suppress(OSError):
        await asyncio.wait_for(asyncsock.send_packet(sock, refusal(e)), 1.0)


async def serve_client(agent: Serving, tokens: TokenStore, sock: socket.socket,
                       modes: tuple[Mode, ...], rdma_device: str | None = None) -> None:
    """Authenticate a client of one of ``modes`` and start its session."""
    cfg = agent.core.config
    hs = ServerHandshake(tokens.token_for, modes)
    agent.limits.handshake_started(sock)
    try:
        hello = await asyncio.wait_for(handshake(
            hs, lambda allowed: asyncsock.recv_frame(sock, allowed),
            lambda frame: asyncsock.send_packet(sock, frame)), cfg.handshake_timeout)
        if agent.core.shutting_down:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "shutting down")
        over = agent.limits.refusal(hello.identity, agent.sessions)
        if over is not None:
            agent.core.stats.connections_refused += 1
            raise over
    except ProtocolError as e:
        agent.limits.handshake_ended(sock)
        await refuse(agent.core, sock, e)
        sock.close()
        return
    except (TimeoutError, ConnectionError, OSError) as e:
        agent.limits.handshake_ended(sock)
        log.info("handshake abandoned: %s", e or type(e).__name__)
        sock.close()
        return
    agent.limits.handshake_ended(sock)
    session = ConnSession(agent, hello.identity, cfg.window, hello.mode)
    # Counted from now on (the caps), though its transport's set-up still awaits.
    agent.sessions.add(session)
    try:
        await STARTS[hello.mode](SessionStart(agent, sock, session, hs.version, rdma_device))
    except ProtocolError as e:
        agent.sessions.discard(session)
        await refuse(agent.core, sock, e)
        sock.close()
    except (ConnectionError, OSError, TimeoutError) as e:
        agent.sessions.discard(session)
        log.info("connection of %s failed during setup: %s", hello.identity, e)
        sock.close()


class PublisherBuffers:
    """What one publisher connection published (a PublishSink over the core)."""

    def __init__(self, core: AgentCore) -> None:
        self.core = core

    def publish(self, pub: Publication, fds: list[int]) -> None:
        self.core.publish(pub, fds, self)

    def withdraw(self, buffer_id: int, reason: str) -> bool:
        rep = self.core.replicas.get(buffer_id)
        return rep is not None and rep.owner is self and self.core.withdraw(buffer_id, reason)

    def drain(self, buffer_id: int, reason: str) -> bool:
        rep = self.core.replicas.get(buffer_id)
        return rep is not None and rep.owner is self and self.core.drain(buffer_id, reason)


async def serve_publisher(core: AgentCore, tokens: TokenStore, sock: socket.socket) -> None:
    """The node's buffer registry on the publish socket (``SOCK_SEQPACKET``): after the
    node token's handshake, its publications until it disconnects, when everything it
    published is withdrawn."""
    buffers = PublisherBuffers(core)
    name = "?"

    async def recv(allowed: frozenset[MsgType]) -> Frame:
        frame, fds = await asyncsock.recv_packet(sock, allowed)
        for fd in fds:
            os.close(fd)
        return frame

    try:
        hs = ServerHandshake(tokens.token_for, (Mode.PUBLISHER,))
        hello = await asyncio.wait_for(handshake(
            hs, recv, lambda frame: asyncsock.send_packet(sock, frame)),
            core.config.handshake_timeout)
        await asyncsock.send_packet(sock, publisher_welcome(hs.version))
        name = hello.identity
        log.info("publisher %s connected", name)
        while True:
            frame, fds = await asyncsock.recv_packet(sock, PUBLISHER_TO_AGENT)
            reply = answer_publisher(frame, fds, buffers)
            if reply is None:
                break
            await asyncsock.send_packet(sock, reply)
    except ProtocolError as e:
        await refuse(core, sock, e)
    except (ConnectionError, OSError, TimeoutError) as e:
        log.info("publisher %s gone: %s", name, e or type(e).__name__)
    finally:
        sock.close()
        core.withdraw_owner(buffers, f"publisher {name} disconnected")
