"""The node daemon's registry in front of the real DPU agent (``conspirator.dpu_agent``): a
worker registers through the registry (its pod checked), the registry publishes to the agent
over the authenticated channel, and a client's requests reach the worker's input buffer and
come back; when the worker exits, the agent loses the replica."""

from __future__ import annotations

import os
import threading
import zlib

import numpy as np

from conspirator.client import Client
from conspirator.deviceplugin.kube import PodInfo
from conspirator.deviceplugin.registry import AgentPublisher, Registry

from ..datapath.harness import NODE, NODE_TOKEN, node, stop_process, wait_for, worker_process

JOB, TOKEN = "team-a/resnet", "job-token"
UID = "1d0a1b34-7c77-4c0e-9a0c-2b3c4d5e6f70"


def test_worker_registry_agent_client() -> None:
    with node({JOB: TOKEN}, with_registry=False) as n:
        pod = PodInfo(uid=UID, namespace="team-a", name="resnet-0", phase="Running",
                      labels={"conspirator.io/job": "resnet"})
        workers: set[int] = set()
        publisher = AgentPublisher(NODE, n.dir / "publish.sock", NODE_TOKEN, retry=0.05)
        reg = Registry(NODE, n.dir / "registry.sock", resolve={UID: pod}.get,
                       # The worker process stands in for a container of the pod.
                       identify=lambda pid: UID if pid in workers else None,
                       publisher=publisher)
        reg.listen()
        threading.Thread(target=reg.serve, daemon=True).start()
        try:
            wait_for(lambda: publisher.connected, 10, "the registry to reach the agent")
            w = worker_process(n.registry_path, JOB, "replica-0", model="checksum",
                               size=1 << 16, slots=2)
            workers.add(w.pid)
            try:
                n.wait_replicas(1)
                assert reg.count() == 1
                [entry] = reg.entries.values()
                assert entry.pod.uid == UID and entry.peer_pid == w.pid
                rng = np.random.default_rng(5)
                with Client(n.local, JOB, TOKEN) as c:
                    for size in (0, 1, 4096, 1 << 16):
                        p = rng.bytes(size)
                        r = c.submit(p).result(30)
                        assert np.frombuffer(r.data, np.uint64).tolist() == [size,
                                                                             zlib.crc32(p)]
            finally:
                stop_process(w)
            # The worker's connection closed: withdrawn from the registry and the agent.
            wait_for(lambda: reg.count() == 0, 10, "the registry to withdraw the buffer")
            n.wait_replicas(0)
        finally:
            reg.close()
        assert os.path.exists(n.dir) and not (n.dir / "registry.sock").exists()
