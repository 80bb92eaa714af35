"""Pure-Python fallback of ``conspirator._native`` (native/conspirator_native.c).

Same layout, same results, same errors; the tests run both.  Used when the extension was
not built (no compiler) or when ``CONSPIRATOR_NATIVE=0``.

Memory ordering: the C ring publishes an entry with a release store of ``head`` and reads
it after an acquire load.  Here the entry is written before ``head`` in program order and
each index is one aligned 8-byte store (a ``memoryview`` cast to ``Q``), which is enough on
x86-64 (TSO) but not on weakly ordered CPUs (aarch64, a BlueField's own cores): there the
C module is required, and :mod:`conspirator.wire.native` refuses the fallback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import struct
import time
from typing import TYPE_CHECKING

from conspirator.wire.frames import parse_staged_frames

if TYPE_CHECKING:
    from typing_extensions import Buffer

IMPLEMENTATION = "python"
#: How large copies are made (the C module: "rep-movsb" where the CPU has ERMS).
LARGE_COPY = "memmove"
ENTRY_SIZE = 32
RING_HEADER = 128
_HEAD = 0
_TAIL = 64
_ENTRY = struct.Struct("=QIIIIQ")
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class RingCorrupted(RuntimeError):  # noqa: N818 - same name as the C module's exception
    """The ring's indices are impossible: the peer scribbled over them."""


#: One ring entry as it is read back: (tag, slot, length, status, aux).
RingEntry = tuple[int, int, int, int, int]


def _u(v: int, hi: int) -> int:
    if not isinstance(v, int):
        raise TypeError("ring entry fields are integers")
    if not 0 <= v <= hi:
        raise OverflowError("ring entry field out of range")
    return v


class Ring:
    """SPSC ring of 32-byte entries at ``base`` in a shared writable buffer."""

    def __init__(self, buffer: Buffer, base: int, capacity: int) -> None:
        mv = memoryview(buffer)
        if mv.readonly:
            raise BufferError("ring buffer must be writable")
        mv = mv.cast("B")
        if capacity <= 0 or capacity & (capacity - 1) or capacity > 1 << 20:
            raise ValueError("capacity must be a power of two up to 2**20")
        if base < 0 or base % 8 or base + RING_HEADER + capacity * ENTRY_SIZE > len(mv):
            raise ValueError("ring does not fit in the buffer (or base unaligned)")
        self._mv: memoryview | None = mv[base:base + RING_HEADER + capacity * ENTRY_SIZE]
        self._head = self._mv[_HEAD:_HEAD + 8].cast("Q")
        self._tail = self._mv[_TAIL:_TAIL + 8].cast("Q")
        self._entries = self._mv[RING_HEADER:]
        self._cap = capacity
        self._mask = capacity - 1

    @property
    def capacity(self) -> int:
        return self._cap

    def _check(self) -> None:
        if self._mv is None:
            raise ValueError("ring is closed")

    def _sane(self, head: int, tail: int) -> int:
        n = (head - tail) & _U64
        if n > self._cap:
            raise RingCorrupted(f"ring indices corrupted (head {head}, tail {tail}, "
                                f"capacity {self._cap})")
        return n

    def push(self, tag: int, slot: int, length: int, status: int = 0, aux: int = 0) -> bool:
        fields = (_u(tag, _U64), _u(slot, _U32), _u(length, _U32), _u(status, _U32),
                  _u(aux, _U32))
        self._check()
        head = self._head[0]
        tail = self._tail[0]
        if self._sane(head, tail) == self._cap:
            return False
        _ENTRY.pack_into(self._entries, (head & self._mask) * ENTRY_SIZE, *fields, 0)
        self._head[0] = (head + 1) & _U64
        return True

    def submit(self, dst: Buffer, dst_off: int, src: Buffer, src_off: int, n: int, tag: int,
               slot: int) -> int:
        """Copy ``n`` bytes (the copy engine), then push ``(tag, slot, n)``; the copy's
        nanoseconds, or -1 (nothing copied) when the ring is full."""
        _u(tag, _U64)
        _u(slot, _U32)
        if not 0 <= n <= _U32:
            raise ValueError("copy out of bounds")
        self._check()
        if self._sane(self._head[0], self._tail[0]) == self._cap:
            return -1
        t0 = time.perf_counter_ns()
        if n:
            copy(dst, dst_off, src, src_off, n)
        took = time.perf_counter_ns() - t0
        self.push(tag, slot, n)
        return took

    def pop(self) -> RingEntry | None:
        self._check()
        tail = self._tail[0]
        head = self._head[0]
        if self._sane(head, tail) == 0:
            return None
        e = _ENTRY.unpack_from(self._entries, (tail & self._mask) * ENTRY_SIZE)
        self._tail[0] = (tail + 1) & _U64
        return (e[0], e[1], e[2], e[3], e[4])

    def pop_many(self, max: int = 64) -> list[RingEntry]:
        self._check()
        tail = self._tail[0]
        head = self._head[0]
        n = min(self._sane(head, tail), max if max > 0 else 0)
        out: list[RingEntry] = []
        for i in range(n):
            e = _ENTRY.unpack_from(self._entries, ((tail + i) & self._mask) * ENTRY_SIZE)
            out.append((e[0], e[1], e[2], e[3], e[4]))
        self._tail[0] = (tail + n) & _U64
        return out

    def pending(self) -> int:
        self._check()
        return self._sane(self._head[0], self._tail[0])

    def close(self) -> None:
        if self._mv is not None:
            self._head.release()
            self._tail.release()
            self._entries.release()
            self._mv.release()
            self._mv = None


def copy(dst: Buffer, dst_off: int, src: Buffer, src_off: int, n: int) -> int:
    """Bounds-checked copy of ``n`` bytes (the copy engine)."""
    d = memoryview(dst)
    if d.readonly:
        raise BufferError("destination is not writable")
    d = d.cast("B")
    s = memoryview(src).cast("B")
    if (n < 0 or dst_off < 0 or src_off < 0 or dst_off > len(d) - n or src_off > len(s) - n):
        raise ValueError("copy out of bounds")
    d[dst_off:dst_off + n] = s[src_off:src_off + n]
    return n


def parse_staged(data: Buffer) -> list[tuple[int, int, int, int]] | None:
    """Whole, well-formed STAGED frames as ``(request_id, aux, slot, length)``; None for
    anything else (:func:`conspirator.wire.frames.parse_staged_frames`)."""
    return parse_staged_frames(memoryview(data))


def doorbell_ring(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.eventfd_write(fd, 1)


def doorbell_wait(fd: int, timeout_ms: int) -> int:
    """Wait up to ``timeout_ms`` (negative: forever) for the eventfd; drain and return its
    count, 0 on timeout."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    events = p.poll(timeout_ms if timeout_ms >= 0 else None)
    if not events:
        return 0
    if events[0][1] & (select.POLLERR | select.POLLNVAL):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    try:
        return os.eventfd_read(fd)
    except (BlockingIOError, InterruptedError):
        return 0
