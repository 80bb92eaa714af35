"""Targets: where the copy engine puts a request's bytes (a replica's input slot).

* :class:`ShmTarget`: the worker's sealed memfd, mapped once when the buffer is published;
  each request is one bounds-checked ``memcpy`` (``_native.copy``, GIL released) from
  staging into the slot.
* :class:`CudaTarget`: the worker's device buffer, opened once from its CUDA IPC handle;
  each request is one ``cudaMemcpy`` host-to-device from (pinned) staging.

The BlueField seam: on a real DPU the agent runs on the DPU's Arm cores and cannot map host
memory.  There the node registry would publish a DOCA mmap *export descriptor* of the
worker's buffer (``doca_mmap_export_pci`` on the host side) instead of a memfd or an IPC
handle, and a ``DocaDmaTarget`` implementing this same :class:`Target` interface would
``doca_mmap_create_from_export`` it once and submit one ``doca_dma`` memcpy task per
request from staging (DPU memory, where the NIC placed the bytes) into the slot.  Nothing
above this interface changes: the dispatcher, rings and doorbells are the same.  See
docs/datapath.md.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Protocol

from conspirator.wire import cuda
from conspirator.wire.native import Impl, impl
from conspirator.wire.shm import DataBuffer, Geometry, LayoutError


class Target(Protocol):
    kind: str

    def write(self, slot: int, src: Any, src_off: int, n: int) -> None:
        """Copy ``n`` bytes at ``src_off`` of the (mmap) buffer ``src`` into ``slot``."""
        ...

    def close(self) -> None: ...


class ShmTarget:
    kind = "memfd"

    def __init__(self, fd: int, geometry: Geometry, native: Impl | None = None) -> None:
        self.geometry = geometry
        self.native = native or impl
        self.buffer = DataBuffer(fd, geometry, create=False)
        self._mm = self.buffer.mm

    def write(self, slot: int, src: Any, src_off: int, n: int) -> None:
        g = self.geometry
        if not 0 <= slot < g.slots or not 0 <= n <= g.slot_bytes or self._mm is None:
            raise LayoutError(f"write of {n} bytes into slot {slot} is out of range")
        self.native.copy(self._mm, g.slot_offset(slot), src, src_off, n)

    def close(self) -> None:
        self._mm = None
        # a view still alive somewhere keeps the mapping; it goes with the object
        with contextlib.suppress(BufferError):
            self.buffer.close()


class CudaTarget:
    kind = "cuda-ipc"

    def __init__(self, handle_hex: str, device: int, geometry: Geometry) -> None:
        if not cuda.available():
            raise cuda.CudaError(cuda.why_unavailable())
        self.geometry = geometry
        cuda.set_device(max(device, 0))
        self.ptr = cuda.ipc_open_handle(bytes.fromhex(handle_hex))

    def write(self, slot: int, src: Any, src_off: int, n: int) -> None:
        g = self.geometry
        if not 0 <= slot < g.slots or not 0 <= n <= g.slot_bytes or not self.ptr:
            raise LayoutError(f"write of {n} bytes into slot {slot} is out of range")
        if n:
            cuda.memcpy_htod(self.ptr + g.slot_offset(slot), cuda.buffer_address(src, src_off),
                             n)

    def close(self) -> None:
        if self.ptr:
            try:
                cuda.ipc_close(self.ptr)
            finally:
                self.ptr = 0


def is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False
