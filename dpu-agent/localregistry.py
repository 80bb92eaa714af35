"""The agent's ``--local-registry PATH``: the node's worker registry without the node
daemon, for development, the fast integration tests and the benchmarks.

It is the node daemon's registry code (:mod:`conspirator.wire.workerregistry`, publishing
through :mod:`conspirator.wire.publishing` after authenticating with the node token) with
a trust-all identity policy: a worker's claim to a job is believed, where the node daemon
checks it (``SO_PEERCRED`` pid -> cgroup -> pod).  ``check(pid, spec)`` may still refuse.
The registry serves from threads of its own; ``start`` and ``close`` are awaitable so that
the agent's event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from conspirator.wire.publishing import AgentPublisher
from conspirator.wire.workerregistry import Check, RegistryEntry, TrustClaims, WorkerRegistry


class LocalRegistry:
    def __init__(self, socket_path: str, agent_publish_path: str, node: str,
                 node_token: str, check: Check | None = None, retry: float = 0.1) -> None:
        self.policy = TrustClaims(check)
        #: Set while the publisher is authenticated to the agent with every buffer sent.
        self.connected = threading.Event()
        self.publisher = AgentPublisher(node, Path(agent_publish_path), node_token,
                                        retry=retry, on_change=self._on_change)
        self.registry = WorkerRegistry(node, Path(socket_path), self.policy, self.publisher)

    def _on_change(self, connected: bool) -> None:
        (self.connected.set if connected else self.connected.clear)()

    @property
    def entries(self) -> dict[int, RegistryEntry]:
        return self.registry.entries

    @property
    def check(self) -> Check | None:
        return self.policy.check

    @check.setter
    def check(self, check: Check | None) -> None:
        self.policy.check = check

    async def start(self) -> None:
        self.registry.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.registry.close)
