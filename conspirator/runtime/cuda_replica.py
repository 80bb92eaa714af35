"""A replica whose input buffer is CUDA device memory, shared with the agent by IPC handle.

The control block, rings, result areas and doorbells stay in host shared memory exactly as
for the memfd target; only the input slots live on the GPU (``cudaMalloc``, so the IPC
handle names exactly this allocation).  The agent opens the handle once and ``cudaMemcpy``s
each request from its pinned staging into the slot before ringing the doorbell, so the
slot is complete when the worker sees the submission.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from conspirator.runtime.replica import Identity, Model, Replica, Result
from conspirator.wire import cuda
from conspirator.wire.native import Impl
from conspirator.wire.registration import TARGET_CUDA_IPC, BufferSpec
from conspirator.wire.shm import Status


class CudaReplica(Replica):
    """Like :class:`Replica` with the input slots in the memory of GPU ``device``."""

    def __init__(self, shape: Sequence[int], dtype: str | np.dtype[Any] = "float32", *,
                 slots: int = 4, result_bytes: int = 1 << 16, device: int = 0,
                 identity: Identity | None = None, native: Impl | None = None) -> None:
        if not cuda.available():
            raise cuda.CudaError(cuda.why_unavailable())
        self.device = device
        self.dev_ptr = 0
        self.ipc_handle = b""
        super().__init__(shape, dtype, slots=slots, result_bytes=result_bytes,
                         identity=identity, native=native)

    def _allocate_input(self) -> None:
        g = self.geometry
        cuda.set_device(self.device)
        self.dev_ptr = cuda.malloc(g.data_bytes)
        self.ipc_handle = cuda.ipc_get_handle(self.dev_ptr)
        arrays = [cuda.DeviceArray(self.dev_ptr + g.slot_offset(i), self.shape,
                                   self.dtype.str) for i in range(g.slots)]
        self.slot_arrays = list(arrays)
        try:
            torch = importlib.import_module("torch")
            self.slot_arrays = [torch.as_tensor(a, device=f"cuda:{self.device}")
                                for a in arrays]
        except ImportError:
            pass

    @property
    def spec(self) -> BufferSpec:
        g = self.geometry
        return BufferSpec(job=self.identity.job, replica=self.identity.replica, slots=g.slots,
                          slot_bytes=g.slot_bytes, result_bytes=g.result_bytes,
                          target=TARGET_CUDA_IPC, shape=self.shape, dtype=self.dtype.name,
                          weight=self.identity.weight, pid=os.getpid(),
                          cuda_ipc_handle=self.ipc_handle.hex(), cuda_device=self.device)

    @property
    def fds(self) -> list[int]:
        """Control, doorbell, completion: the input travels as the IPC handle."""
        return [self.ctl_fd, self.doorbell_fd, self.completion_fd]

    def input_view(self, slot: int, length: int) -> Any:
        if length != self.geometry.slot_bytes:
            raise ValueError(f"request of {length} bytes; the device tensor holds "
                             f"{self.geometry.slot_bytes}")
        return self.slot_arrays[slot]

    def handle(self, fn: Model, slot: int, length: int) -> tuple[int, Status]:
        return super().handle(lambda x: _to_host(fn(x)), slot, length)

    def close(self) -> None:
        super().close()
        if self.dev_ptr:
            cuda.free(self.dev_ptr)
            self.dev_ptr = 0


def _to_host(out: Any) -> Result:
    if hasattr(out, "detach") and hasattr(out, "cpu"):  # a torch tensor
        out = out.detach().cpu().numpy()
    result: Result = out
    return result
