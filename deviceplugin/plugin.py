"""The kubelet device plugin API v1beta1: one gRPC server per extended resource.

Each MIG profile present on the node is one resource, ``conspirator.io/mig-<profile>``,
served by a :class:`ResourcePlugin` on its own unix socket in the kubelet's
device-plugin directory (``/var/lib/kubelet/device-plugins`` on a real node) and
registered with the kubelet's ``Registration`` service on ``kubelet.sock`` there.  The
kubelet then calls back:

- ``GetDevicePluginOptions``: PreStartContainer is required (the plugin checks the
  devices once more right before the container starts) and GetPreferredAllocation is
  available.
- ``ListAndWatch``: a stream of the full device list (MIG device UUIDs with their
  health), sent again whenever the layout or a device's health changes.
- ``GetPreferredAllocation``: packs containers onto the GPUs that are already busiest,
  keeping emptier GPUs free for re-partitioning.
- ``Allocate``: what the container gets, built by the daemon's allocation callback
  (``NVIDIA_VISIBLE_DEVICES=MIG-<uuid>``, device files, the buffer-registration socket).
- ``PreStartContainer``: refuses devices that vanished or turned unhealthy.

:class:`PluginManager` starts a plugin when a profile appears in the layout and stops it
when the profile vanishes (after advertising an empty list, so the kubelet drops the
capacity at once), and re-registers everything when the kubelet's socket is re-created
(a kubelet restart wipes the plugins' sockets too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from conspirator.deviceplugin.allocation import ContainerAllocation
from conspirator.deviceplugin.v1beta1 import api_pb2 as pb
from conspirator.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True, slots=True)
class Device:
    """One advertised device: a MIG instance (or a whole GPU)."""

    id: str
    healthy: bool = True
    gpu_index: int = 0
    gpu_uuid: str = ""
    profile: str = ""
    start: int = 0


def allocate_response(a: ContainerAllocation) -> pb.ContainerAllocateResponse:
    """The gRPC form of a container's allocation."""
    return pb.ContainerAllocateResponse(
        envs=a.envs,
        mounts=[pb.Mount(container_path=c, host_path=h, read_only=ro) for c, h, ro in a.mounts],
        devices=[pb.DeviceSpec(container_path=d.path, host_path=d.path,
                               permissions=d.permissions) for d in a.devices],
        annotations=a.annotations,
    )


class AllocationError(Exception):
    """The devices asked for cannot be given (unknown or unhealthy)."""


Allocator = Callable[[str, list["Device"]], ContainerAllocation]
"""Builds a container's allocation from its resource name and devices."""


def socket_name(resource: str) -> str:
    """The plugin's socket file for a resource: ``conspirator-mig-1g.10gb.sock``."""
    return resource.replace("conspirator.io/", "conspirator-").replace("/", "-") + ".sock"


def preferred(available: Sequence[Device], must: Sequence[str], size: int) -> list[str]:
    """Pick ``size`` devices: ``must`` first, then those on the busiest GPUs.

    A GPU whose free devices are few is preferred, so that the devices left free sit on
    as few GPUs as possible and whole GPUs stay free to re-partition.
    """
    chosen = [d for d in must if d in {a.id for a in available}]
    free_per_gpu: dict[int, int] = {}
    for d in available:
        free_per_gpu[d.gpu_index] = free_per_gpu.get(d.gpu_index, 0) + 1
    rest = sorted((d for d in available if d.id not in chosen),
                  key=lambda d: (free_per_gpu[d.gpu_index], d.gpu_index, d.start, d.id))
    for d in rest:
        if len(chosen) >= size:
            break
        chosen.append(d.id)
    return chosen[:size]


class ResourcePlugin(pb_grpc.DevicePluginServicer):
    """The device plugin of one resource: a gRPC server on ``socket_path``."""

    def __init__(self, resource: str, socket_path: Path, allocator: Allocator,
                 on_allocate: Callable[[str, list[str]], None] | None = None) -> None:
        self.resource = resource
        self.socket_path = socket_path
        self.allocator = allocator
        self.on_allocate = on_allocate
        self._devices: dict[str, Device] = {}
        self._version = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._server: grpc.Server | None = None
        self.allocations = 0

    # ---- device list ----------------------------------------------------------------

    def set_devices(self, devices: Sequence[Device]) -> bool:
        """Replace the device list; open ListAndWatch streams send it. True if it changed."""
        new = {d.id: d for d in devices}
        with self._cond:
            if new == self._devices:
                return False
            self._devices = new
            self._version += 1
            self._cond.notify_all()
            return True

    @property
    def devices(self) -> dict[str, Device]:
        with self._cond:
            return dict(self._devices)

    def _response(self) -> pb.ListAndWatchResponse:
        return pb.ListAndWatchResponse(devices=[
            pb.Device(ID=d.id, health=HEALTHY if d.healthy else UNHEALTHY)
            for d in sorted(self._devices.values(), key=lambda d: (d.gpu_index, d.start, d.id))
        ])

    # ---- server ---------------------------------------------------------------------

    def start(self) -> None:
        """Serve on the socket (replacing a stale one)."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()
        with self._cond:
            self._stopping = False
        server = grpc.server(futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix=f"dp-{self.resource.rsplit('-', 1)[-1]}"))
        pb_grpc.add_DevicePluginServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        log.info("device plugin %s serving on %s", self.resource, self.socket_path)

    def register(self, kubelet_socket: Path, timeout: float = 10.0) -> None:
        """Register with the kubelet (raises ``grpc.RpcError`` when refused or absent)."""
        with grpc.insecure_channel(f"unix://{kubelet_socket}") as channel:
            stub = pb_grpc.RegistrationStub(channel)
            stub.Register(pb.RegisterRequest(
                version=API_VERSION,
                endpoint=self.socket_path.name,
                resource_name=self.resource,
                options=pb.DevicePluginOptions(pre_start_required=True,
                                               get_preferred_allocation_available=True),
            ), timeout=timeout)
        log.info("registered %s with the kubelet at %s", self.resource, kubelet_socket)

    def stop(self, grace: float = 1.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    @property
    def serving(self) -> bool:
        return self._server is not None

    # ---- the DevicePlugin service ---------------------------------------------------

    def GetDevicePluginOptions(self, request: pb.Empty, context: grpc.ServicerContext  # noqa: N802
                               ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(pre_start_required=True,
                                      get_preferred_allocation_available=True)

    def ListAndWatch(self, request: pb.Empty, context: grpc.ServicerContext  # noqa: N802
                     ) -> Iterator[pb.ListAndWatchResponse]:
        with self._cond:
            seen = -1
            while context.is_active():
                if seen != self._version:  # send the last list even when stopping
                    seen = self._version
                    resp = self._response()
                    self._cond.release()
                    try:
                        yield resp
                    finally:
                        self._cond.acquire()
                    continue
                if self._stopping:
                    return
                self._cond.wait(timeout=1.0)

    def GetPreferredAllocation(self, request: pb.PreferredAllocationRequest,  # noqa: N802
                               context: grpc.ServicerContext) -> pb.PreferredAllocationResponse:
        devices = self.devices
        out = []
        for req in request.container_requests:
            avail = [devices[i] for i in req.available_deviceIDs if i in devices]
            ids = preferred(avail, list(req.must_include_deviceIDs), int(req.allocation_size))
            out.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return pb.PreferredAllocationResponse(container_responses=out)

    def _check(self, ids: Sequence[str]) -> list[Device]:
        devices = self.devices
        unknown = [i for i in ids if i not in devices]
        if unknown:
            raise AllocationError(f"{self.resource}: unknown device(s) {unknown}")
        sick = [i for i in ids if not devices[i].healthy]
        if sick:
            raise AllocationError(f"{self.resource}: unhealthy device(s) {sick}")
        return [devices[i] for i in ids]

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext  # noqa: N802
                 ) -> pb.AllocateResponse:
        out = []
        for req in request.container_requests:
            ids = list(req.devices_ids)
            try:
                devs = self._check(ids)
                alloc = self.allocator(self.resource, devs)
            except AllocationError as exc:
                log.warning("Allocate refused: %s", exc)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            log.info("Allocate %s: %s", self.resource, ids)
            if self.on_allocate is not None:
                self.on_allocate(self.resource, ids)
            self.allocations += 1
            out.append(allocate_response(alloc))
        return pb.AllocateResponse(container_responses=out)

    def PreStartContainer(self, request: pb.PreStartContainerRequest,  # noqa: N802
                          context: grpc.ServicerContext) -> pb.PreStartContainerResponse:
        try:
            self._check(list(request.devices_ids))
        except AllocationError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.PreStartContainerResponse()


@dataclass
class _Watch:
    ident: tuple[int, int, float] | None = None


class PluginManager:
    """The plugins of one node: started, updated, stopped and re-registered as needed."""

    def __init__(self, plugin_dir: Path, allocator: Allocator,
                 on_allocate: Callable[[str, list[str]], None] | None = None,
                 on_register: Callable[[str, bool], None] | None = None,
                 poll_interval: float = 1.0) -> None:
        self.plugin_dir = plugin_dir
        self.kubelet_socket = plugin_dir / KUBELET_SOCKET
        self.allocator = allocator
        self.on_allocate = on_allocate
        self.on_register = on_register
        self.poll_interval = poll_interval
        self.plugins: dict[str, ResourcePlugin] = {}
        self._registered: dict[str, tuple[int, int, float] | None] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registrations = 0

    def _kubelet_ident(self) -> tuple[int, int, float] | None:
        try:
            st = os.stat(self.kubelet_socket)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_ctime)

    def set_devices(self, by_resource: dict[str, list[Device]]) -> None:
        """Advertise exactly these resources and devices."""
        with self._lock:
            for resource in sorted(set(self.plugins) - set(by_resource)):
                gone = self.plugins.pop(resource)
                self._registered.pop(resource, None)
                gone.set_devices([])  # the kubelet zeroes the capacity right away
                gone.stop()
                log.info("resource %s vanished: plugin stopped", resource)
            for resource, devices in sorted(by_resource.items()):
                plugin = self.plugins.get(resource)
                if plugin is None:
                    plugin = ResourcePlugin(resource, self.plugin_dir / socket_name(resource),
                                            self.allocator, self.on_allocate)
                    plugin.set_devices(devices)
                    plugin.start()
                    self.plugins[resource] = plugin
                    self._registered[resource] = None
                    self._register(resource)
                else:
                    plugin.set_devices(devices)

    def _register(self, resource: str) -> None:
        ident = self._kubelet_ident()
        if ident is None:
            return  # no kubelet yet; the watcher registers once it appears
        plugin = self.plugins[resource]
        try:
            plugin.register(self.kubelet_socket)
        except grpc.RpcError as exc:
            log.warning("registering %s failed: %s", resource, exc)
            if self.on_register is not None:
                self.on_register(resource, False)
            return
        self._registered[resource] = ident
        self.registrations += 1
        if self.on_register is not None:
            self.on_register(resource, True)

    def check(self) -> None:
        """One watcher pass: restart and re-register after a kubelet restart."""
        with self._lock:
            ident = self._kubelet_ident()
            for resource, plugin in self.plugins.items():
                if ident is None:
                    continue
                if self._registered.get(resource) == ident and plugin.socket_path.exists():
                    continue
                if not plugin.socket_path.exists() or self._registered.get(resource) is not None:
                    # The kubelet restarted (its socket is new) or removed ours: serve anew.
                    plugin.stop(grace=0)
                    plugin.start()
                self._register(resource)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.check()
            except Exception:  # keep watching whatever happens
                log.exception("device plugin watcher")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kubelet-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for plugin in self.plugins.values():
                plugin.stop(grace=0.5)
            self.plugins.clear()

    def registered(self, resource: str) -> bool:
        with self._lock:
            return self._registered.get(resource) is not None


__all__ = [
    "API_VERSION",
    "AllocationError",
    "Allocator",
    "ContainerAllocation",
    "Device",
    "PluginManager",
    "ResourcePlugin",
    "preferred",
    "socket_name",
]
