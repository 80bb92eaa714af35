"""CDI on the real node: containerd 2.x injects a CDI device's container edits.

A CDI spec in ``/var/run/cdi`` (kind ``conspirator.io/test``) describes two devices whose only
edit is an environment variable.  A tiny device plugin of this test (resource
``conspirator.io/cdi-test``, one device) answers the kubelet's Allocate with one device by
name in ``ContainerAllocateResponse.cdi_devices`` (the CRI ``CDIDevices`` field, how DRA drivers
and device plugins hand devices over) and the other in a ``cdi.k8s.io/...`` container
annotation (the older route).  The container's environment, read from ``/proc/<pid>/environ``
of its process, must hold both variables.  Pod annotations do not reach the runtime's container
config, so the annotation has to come from Allocate as well.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conspirator_e2e.cluster import HELLO_IMAGE, LocalCluster
from conspirator_e2e.datapath import kubelet_plugin_dir
from conspirator_e2e.testing import as_dict, pod_phase_in, wait_until
from kubernetes import client

from conspirator.deviceplugin.v1beta1 import api_pb2 as pb
from conspirator.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc

CDI_DIR = Path("/var/run/cdi")
KIND = "conspirator.io/test"
RESOURCE = "conspirator.io/cdi-test"


class CDIPlugin(pb_grpc.DevicePluginServicer):
    """One device; Allocate hands out CDI devices and nothing else."""

    def __init__(self, socket_path: Path, cdi_field: str, cdi_annotation: str) -> None:
        self.socket_path = socket_path
        self.cdi_field = cdi_field
        self.cdi_annotation = cdi_annotation
        self.allocated: list[list[str]] = []
        self._stop = threading.Event()
        self._server: grpc.Server | None = None

    def start(self, kubelet_socket: Path) -> None:
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_DevicePluginServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        with grpc.insecure_channel(f"unix://{kubelet_socket}") as channel:
            pb_grpc.RegistrationStub(channel).Register(pb.RegisterRequest(
                version="v1beta1", endpoint=self.socket_path.name, resource_name=RESOURCE,
                options=pb.DevicePluginOptions()), timeout=10)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(1).wait()
        self.socket_path.unlink(missing_ok=True)

    def GetDevicePluginOptions(self, request: pb.Empty, context: grpc.ServicerContext  # noqa: N802
                               ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions()

    def ListAndWatch(self, request: pb.Empty, context: grpc.ServicerContext  # noqa: N802
                     ) -> Iterator[pb.ListAndWatchResponse]:
        yield pb.ListAndWatchResponse(devices=[pb.Device(ID="dev0", health="Healthy")])
        while not self._stop.wait(0.5) and context.is_active():
            pass

    def GetPreferredAllocation(self, request: pb.PreferredAllocationRequest,  # noqa: N802
                               context: grpc.ServicerContext) -> pb.PreferredAllocationResponse:
        return pb.PreferredAllocationResponse()

    def PreStartContainer(self, request: pb.PreStartContainerRequest,  # noqa: N802
                          context: grpc.ServicerContext) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext  # noqa: N802
                 ) -> pb.AllocateResponse:
        self.allocated += [list(r.devices_ids) for r in request.container_requests]
        return pb.AllocateResponse(container_responses=[
            pb.ContainerAllocateResponse(
                cdi_devices=[pb.CDIDevice(name=self.cdi_field)],
                annotations={"cdi.k8s.io/conspirator-e2e": self.cdi_annotation},
            ) for _ in request.container_requests])


@pytest.fixture
def cdi_spec() -> Iterator[str]:
    """A CDI spec file with devices dev0 (FOO=bar) and dev1 (CDI_ROUTE=annotation)."""
    token = uuid.uuid4().hex[:8]
    spec = {
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "devices": [
            {"name": "dev0", "containerEdits": {"env": ["FOO=bar"]}},
            {"name": "dev1", "containerEdits": {"env": [f"CDI_ROUTE=annotation-{token}"]}},
        ],
    }
    CDI_DIR.mkdir(parents=True, exist_ok=True)
    path = CDI_DIR / f"conspirator-e2e-{token}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        yield token
    finally:
        path.unlink(missing_ok=True)


def container_environ(cluster: LocalCluster, container_id: str) -> dict[str, str]:
    """The environment of a container's main process, read on the host."""
    lines = cluster.ctr("tasks", "ls").stdout.splitlines()[1:]
    pids = {cols[0]: int(cols[1]) for cols in (ln.split() for ln in lines) if len(cols) >= 2}
    raw = Path(f"/proc/{pids[container_id]}/environ").read_bytes()
    return dict(kv.split("=", 1) for kv in raw.decode().split("\0") if "=" in kv)


def test_cdi_devices_reach_the_container(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str,
    cluster_info: dict[str, Any], cdi_spec: str,
) -> None:
    node = str(cluster_info["realNode"])
    sock = kubelet_plugin_dir(cluster_info) / "kubelet.sock"
    plugin = CDIPlugin(sock.parent / f"conspirator-cdi-test-{cdi_spec}.sock",
                       f"{KIND}=dev0", f"{KIND}=dev1")
    plugin.start(sock)
    try:
        wait_until(f"{RESOURCE} allocatable on {node}", lambda: (
            (as_dict(core.read_node(node))["status"]["allocatable"] or {}).get(RESOURCE) == "1"),
            60)
        core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name="cdi"),
            spec=client.V1PodSpec(
                restart_policy="Never",
                node_selector={"kubernetes.io/hostname": node},
                termination_grace_period_seconds=1,
                containers=[client.V1Container(
                    name="hello", image=HELLO_IMAGE, image_pull_policy="Never",
                    args=["--sleep", "300", "cdi"],
                    resources=client.V1ResourceRequirements(limits={RESOURCE: "1"}),
                )],
            ),
        ))
        t0 = time.monotonic()
        pod = as_dict(wait_until("the CDI pod Running",
                                 pod_phase_in(core, namespace, "cdi", {"Running", "Failed"}),
                                 90))
        assert pod["status"]["phase"] == "Running", pod["status"]
        print(f"[timing] CDI pod Running: {time.monotonic() - t0:.2f}s")
        assert plugin.allocated == [["dev0"]]
        cid = pod["status"]["container_statuses"][0]["container_id"].split("://", 1)[1]
        env = container_environ(cluster, cid)
        assert env.get("FOO") == "bar", env  # CRI CDIDevices field
        assert env.get("CDI_ROUTE") == f"annotation-{cdi_spec}", env  # cdi.k8s.io annotation
        core.delete_namespaced_pod("cdi", namespace, grace_period_seconds=0)
    finally:
        plugin.stop()
