"""A client connection that passed the handshake, and the set-up of its data phase.

:class:`SessionStart` is what a transport's set-up gets (the TCP and local ones here, the
RDMA one in :mod:`conspirator.dpu_agent.rdma`): the raw socket, the new session, the
negotiated version, the WELCOME it may send, a bounded read of the transport's own
handshake frames, and the two data-phase protocols to hand the socket to.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conspirator.dpu_agent.inline import InlineProtocol
from conspirator.dpu_agent.session import ConnSession, Serving
from conspirator.dpu_agent.staged import StagedProtocol
from conspirator.wire import asyncsock
from conspirator.wire.frames import Frame, MsgType, Welcome, encode
from conspirator.wire.shm import new_memfd


@dataclass
class SessionStart:
    agent: Serving
    sock: socket.socket
    session: ConnSession
    version: int
    rdma_device: str | None = None

    def welcome(self, staging_slots: int = 0, staging_slot_bytes: int = 0) -> bytes:
        cfg = self.agent.core.config
        w = Welcome(self.version, self.session.window, cfg.max_payload, cfg.max_result,
                    staging_slots, staging_slot_bytes,
                    self.agent.core.buffers_of(self.session.job))
        return encode(MsgType.WELCOME, w.encode())

    async def send(self, frame: bytes, fds: list[int] | None = None) -> None:
        await asyncsock.send_packet(self.sock, frame, fds)

    async def recv_frame(self, allowed: frozenset[MsgType]) -> Frame:
        """The client's next control frame, within the handshake timeout."""
        return await asyncio.wait_for(asyncsock.recv_frame(self.sock, allowed),
                                      self.agent.core.config.handshake_timeout)

    async def _serve(self, proto: InlineProtocol | StagedProtocol) -> None:
        self.agent.sessions.add(self.session)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: proto, self.sock)

    async def serve_inline(self) -> None:
        await self._serve(InlineProtocol(self.agent, self.session))

    async def serve_staged(self, region: Any, slots: int, slot_bytes: int,
                           on_close: Callable[[], None]) -> None:
        await self._serve(StagedProtocol(self.agent, self.session, region, slots, slot_bytes,
                                         on_close))


async def start_inline(start: SessionStart) -> None:
    """TCP: WELCOME, then the payloads arrive in REQUEST frames."""
    await start.send(start.welcome())
    await start.serve_inline()


async def start_local(start: SessionStart) -> None:
    """Same host: a sealed staging memfd goes with WELCOME (SCM_RIGHTS); the client writes
    into it and sends STAGED frames."""
    slots, slot_bytes = start.session.window, start.agent.core.config.local_slot_bytes
    fd = new_memfd("conspirator-staging", slots * slot_bytes)
    try:
        region = mmap.mmap(fd, slots * slot_bytes, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
        await start.send(start.welcome(slots, slot_bytes), [fd])
    finally:
        os.close(fd)
    await start.serve_staged(region, slots, slot_bytes, lambda: _close_quietly(region))


def _close_quietly(region: Any) -> None:
    with contextlib.suppress(BufferError, ValueError):
        region.close()
