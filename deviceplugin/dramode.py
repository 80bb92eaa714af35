"""The node daemon as the DRA driver ``conspirator.io``: its parts, tied for the daemon.

In DRA mode the daemon advertises no extended resources.  Each pass publishes the node's
ResourceSlices (:func:`~.dra.slices.build_slices`, with the GPUNode spec's reservations as
the devices' ``reservation`` attribute, which the operator's claim templates select), and
the kubelet calls the driver's plugin socket to prepare the claims the scheduler allocated
(:class:`~.dra.prepare.DraDriver`: the instance at the claimed placement, a CDI spec with
the same environment the device plugin's Allocate gives).  Prepared devices count as in
use, so the layout applier never destroys one.

:func:`choose` decides the mode for ``--allocation auto``: DRA where the API server serves
``resource.k8s.io/v1`` and the kubelet's plugin-registration directory exists (a kubelet
that runs DRA plugins), else the device plugin.  The directory existing does not prove that
*this node's* kubelet watches it (its ``--root-dir`` may be elsewhere): the daemon then starts
the driver and waits for the kubelet's registration (:meth:`DraMode.await_registration`);
without it within ``--dra-registration-timeout`` an ``auto`` daemon withdraws its slices and
serves device plugins instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from conspirator.deviceplugin.allocation import AllocationConfig, Given, container_allocation
from conspirator.deviceplugin.backend import GpuBackend
from conspirator.deviceplugin.dra.checkpoint import PreparedDevice
from conspirator.deviceplugin.dra.claims import ClaimReader
from conspirator.deviceplugin.dra.prepare import ContainerEdits, DraDriver
from conspirator.deviceplugin.dra.publish import SliceClient, SliceDiff, SlicePublisher
from conspirator.deviceplugin.dra.server import (
    DEFAULT_PLUGIN_DIR,
    DEFAULT_REGISTRY_DIR,
    DraPluginServer,
)
from conspirator.deviceplugin.dra.slices import build_slices
from conspirator.deviceplugin.reservations import Reservations

log = logging.getLogger(__name__)

Mode = Literal["DevicePlugin", "DRA"]
"""The two modes, as ``GPUNode.status.allocation`` spells them."""
DEVICE_PLUGIN: Mode = "DevicePlugin"
DRA: Mode = "DRA"


@dataclass(frozen=True, slots=True)
class DraConfig:
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    registry_dir: Path = DEFAULT_REGISTRY_DIR
    cdi_dir: Path = Path("/var/run/cdi")
    checkpoint: Path | None = None
    """Default: ``<plugin_dir>/checkpoint.json``."""


def choose(wanted: str, serves_resource_v1: Callable[[], bool], registry_dir: Path,
           keeps_counters: Callable[[], bool] = lambda: True) -> Mode:
    """The mode for ``--allocation`` ``wanted`` (``auto``, ``dra`` or ``devicePlugin``).

    ``auto`` is DRA only where all of it works: the kubelet runs DRA plugins (its
    plugin-registration directory exists), the API server serves ``resource.k8s.io/v1``
    and keeps the slices' shared counters (the DRAPartitionableDevices gate: without it
    the scheduler could allocate overlapping placements of one GPU).
    """
    if wanted == "dra":
        return DRA
    if wanted == "devicePlugin":
        return DEVICE_PLUGIN
    checks: list[tuple[str, Callable[[], bool]]] = [
        (f"the kubelet's {registry_dir} exists", registry_dir.is_dir),
        ("the API server serves resource.k8s.io/v1", serves_resource_v1),
        ("the API server keeps ResourceSlice sharedCounters (DRAPartitionableDevices)",
         keeps_counters),
    ]
    for what, check in checks:
        try:
            ok = check()
        except Exception as exc:  # discovery failed: the older mode is the safe one
            log.warning("allocation auto: cannot tell whether %s (%s): device plugin",
                        what, exc)
            return DEVICE_PLUGIN
        if not ok:
            log.info("allocation auto: not so that %s: device plugin", what)
            return DEVICE_PLUGIN
    log.info("allocation auto: DRA (%s)", "; ".join(w for w, _ in checks))
    return DRA


def counters_kept(api: object, node: str, backend: GpuBackend) -> bool:
    """The API server keeps the shared counters of this node's first counter slice (true
    where the node publishes none: nothing to keep)."""
    from conspirator.deviceplugin.dra.kubeclient import keeps_counters
    from conspirator.deviceplugin.dra.slices import build_slices

    first = [s for s in build_slices(node, backend.gpus()) if s["spec"].get("sharedCounters")]
    return not first or keeps_counters(api, first[0])


class DraMode:
    """The driver, its kubelet sockets and its slice publisher, for one node."""

    def __init__(self, node: str, backend: GpuBackend, claims: ClaimReader,
                 slices: SliceClient, allocation: AllocationConfig, config: DraConfig,
                 unhealthy: Callable[[], Collection[str]] = lambda: ()) -> None:
        self.node = node
        self.backend = backend
        self.allocation = allocation
        self.unhealthy = unhealthy
        self.driver = DraDriver(
            node, backend, claims, self._edits,
            checkpoint=config.checkpoint or config.plugin_dir / "checkpoint.json",
            cdi_dir=config.cdi_dir, unhealthy=unhealthy)
        self.server = DraPluginServer(self.driver, config.plugin_dir, config.registry_dir)
        self.publisher = SlicePublisher(slices)
        self.last: SliceDiff | None = None

    def _edits(self, resource: str, devices: list[PreparedDevice]) -> ContainerEdits:
        return container_allocation(
            self.allocation, resource,
            [Given(d.uuid, d.profile, d.gpu_uuid) for d in devices])

    def health_from(self, unhealthy: Callable[[], Collection[str]]) -> None:
        """Take the unhealthy devices from ``unhealthy`` (the daemon's health events):
        neither published nor prepared."""
        self.unhealthy = unhealthy
        self.driver.unhealthy = unhealthy

    def start(self) -> None:
        if not self.server.serving:
            self.server.start()

    def await_registration(self, timeout: float) -> bool:
        """Serve the driver and wait up to ``timeout`` s for the kubelet to register it.

        False (the sockets closed again, nothing published) when no kubelet called: the
        registry directory is not one a kubelet watches.  A checkpoint that still holds
        prepared claims means a kubelet did use this driver: True without waiting, so that
        their Unprepare finds it.
        """
        self.start()
        if self.driver.held() or self.server.registration.registered.wait(timeout):
            return True
        self.stop()
        return False

    def fall_back_unless_registered(self, timeout: float) -> str | None:
        """``--allocation auto`` after choosing DRA: None once the kubelet registers the
        driver; else the driver is withdrawn and the reason (for the GPUNode's Event) comes
        back, the daemon then serving device plugins."""
        if self.await_registration(timeout):
            return None
        why = (f"no kubelet registered the DRA driver from {self.server.registration_socket.parent}"
               f" within {timeout:g}s: serving device plugins")
        log.warning("allocation auto: %s", why)
        self.withdraw()
        return why

    def withdraw(self) -> SliceDiff:
        """Delete the node's ResourceSlices (an earlier DRA run's): the node no longer
        offers its devices through DRA."""
        self.last = self.publisher.publish([])
        return self.last

    def stop(self) -> None:
        self.server.stop()

    def held(self) -> dict[str, str]:
        """MIG device (or GPU) UUID -> prepared claim: in use."""
        return self.driver.held()

    def publish(self, reservations: Reservations) -> SliceDiff:
        """Write the node's slices if they changed."""
        owned: dict[tuple[int, str, int], str] = dict(reservations.instances)
        owned.update({(i, "whole", 0): o for i, o in reservations.whole.items()})
        self.last = self.publisher.publish(build_slices(
            self.node, self.backend.gpus(), set(self.unhealthy()), reservations=owned))
        return self.last


def given_of(devices: Sequence[Any]) -> list[Given]:
    """:class:`Given` of the device plugin's devices (``id``, ``profile``, ``gpu_uuid``)."""
    return [Given(d.id, d.profile, d.gpu_uuid) for d in devices]


__all__ = ["DEVICE_PLUGIN", "DRA", "DraConfig", "DraMode", "Mode", "choose", "counters_kept",
           "given_of"]
