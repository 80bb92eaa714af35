"""Test harness of the data path: an agent and a stand-in registry on an event loop in a
background thread, workers as threads or as real processes, short socket paths."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from conspirator.dpu_agent.cli import event_loop
from conspirator.dpu_agent.core import AgentConfig
from conspirator.dpu_agent.localregistry import LocalRegistry
from conspirator.dpu_agent.server import Agent
from conspirator.dpu_agent.tokens import StaticTokens
from conspirator.runtime import Identity, Replica, UnixRegistrar
from conspirator.runtime.replica import Model
from conspirator.wire.native import Impl

T = TypeVar("T")
NODE = "node-1"
NODE_TOKEN = "node-secret"


class LoopThread:
    """The agent's event loop (``--event-loop``: uvloop where installed, or asyncio's)
    running in a daemon thread."""

    def __init__(self, kind: str = "auto") -> None:
        self.loop = event_loop(kind)[0]()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="test-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        async def wrapper() -> T:
            return fn()
        return self.run(wrapper(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def short_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cdp6-", dir="/tmp"))


@dataclass
class Node:
    """An agent (TCP + local socket + publish socket) and a registry publishing to it."""

    dir: Path
    lt: LoopThread
    agent: Agent
    registry: LocalRegistry | None
    jobs: dict[str, str]
    native: Impl | None = None
    workers: list[tuple[Replica, threading.Thread]] = field(default_factory=list)

    @property
    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.agent.tcp_port}"

    @property
    def oip(self) -> str:
        """The Open Inference Protocol listener (``node(oip=True)``)."""
        return f"127.0.0.1:{self.agent.oip_port}"

    @property
    def local(self) -> str:
        return f"unix://{self.dir / 'agent.sock'}"

    @property
    def registry_path(self) -> str:
        return str(self.dir / "registry.sock")

    @property
    def publish_path(self) -> str:
        return str(self.dir / "publish.sock")

    def replicas(self) -> int:
        return self.lt.call(lambda: len(self.agent.core.replicas))

    def wait_replicas(self, n: int, timeout: float = 20) -> None:
        wait_for(lambda: self.replicas() == n, timeout, f"{n} replicas published")

    def stats(self) -> Any:
        return self.lt.call(lambda: self.agent.core.stats)

    def worker(self, job: str, name: str, model: Model, *, shape: tuple[int, ...] = (4096,),
               dtype: str = "uint8", slots: int = 2, result_bytes: int = 4096,
               weight: float = 1.0) -> Replica:
        """A replica served by a thread of this process."""
        rep = Replica(shape, dtype, slots=slots, result_bytes=result_bytes,
                      identity=Identity(job, name, weight), native=self.native)
        rep.register(UnixRegistrar(self.registry_path))
        t = threading.Thread(target=rep.serve, args=(model,), daemon=True, name=name)
        t.start()
        self.workers.append((rep, t))
        return rep


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def node(jobs: dict[str, str], config: AgentConfig | None = None,
         with_registry: bool = True, native: Impl | None = None,
         loop: str = "auto", oip: bool = False) -> Iterator[Node]:
    d = short_dir()
    lt = LoopThread(loop)
    cfg = config or AgentConfig(window=8, staging_budget=64 << 20, max_payload=4 << 20,
                                local_slot_bytes=1 << 20, no_replica_timeout=2.0)
    agent = Agent(cfg, StaticTokens(jobs, {NODE: NODE_TOKEN}), tcp=("127.0.0.1", 0),
                  local_path=str(d / "agent.sock"), publish_path=str(d / "publish.sock"),
                  native=native, oip=("127.0.0.1", 0) if oip else None)
    lt.run(agent.start())
    registry = None
    if with_registry:
        registry = LocalRegistry(str(d / "registry.sock"), str(d / "publish.sock"), NODE,
                                 NODE_TOKEN)
        lt.run(registry.start())
        wait_for(registry.connected.is_set, 10, "the registry to reach the agent")
    n = Node(d, lt, agent, registry, jobs, native=native)
    try:
        yield n
    finally:
        for rep, t in n.workers:
            rep.stop()
            t.join(timeout=5)
        if n.registry is not None:
            lt.run(n.registry.close())
        lt.run(agent.close())
        lt.close()
        for rep, _ in n.workers:
            rep.close()
        shutil.rmtree(d, ignore_errors=True)


def conspirator(*args: str) -> list[str]:
    """Command line of the installed ``conspirator`` (never from the repository root)."""
    return [sys.executable, "-m", "conspirator", *args]


def worker_process(registry: str, job: str, name: str, *, model: str = "touch",
                   size: int = 4096, slots: int = 2, delay: float = 0.0,
                   weight: float = 1.0, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        conspirator("worker", "--model", model, "--shape", str(size), "--dtype", "uint8",
                    "--slots", str(slots), "--registry", registry, "--job", job, "--replica",
                    name, "--weight", str(weight), "--delay", str(delay),
                    "--log-level", "WARNING"),
        cwd=cwd or tempfile.gettempdir(), stdin=subprocess.DEVNULL)


def stop_process(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def gather_futures(futs: list[concurrent.futures.Future[Any]], timeout: float = 60
                   ) -> tuple[list[Any], list[BaseException]]:
    ok: list[Any] = []
    errors: list[BaseException] = []
    for f in futs:
        try:
            ok.append(f.result(timeout))
        except Exception as e:
            errors.append(e)
    return ok, errors


def env_without_progress() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CONSPIRATOR_PROGRESS", None)
    return env


def spread_problems(by_buffer: dict[int, int], replicas: int, sent: int) -> list[str]:
    """What the dispatcher promises of a run's spread over ``replicas`` replicas, whatever
    their speeds: every request answered by one of them, and each of them served some (a
    replica with a free slot is never passed over for a queue: least outstanding work per
    weight, ties rotating, so the first requests reach every replica).  How evenly depends
    on each worker's speed, which on a busy host is anything; no share is promised."""
    problems = []
    if len(by_buffer) != replicas:
        problems.append(f"{len(by_buffer)} replicas served, not {replicas}")
    if sum(by_buffer.values()) != sent:
        problems.append(f"{sum(by_buffer.values())} answers by the replicas, not {sent}")
    problems += [f"buffer {b} served none" for b, n in by_buffer.items() if n < 1]
    return problems
