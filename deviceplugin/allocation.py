"""What a container gets for its devices, in both allocation modes.  Pure.

The device plugin's ``Allocate`` answer and the DRA driver's CDI spec carry the same
environment and mounts, so a worker cannot tell the modes apart: NVIDIA's
``NVIDIA_VISIBLE_DEVICES`` (the env-var strategy of the NVIDIA container runtime), the
``CONSPIRATOR_*`` variables the worker runtime reads, and the buffer-registration socket's
directory mounted read-only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conspirator.deviceplugin.backend import DeviceNode
from conspirator.deviceplugin.kube import DEVICES_ANNOTATION


@dataclass
class ContainerAllocation:
    """What one container gets for its devices (``ContainerAllocateResponse``)."""

    envs: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    """(container path, host path, read-only)."""
    devices: list[DeviceNode] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Given:
    """One device given to a container: its id (MIG device or GPU UUID), profile, GPU."""

    id: str
    profile: str
    gpu_uuid: str


@dataclass(frozen=True, slots=True)
class AllocationConfig:
    """The node's part of every allocation."""

    node: str
    registry_socket: Path | None = None
    """The buffer registry's socket on the host (``None``: no data path)."""
    container_socket_dir: str = "/run/conspirator"
    """Where the registry socket's directory is mounted in the container."""


def container_allocation(config: AllocationConfig, resource: str, devices: Sequence[Given],
                         device_nodes: Sequence[DeviceNode] = ()) -> ContainerAllocation:
    """The container's environment, mounts, device files and annotation for ``devices``
    of ``resource``."""
    ids = [d.id for d in devices]
    envs = {
        "NVIDIA_VISIBLE_DEVICES": ",".join(ids),
        "CONSPIRATOR_DEVICES": ",".join(ids),
        "CONSPIRATOR_RESOURCE": resource,
        "CONSPIRATOR_MIG_PROFILE": ",".join(sorted({d.profile for d in devices})),
        "CONSPIRATOR_GPU_UUIDS": ",".join(sorted({d.gpu_uuid for d in devices})),
        "CONSPIRATOR_NODE_NAME": config.node,
    }
    mounts: list[tuple[str, str, bool]] = []
    reg = config.registry_socket
    if reg is not None:
        cdir = config.container_socket_dir
        envs["CONSPIRATOR_REGISTRY_SOCKET"] = f"{cdir}/{reg.name}"
        mounts.append((cdir, str(reg.parent), True))
    return ContainerAllocation(envs=envs, mounts=mounts, devices=list(device_nodes),
                               annotations={DEVICES_ANNOTATION: json.dumps({resource: ids})})


__all__ = ["AllocationConfig", "ContainerAllocation", "Given", "container_allocation"]
