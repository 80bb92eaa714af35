"""The NVML backend: real GPUs through ``nvidia-ml-py`` (``import pynvml``).

Inventory (UUID, product name mapped to the catalog model, memory, MIG capable/enabled),
GPU-instance profiles and placements, creation and destruction of GPU and compute
instances at a placement, in-use detection (running processes on the MIG device) and XID
health events, behind :class:`~conspirator.deviceplugin.backend.GpuBackend`.

NVML identifies a GPU-instance profile by an id (``NVML_GPU_INSTANCE_PROFILE_*``) whose
name (``MIG 1g.10gb``) recent drivers report in the profile info; older ones are matched
to the catalog by their compute and memory slice counts.  Each MIG device gets one
compute instance spanning its GPU instance, as NVIDIA's own tools create by default.

MIG changes need root (or ``CAP_SYS_ADMIN`` with the MIG capability device) and, for a
mode change, sometimes a GPU reset, reported as pending.  Tests never call the mutating
methods on a real GPU (DESIGN section 7): they run everything on the fake libnvidia-ml
(native/fakenvml, docs/nvml.md: calls and error paths, not hardware), and ``make gpu-check``
runs read-only queries where a GPU exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conspirator.deviceplugin.backend import (
    APPLICATION_XIDS,
    BackendError,
    DeviceNode,
    ErrorCode,
    GpuBackend,
    GpuInfo,
    GpuInstance,
    HealthEvent,
)
from conspirator.mig import GpuModel, gpu_model, model_from_nvml

MIG_MINORS = Path("/proc/driver/nvidia-caps/mig-minors")
_NO_ID = 0xFFFFFFFF


def load_pynvml() -> Any:
    """Import ``pynvml`` and initialise NVML; raises :class:`BackendError` where it cannot."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise BackendError(ErrorCode.NOT_SUPPORTED, "nvidia-ml-py is not installed") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise BackendError(ErrorCode.NOT_SUPPORTED, f"NVML unavailable: {exc}") from exc
    return pynvml


def _code(nv: Any, exc: Exception) -> ErrorCode:
    value = getattr(exc, "value", None)
    table = {
        nv.NVML_ERROR_INVALID_ARGUMENT: ErrorCode.INVALID_ARGUMENT,
        nv.NVML_ERROR_INSUFFICIENT_RESOURCES: ErrorCode.INSUFFICIENT_RESOURCES,
        nv.NVML_ERROR_IN_USE: ErrorCode.IN_USE,
        nv.NVML_ERROR_NOT_FOUND: ErrorCode.NOT_FOUND,
        nv.NVML_ERROR_NOT_SUPPORTED: ErrorCode.NOT_SUPPORTED,
        nv.NVML_ERROR_NO_PERMISSION: ErrorCode.NO_PERMISSION,
        nv.NVML_ERROR_RESET_REQUIRED: ErrorCode.RESET_REQUIRED,
    }
    return table.get(value, ErrorCode.UNKNOWN)


def _absent(nv: Any, exc: Exception) -> bool:
    """NVML's answer for a profile this GPU does not have (or a GPU with MIG off); any other
    error (a struct version NVML refuses, an uninitialised library) is a real failure."""
    return getattr(exc, "value", None) in (nv.NVML_ERROR_NOT_SUPPORTED,
                                           nv.NVML_ERROR_INVALID_ARGUMENT)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class _Profile:
    nvml_id: int
    name: str
    compute_slices: int
    memory_slices: int
    placements: tuple[int, ...]


class NvmlBackend(GpuBackend):
    """The node's real GPUs."""

    name = "nvml"

    def __init__(self, nvml: Any | None = None) -> None:
        self.nv = nvml if nvml is not None else load_pynvml()
        self._lock = threading.RLock()
        self._events: Any = None
        self._profiles: dict[int, dict[str, _Profile]] = {}

    # ---- helpers --------------------------------------------------------------------

    @contextlib.contextmanager
    def _nvml(self, what: str) -> Any:
        try:
            with self._lock:
                yield
        except self.nv.NVMLError as exc:
            raise BackendError(_code(self.nv, exc), f"{what}: {exc}") from exc

    def _handle(self, index: int) -> Any:
        with self._nvml(f"GPU {index}"):
            if not 0 <= index < int(self.nv.nvmlDeviceGetCount()):
                raise BackendError(ErrorCode.NOT_FOUND, f"no GPU {index}")
            return self.nv.nvmlDeviceGetHandleByIndex(index)

    def _gpu(self, index: int) -> GpuInfo:
        gpu = next((g for g in self.gpus() if g.index == index), None)
        if gpu is None:
            raise BackendError(ErrorCode.NOT_FOUND, f"no GPU {index}")
        return gpu

    def _model(self, handle: Any) -> GpuModel:
        name = _text(self.nv.nvmlDeviceGetName(handle))
        total = int(self.nv.nvmlDeviceGetMemoryInfo(handle).total)
        try:
            return gpu_model(model_from_nvml(name, total))
        except KeyError:
            # Not in the catalog: reported by its product name, never partitioned.
            return GpuModel(name=name[:64], memory_gib=round(total / 2**30, 1))

    def _placements(self, handle: Any, profile_id: int) -> tuple[tuple[int, int], ...]:
        nv = self.nv
        arr = (nv.c_nvmlGpuInstancePlacement_t * 8)()
        count = ctypes.c_uint(len(arr))
        nv.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, arr, ctypes.byref(count))
        return tuple((int(arr[i].start), int(arr[i].size)) for i in range(count.value))

    def profiles(self, index: int) -> dict[str, _Profile]:
        """The GPU-instance profiles NVML offers on GPU ``index``, by name."""
        if index in self._profiles:
            return self._profiles[index]
        nv = self.nv
        handle = self._handle(index)
        out: dict[str, _Profile] = {}
        with self._nvml(f"GPU {index} profiles"):
            model = self._model(handle)
            for pid in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
                try:
                    info = nv.nvmlDeviceGetGpuInstanceProfileInfo(handle, pid)
                except nv.NVMLError as exc:
                    if _absent(nv, exc):
                        continue  # not on this GPU (or MIG is off)
                    raise
                # The info's id, not the enum index asked with: they differ on real GPUs.
                places = self._placements(handle, int(info.id))
                if not places:
                    continue
                mem_slices = places[0][1]
                name = re.sub(r"^MIG\s+", "", _text(getattr(info, "name", b"")).strip())
                if not name:
                    me = pid == nv.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1
                    try:
                        name = model.profile_by_shape(int(info.sliceCount), mem_slices, me).name
                    except KeyError:
                        gib = round(int(info.memorySizeMB) / 1024)
                        name = f"{int(info.sliceCount)}g.{gib}gb"
                out[name] = _Profile(
                    nvml_id=int(info.id), name=name, compute_slices=int(info.sliceCount),
                    memory_slices=mem_slices, placements=tuple(s for s, _ in places),
                )
        if out:  # none while MIG is off: asked again once it is on
            self._profiles[index] = out
        return out

    # ---- inventory ------------------------------------------------------------------

    def gpus(self) -> list[GpuInfo]:
        nv = self.nv
        out = []
        with self._nvml("inventory"):
            for index in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(index)
                model = self._model(h)
                try:
                    current, pending = nv.nvmlDeviceGetMigMode(h)
                    capable = True
                except nv.NVMLError:
                    current = pending = 0
                    capable = False
                try:
                    minor: int | None = int(nv.nvmlDeviceGetMinorNumber(h))
                except nv.NVMLError:
                    minor = None
                out.append(GpuInfo(
                    index=index,
                    uuid=_text(nv.nvmlDeviceGetUUID(h)),
                    model=model,
                    memory_gib=round(int(nv.nvmlDeviceGetMemoryInfo(h).total) / 2**30, 1),
                    mig_capable=capable and model.mig_capable,
                    mig_enabled=bool(current),
                    mig_pending=bool(pending) if pending != current else None,
                    minor=minor,
                ))
        return out

    def _gpu_instances(self, index: int) -> list[tuple[Any, Any, _Profile]]:
        """(GI handle, GI info, profile) of every GPU instance of GPU ``index``."""
        nv = self.nv
        handle = self._handle(index)
        out = []
        for prof in self.profiles(index).values():
            arr = (nv.c_nvmlGpuInstance_t * 8)()
            count = ctypes.c_uint(0)
            with self._nvml(f"GPU {index} instances of {prof.name}"):
                nv.nvmlDeviceGetGpuInstances(handle, prof.nvml_id, arr, ctypes.byref(count))
                for i in range(count.value):
                    out.append((arr[i], nv.nvmlGpuInstanceGetInfo(arr[i]), prof))
        return out

    def _compute_instances(self, gi: Any) -> list[tuple[Any, Any]]:
        nv = self.nv
        out = []
        for cpid in range(nv.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi, cpid, nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
            except nv.NVMLError as exc:
                if _absent(nv, exc):
                    continue
                raise
            arr = (nv.c_nvmlComputeInstance_t * 8)()
            count = ctypes.c_uint(0)
            nv.nvmlGpuInstanceGetComputeInstances(gi, info.id, arr, ctypes.byref(count))
            for i in range(count.value):
                out.append((arr[i], nv.nvmlComputeInstanceGetInfo(arr[i])))
        return out

    def _mig_devices(self, index: int) -> dict[tuple[int, int], Any]:
        """MIG device handles of GPU ``index`` by (GI id, CI id)."""
        nv = self.nv
        handle = self._handle(index)
        out: dict[tuple[int, int], Any] = {}
        with self._nvml(f"GPU {index} MIG devices"):
            for k in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, k)
                except nv.NVMLError:
                    continue
                key = (int(nv.nvmlDeviceGetGpuInstanceId(mig)),
                       int(nv.nvmlDeviceGetComputeInstanceId(mig)))
                out[key] = mig
        return out

    def _pids(self, mig: Any) -> tuple[int, ...]:
        nv = self.nv
        pids: list[int] = []
        for fn in (nv.nvmlDeviceGetComputeRunningProcesses,
                   getattr(nv, "nvmlDeviceGetGraphicsRunningProcesses", None)):
            if fn is None:
                continue
            try:
                pids.extend(int(p.pid) for p in fn(mig))
            except nv.NVMLError:
                continue
        return tuple(sorted(set(pids)))

    def instances(self, index: int) -> list[GpuInstance]:
        if not self._gpu(index).mig_enabled:
            return []
        migs = self._mig_devices(index)
        out = []
        with self._nvml(f"GPU {index} instances"):
            for gi, info, prof in self._gpu_instances(index):
                cis = self._compute_instances(gi)
                ci_id = int(cis[0][1].id) if cis else None
                mig = migs.get((int(info.id), ci_id)) if ci_id is not None else None
                holders = self._pids(mig) if mig is not None else ()
                out.append(GpuInstance(
                    gpu_index=index, profile=prof.name, start=int(info.placement.start),
                    gi_id=int(info.id),
                    uuid=_text(self.nv.nvmlDeviceGetUUID(mig)) if mig is not None else None,
                    ci_id=ci_id, in_use=bool(holders), holders=holders,
                ))
        return sorted(out, key=lambda i: i.start)

    def possible_placements(self, index: int, profile: str) -> list[int]:
        prof = self.profiles(index).get(profile)
        return list(prof.placements) if prof else []

    # ---- MIG operations (never called on a real GPU by the tests) -------------------

    def _gi_at(self, index: int, start: int) -> tuple[Any, Any, _Profile]:
        for gi, info, prof in self._gpu_instances(index):
            if int(info.placement.start) == start:
                return gi, info, prof
        raise BackendError(ErrorCode.NOT_FOUND, f"GPU {index} has no GPU instance at {start}")

    def create_gpu_instance(self, index: int, profile: str, start: int) -> GpuInstance:
        nv = self.nv
        gpu = self._gpu(index)
        if not gpu.mig_capable:
            raise BackendError(ErrorCode.NOT_SUPPORTED,
                               f"GPU {index} ({gpu.model.name}) has no MIG")
        if not gpu.mig_enabled:
            raise BackendError(ErrorCode.NOT_SUPPORTED, f"MIG mode is off on GPU {index}")
        prof = self.profiles(index).get(profile)
        if prof is None:
            raise BackendError(ErrorCode.INVALID_ARGUMENT, f"GPU {index} has no profile {profile}")
        placement = nv.c_nvmlGpuInstancePlacement_t()
        placement.start = start
        placement.size = prof.memory_slices
        with self._nvml(f"create {profile}@{start} on GPU {index}"):
            gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(
                self._handle(index), prof.nvml_id, ctypes.byref(placement))
            info = nv.nvmlGpuInstanceGetInfo(gi)
        return GpuInstance(gpu_index=index, profile=profile, start=start, gi_id=int(info.id))

    def create_compute_instance(self, index: int, start: int) -> GpuInstance:
        nv = self.nv
        gi, info, prof = self._gi_at(index, start)
        with self._nvml(f"compute instance on GPU {index} GI {int(info.id)}"):
            chosen = None
            for cpid in range(nv.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
                try:
                    ci_info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                        gi, cpid, nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
                except nv.NVMLError as exc:
                    if _absent(nv, exc):
                        continue
                    raise
                if int(ci_info.sliceCount) == prof.compute_slices:
                    chosen = ci_info
                    break
            if chosen is None:
                raise BackendError(ErrorCode.NOT_SUPPORTED,
                                   f"no full-size compute instance profile for {prof.name}")
            nv.nvmlGpuInstanceCreateComputeInstance(gi, chosen.id)
        found = [i for i in self.instances(index) if i.start == start]
        if not found:
            raise BackendError(ErrorCode.UNKNOWN, f"GPU {index} GI at {start} vanished")
        return found[0]

    def destroy_compute_instance(self, index: int, start: int) -> None:
        gi, info, _ = self._gi_at(index, start)
        with self._nvml(f"destroy compute instance of GPU {index} GI {int(info.id)}"):
            cis = self._compute_instances(gi)
            if not cis:
                raise BackendError(ErrorCode.NOT_FOUND,
                                   f"GI {int(info.id)} has no compute instance")
            for ci, _ci_info in cis:
                self.nv.nvmlComputeInstanceDestroy(ci)

    def destroy_gpu_instance(self, index: int, start: int) -> None:
        gi, info, _ = self._gi_at(index, start)
        with self._nvml(f"destroy GPU {index} GI {int(info.id)}"):
            self.nv.nvmlGpuInstanceDestroy(gi)

    def set_mig_mode(self, index: int, enabled: bool) -> bool:
        nv = self.nv
        with self._nvml(f"MIG mode of GPU {index}"):
            status = nv.nvmlDeviceSetMigMode(
                self._handle(index),
                nv.NVML_DEVICE_MIG_ENABLE if enabled else nv.NVML_DEVICE_MIG_DISABLE)
        self._profiles.pop(index, None)
        return bool(int(status) == int(nv.NVML_SUCCESS))

    # ---- device files and health ----------------------------------------------------

    def device_nodes(self, uuids: list[str]) -> list[DeviceNode]:
        """``/dev/nvidiactl``, ``/dev/nvidia-uvm*``, the parent GPU's ``/dev/nvidia<minor>``
        and the MIG capability devices (``/dev/nvidia-caps/nvidia-cap<N>``) of each device."""
        wanted = set(uuids)
        paths = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
        minors = _mig_minors()
        for gpu in self.gpus():
            if not gpu.mig_enabled or gpu.minor is None:
                continue
            for inst in self.instances(gpu.index):
                if inst.uuid not in wanted:
                    continue
                paths.append(f"/dev/nvidia{gpu.minor}")
                for cap in (f"gpu{gpu.minor}/gi{inst.gi_id}/access",
                            f"gpu{gpu.minor}/gi{inst.gi_id}/ci{inst.ci_id}/access"):
                    if cap in minors:
                        paths.append(f"/dev/nvidia-caps/nvidia-cap{minors[cap]}")
        seen: list[str] = []
        for p in paths:
            if p not in seen and Path(p).exists():
                seen.append(p)
        return [DeviceNode(p) for p in seen]

    def poll_health(self, timeout: float) -> list[HealthEvent]:
        nv = self.nv
        if self._events is None:
            with self._nvml("event set"):
                self._events = nv.nvmlEventSetCreate()
                for gpu in self.gpus():
                    with contextlib.suppress(nv.NVMLError):  # not every GPU supports events
                        nv.nvmlDeviceRegisterEvents(self._handle(gpu.index),
                                                    nv.nvmlEventTypeXidCriticalError,
                                                    self._events)
        try:
            data = nv.nvmlEventSetWait_v2(self._events, int(timeout * 1000))
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) == nv.NVML_ERROR_TIMEOUT:
                return []
            raise BackendError(_code(nv, exc), f"event wait: {exc}") from exc
        xid = int(data.eventData)
        if xid in APPLICATION_XIDS:
            return []
        target = _text(nv.nvmlDeviceGetUUID(data.device))
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        if gi != _NO_ID:
            index = int(nv.nvmlDeviceGetIndex(data.device))
            for inst in self.instances(index):
                if inst.gi_id == gi and ci in (_NO_ID, inst.ci_id) and inst.uuid:
                    target = inst.uuid
        return [HealthEvent(uuid=target, healthy=False, reason=f"XID {xid}", xid=xid)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._events is not None:
                self.nv.nvmlEventSetFree(self._events)
            self.nv.nvmlShutdown()


def _mig_minors() -> dict[str, int]:
    """``/proc/driver/nvidia-caps/mig-minors``: capability path -> device minor."""
    out: dict[str, int] = {}
    try:
        for line in MIG_MINORS.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


__all__ = ["NvmlBackend", "load_pynvml"]
