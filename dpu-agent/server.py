"""The asyncio agent: its listeners and their lifecycle.

Listeners (any subset):

* TCP (``Mode.INLINE``, and ``Mode.RDMA`` where a device is served): request bytes travel
  in REQUEST frames, received straight into staging (:mod:`.inline`); RDMA clients write
  into a registered memory region (:mod:`.rdma`) and send STAGED frames;
* a unix stream socket for clients on the same host (``Mode.LOCAL``): the agent hands the
  client a staging region (a sealed memfd, SCM_RIGHTS) that it writes into before sending
  a small STAGED frame (:mod:`.staged`): the one-sided model of RDMA, without the NIC;
* the Open Inference Protocol (KServe / Triton v2, gRPC; ``oip``, off by default): an
  unchanged Triton or KServe client's ``ModelInfer`` goes through the same dispatcher
  (:mod:`.oip`);
* the publish socket (unix ``SOCK_SEQPACKET``) where the node's buffer registry, after
  authenticating with the node token, publishes and withdraws worker buffers.

Every accepted connection goes to :mod:`.accept` (the handshake, bounded in time, then the
session's set-up); the sweeper times requests out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from conspirator.dpu_agent.accept import serve_client, serve_publisher
from conspirator.dpu_agent.core import AgentConfig, AgentCore
from conspirator.dpu_agent.limits import Limits
from conspirator.dpu_agent.oip import OipServer
from conspirator.dpu_agent.poller import BusyPoller
from conspirator.dpu_agent.session import ConnSession
from conspirator.dpu_agent.staging import StagingPool
from conspirator.dpu_agent.tokens import TokenStore
from conspirator.wire.frames import ErrorCode, Mode
from conspirator.wire.native import Impl

log = logging.getLogger("conspirator.dpu_agent")

SWEEP_EVERY = 0.25


class Agent:
    """The DPU agent: ``await start()``, then it serves until ``await close()``."""

    def __init__(self, config: AgentConfig, tokens: TokenStore, *,
                 tcp: tuple[str, int] | None = ("0.0.0.0", 7470),
                 local_path: str | None = None, publish_path: str | None = None,
                 rdma_device: str | None = None, native: Impl | None = None,
                 oip: tuple[str, int] | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.tcp = tcp
        self.local_path = local_path
        self.publish_path = publish_path
        self.rdma_device = rdma_device
        self.native = native
        self.core: AgentCore = AgentCore(config, native)
        self.pool = StagingPool(config.staging_budget, config.max_payload,
                                shares=self.core.served_jobs if config.fair_staging else None)
        self.sessions: set[ConnSession] = set()
        self.limits = Limits(config, self.core.stats)
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tcp_port = 0
        self._closed = asyncio.Event()
        self.poller: BusyPoller | None = None
        self.oip = oip
        self.oip_server: OipServer | None = None
        self.oip_port = 0

    # -- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.core.loop = loop
        if self.config.busy_poll_us > 0:
            self.poller = BusyPoller(self.core, self.config.busy_poll_us)
            self.poller.start(loop)
        if self.tcp is not None:
            s = socket.create_server(self.tcp, reuse_port=False, backlog=128)
            s.setblocking(False)
            self.tcp_port = s.getsockname()[1]
            self._listen(s, self._accept_tcp)
        if self.local_path is not None:
            self._listen(self._unix_listener(self.local_path, socket.SOCK_STREAM),
                         self._accept_local)
        if self.publish_path is not None:
            self._listen(self._unix_listener(self.publish_path, socket.SOCK_SEQPACKET),
                         self._accept_publisher)
        if self.oip is not None:
            self.oip_server = OipServer(self.core, self.tokens, self.oip,
                                        self.config.oip_window)
            self.oip_port = await self.oip_server.start()
        self._spawn(self._sweeper())
        log.info("agent up: tcp %s, local %s, publish %s, oip %s, epoch %x",
                 self.tcp_port or "-", self.local_path or "-", self.publish_path or "-",
                 self.oip_port or "-", self.core.epoch)

    @staticmethod
    def _unix_listener(path: str, kind: int) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
        s.bind(path)
        os.chmod(path, 0o660)
        s.listen(128)
        s.setblocking(False)
        return s

    def _listen(self, sock: socket.socket,
                handler: Callable[[socket.socket], Any]) -> None:
        self._listeners.append(sock)
        self._spawn(self._accept_loop(sock, handler))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _accept_loop(self, sock: socket.socket,
                           handler: Callable[[socket.socket], Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.05)
                continue
            conn.setblocking(False)
            self.core.stats.connections += 1
            self._spawn(handler(conn))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                self.core.sweep()
                serving = [s for s in self.sessions if s.transport is not None]
                for s in self.limits.idle(serving, time.monotonic()):
                    self.core.stats.idle_closed += 1
                    if isinstance(s, ConnSession):
                        s.close_idle(self.config.idle_timeout)
            except Exception:
                log.exception("sweep failed")

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self, reason: str = "the agent is shutting down") -> None:
        if self._closed.is_set():  # closed already (a second close has nothing to do)
            return
        if self.poller is not None:
            self.poller.stop()
        self.core.shutdown(reason)
        for s in list(self.sessions):
            s.fatal(ErrorCode.SHUTTING_DOWN, reason)
        if self.oip_server is not None:  # its calls were just answered (UNAVAILABLE)
            await self.oip_server.stop()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for lsock in self._listeners:
            lsock.close()
        for path in (self.local_path, self.publish_path):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        await asyncio.sleep(0)
        self.pool.close()
        self._closed.set()

    # -- handshake (raw socket, before any transport exists)

    # -- accepted connections

    async def _accept_tcp(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        modes = (Mode.INLINE, Mode.RDMA) if self.rdma_device is not None else (Mode.INLINE,)
        await serve_client(self, self.tokens, sock, modes, self.rdma_device)

    async def _accept_local(self, sock: socket.socket) -> None:
        await serve_client(self, self.tokens, sock, (Mode.LOCAL,))

    async def _accept_publisher(self, sock: socket.socket) -> None:
        await serve_publisher(self.core, self.tokens, sock)
