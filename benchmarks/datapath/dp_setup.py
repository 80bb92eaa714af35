"""Process and socket set-up of the data-path benchmark: starting one architecture's
processes (the worker, the TCP-receiving worker of (1), the DPU agent, or for (2) an
in-process local registry), waiting for them to be ready, opening the measured connection
(an authenticated client socket, or the worker's rings and slots mapped here), driving it
with the C client (dpclient.c, compiled here and called through ctypes), reading the
agent's counters and the processes' CPU time, and stopping everything again.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dp_common import DPU_CPU, HERE, HOST_CPU, JOB, SIZES, SLOTS, TOKEN, Arch

from conspirator.client import Client
from conspirator.dpu_agent.localregistry import LocalRegistry
from conspirator.wire.shm import ControlBlock, DataBuffer, Geometry


def conspirator(*args: str) -> list[str]:
    return [sys.executable, "-m", "conspirator", *args]


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far (schedstat: nanoseconds)."""
    total = 0
    with suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def wait_file(path: Path, timeout: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not appear")


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------- the C client


class CClient:
    """benchmarks/datapath/dpclient.c, compiled here and called through ctypes (the GIL
    is released while it runs)."""

    def __init__(self, build: Path) -> None:
        so = build / "dpclient.so"
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so),
                        str(HERE / "dpclient.c")], check=True)
        lib = ctypes.CDLL(str(so))
        u64p = ctypes.POINTER(ctypes.c_uint64)
        lp = ctypes.POINTER(ctypes.c_long)
        lib.run_stream.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32,
                                   ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_long, ctypes.c_double, u64p, lp]
        lib.run_stream.restype = ctypes.c_long
        lib.run_direct.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                   ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64,
                                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_uint32, ctypes.c_int, ctypes.c_long,
                                   ctypes.c_double, u64p, lp]
        lib.run_direct.restype = ctypes.c_long
        self.lib = lib
        self.lat = np.zeros(2_000_000, np.uint64)
        self.errors = ctypes.c_long(0)

    def _lat(self) -> Any:
        return self.lat.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64))


def address_of(buf: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


# ---------------------------------------------------------------------- the setups


@dataclass(frozen=True)
class WorkerModel:
    """The worker's model and its input: ``touch`` on bytes (the data path alone) by
    default; dp_model.py runs ``resnet18`` on float32 images."""

    name: str = "touch"
    shape: tuple[int, ...] = (max(SIZES),)
    dtype: str = "uint8"

    @property
    def shape_arg(self) -> str:
        return ",".join(str(d) for d in self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class Setup:
    """One architecture's processes; ``address`` and the pids to account."""

    def __init__(self, arch: Arch, workdir: Path, busy_poll_us: int = 0,
                 model: WorkerModel = WorkerModel()) -> None:
        self.arch = arch
        self.model = model
        self.busy_poll_us = busy_poll_us  # the reserved-core agent's polling window
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.host_pids: list[int] = []
        self.agent_pid = 0
        self.address = ""
        self.stats_file = workdir / "agent-stats.json"
        self.registry_thread: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None
        self.registry: LocalRegistry | None = None
        self.client: Client
        self.geometry: Geometry
        self.ctl: ControlBlock
        self.data: DataBuffer
        self.bell = self.done = -1

    def spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def worker(self, registry: Path) -> None:
        m = self.model
        w = self.spawn(conspirator("worker", "--model", m.name, "--shape", m.shape_arg,
                                   "--dtype", m.dtype, "--slots", str(SLOTS),
                                   "--registry", str(registry), "--job", JOB, "--replica",
                                   "w0", "--cpu", str(HOST_CPU), "--log-level", "WARNING"))
        self.host_pids.append(w.pid)

    def start(self) -> None:
        a = self.arch
        if a.name == "worker-tcp":
            port_file = self.dir / "port.json"
            p = self.spawn([sys.executable, str(HERE / "dp_worker_tcp.py"), "--job", JOB,
                            "--token", TOKEN, "--size", str(self.model.nbytes), "--cpu",
                            str(HOST_CPU), "--port-file", str(port_file), "--model",
                            self.model.name, "--dtype", self.model.dtype])
            self.host_pids.append(p.pid)
            self.address = f"tcp://127.0.0.1:{wait_file(port_file)['tcp_port']}"
        elif a.name == "direct":
            self._start_registry()
            self.worker(self.dir / "registry.sock")
            end = time.monotonic() + 120
            assert self.registry is not None
            while not self.registry.entries:
                if time.monotonic() > end:
                    raise TimeoutError("the worker did not register")
                time.sleep(0.02)
        else:
            ready = self.dir / "agent.json"
            cpu = HOST_CPU if a.name == "agent-host" else DPU_CPU
            p = self.spawn(conspirator(
                "dpu-agent", "--listen", "127.0.0.1:0", "--local-socket",
                str(self.dir / "agent.sock"), "--publish-socket", str(self.dir / "pub.sock"),
                "--local-registry", str(self.dir / "registry.sock"), "--token",
                f"{JOB}={TOKEN}", "--cpu", str(cpu), "--window", "8", "--max-payload", "4MiB",
                "--local-slot", "4MiB", "--staging-budget", "256MiB", "--ready-file",
                str(ready), "--stats-file", str(self.stats_file), "--log-level", "WARNING",
                "--busy-poll-us", str(self.busy_poll_us if cpu == DPU_CPU else 0)))
            self.agent_pid = p.pid
            if cpu == HOST_CPU:
                self.host_pids.append(p.pid)
            port = wait_file(ready)["tcp_port"]
            self.worker(self.dir / "registry.sock")
            self.address = (f"tcp://127.0.0.1:{port}" if a.transport == "tcp"
                            else f"unix://{self.dir / 'agent.sock'}")
            end = time.monotonic() + 120  # a real model takes seconds to load
            while self.agent_stats().get("replicas", 0) < 1:
                if time.monotonic() > end:
                    raise TimeoutError("the replica was not published")
                time.sleep(0.05)

    def _start_registry(self) -> None:
        loop = asyncio.new_event_loop()
        t = threading.Thread(target=loop.run_forever, daemon=True)
        t.start()
        self.registry = LocalRegistry(str(self.dir / "registry.sock"),
                                      str(self.dir / "no-agent.sock"), "bench", "x")
        asyncio.run_coroutine_threadsafe(self.registry.start(), loop).result(10)
        self.registry_thread = (loop, t)

    def open(self) -> None:
        """The measured connection: an authenticated client socket (the C loop drives
        it), or for (2) the worker's rings and slots mapped here."""
        if self.arch.name == "direct":
            assert self.registry is not None
            e = next(iter(self.registry.entries.values()))
            g = Geometry(e.spec.slots, e.spec.slot_bytes, e.spec.result_bytes)
            self.geometry = g
            self.ctl = ControlBlock(e.fds[0], g, create=False)
            self.data = DataBuffer(e.fds[3], g, create=False)
            self.bell, self.done = e.fds[1], e.fds[2]
            return
        self.client = Client(self.address, JOB, TOKEN, reader=False)

    def drive(self, c: CClient, payload: Any, size: int, depth: int, n: int,
              seconds: float) -> int:
        if self.arch.name == "direct":
            g = self.geometry
            assert self.ctl.mm is not None and self.data.mm is not None
            return int(c.lib.run_direct(
                address_of(self.ctl.mm), g.sq_offset, g.cq_offset, g.capacity,
                address_of(self.data.mm), g.slot_stride, g.slots, self.bell, self.done,
                payload.ctypes.data, size, depth, n, seconds, c._lat(),
                ctypes.byref(c.errors)))
        cl = self.client
        staged = self.arch.transport == "one-sided"
        w = cl.welcome
        return int(c.lib.run_stream(
            cl.raw_socket.fileno(), int(staged), payload.ctypes.data, size,
            address_of(cl.staging_region) if staged else None,
            w.staging_slot_bytes, w.staging_slots, depth, n, seconds, c._lat(),
            ctypes.byref(c.errors)))

    def agent_stats(self) -> dict[str, Any]:
        if not self.agent_pid:
            return {}
        before = self.stats_file.stat().st_mtime_ns if self.stats_file.exists() else 0
        os.kill(self.agent_pid, signal.SIGUSR1)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if self.stats_file.exists() and self.stats_file.stat().st_mtime_ns != before:
                data: dict[str, Any] = json.loads(self.stats_file.read_text())
                return data
            time.sleep(0.005)
        raise TimeoutError("agent stats")

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if hasattr(self, "ctl"):
            self.ctl.close()
            with suppress(BufferError):
                self.data.close()
        for p in reversed(self.procs):
            stop(p)
        if self.registry_thread is not None and self.registry is not None:
            loop, t = self.registry_thread
            asyncio.run_coroutine_threadsafe(self.registry.close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            t.join(5)
