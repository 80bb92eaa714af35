"""One worker replica's side of the data path: its registered buffer and request loop.

The replica owns a data memfd (``slots`` input slots; the memory ``input_tensor`` returns
an array over), a control memfd (rings, slot tags, result areas) and two eventfds
(:mod:`conspirator.wire.shm`).  :meth:`Replica.serve` pops submissions, calls the model on
the slot the agent filled, writes the result into the slot's result area, pushes a
completion and rings the agent.  It sleeps on the doorbell eventfd while nothing is queued.

A graceful stop (SIGTERM: what the kubelet sends a deleted pod) is a **drain**
(:meth:`Replica.drain`): the worker marks itself ``DRAINING`` in the control block and
sends DRAIN through the registry to the agent, which sends it nothing new; it goes on
serving what it holds until the agent sets the control block's drained flag (nothing in
flight any more) or ``drain_timeout`` passes, then stops; closing withdraws the buffer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from conspirator.runtime.registration import Registrar
from conspirator.wire.native import Impl, impl
from conspirator.wire.registration import TARGET_CUDA_IPC, TARGET_MEMFD, BufferSpec
from conspirator.wire.shm import (
    ControlBlock,
    DataBuffer,
    Geometry,
    Status,
    WorkerState,
    new_eventfd,
    new_memfd,
)

log = logging.getLogger("conspirator.runtime")

ENV_DRAIN_TIMEOUT = "CONSPIRATOR_DRAIN_TIMEOUT"
DEFAULT_DRAIN_TIMEOUT = 25.0  # under the default terminationGracePeriodSeconds (30)

#: What a model may return: bytes-like or an array (its raw bytes are the result).
Result = bytes | bytearray | memoryview | np.ndarray | None
Model = Callable[[Any], Result]


@dataclass(frozen=True, slots=True)
class Identity:
    job: str  # namespace/name
    replica: str  # pod name, or any unique name of this replica on the node
    weight: float = 1.0

    @classmethod
    def from_env(cls, job: str | None = None, replica: str | None = None,
                 weight: float | None = None) -> Identity:
        """Read what the operator's Deployment sets: CONSPIRATOR_NAMESPACE,
        CONSPIRATOR_JOB, CONSPIRATOR_POD and CONSPIRATOR_THROUGHPUT (the placement's
        estimate of this replica's requests/s, the dispatcher's weight)."""
        env = os.environ
        if job is None:
            name = env.get("CONSPIRATOR_JOB", "")
            ns = env.get("CONSPIRATOR_NAMESPACE", "default")
            job = name if "/" in name else f"{ns}/{name}"
        if replica is None:
            replica = env.get("CONSPIRATOR_POD") or f"pid-{os.getpid()}"
        if weight is None:
            weight = float(env.get("CONSPIRATOR_THROUGHPUT", "1") or 1)
        return cls(job, replica, weight)


class Replica:
    """A registered input buffer of ``slots`` tensors of ``shape``/``dtype``."""

    def __init__(self, shape: Sequence[int], dtype: str | np.dtype[Any] = "float32", *,
                 slots: int = 4, result_bytes: int = 1 << 16,
                 identity: Identity | None = None, native: Impl | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        if any(d <= 0 for d in self.shape) or not 1 <= slots <= 1024:
            raise ValueError("shape needs positive dimensions and slots 1..1024")
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.geometry = Geometry(slots, nbytes, result_bytes)
        self.identity = identity or Identity.from_env()
        self.native = native or impl
        self.buffer_id = 0
        self._registrar: Registrar | None = None
        g = self.geometry
        self._fds: list[int] = []
        self.data_fd = -1
        self.data: DataBuffer | None = None
        self.slot_arrays: list[Any] = []
        try:
            self.ctl_fd = self._keep(new_memfd("conspirator-ctl", g.control_bytes))
            self.doorbell_fd = self._keep(new_eventfd())
            self.completion_fd = self._keep(new_eventfd())
            self.ctl = ControlBlock(self.ctl_fd, g, create=True, native=self.native)
            self._allocate_input()
        except BaseException:
            self._close_fds()
            raise
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._drain_deadline = math.inf
        self.served = 0
        #: Seconds a drain waits for the agent's drained flag before stopping anyway
        #: (CONSPIRATOR_DRAIN_TIMEOUT; keep it under the pod's grace period).
        self.drain_timeout = float(os.environ.get(ENV_DRAIN_TIMEOUT, "")
                                   or DEFAULT_DRAIN_TIMEOUT)
        self.drain_result = ""  # how the drain ended: drained, timeout, refused

    def _allocate_input(self) -> None:
        """The input slots: a sealed memfd mapped here and, once registered, by the agent."""
        g = self.geometry
        self.data_fd = self._keep(new_memfd("conspirator-input", g.data_bytes))
        self.data = DataBuffer(self.data_fd, g, create=True)
        assert self.data.mm is not None
        count = int(np.prod(self.shape, dtype=np.int64))
        self.slot_arrays = [np.frombuffer(self.data.mm, self.dtype, count,
                                          g.slot_offset(i)).reshape(self.shape)
                            for i in range(g.slots)]

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    # ------------------------------------------------------------------ registration

    @property
    def spec(self) -> BufferSpec:
        g = self.geometry
        return BufferSpec(job=self.identity.job, replica=self.identity.replica, slots=g.slots,
                          slot_bytes=g.slot_bytes, result_bytes=g.result_bytes,
                          target=TARGET_MEMFD, shape=self.shape, dtype=self.dtype.name,
                          weight=self.identity.weight, pid=os.getpid())

    @property
    def fds(self) -> list[int]:
        """Descriptors in registration order: control, doorbell, completion, data."""
        return [self.ctl_fd, self.doorbell_fd, self.completion_fd, self.data_fd]

    def register(self, registrar: Registrar) -> int:
        self.ctl.state = WorkerState.READY
        self.buffer_id = registrar.register(self.spec, self.fds)
        self._registrar = registrar
        log.info("registered %s replica %s as buffer %d (%d x %d bytes)", self.identity.job,
                 self.identity.replica, self.buffer_id, self.geometry.slots,
                 self.geometry.slot_bytes)
        return self.buffer_id

    # ------------------------------------------------------------------ serving

    def stop(self) -> None:
        self._stop.set()
        self.native.doorbell_ring(self.doorbell_fd)

    def drain(self) -> None:
        """Stop gracefully: announce the drain (from a thread of its own, so that a model
        busy with a request does not delay it) and stop serving once the agent has
        nothing in flight here, or ``drain_timeout`` after now.  Signal-safe."""
        if self._drain.is_set():
            return
        self._drain_deadline = time.monotonic() + self.drain_timeout
        self._drain.set()
        threading.Thread(target=self._announce_drain, daemon=True,
                         name="conspirator-drain").start()

    def _announce_drain(self) -> None:
        """Tell the agent, through the registry; a refusal ends the serve loop now."""
        self.ctl.state = WorkerState.DRAINING
        drain = getattr(self._registrar, "drain", None)
        ok = False
        if drain is None or not self.buffer_id:
            log.warning("no registry to drain through: stopping now")
        else:
            try:
                ok = bool(drain(self.buffer_id))
            except Exception as e:  # a registry without DRAIN: stop as before
                log.warning("drain refused (%s): stopping now", e)
        if ok:
            log.info("draining buffer %d (up to %g s)", self.buffer_id, self.drain_timeout)
        else:
            self.drain_result = "refused"
            self._drain_deadline = 0.0
        self.native.doorbell_ring(self.doorbell_fd)

    def input_view(self, slot: int, length: int) -> Any:
        """What the model gets for a request of ``length`` bytes in ``slot``: the slot's
        tensor when the length is the tensor's size, else (1-D tensors) its prefix."""
        arr = self.slot_arrays[slot]
        if length == self.geometry.slot_bytes:
            return arr
        if arr.ndim == 1 and length % self.dtype.itemsize == 0:
            return arr[:length // self.dtype.itemsize]
        raise ValueError(f"request of {length} bytes does not fit a tensor of "
                         f"{self.shape} {self.dtype.name} ({self.geometry.slot_bytes} bytes)")

    def _write_result(self, slot: int, out: Result) -> tuple[int, Status]:
        g = self.geometry
        if out is None:
            return 0, Status.OK
        if isinstance(out, np.ndarray):
            mv = np.ascontiguousarray(out).data.cast("B")
        else:
            mv = memoryview(out).cast("B")
        if mv.nbytes > g.result_bytes:
            return self._write_message(slot, f"result of {mv.nbytes} bytes exceeds the "
                                       f"result area of {g.result_bytes}"), \
                Status.RESULT_TOO_LARGE
        assert self.ctl.mm is not None
        self.native.copy(self.ctl.mm, g.result_offset(slot), mv, 0, mv.nbytes)
        return mv.nbytes, Status.OK

    def _write_message(self, slot: int, msg: str) -> int:
        g = self.geometry
        data = msg.encode("utf-8", "replace")[:min(g.result_bytes, 1024)]
        assert self.ctl.mm is not None
        self.native.copy(self.ctl.mm, g.result_offset(slot), data, 0, len(data))
        return len(data)

    def handle(self, fn: Model, slot: int, length: int) -> tuple[int, Status]:
        try:
            x = self.input_view(slot, length)
        except ValueError as e:
            return self._write_message(slot, str(e)), Status.BAD_INPUT
        try:
            out = fn(x)
        except Exception as e:  # the model's failure is the request's, not the worker's
            log.exception("model failed")
            return self._write_message(slot, f"{type(e).__name__}: {e}"), Status.ERROR
        return self._write_result(slot, out)

    def serve(self, fn: Model, *, idle_ms: int = 200) -> None:
        """Serve requests until :meth:`stop` (or the registry going away)."""
        g = self.geometry
        sq, cq, native = self.ctl.sq, self.ctl.cq, self.native
        self.ctl.state = WorkerState.READY
        drain, ctl = self._drain, self.ctl
        while not self._stop.is_set():
            # A drain ends when the agent says drained (or at its deadline).
            if drain.is_set() and (ctl.drained or time.monotonic() >= self._drain_deadline):
                break
            entries = sq.pop_many(g.slots)
            if not entries:
                native.doorbell_wait(self.doorbell_fd, idle_ms)
                continue
            for tag, raw_slot, length, _, _ in entries:
                t0 = time.perf_counter()
                if not 0 <= raw_slot < g.slots or length > g.slot_bytes:
                    slot, n, status = min(raw_slot, g.slots - 1), 0, Status.BAD_INPUT
                else:
                    slot = raw_slot
                    n, status = self.handle(fn, slot, length)
                micros = min(int((time.perf_counter() - t0) * 1e6), 0xFFFF_FFFF)
                while not cq.push(tag, slot, n, int(status), micros):
                    native.doorbell_ring(self.completion_fd)  # cannot happen: cq >= slots
                    time.sleep(0.0001)
                native.doorbell_ring(self.completion_fd)
                self.served += 1
        if drain.is_set() and not self.drain_result:
            self.drain_result = "drained" if self.ctl.drained else "timeout"
            (log.info if self.ctl.drained else log.warning)(
                "drain of buffer %d ended: %s", self.buffer_id, self.drain_result)
        self.ctl.state = WorkerState.STOPPED

    def close(self) -> None:
        self.stop()
        if self._registrar is not None and self.buffer_id:
            self._registrar.withdraw(self.buffer_id)
            self._registrar.close()
            self._registrar = None
        self.ctl.state = WorkerState.STOPPED


__all__ = ["TARGET_CUDA_IPC", "Identity", "Model", "Replica", "Result"]
