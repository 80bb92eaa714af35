"""The node daemon's worker registry: the shared registry
(:mod:`conspirator.wire.workerregistry`, its publisher to the agent
:mod:`conspirator.wire.publishing`) with the node's identity policy, :class:`PodIdentity`.

Workers register their input buffers here (DESIGN section 4, step 5).  For every
registration the policy

1. finds out who is calling: the peer's PID from ``SO_PEERCRED`` (in the daemon's PID
   namespace: the DaemonSet runs with ``hostPID``), its pod from ``/proc/<pid>/cgroup``
   (the kubelet puts each pod under a cgroup named after the pod's UID), the pod from the
   API server;
2. refuses a buffer for a job the pod does not run: the job ``namespace/name`` the worker
   names must be the pod's namespace and the job the operator set on the pod (label
   ``conspirator.io/job`` or the ``CONSPIRATOR_JOB`` variable of its spec);
3. attaches the pod's identity and MIG devices to the publication.

The registry itself checks the descriptors, names the buffer and publishes it.  Besides
the worker's withdrawal and its connection closing, a buffer is withdrawn when its pod is
gone from the API server (:meth:`Registry.prune`, called by the daemon's reconcile pass).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conspirator.deviceplugin.kube import NodeAPI, PodInfo
from conspirator.deviceplugin.metrics import Metrics
from conspirator.wire.publishing import AgentPublisher
from conspirator.wire.registration import BufferSpec
from conspirator.wire.workerregistry import Caller, Refused, WorkerRegistry

log = logging.getLogger(__name__)

JOB_LABEL = "conspirator.io/job"
JOB_ENV = "CONSPIRATOR_JOB"
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def pod_uid_of_cgroup(text: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` file (cgroup v1 or v2; cgroupfs or systemd
    drivers: ``.../pod<uid>/<container>`` or ``...-pod<uid_with_underscores>.slice``)."""
    for line in text.splitlines():
        m = _POD_UID.search(line.rsplit(":", 1)[-1])
        if m:
            return m.group(1).replace("_", "-")
    return None


def pod_uid_of_pid(pid: int, proc: Path = Path("/proc")) -> str | None:
    try:
        return pod_uid_of_cgroup((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return None


Identify = Callable[[int], str | None]
"""PID -> pod UID."""
Resolve = Callable[[str], PodInfo | None]
"""Pod UID -> the pod (from the API server)."""
DevicesOf = Callable[[PodInfo], list[str]]
"""A pod -> the MIG devices the kubelet gave it."""


@dataclass(frozen=True)
class PodCaller(Caller):
    """A worker in a pod."""

    pod: PodInfo | None = None
    devices: tuple[str, ...] = ()


class PodIdentity:
    """A worker is the pod its PID's cgroup names, and registers only for that pod's job."""

    def __init__(self, node: str, resolve: Resolve, identify: Identify = pod_uid_of_pid,
                 devices_of: DevicesOf | None = None) -> None:
        self.node = node
        self.resolve = resolve
        self.identify_pid = identify
        self.devices_of = devices_of or (lambda pod: [])

    def identify(self, pid: int, spec: BufferSpec) -> PodCaller:
        uid = self.identify_pid(pid)
        if uid is None:
            raise Refused(f"process {pid} is not in a pod")
        pod = self.resolve(uid)
        if pod is None:
            raise Refused(f"pod {uid} of process {pid} is not known on node {self.node}")
        if not pod.alive or pod.deleting:
            raise Refused(f"pod {pod.namespace}/{pod.name} is terminating")
        ns, _, job = spec.job.partition("/")
        jobs = {pod.labels.get(JOB_LABEL, "")} | set(pod.env.get(JOB_ENV, ()))
        if ns != pod.namespace or job not in jobs:
            raise Refused(f"pod {pod.namespace}/{pod.name} runs no worker of job {spec.job}")
        devices = tuple(self.devices_of(pod))
        extra = {"pod": f"{pod.namespace}/{pod.name}", "peer_pid": str(pid)}
        if devices:
            extra["devices"] = ",".join(devices)
        return PodCaller(pid, pod.uid, extra, f"pod {pod.namespace}/{pod.name}", pod, devices)


class Registry(WorkerRegistry):
    """The node's worker registry: pod identities, the node daemon's metrics."""

    def __init__(self, node: str, socket_path: Path, resolve: Resolve,
                 identify: Identify = pod_uid_of_pid,
                 devices_of: DevicesOf | None = None,
                 publisher: AgentPublisher | None = None,
                 metrics: Metrics | None = None) -> None:
        super().__init__(node, socket_path, PodIdentity(node, resolve, identify, devices_of),
                         publisher)
        self.metrics = metrics

    def registered(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.buffer_registrations.labels(self.node, result).inc()
        self.changed()

    def changed(self) -> None:
        if self.metrics is not None:
            self.metrics.buffers.labels(self.node).set(self.count())

    def prune(self, alive: set[str]) -> int:
        """Withdraw the buffers of pods that are gone, and close their connections."""
        return self.withdraw_callers(lambda c: c.pod_uid not in alive, "pod exited")


def make_registry(args: argparse.Namespace, cluster: NodeAPI, metrics: Metrics,
                  devices_of: DevicesOf | None = None
                  ) -> tuple[Registry, Callable[[], None]]:
    """The registry the ``node-daemon`` flags describe, and the function that serves it."""
    publisher = None
    if args.agent_socket and args.agent_token_file:
        token = Path(args.agent_token_file).read_text().strip()
        publisher = AgentPublisher(args.node_name, Path(args.agent_socket), token)

    def resolve(uid: str) -> PodInfo | None:
        return next((p for p in cluster.pods() if p.uid == uid), None)

    registry = Registry(args.node_name, Path(args.registry_socket), resolve,
                        devices_of=devices_of, publisher=publisher, metrics=metrics)
    registry.listen()
    return registry, registry.serve


__all__ = [
    "AgentPublisher",
    "PodCaller",
    "PodIdentity",
    "Registry",
    "make_registry",
    "pod_uid_of_cgroup",
    "pod_uid_of_pid",
]
