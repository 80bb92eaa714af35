"""The GPU backend interface: what the node daemon needs from the GPUs, NVML or simulated.

Both backends (:mod:`.nvml` on real GPUs through ``nvidia-ml-py``, :mod:`.simulated` from
a node spec file) implement :class:`GpuBackend` with the same semantics and raise the
same :class:`BackendError` codes NVML returns, so everything above them (the layout
applier, the device plugin, the daemon) is tested on the simulated one.

The unit of a MIG layout is an *instance*: one GPU instance (GI) at a placement
(profile, start slice) with one compute instance (CI) spanning it, which is what a MIG
device (``MIG-<uuid>``) is.  Creating one takes two NVML calls (GI, then CI) and
destroying one two more (CI, then GI); the backend exposes each call, so that a daemon
killed between them leaves a GI without CI, which the applier finds and finishes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum

from conspirator.mig import GpuModel


class ErrorCode(StrEnum):
    """The NVML return codes the daemon distinguishes (``NVML_ERROR_*``)."""

    INVALID_ARGUMENT = "InvalidArgument"
    """``NVML_ERROR_INVALID_ARGUMENT``: no such profile, or not a valid placement."""
    INSUFFICIENT_RESOURCES = "InsufficientResources"
    """``NVML_ERROR_INSUFFICIENT_RESOURCES``: the placement's slices or engines are taken."""
    IN_USE = "InUse"
    """``NVML_ERROR_IN_USE``: a process (or a compute instance) uses it."""
    NOT_FOUND = "NotFound"
    """``NVML_ERROR_NOT_FOUND``: no such GPU or instance."""
    NOT_SUPPORTED = "NotSupported"
    """``NVML_ERROR_NOT_SUPPORTED``: MIG is off or the GPU has none."""
    NO_PERMISSION = "NoPermission"
    """``NVML_ERROR_NO_PERMISSION``: MIG changes need root (or the admin capability)."""
    RESET_REQUIRED = "ResetRequired"
    """``NVML_ERROR_RESET_REQUIRED``: a MIG mode change waits for a GPU reset."""
    UNKNOWN = "Unknown"


class BackendError(Exception):
    """A refused GPU operation, with NVML's code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """Inventory of one physical GPU."""

    index: int
    uuid: str
    model: GpuModel
    memory_gib: float
    mig_capable: bool
    mig_enabled: bool
    mig_pending: bool | None = None
    """MIG mode after the next GPU reset, when it differs from the current one."""
    minor: int | None = None
    """``/dev/nvidia<minor>`` on real GPUs."""


@dataclass(frozen=True, slots=True)
class GpuInstance:
    """One GPU instance (and its compute instance, once created)."""

    gpu_index: int
    profile: str
    start: int
    gi_id: int
    uuid: str | None = None
    """MIG device UUID (``MIG-...``); ``None`` while the GI has no compute instance."""
    ci_id: int | None = None
    in_use: bool = False
    """A process holds the device (NVML's running processes; simulated holders)."""
    holders: tuple[int, ...] = field(default=(), compare=False)
    """PIDs of the processes using the device, where known."""

    @property
    def complete(self) -> bool:
        """The GI has its compute instance: a usable MIG device."""
        return self.uuid is not None

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.gpu_index, self.profile, self.start)


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A device file a container needs (``DeviceSpec`` of the device plugin API)."""

    path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A GPU health event (an XID error) or a recovery."""

    uuid: str
    """GPU or MIG device UUID concerned."""
    healthy: bool
    reason: str
    xid: int | None = None


# XIDs that report an application's fault, not the device's (NVIDIA's device plugin skips
# them too): 13 graphics engine exception, 31 memory page fault, 43 GPU stopped processing,
# 45 preemptive cleanup, 68 video processor exception, 109 context switch timeout.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


class GpuBackend(abc.ABC):
    """The GPUs of one node."""

    name: str = "backend"

    @abc.abstractmethod
    def gpus(self) -> list[GpuInfo]:
        """Every GPU of the node, by index."""

    @abc.abstractmethod
    def instances(self, index: int) -> list[GpuInstance]:
        """The GPU instances of GPU ``index`` (empty when MIG is off), by start slice."""

    @abc.abstractmethod
    def possible_placements(self, index: int, profile: str) -> list[int]:
        """Every start slice of ``profile`` on this GPU, taken or not (NVML's possible
        placements); empty when the GPU has no such profile."""

    @abc.abstractmethod
    def create_gpu_instance(self, index: int, profile: str, start: int) -> GpuInstance:
        """Create a GPU instance of ``profile`` at ``start`` (no compute instance yet)."""

    @abc.abstractmethod
    def create_compute_instance(self, index: int, start: int) -> GpuInstance:
        """Create the full-size compute instance of the GI at ``start``: the MIG device."""

    @abc.abstractmethod
    def destroy_compute_instance(self, index: int, start: int) -> None:
        """Destroy the compute instance of the GI at ``start`` (``IN_USE`` if a process runs)."""

    @abc.abstractmethod
    def destroy_gpu_instance(self, index: int, start: int) -> None:
        """Destroy the GI at ``start`` (``IN_USE`` while it has a compute instance)."""

    @abc.abstractmethod
    def set_mig_mode(self, index: int, enabled: bool) -> bool:
        """Switch MIG mode; False when the change waits for a GPU reset."""

    def device_nodes(self, uuids: list[str]) -> list[DeviceNode]:
        """Device files a container needs to use these MIG devices (none when simulated)."""
        return []

    def poll_health(self, timeout: float) -> list[HealthEvent]:
        """Health events since the last call, waiting up to ``timeout`` seconds for one."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds."""

    # ---- derived operations ---------------------------------------------------------

    def create_instance(self, index: int, profile: str, start: int) -> GpuInstance:
        """Create GI then CI; a GI left without CI by a crash is completed, not recreated."""
        existing = {i.start: i for i in self.instances(index)}
        cur = existing.get(start)
        if cur is None:
            self.create_gpu_instance(index, profile, start)
        elif cur.profile != profile:
            raise BackendError(
                ErrorCode.INSUFFICIENT_RESOURCES,
                f"GPU {index} slice {start} holds a {cur.profile} instance",
            )
        elif cur.complete:
            return cur
        return self.create_compute_instance(index, start)

    def destroy_instance(self, index: int, start: int) -> None:
        """Destroy CI (if any) then GI."""
        cur = {i.start: i for i in self.instances(index)}.get(start)
        if cur is None:
            raise BackendError(ErrorCode.NOT_FOUND, f"GPU {index} has no instance at {start}")
        if cur.ci_id is not None:
            self.destroy_compute_instance(index, start)
        self.destroy_gpu_instance(index, start)


__all__ = [
    "APPLICATION_XIDS",
    "BackendError",
    "DeviceNode",
    "ErrorCode",
    "GpuBackend",
    "GpuInfo",
    "GpuInstance",
    "HealthEvent",
]
