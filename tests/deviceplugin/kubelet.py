"""A test kubelet: the real Registration gRPC service on a unix socket, and the client side of
the device plugin API the kubelet's device manager drives (options, ListAndWatch, Allocate).

It does what the kubelet does on registration: connect back to the plugin's endpoint in the
same directory, read its options and keep a ListAndWatch stream open, recording every list.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from conspirator.deviceplugin.v1beta1 import api_pb2 as pb
from conspirator.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc


@dataclass
class Endpoint:
    request: pb.RegisterRequest
    channel: grpc.Channel
    stub: pb_grpc.DevicePluginStub
    options: pb.DevicePluginOptions
    lists: list[list[tuple[str, str]]] = field(default_factory=list)
    stream: object | None = None
    ended: bool = False


class TestKubelet(pb_grpc.RegistrationServicer):
    __test__ = False  # not a pytest class

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / "kubelet.sock"
        self.endpoints: dict[str, Endpoint] = {}
        self.registrations: list[pb.RegisterRequest] = []
        self.refuse: str | None = None
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None

    def start(self) -> TestKubelet:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RegistrationServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        with self._cond:
            for ep in self.endpoints.values():
                ep.channel.close()
            self.endpoints.clear()
        if self.socket.exists():
            self.socket.unlink()

    def Register(self, request: pb.RegisterRequest,  # noqa: N802 - the gRPC method
                 context: grpc.ServicerContext) -> pb.Empty:
        if self.refuse is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refuse)
        assert request.version == "v1beta1"
        channel = grpc.insecure_channel(f"unix://{self.plugin_dir / request.endpoint}")
        stub = pb_grpc.DevicePluginStub(channel)
        ep = Endpoint(request=request, channel=channel, stub=stub,
                      options=stub.GetDevicePluginOptions(pb.Empty(), timeout=5))
        with self._cond:
            old = self.endpoints.get(request.resource_name)
            if old is not None:
                old.channel.close()
            self.endpoints[request.resource_name] = ep
            self.registrations.append(request)
            self._cond.notify_all()
        threading.Thread(target=self._watch, args=(ep,), daemon=True).start()
        return pb.Empty()

    def _watch(self, ep: Endpoint) -> None:
        try:
            for resp in ep.stub.ListAndWatch(pb.Empty()):
                with self._cond:
                    ep.lists.append([(d.ID, d.health) for d in resp.devices])
                    self._cond.notify_all()
        except grpc.RpcError:
            pass
        with self._cond:
            ep.ended = True
            self._cond.notify_all()

    def wait(self, what: str, probe: Callable[[], object], timeout: float = 20) -> object:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = probe()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"test kubelet: timed out waiting for {what}")
                self._cond.wait(min(left, 0.2))

    def devices(self, resource: str, predicate: Callable[[list[tuple[str, str]]], bool],
                timeout: float = 20) -> list[tuple[str, str]]:
        def probe() -> list[tuple[str, str]] | None:
            ep = self.endpoints.get(resource)
            if ep is None or not ep.lists:
                return None
            last = ep.lists[-1]
            return last if predicate(last) else None

        out = self.wait(f"a device list of {resource}", probe, timeout)
        assert isinstance(out, list)
        return out

    def allocate(self, resource: str, ids: list[str]) -> pb.AllocateResponse:
        ep = self.endpoints[resource]
        return ep.stub.Allocate(pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]), timeout=5)

    def prestart(self, resource: str, ids: list[str]) -> pb.PreStartContainerResponse:
        return self.endpoints[resource].stub.PreStartContainer(
            pb.PreStartContainerRequest(devices_ids=ids), timeout=5)

    def preferred(self, resource: str, available: list[str], must: list[str],
                  size: int) -> list[str]:
        resp = self.endpoints[resource].stub.GetPreferredAllocation(pb.PreferredAllocationRequest(
            container_requests=[pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must,
                allocation_size=size)]), timeout=5)
        return list(resp.container_responses[0].deviceIDs)
