"""The RDMA transport's agent side (pyverbs, RC queue pairs).

Handshake on the TCP connection, after AUTH::

    agent  -> WELCOME (staging_slots x staging_slot_bytes)
    client -> RDMA_INFO (its QP number, PSN, LID, GID)
    agent  -> RDMA_INFO (its QP, and the staging region's address, rkey and size)

The staging region is a memory region registered with remote-write access; from then on
the connection carries STAGED frames exactly like the local one-sided transport, and the
same :class:`~conspirator.dpu_agent.server.StagedProtocol` serves it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from conspirator.wire import verbs
from conspirator.wire.frames import ErrorCode, MsgType, ProtocolError, RdmaInfo, encode

if TYPE_CHECKING:
    from .server import Agent, ConnSession


async def start_rdma_session(agent: Agent, sock: socket.socket, session: ConnSession,
                             version: int) -> None:
    why = verbs.why_unavailable()
    if why is not None:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"RDMA is not available here: {why}")
    loop = asyncio.get_running_loop()
    slots, slot_bytes = session.window, agent.config.local_slot_bytes
    await loop.sock_sendall(sock, agent._welcome(session, version, slots, slot_bytes))
    f = await asyncio.wait_for(agent._recv_frame(sock, frozenset({MsgType.RDMA_INFO})),
                               agent.config.handshake_timeout)
    remote = RdmaInfo.decode(f.body)
    ep = verbs.RcEndpoint(agent.rdma_device, slots * slot_bytes, remote_write=True)
    try:
        ep.connect(remote)
        await loop.sock_sendall(sock, encode(MsgType.RDMA_INFO, ep.info().encode()))
    except BaseException:
        ep.close()
        raise
    proto = agent.staged_protocol(session, ep.region(), slots, slot_bytes, ep.close)
    await loop.connect_accepted_socket(lambda: proto, sock)
