"""The agent's staging pool: where request bytes land before the copy engine moves them.

On a DPU this is the DPU's own memory (the NIC writes there, the DMA engine copies to the
host or GPU); here it is anonymous shared memory.  Buffers come in power-of-two size
classes from 4 KiB up to the largest payload and are reused; the pool never holds more
than ``budget`` bytes.  When it cannot serve a request the caller waits (``wait``) and the
connection stops reading: that is the agent's backpressure, so a slow replica slows its
clients through TCP flow control instead of growing the agent's memory.

Fairness between jobs: with ``shares`` set, the buffers are held by owners (jobs), and one
owner holds at most its share, ``budget / shares()`` (never under one largest buffer).  The
agent's ``shares`` is the number of jobs with replicas here, so with the budget at least that
many largest buffers, every job always finds its share free, whatever another job's flood
holds: a job whose replicas stall keeps its share, not the whole pool.
"""

from __future__ import annotations

import contextlib
import mmap
from collections import deque
from collections.abc import Callable

MIN_CLASS = 4096


def size_class(n: int) -> int:
    c = MIN_CLASS
    while c < n:
        c <<= 1
    return c


class StagingBuffer:
    __slots__ = ("mm", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.mm = mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                            mmap.PROT_READ | mmap.PROT_WRITE)

    def view(self, n: int) -> memoryview:
        return memoryview(self.mm)[:n]


class StagingPool:
    def __init__(self, budget: int, max_buffer: int,
                 on_new: Callable[[StagingBuffer], None] | None = None,
                 shares: Callable[[], int] | None = None) -> None:
        if max_buffer > budget:
            raise ValueError("the staging budget must hold at least one largest buffer")
        self.budget = budget
        self.max_buffer = size_class(max_buffer)
        self.allocated = 0
        self.in_use = 0
        self.peak_in_use = 0
        self._free: dict[int, list[StagingBuffer]] = {}
        self._waiters: deque[Callable[[], None]] = deque()
        self._on_new = on_new
        self._shares = shares
        self.held: dict[str, int] = {}  # bytes in use by each owner (with ``shares``)

    def share(self) -> int:
        """The most one owner may hold: the budget over the shares, at least one largest
        buffer (the whole budget without ``shares``)."""
        if self._shares is None:
            return self.budget
        return max(self.max_buffer, self.budget // max(1, self._shares()))

    def acquire(self, n: int, owner: str = "") -> StagingBuffer | None:
        """A buffer of at least ``n`` bytes, or None when the budget (or with ``shares``,
        ``owner``'s share) is exhausted."""
        c = size_class(n)
        if c > self.max_buffer:
            raise ValueError(f"{n} bytes exceed the largest staging buffer")
        if self._shares is not None:
            held = self.held.get(owner, 0) + c
            # Within one largest buffer a share always allows it (no need to count shares).
            if held > self.max_buffer and held > self.share():
                return None
        free = self._free.get(c)
        if free:
            buf = free.pop()
        else:
            while self.allocated + c > self.budget and self._evict_one(c):
                pass
            if self.allocated + c > self.budget:
                return None
            buf = StagingBuffer(c)
            self.allocated += c
            if self._on_new is not None:
                self._on_new(buf)
        self.in_use += c
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        if self._shares is not None:
            self.held[owner] = self.held.get(owner, 0) + c
        return buf

    def _evict_one(self, keep: int) -> bool:
        for c, free in self._free.items():
            if c != keep and free:
                free.pop().mm.close()
                self.allocated -= c
                return True
        return False

    def release(self, buf: StagingBuffer, owner: str = "") -> None:
        self.in_use -= buf.size
        if self._shares is not None:
            left = self.held.get(owner, 0) - buf.size
            if left > 0:
                self.held[owner] = left
            else:
                self.held.pop(owner, None)
        self._free.setdefault(buf.size, []).append(buf)
        # Each waiter tries again; one that still finds nothing waits for the next release.
        waiters = list(self._waiters)
        self._waiters.clear()
        for w in waiters:
            w()

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) after the next release."""
        self._waiters.append(callback)

    def cancel(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(callback)

    def close(self) -> None:
        for free in self._free.values():
            for b in free:
                b.mm.close()
        self._free.clear()
