"""The node daemon's registry in front of the real DPU agent (``conspirator dpu-agent``), each
in its own process like on a node: a worker process (``conspirator worker``) registers through
the registry (its pod checked), the registry publishes to the agent over the authenticated
channel, and a client's requests reach the worker's input buffer and come back; when the
worker exits, its buffer is withdrawn from the agent."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from conspirator.client import Client
from conspirator.deviceplugin.kube import PodInfo
from conspirator.deviceplugin.podregistry import AgentPublisher, Registry

NODE, NODE_TOKEN = "node-1", "node-token"
JOB, TOKEN = "team-a/resnet", "job-token"
UID = "1d0a1b34-7c77-4c0e-9a0c-2b3c4d5e6f70"


def conspirator(*args: str) -> list[str]:
    return [sys.executable, "-m", "conspirator", *args]


def wait(what: str, cond: Callable[[], object], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def d() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dpa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_worker_registry_agent_client(d: Path) -> None:
    (d / "node-token").write_text(NODE_TOKEN + "\n")
    agent = subprocess.Popen(conspirator(
        "dpu-agent", "--no-tcp", "--local-socket", str(d / "agent.sock"),
        "--publish-socket", str(d / "publish.sock"), "--node", NODE,
        "--node-token-file", str(d / "node-token"), "--token", f"{JOB}={TOKEN}",
        "--ready-file", str(d / "ready"), "--log-level", "WARNING"), cwd=d)
    pod = PodInfo(uid=UID, namespace="team-a", name="resnet-0", phase="Running",
                  labels={"conspirator.io/job": "resnet"})
    workers: set[int] = set()
    publisher = AgentPublisher(NODE, d / "publish.sock", NODE_TOKEN, retry=0.05)
    reg = Registry(NODE, d / "registry.sock", resolve={UID: pod}.get,
                   # The worker process stands in for a container of the pod.
                   identify=lambda pid: UID if pid in workers else None, publisher=publisher)
    reg.listen()
    threading.Thread(target=reg.serve, daemon=True).start()
    worker = None
    try:
        wait("the agent", (d / "ready").exists)
        wait("the registry to authenticate with the agent", lambda: publisher.connected)
        worker = subprocess.Popen(conspirator(
            "worker", "--model", "checksum", "--shape", str(1 << 16), "--dtype", "uint8",
            "--slots", "2", "--registry", str(d / "registry.sock"), "--job", JOB,
            "--replica", "replica-0", "--log-level", "WARNING"), cwd=d)
        workers.add(worker.pid)
        wait("the buffer to reach the agent", lambda: publisher.published)
        [entry] = reg.entries.values()
        assert entry.caller.pod_uid == UID and entry.caller.pid == worker.pid
        assert entry.buffer_id in publisher.published  # the agent acknowledged it
        rng = np.random.default_rng(5)
        with Client(f"unix://{d / 'agent.sock'}", JOB, TOKEN) as c:
            for size in (0, 1, 4096, 1 << 16):
                p = rng.bytes(size)
                r = c.submit(p).result(30)
                assert r.buffer_id == entry.buffer_id
                assert np.frombuffer(r.data, np.uint64).tolist() == [size, zlib.crc32(p)]
        stop(worker)
        # The worker's connection closed: withdrawn from the registry and from the agent.
        wait("the withdrawal", lambda: reg.count() == 0 and not publisher.published)
    finally:
        if worker is not None:
            stop(worker)
        reg.close()
        stop(agent)
