"""The RDMA transport's agent side (pyverbs, RC queue pairs).

Handshake on the TCP connection, after AUTH::

    agent  -> WELCOME (staging_slots x staging_slot_bytes)
    client -> RDMA_INFO (its QP number, PSN, LID, GID)
    agent  -> RDMA_INFO (its QP, and the staging region's address, rkey and size)

The staging region is a memory region registered with remote-write access; from then on
the connection carries STAGED frames exactly like the local one-sided transport, and the
same :class:`~conspirator.dpu_agent.staged.StagedProtocol` serves it.
"""

from __future__ import annotations

from conspirator.dpu_agent.sessionstart import SessionStart
from conspirator.wire import verbs
from conspirator.wire.frames import ErrorCode, MsgType, ProtocolError, RdmaInfo, encode


async def start_rdma(start: SessionStart) -> None:
    why = verbs.why_unavailable()
    if why is not None:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"RDMA is not available here: {why}")
    slots, slot_bytes = start.session.window, start.agent.core.config.local_slot_bytes
    await start.send(start.welcome(slots, slot_bytes))
    f = await start.recv_frame(frozenset({MsgType.RDMA_INFO}))
    remote = RdmaInfo.decode(f.body)
    ep = verbs.RcEndpoint(start.rdma_device, slots * slot_bytes, remote_write=True)
    try:
        ep.connect(remote)
        await start.send(encode(MsgType.RDMA_INFO, ep.info().encode()))
    except BaseException:
        ep.close()
        raise
    await start.serve_staged(ep.region(), slots, slot_bytes, ep.close)
