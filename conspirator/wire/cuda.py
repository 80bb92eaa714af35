"""The CUDA runtime through ctypes: device buffers shared between processes by IPC handle.

Used by the worker runtime (``input_tensor(..., device="cuda")``: the input buffer is
``cudaMalloc``'d device memory whose ``cudaIpcGetMemHandle`` is registered instead of a
memfd) and by the agent's CUDA target (``cudaIpcOpenMemHandle`` once, then
``cudaMemcpy`` host-to-device from pinned staging per request).

No Python CUDA package is needed: ``libcudart.so`` is loaded when first used.
:func:`available` says whether a GPU can be used here; everything else raises
:class:`CudaError` without one.  On a BlueField the DOCA DMA engine takes this role
(docs/datapath.md, "The BlueField seam").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

IPC_HANDLE_SIZE = 64
_MEMCPY_HOST_TO_DEVICE = 1
_MEMCPY_DEVICE_TO_HOST = 2
_IPC_LAZY_PEER_ACCESS = 1
_HOST_REGISTER_DEFAULT = 0


class CudaError(RuntimeError):
    pass


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_SIZE)]


_CANDIDATES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


@functools.cache
def _lib() -> Any:
    names = list(_CANDIDATES)
    found = ctypes.util.find_library("cudart")
    if found:
        names.insert(0, found)
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(str(e))
    raise CudaError("libcudart not found: " + "; ".join(errors[:2]))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        lib = _lib()
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        msg = lib.cudaGetErrorString(rc)
        raise CudaError(f"{what} failed: {msg.decode() if msg else rc}")


@functools.cache
def device_count() -> int:
    try:
        lib = _lib()
    except CudaError:
        return 0
    n = ctypes.c_int(0)
    if lib.cudaGetDeviceCount(ctypes.byref(n)) != 0:
        return 0
    return n.value


def available() -> bool:
    return device_count() > 0


def why_unavailable() -> str:
    try:
        _lib()
    except CudaError as e:
        return str(e)
    return "no CUDA device visible (cudaGetDeviceCount is 0)"


def set_device(device: int) -> None:
    _check(_lib().cudaSetDevice(ctypes.c_int(device)), "cudaSetDevice")


def malloc(nbytes: int) -> int:
    ptr = ctypes.c_void_p()
    _check(_lib().cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
    return int(ptr.value or 0)


def free(ptr: int) -> None:
    _check(_lib().cudaFree(ctypes.c_void_p(ptr)), "cudaFree")


def ipc_get_handle(ptr: int) -> bytes:
    h = _IpcHandle()
    _check(_lib().cudaIpcGetMemHandle(ctypes.byref(h), ctypes.c_void_p(ptr)),
           "cudaIpcGetMemHandle")
    return bytes(h.reserved)


def ipc_open_handle(handle: bytes) -> int:
    if len(handle) != IPC_HANDLE_SIZE:
        raise CudaError("a CUDA IPC handle is 64 bytes")
    h = _IpcHandle()
    ctypes.memmove(ctypes.byref(h), handle, IPC_HANDLE_SIZE)
    ptr = ctypes.c_void_p()
    _check(_lib().cudaIpcOpenMemHandle(ctypes.byref(ptr), h,
                                       ctypes.c_uint(_IPC_LAZY_PEER_ACCESS)),
           "cudaIpcOpenMemHandle")
    return int(ptr.value or 0)


def ipc_close(ptr: int) -> None:
    _check(_lib().cudaIpcCloseMemHandle(ctypes.c_void_p(ptr)), "cudaIpcCloseMemHandle")


def host_register(addr: int, nbytes: int) -> None:
    """Pin host memory (the agent's staging) so copies from it run at full speed."""
    _check(_lib().cudaHostRegister(ctypes.c_void_p(addr), ctypes.c_size_t(nbytes),
                                   ctypes.c_uint(_HOST_REGISTER_DEFAULT)), "cudaHostRegister")


def host_unregister(addr: int) -> None:
    _check(_lib().cudaHostUnregister(ctypes.c_void_p(addr)), "cudaHostUnregister")


def memcpy_htod(dst: int, src_addr: int, nbytes: int) -> None:
    _check(_lib().cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src_addr),
                             ctypes.c_size_t(nbytes), ctypes.c_int(_MEMCPY_HOST_TO_DEVICE)),
           "cudaMemcpy(HtoD)")


def memcpy_dtoh(dst_addr: int, src: int, nbytes: int) -> None:
    _check(_lib().cudaMemcpy(ctypes.c_void_p(dst_addr), ctypes.c_void_p(src),
                             ctypes.c_size_t(nbytes), ctypes.c_int(_MEMCPY_DEVICE_TO_HOST)),
           "cudaMemcpy(DtoH)")


def buffer_address(buf: Any, offset: int = 0) -> int:
    """Address of byte ``offset`` of a writable buffer (an mmap, a bytearray)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf, offset))


class DeviceArray:
    """A device allocation exposed through ``__cuda_array_interface__`` (so torch, CuPy
    or Numba can wrap it without a copy)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str) -> None:
        self.ptr = ptr
        self.shape = shape
        self.typestr = typestr

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.typestr, "data": (self.ptr, False),
                "version": 3, "strides": None}
