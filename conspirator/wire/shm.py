"""Shared-memory layout of one replica's input buffer, rings and doorbells.

A worker registers four things (:mod:`.registration`): two sealed memfds and two eventfds.

* the **data** memfd: ``slots`` input slots of ``slot_bytes`` each, every slot starting on a
  page (``slot_stride``): the memory ``input_tensor`` returns a numpy array over.  A CUDA
  buffer replaces it with an IPC handle; the rest stays in host memory.
* the **control** memfd::

      0     header (128 bytes): magic b"CNSPCTL1", version, slots, slot_bytes,
            result_bytes, ring capacity, worker state, worker pid, agent epoch; at 56
            (u32, written by the agent only) the drained flag: 1 once a draining
            replica has nothing in flight and will be sent nothing more
      128   slot tags: one u64 per slot, the tag of the request occupying it (0 = free);
            written by the agent only, so an agent that restarts knows which slots
            a previous agent left in flight
      ...   submission ring (agent -> worker): (tag, slot, length, 0, 0)
      ...   completion ring (worker -> agent): (tag, slot, result_length, status, micros)
      page  results: ``slots`` areas of ``result_bytes``; a completion's result lies in its
            slot's area

* the **doorbell** eventfd: the agent adds 1 after pushing submissions; the worker sleeps on
  it until input lands;
* the **completion** eventfd: the worker adds 1 after pushing completions; the agent's event
  loop wakes on it.

Both memfds are sealed against shrinking and growing before they are shared, and the agent
checks the seals and every size against ``fstat`` before it maps anything: a worker cannot
make the agent fault on a truncated mapping.  Everything read back from a ring is checked
(slot in range, tag matches the slot's tag, length within the area) before use.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from conspirator.wire.native import Impl, RingLike, impl

CTL_MAGIC = b"CNSPCTL1"
CTL_VERSION = 1
PAGE = mmap.PAGESIZE
CTL_HEADER = struct.Struct("=8sIIQQIIIIQ")  # 56 bytes, padded to 128
SLOT_TAGS = 128
RING_HEADER = 128
ENTRY_SIZE = 32
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

# header field offsets (native byte order, as CTL_HEADER packs them)
OFF_STATE = 36
OFF_PID = 40
OFF_EPOCH = 48
OFF_DRAINED = 56  # after CTL_HEADER's fields, inside the 128-byte header (zero at creation)


class WorkerState(IntEnum):
    STARTING = 0
    READY = 1
    STOPPED = 2
    DRAINING = 3  # still serving what it holds; the agent sends it nothing new


class Status(IntEnum):
    """Completion status a worker reports; the result area holds the result or a message."""

    OK = 0
    ERROR = 1  # the model raised; the area holds a UTF-8 message
    RESULT_TOO_LARGE = 2
    BAD_INPUT = 3  # length does not fit the input tensor


class LayoutError(ValueError):
    """A control block or buffer that does not match what was registered."""


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def ring_capacity(slots: int) -> int:
    cap = 1
    while cap < 2 * slots:
        cap <<= 1
    return cap


def slot_stride(slot_bytes: int) -> int:
    return round_up(max(slot_bytes, 1), PAGE)


@dataclass(frozen=True, slots=True)
class Geometry:
    """Sizes and offsets of one replica's buffers (computed once: the agent uses them on
    every request)."""

    slots: int
    slot_bytes: int
    result_bytes: int
    capacity: int = field(init=False, repr=False, compare=False)
    ring_bytes: int = field(init=False, repr=False, compare=False)
    sq_offset: int = field(init=False, repr=False, compare=False)
    cq_offset: int = field(init=False, repr=False, compare=False)
    results_offset: int = field(init=False, repr=False, compare=False)
    result_stride: int = field(init=False, repr=False, compare=False)
    control_bytes: int = field(init=False, repr=False, compare=False)
    slot_stride: int = field(init=False, repr=False, compare=False)
    data_bytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cap = ring_capacity(self.slots)
        ring = RING_HEADER + cap * ENTRY_SIZE
        sq = round_up(SLOT_TAGS + 8 * self.slots, 64)
        cq = sq + ring
        results = round_up(cq + ring, PAGE)
        rstride = round_up(self.result_bytes, 64)
        stride = slot_stride(self.slot_bytes)
        for name, value in (("capacity", cap), ("ring_bytes", ring), ("sq_offset", sq),
                            ("cq_offset", cq), ("results_offset", results),
                            ("result_stride", rstride),
                            ("control_bytes", round_up(results + self.slots * rstride, PAGE)),
                            ("slot_stride", stride), ("data_bytes", self.slots * stride)):
            object.__setattr__(self, name, value)

    def slot_offset(self, slot: int) -> int:
        return slot * self.slot_stride

    def result_offset(self, slot: int) -> int:
        return self.results_offset + slot * self.result_stride


def new_memfd(name: str, size: int) -> int:
    """A memfd of ``size`` bytes, sealed so that nobody can shrink or grow it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_memfd(fd: int, size: int, what: str) -> None:
    """Refuse a descriptor that could be shrunk under a mapping or is too small."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as e:
        raise LayoutError(f"{what}: not a sealable memfd ({e.strerror})") from None
    if not seals & fcntl.F_SEAL_SHRINK:
        raise LayoutError(f"{what}: memfd is not sealed against shrinking")
    actual = os.fstat(fd).st_size
    if actual < size:
        raise LayoutError(f"{what}: memfd is {actual} bytes, needs {size}")


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


class ControlBlock:
    """The control memfd mapped: header fields, slot tags, both rings, result areas."""

    def __init__(self, fd: int, geometry: Geometry, *, create: bool,
                 native: Impl | None = None) -> None:
        self.geometry = g = geometry
        self.native = native or impl
        if not create:
            check_memfd(fd, g.control_bytes, "control block")
        self.mm: mmap.mmap | None = mmap.mmap(fd, g.control_bytes, mmap.MAP_SHARED,
                                              mmap.PROT_READ | mmap.PROT_WRITE)
        mv = memoryview(self.mm)
        if create:
            CTL_HEADER.pack_into(mv, 0, CTL_MAGIC, CTL_VERSION, g.slots, g.slot_bytes,
                                 g.result_bytes, g.capacity, WorkerState.STARTING,
                                 os.getpid(), 0, 0)
        else:
            magic, version, slots, slot_bytes, result_bytes, cap, *_ = \
                CTL_HEADER.unpack_from(mv, 0)
            if magic != CTL_MAGIC or version != CTL_VERSION:
                mv.release()
                self.close()
                raise LayoutError("control block: bad magic or version")
            if (slots, slot_bytes, result_bytes, cap) != (g.slots, g.slot_bytes,
                                                          g.result_bytes, g.capacity):
                mv.release()
                self.close()
                raise LayoutError("control block does not match the registered geometry")
        self._mv = mv
        self.tags = mv[SLOT_TAGS:SLOT_TAGS + 8 * g.slots].cast("Q")
        self._state = mv[OFF_STATE:OFF_STATE + 4].cast("I")
        self._epoch = mv[OFF_EPOCH:OFF_EPOCH + 8].cast("Q")
        self._drained = mv[OFF_DRAINED:OFF_DRAINED + 4].cast("I")
        self.sq: RingLike = self.native.Ring(self.mm, g.sq_offset, g.capacity)
        self.cq: RingLike = self.native.Ring(self.mm, g.cq_offset, g.capacity)

    @property
    def state(self) -> WorkerState:
        try:
            return WorkerState(self._state[0])
        except ValueError:
            return WorkerState.STOPPED

    @state.setter
    def state(self, value: WorkerState) -> None:
        self._state[0] = int(value)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch[0] = value

    @property
    def drained(self) -> bool:
        """Set by the agent: this draining replica has nothing in flight any more."""
        return bool(self._drained[0])

    @drained.setter
    def drained(self, value: bool) -> None:
        self._drained[0] = int(value)

    def result_view(self, slot: int, length: int) -> memoryview:
        g = self.geometry
        if not 0 <= slot < g.slots or not 0 <= length <= g.result_bytes:
            raise LayoutError(f"result slot {slot} length {length} out of range")
        off = g.result_offset(slot)
        return self._mv[off:off + length]

    def close(self) -> None:
        for name in ("sq", "cq"):
            ring = getattr(self, name, None)
            if ring is not None:
                ring.close()
        for name in ("tags", "_state", "_epoch", "_drained", "_mv"):
            v = getattr(self, name, None)
            if isinstance(v, memoryview):
                v.release()
        if self.mm is not None:
            self.mm.close()
            self.mm = None


class DataBuffer:
    """The data memfd mapped: ``slots`` page-aligned input slots."""

    def __init__(self, fd: int, geometry: Geometry, *, create: bool) -> None:
        self.geometry = geometry
        if not create:
            check_memfd(fd, geometry.data_bytes, "input buffer")
        self.mm: mmap.mmap | None = mmap.mmap(fd, geometry.data_bytes, mmap.MAP_SHARED,
                                              mmap.PROT_READ | mmap.PROT_WRITE)

    def view(self, slot: int, length: int | None = None) -> memoryview:
        g = self.geometry
        n = g.slot_bytes if length is None else length
        if self.mm is None:
            raise ValueError("buffer is closed")
        if not 0 <= slot < g.slots or not 0 <= n <= g.slot_bytes:
            raise LayoutError(f"slot {slot} length {n} out of range")
        off = g.slot_offset(slot)
        return memoryview(self.mm)[off:off + n]

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
