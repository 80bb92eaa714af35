"""The state the agent's core works on: a client connection as the core sees it
(:class:`Session`), a request (:class:`Pending`), a published worker buffer
(:class:`ReplicaHandle`: its control block, rings, doorbells and copy target) and a job's
replicas and queue (:class:`JobState`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conspirator.dpu_agent.load import JobLoad
from conspirator.dpu_agent.targets import CudaTarget, ShmTarget, Target, is_eventfd
from conspirator.wire.frames import BufferInfo, ErrorCode
from conspirator.wire.native import Impl
from conspirator.wire.registration import TARGET_CUDA_IPC, TARGET_MEMFD, Publication
from conspirator.wire.shm import ControlBlock, Geometry, LayoutError


class Session:
    """What the core needs from a client connection (transports subclass it)."""

    def __init__(self, job: str, window: int) -> None:
        self.job = job
        self.window = window
        self.inflight: dict[int, Pending] = {}
        self.closed = False
        self.answered = 0
        self.paused: set[str] = set()  # why the transport stopped reading (if it did)
        # Idle timeout (limits.py): reads counted by the transports, checked by the sweeper.
        self.rx = 0
        self.rx_seen = 0
        self.idle_since = time.monotonic()

    def send_response(self, request_id: int, buffer_id: int, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def send_error(self, request_id: int, code: ErrorCode, message: str) -> None:
        raise NotImplementedError

    def on_request_done(self) -> None:
        """A request left ``inflight``: the transport may resume reading."""


@dataclass(eq=False, slots=True)
class Pending:
    session: Session
    request_id: int
    target: int
    length: int
    src: Any = None  # buffer holding the bytes (an mmap)
    src_off: int = 0
    release: Callable[[], None] | None = None  # frees the source once copied (or failed)
    enqueued: float = 0.0
    deadline: float = 0.0
    replica: ReplicaHandle | None = None
    slot: int = -1
    done: bool = False
    # A one-sided request's staging slot: ``held`` is the connection's set of busy slots
    # (cheaper than a ``release`` closure per request on the hot path).
    held: set[int] | None = None
    held_slot: int = 0

    def free_source(self) -> None:
        self.src = None
        held = self.held
        if held is not None:
            self.held = None
            held.discard(self.held_slot)
        rel = self.release
        if rel is not None:
            self.release = None
            rel()


class ReplicaHandle:
    """One published buffer: a worker replica the agent can write into."""

    def __init__(self, pub: Publication, fds: list[int], owner: object,
                 native: Impl) -> None:
        spec = pub.spec
        self.buffer_id = pub.buffer_id
        self.job = spec.job
        self.name = spec.replica
        # Who the replica is, for the metrics (``load.py``): the pod the node daemon found
        # behind the registration (``extra["pod"]``, namespace/name) where there is one,
        # else the name the worker claimed (``CONSPIRATOR_POD``); its pod UID and the
        # devices the kubelet gave the pod (the reservation's device ids).
        pod = pub.extra.get("pod", "")
        self.label = pod.partition("/")[2] or spec.replica
        self.pod = pod
        self.pod_uid = pub.pod_uid
        self.devices = pub.extra.get("devices", "")
        self.weight = spec.weight
        # The worker's view of a slot (the Open Inference Protocol checks requests by it).
        self.shape = spec.shape
        self.dtype = spec.dtype
        self.owner = owner
        self.geometry = g = Geometry(spec.slots, spec.slot_bytes, spec.result_bytes)
        if len(fds) != spec.nfds:
            raise LayoutError(f"{spec.target} publication needs {spec.nfds} descriptors, "
                              f"got {len(fds)}")
        ctl_fd, self.doorbell_fd, self.completion_fd = fds[0], fds[1], fds[2]
        self._fds = list(fds)
        for fd, what in ((self.doorbell_fd, "doorbell"), (self.completion_fd, "completion")):
            if not is_eventfd(fd):
                raise LayoutError(f"{what} descriptor is not an eventfd")
            os.set_blocking(fd, False)
        self.ctl = ControlBlock(ctl_fd, g, create=False, native=native)
        self.target: Target
        try:
            if spec.target == TARGET_MEMFD:
                self.target = ShmTarget(fds[3], g, native)
            elif spec.target == TARGET_CUDA_IPC:
                self.target = CudaTarget(spec.cuda_ipc_handle, spec.cuda_device, g)
            else:  # pragma: no cover - BufferSpec validates the target
                raise LayoutError(f"unknown target {spec.target}")
        except BaseException:
            self.ctl.close()
            raise
        self.native = native
        # The shared-memory target's hot path: one bounds-checked native copy per request.
        self._shm_mm = self.target._mm if isinstance(self.target, ShmTarget) else None
        self._slot_off = [g.slot_offset(s) for s in range(g.slots)]
        # The completion path reads results straight from the control mapping.
        self._ctl_mm = self.ctl.mm
        self.result_off = [g.result_offset(s) for s in range(g.slots)]
        self.slot_bytes = g.slot_bytes
        # Slots a previous agent left in flight stay busy until their completion arrives.
        self.orphans = {s for s in range(g.slots) if self.ctl.tags[s] != 0}
        self.free_slots = [s for s in reversed(range(g.slots)) if s not in self.orphans]
        self.inflight: dict[int, Pending] = {}
        self.outstanding_bytes = 0
        self.submitted = 0
        self.completed = 0  # completions reaped (whatever their ending)
        self.responses = 0  # completions answered with a RESPONSE
        self.published_at = time.monotonic()
        self.load = JobLoad(self.published_at)  # the job's, once JobState.add attaches it
        self.bad_completions = 0
        self.needs_ring = False
        self.closed = False
        # Draining (make-before-break): no new request; drained: none left in flight.
        self.draining = False
        self.drained = False

    def info(self) -> BufferInfo:
        return BufferInfo(self.buffer_id, self.geometry.slots, self.geometry.slot_bytes,
                          self.weight)

    def score(self, length: int) -> float:
        return (self.outstanding_bytes + length + 1) / self.weight

    def submit(self, p: Pending, tag: int) -> int:
        """Copy ``p`` into a free slot and hand it to the worker; returns the nanoseconds
        the copy engine took."""
        slot = self.free_slots.pop()
        # The tag goes first: an agent restarted after the push still finds the slot busy.
        self.ctl.tags[slot] = tag
        try:
            if self._shm_mm is not None:  # the hot path: copy and push in one native call
                copy_ns = self.ctl.sq.submit(self._shm_mm, self._slot_off[slot], p.src,
                                             p.src_off, p.length, tag, slot)
            else:
                t0 = time.perf_counter_ns()
                if p.length:
                    self.target.write(slot, p.src, p.src_off, p.length)
                copy_ns = time.perf_counter_ns() - t0
                if not self.ctl.sq.push(tag, slot, p.length, 0, 0):
                    copy_ns = -1
            if copy_ns < 0:  # cannot happen: the ring holds twice the slots
                raise LayoutError("submission ring full")
        except BaseException:
            self.ctl.tags[slot] = 0
            self.free_slots.append(slot)
            raise
        p.src = None
        held = p.held  # free_source, inline
        if held is not None:
            p.held = None
            held.discard(p.held_slot)
        if p.release is not None:
            p.free_source()
        p.replica, p.slot = self, slot
        self.inflight[slot] = p
        self.outstanding_bytes += p.length
        self.submitted += 1
        self.needs_ring = True
        return copy_ns

    def ring(self) -> None:
        if self.needs_ring:
            self.needs_ring = False
            self.native.doorbell_ring(self.doorbell_fd)

    def close(self) -> None:
        self.closed = True
        self._shm_mm = None
        self._ctl_mm = None
        self.target.close()
        self.ctl.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def _new_load() -> JobLoad:
    return JobLoad(time.monotonic())


@dataclass
class JobState:
    name: str
    load: JobLoad = field(default_factory=_new_load)
    replicas: dict[int, ReplicaHandle] = field(default_factory=dict)  # taking requests
    draining: dict[int, ReplicaHandle] = field(default_factory=dict)  # finishing theirs
    queue: deque[Pending] = field(default_factory=deque)
    turn: int = 0
    slot_max: int = 0  # the largest slot of the job's replicas (kept by add/remove)
    single: ReplicaHandle | None = None  # the replica, when the job has exactly one
    drained_total: int = 0  # replicas that finished draining
    # Since when the job has had no replica taking requests (0: it had one, or never).
    empty_since: float = 0.0

    def all_replicas(self) -> dict[int, ReplicaHandle]:
        """Every published replica of the job, draining ones included."""
        return {**self.replicas, **self.draining} if self.draining else self.replicas

    def add(self, rep: ReplicaHandle) -> None:
        rep.load = self.load
        self.replicas[rep.buffer_id] = rep
        self.slot_max = max(self.slot_max, rep.geometry.slot_bytes)
        self.empty_since = 0.0
        self._single()

    def remove(self, buffer_id: int) -> None:
        if self.replicas.pop(buffer_id, None) is not None and not self.replicas:
            self.empty_since = time.monotonic()
        self.draining.pop(buffer_id, None)
        self.slot_max = max((r.geometry.slot_bytes for r in self.replicas.values()), default=0)
        self._single()

    def start_draining(self, rep: ReplicaHandle, now: float) -> None:
        """``rep`` takes no new request from now on (its in-flight ones go on)."""
        rep.draining = True
        if self.replicas.pop(rep.buffer_id, None) is not None:
            self.draining[rep.buffer_id] = rep
            self.slot_max = max((r.geometry.slot_bytes for r in self.replicas.values()),
                                default=0)
            self._single()
            if not self.replicas:
                self.empty_since = now

    def _single(self) -> None:
        self.single = next(iter(self.replicas.values())) if len(self.replicas) == 1 else None
