"""The DRA kubelet plugin: the ``DRAPlugin`` gRPC service and the registration service.

The kubelet's plugin watcher finds ``<registry dir>/conspirator.io-reg.sock``
(``/var/lib/kubelet/plugins_registry``), calls ``GetInfo`` (type ``DRAPlugin``, name
``conspirator.io``, the endpoint, ``supported_versions`` ``["v1.DRAPlugin"]``: the gRPC
service names kubelet 1.35 accepts are ``v1.DRAPlugin`` and ``v1beta1.DRAPlugin``; this
driver serves v1 only), connects to the endpoint
(``/var/lib/kubelet/plugins/conspirator.io/dra.sock``) and reports with
``NotifyRegistrationStatus``.  The kubelet then calls ``NodePrepareResources`` before a
pod's containers start and ``NodeUnprepareResources`` after they are gone; both delegate to
:class:`~.prepare.DraDriver`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc

from conspirator.deviceplugin.dra.claims import ClaimRef
from conspirator.deviceplugin.dra.prepare import DraDriver
from conspirator.deviceplugin.dra.registration import api_pb2 as reg_pb
from conspirator.deviceplugin.dra.registration import api_pb2_grpc as reg_grpc
from conspirator.deviceplugin.dra.slices import DRIVER
from conspirator.deviceplugin.dra.v1 import api_pb2 as pb
from conspirator.deviceplugin.dra.v1 import api_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"
SERVICE_VERSIONS = ("v1.DRAPlugin",)
DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/plugins") / DRIVER
DEFAULT_REGISTRY_DIR = Path("/var/lib/kubelet/plugins_registry")
PLUGIN_SOCKET = "dra.sock"


def registration_socket(registry_dir: Path, driver: str = DRIVER) -> Path:
    return registry_dir / f"{driver}-reg.sock"


def _refs(claims: list[pb.Claim]) -> list[ClaimRef]:
    return [ClaimRef(namespace=c.namespace, name=c.name, uid=c.uid) for c in claims]


class DraService(pb_grpc.DRAPluginServicer):
    """``k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin`` over a :class:`DraDriver`."""

    def __init__(self, driver: DraDriver) -> None:
        self.driver = driver

    def NodePrepareResources(self, request: pb.NodePrepareResourcesRequest,  # noqa: N802
                             context: grpc.ServicerContext) -> pb.NodePrepareResourcesResponse:
        results = self.driver.prepare(_refs(list(request.claims)))
        out = pb.NodePrepareResourcesResponse()
        for uid, r in results.items():
            entry = out.claims[uid]
            if r.error:
                entry.error = r.error
                continue
            for d in r.devices:
                dev = entry.devices.add(request_names=[d.request] if d.request else [],
                                        pool_name=d.pool, device_name=d.device,
                                        cdi_device_ids=[d.cdi_id])
                if d.share_id is not None:
                    dev.share_id = d.share_id
        return out

    def NodeUnprepareResources(self, request: pb.NodeUnprepareResourcesRequest,  # noqa: N802
                               context: grpc.ServicerContext
                               ) -> pb.NodeUnprepareResourcesResponse:
        out = pb.NodeUnprepareResourcesResponse()
        for uid, error in self.driver.unprepare(_refs(list(request.claims))).items():
            out.claims[uid].error = error
        return out


class RegistrationService(reg_grpc.RegistrationServicer):
    """``pluginregistration.Registration``: what the kubelet's plugin watcher asks."""

    def __init__(self, endpoint: str, driver: str = DRIVER) -> None:
        self.endpoint = endpoint
        self.driver = driver
        self.registered = threading.Event()
        self.error: str | None = None
        """The kubelet's last registration error (None: none reported)."""

    def GetInfo(self, request: reg_pb.InfoRequest,  # noqa: N802
                context: grpc.ServicerContext) -> reg_pb.PluginInfo:
        return reg_pb.PluginInfo(type=PLUGIN_TYPE, name=self.driver, endpoint=self.endpoint,
                                 supported_versions=list(SERVICE_VERSIONS))

    def NotifyRegistrationStatus(self, request: reg_pb.RegistrationStatus,  # noqa: N802
                                 context: grpc.ServicerContext
                                 ) -> reg_pb.RegistrationStatusResponse:
        if request.plugin_registered:
            self.error = None
            self.registered.set()
            log.info("the kubelet registered DRA driver %s", self.driver)
        else:
            self.error = request.error
            self.registered.clear()
            log.error("the kubelet refused DRA driver %s: %s", self.driver, request.error)
        return reg_pb.RegistrationStatusResponse()


def _serve(socket: Path, add: Callable[[grpc.Server], None]) -> grpc.Server:
    socket.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()  # a stale socket of an earlier run
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add(server)
    if server.add_insecure_port(f"unix://{socket}") == 0:  # pragma: no cover
        raise OSError(f"cannot listen on {socket}")
    server.start()
    return server


class DraPluginServer:
    """The driver's two sockets: the plugin (``dra.sock``) and its registration.

    ``endpoint`` is the plugin socket's path as the kubelet sees it (the default: the path
    here, right when the daemon mounts the kubelet's directories at the same paths).  The
    plugin socket starts first, so the kubelet never finds a registration whose endpoint
    does not answer yet.
    """

    def __init__(self, driver: DraDriver, plugin_dir: Path = DEFAULT_PLUGIN_DIR,
                 registry_dir: Path = DEFAULT_REGISTRY_DIR, endpoint: str | None = None,
                 name: str = DRIVER) -> None:
        self.driver = driver
        self.plugin_socket = plugin_dir / PLUGIN_SOCKET
        self.registration_socket = registration_socket(registry_dir, name)
        self.registration = RegistrationService(endpoint or str(self.plugin_socket), name)
        self._servers: list[grpc.Server] = []

    def start(self) -> DraPluginServer:
        service = DraService(self.driver)
        self._servers.append(_serve(
            self.plugin_socket, lambda s: pb_grpc.add_DRAPluginServicer_to_server(service, s)))
        self._servers.append(_serve(
            self.registration_socket,
            lambda s: reg_grpc.add_RegistrationServicer_to_server(self.registration, s)))
        log.info("DRA driver %s serving %s, registration %s", self.registration.driver,
                 self.plugin_socket, self.registration_socket)
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving; the registration socket goes first, so the kubelet's watcher
        deregisters the driver before its endpoint closes."""
        for server in reversed(self._servers):
            server.stop(grace).wait()
        self._servers.clear()
        for s in (self.registration_socket, self.plugin_socket):
            with contextlib.suppress(FileNotFoundError):
                s.unlink()

    @property
    def serving(self) -> bool:
        return bool(self._servers)


__all__ = [
    "DEFAULT_PLUGIN_DIR",
    "DEFAULT_REGISTRY_DIR",
    "SERVICE_VERSIONS",
    "DraPluginServer",
    "DraService",
    "RegistrationService",
    "registration_socket",
]
