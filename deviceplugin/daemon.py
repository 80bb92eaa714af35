"""The node daemon: GPUNode.spec in, MIG layout applied, devices advertised, status out.

One reconcile pass (:meth:`NodeDaemon.reconcile`), run whenever the GPUNode or a pod of
the node changes, when a GPU's health changes, and every ``resync`` seconds:

1. read this node's GPUNode (created when missing) and the pods bound to the node;
2. work out which MIG devices are held by live pods: in kubelet mode from the kubelet's
   PodResources API (:mod:`.holders`; its device-manager checkpoint where the API is not
   reachable) and the allocations of the last minute; in kwok mode, where no kubelet
   allocates, the daemon assigns devices to the pods bound to the node itself and
   records them in the pod annotation ``conspirator.io/mig-devices``, as the kubelet's
   device manager would;
3. apply the spec (:mod:`.applier`): never destroying a held device or one a process uses;
4. advertise the devices: to the kubelet through one device plugin per resource, or, in
   kwok mode, as the Node's capacity and allocatable;
5. write ``GPUNode.status`` (inventory, instances with ``inUse``, DPU, observedGeneration,
   conditions ``Ready``, ``LayoutApplied``, ``DPUReady``) when it changed, record Events
   for blocked, refused and failed changes, update the metrics, and withdraw the
   registered buffers of pods that are gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from conspirator.api.v1alpha1 import (
    ConditionStatus,
    DPUStatus,
    GPUNode,
    GPUNodeStatus,
    GPUStatus,
    MigInstanceStatus,
    set_condition,
)
from conspirator.deviceplugin.allocation import (
    AllocationConfig,
    ContainerAllocation,
    container_allocation,
)
from conspirator.deviceplugin.applier import Applier, ApplyResult
from conspirator.deviceplugin.backend import BackendError, GpuBackend, GpuInstance
from conspirator.deviceplugin.dramode import (
    DEVICE_PLUGIN,
    DRA,
    DraConfig,
    DraMode,
    choose,
    counters_kept,
    given_of,
)
from conspirator.deviceplugin.holders import (
    DeviceHolders,
    devices_of,
    holder_uids,
    kubelet_holders,
)
from conspirator.deviceplugin.kube import (
    DEVICES_ANNOTATION,
    NodeAPI,
    PodInfo,
)
from conspirator.deviceplugin.metrics import Metrics
from conspirator.deviceplugin.plugin import Device, PluginManager
from conspirator.deviceplugin.reservations import Reservations

log = logging.getLogger(__name__)

ALLOCATION_GRACE = 60.0
"""Seconds a device handed out by Allocate counts as held before the kubelet's checkpoint
(or a live pod) confirms it."""

# BlueField DPUs on the PCI bus: Mellanox vendor id, device ids of the DPU's NIC functions.
MELLANOX = "0x15b3"
BLUEFIELD = {"0xa2d2": "BlueField", "0xa2d6": "BlueField-2", "0xa2dc": "BlueField-3"}


class BufferRegistry(Protocol):
    """What the daemon needs of the buffer registry (:mod:`.registry`)."""

    def prune(self, alive: set[str]) -> int:
        """Withdraw the buffers of pods whose UID is not in ``alive``; how many went."""
        ...

    def agent_connected(self) -> bool: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def detect_dpu(sysfs: Path = Path("/sys/bus/pci/devices")) -> DPUStatus:
    """A BlueField DPU on this host's PCI bus, read from sysfs."""
    try:
        devices = sorted(sysfs.iterdir())
    except OSError:
        return DPUStatus(present=False)
    for dev in devices:
        try:
            vendor = (dev / "vendor").read_text().strip()
            device = (dev / "device").read_text().strip()
        except OSError:
            continue
        if vendor == MELLANOX and device in BLUEFIELD:
            return DPUStatus(present=True, model=BLUEFIELD[device])
    return DPUStatus(present=False)


@dataclass
class DaemonConfig:
    node: str
    kwok: bool = False
    plugin_dir: Path = Path("/var/lib/kubelet/device-plugins")
    registry_socket: Path | None = None
    container_socket_dir: str = "/run/conspirator"
    agent_endpoint: str | None = None
    dpu: DPUStatus = field(default_factory=DPUStatus)
    resync: float = 10.0
    pod_resources_socket: Path | None = None
    """The kubelet's PodResources API (the command's default: :data:`POD_RESOURCES_SOCKET`);
    None: read only the device manager's checkpoint."""


class NodeDaemon:
    """The node daemon's state and its reconcile pass."""

    def __init__(self, config: DaemonConfig, backend: GpuBackend, cluster: NodeAPI,
                 metrics: Metrics | None = None, registry: BufferRegistry | None = None,
                 holders: DeviceHolders | None = None, dra: DraMode | None = None) -> None:
        self.config = config
        self.dra = dra
        """DRA mode (:mod:`.dramode`): slices and claims instead of device plugins."""
        if dra is not None:
            dra.health_from(lambda: self.unhealthy)
        self.backend = backend
        self.cluster = cluster
        self.metrics = metrics or Metrics(config.node)
        self.registry = registry
        self.applier = Applier(backend, in_use=self.in_use)
        self.plugins: PluginManager | None = None
        if not config.kwok and dra is None:
            self.plugins = PluginManager(config.plugin_dir, self.allocate,
                                         on_allocate=self._allocated,
                                         on_register=self._registered)
        self.holders: DeviceHolders = holders or kubelet_holders(
            config.plugin_dir, config.pod_resources_socket)
        self.unhealthy: dict[str, str] = {}
        self.reservations = Reservations()
        """The reservations of the GPUNode spec the last pass read."""
        self._advertised_as: dict[str, str] = {}
        """MIG device UUID -> the resource it was last advertised under."""
        self.held: dict[str, str] = {}
        """Device id -> pod UID (or ``allocated``) of the devices live pods hold."""
        self._recent: dict[str, float] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reported: dict[str, object] = {}
        self._registration_failed: set[str] = set()
        self.last_result: ApplyResult | None = None
        self.last_status: GPUNodeStatus | None = None
        self.passes = 0
        self.notices: list[tuple[str, str, str]] = []
        """Events (type, reason, message) for the GPUNode, recorded on the next pass."""

    # ---- in use ---------------------------------------------------------------------

    def in_use(self, inst: GpuInstance) -> bool:
        if inst.in_use or inst.uuid is None:
            return inst.in_use
        return inst.uuid in self.held or (self.dra is not None and inst.uuid in self.dra.held())

    def _allocated(self, resource: str, ids: list[str]) -> None:
        with self._lock:
            now = time.monotonic()
            for i in ids:
                self._recent[i] = now
        self.metrics.allocations.labels(self.config.node, resource).inc()
        self.wake()

    def _registered(self, resource: str, ok: bool) -> None:
        self.metrics.plugin_registrations.labels(
            self.config.node, resource, "ok" if ok else "failed").inc()
        with self._lock:
            (self._registration_failed.discard if ok else self._registration_failed.add)(
                resource)

    def _held_kubelet(self, pods: list[PodInfo]) -> dict[str, str]:
        known = holder_uids(self.holders, pods)
        live = {p.uid for p in pods if p.alive}
        # A holder the pod list does not show yet (the watch lags the kubelet) still holds.
        held = {dev: uid for dev, uid in known.items() if uid in live or uid.startswith("pod:")}
        now = time.monotonic()
        with self._lock:
            for dev, t in list(self._recent.items()):
                if now - t > ALLOCATION_GRACE or dev in known:
                    # The checkpoint names its pod now: the pod's liveness decides.
                    del self._recent[dev]
                else:
                    held[dev] = "allocated"
        return held

    def _assign_kwok(self, pods: list[PodInfo], devices: dict[str, list[Device]]
                     ) -> dict[str, str]:
        """Give each pod bound to this (kwok) node the devices it asks for, as the kubelet's
        device manager would, and remember them on the pod."""
        held: dict[str, str] = {}
        live = [p for p in pods if p.alive]
        existing = {d.id for ds in devices.values() for d in ds}
        for p in live:
            for _res, ids in p.assigned().items():
                for i in ids:
                    if i in existing:
                        held[i] = p.uid
        for p in sorted(live, key=lambda p: (p.namespace, p.name)):
            have = p.assigned()
            changed = False
            for res, n in p.requests.items():
                mine = [i for i in have.get(res, []) if i in existing]
                free = [d.id for d in devices.get(res, []) if d.id not in held and d.healthy]
                while len(mine) < n and free:
                    dev = free.pop(0)
                    mine.append(dev)
                    held[dev] = p.uid
                    changed = True
                if len(mine) < n:
                    log.warning("pod %s/%s asks for %d %s; %d assignable", p.namespace,
                                p.name, n, res, len(mine))
                have[res] = mine
            if changed:
                try:
                    self.cluster.annotate_pod(p, DEVICES_ANNOTATION,
                                              json.dumps(have, sort_keys=True))
                except Exception as exc:
                    log.warning("cannot annotate pod %s/%s: %s", p.namespace, p.name, exc)
        return held

    # ---- devices --------------------------------------------------------------------

    def devices(self) -> dict[str, list[Device]]:
        """The devices to advertise, by resource (complete MIG instances; whole GPUs), each
        under the resource its reservation in the last GPUNode spec read gives it
        (:mod:`.reservations`)."""
        out: dict[str, list[Device]] = {}
        seen: dict[str, str] = {}
        for gpu in self.backend.gpus():
            sick_gpu = gpu.uuid in self.unhealthy
            if gpu.mig_enabled:
                for inst in self.backend.instances(gpu.index):
                    res = self.reservations.instance_resource(gpu.index, inst.profile,
                                                              inst.start)
                    if inst.uuid is None:
                        continue
                    # A device still held under its old owner's resource stays there until
                    # released: the kubelet counts allocations per resource, and would
                    # otherwise hand the device to the new owner's pod too.
                    was = self._advertised_as.get(inst.uuid)
                    if was is not None and was != res and self.in_use(inst):
                        res = was
                    if res is None:
                        continue
                    seen[inst.uuid] = res
                    out.setdefault(res, []).append(Device(
                        id=inst.uuid, healthy=not sick_gpu and inst.uuid not in self.unhealthy,
                        gpu_index=gpu.index, gpu_uuid=gpu.uuid, profile=inst.profile,
                        start=inst.start))
            else:
                out.setdefault(self.reservations.whole_resource(gpu.index), []).append(Device(
                    id=gpu.uuid, healthy=not sick_gpu, gpu_index=gpu.index, gpu_uuid=gpu.uuid,
                    profile="whole"))
        self._advertised_as = seen
        return out

    def allocate(self, resource: str, devices: list[Device]) -> ContainerAllocation:
        """What a container gets for its devices (:mod:`.allocation`, the same in DRA
        mode), with the backend's device files."""
        return container_allocation(
            AllocationConfig(self.config.node, self.config.registry_socket,
                             self.config.container_socket_dir),
            resource, given_of(devices), self.backend.device_nodes([d.id for d in devices]))

    # ---- the pass -------------------------------------------------------------------

    def reconcile(self) -> ApplyResult | None:
        self.passes += 1
        gpunode = self.cluster.read()
        while self.notices:  # the GPUNode exists now: its Events can name it
            self.cluster.event(*self.notices.pop(0))
        self.reservations = Reservations.of(gpunode.spec)
        gen = gpunode.metadata.generation
        pods = self.cluster.pods()
        backend_error: str | None = None
        result: ApplyResult | None = None
        try:
            if self.config.kwok:
                self.held = self._assign_kwok(pods, self.devices())
            else:
                self.held = self._held_kubelet(pods)
            result = self.applier.apply(gpunode.spec)
            devices = self.devices()
            if self.config.kwok:  # new devices may serve pods that were waiting for them
                self.held = self._assign_kwok(pods, devices)
            self._advertise(devices)
        except BackendError as exc:
            log.error("GPU backend: %s", exc)
            backend_error = str(exc)
            devices = {}
        if result is not None:
            self._record(result, gen)
        if self.registry is not None:
            gone = self.registry.prune({p.uid for p in pods if p.alive})
            if gone:
                log.info("withdrew %d buffer(s) of pods that exited", gone)
            self.metrics.buffers.labels(self.config.node).set(self.registry.count())
        status = self._status(gpunode, result, devices, backend_error)
        if self.last_status is None or status != self.last_status or \
                gpunode.status != status:
            self.cluster.write_status(status)
            self.last_status = status
        self.last_result = result
        return result

    def _advertise(self, devices: dict[str, list[Device]]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for res, ds in devices.items():
            healthy = sum(1 for d in ds if d.healthy)
            counts[(res, "healthy")] = healthy
            counts[(res, "unhealthy")] = len(ds) - healthy
        self.metrics.set_advertised(counts)
        if self.dra is not None:
            diff = self.dra.publish(self.reservations)
            if not diff.empty:
                log.info("ResourceSlices: %d created, %d updated, %d deleted",
                         len(diff.create), len(diff.update), len(diff.delete))
        elif self.plugins is not None:
            self.plugins.set_devices(devices)
        else:
            self.cluster.set_capacity({
                res: (len(ds), sum(1 for d in ds if d.healthy)) for res, ds in devices.items()})

    def _once(self, key: str, value: object) -> bool:
        """True the first time ``value`` is seen for ``key`` (to record an Event once)."""
        if self._reported.get(key) == value:
            return False
        self._reported[key] = value
        return True

    def _record(self, r: ApplyResult, gen: int | None) -> None:
        node = self.config.node
        m = self.metrics
        for op in r.done:
            m.operations.labels(node, op.split()[0] if not op.startswith("MIG mode")
                                else "mode").inc()
        if r.failures:
            m.operation_failures.labels(node).inc(len(r.failures))
        if r.changed:
            outcome = "converged" if r.converged else ("blocked" if r.blocked else "failed")
            m.reconfigurations.labels(node, outcome).inc()
            m.apply_duration.labels(node).observe(r.duration)
            self.cluster.event("Normal", "Reconfigured",
                               f"{len(r.done)} MIG operation(s) in {r.duration:.2f}s: "
                               + "; ".join(r.done))
        m.blocked_instances.labels(node).set(len(r.blocked))
        m.layout_converged.labels(node).set(1 if r.converged else 0)
        blocked = sorted(str(b) for b in r.blocked)
        prev = self._reported.get("blocked")
        if self._once("blocked", (gen, tuple(blocked))) and blocked:
            new = len(blocked) if not isinstance(prev, tuple) or prev[0] != gen else len(
                set(blocked) - set(prev[1]))
            m.blocked_changes.labels(node).inc(new)
            self.cluster.event("Warning", "LayoutBlocked",
                               "instances in use are not destroyed: " + "; ".join(blocked))
        errors = sorted(r.errors)
        if self._once("errors", (gen, tuple(errors))) and errors:
            self.cluster.event("Warning", errors[0][0], "; ".join(e[1] for e in errors))
        if r.failures:
            self.cluster.event("Warning", "ReconfigurationFailed", "; ".join(r.failures))

    def _status(self, gpunode: GPUNode, r: ApplyResult | None,
                devices: dict[str, list[Device]], backend_error: str | None) -> GPUNodeStatus:
        gen = gpunode.metadata.generation
        old = gpunode.status or GPUNodeStatus()
        gpus: list[GPUStatus] = []
        if backend_error is None:
            for g in self.backend.gpus():
                insts = self.backend.instances(g.index) if g.mig_enabled else []
                gpus.append(GPUStatus(
                    index=g.index, uuid=g.uuid, model=g.model.name, memoryGiB=g.memory_gib,
                    mig_capable=g.mig_capable, mig_enabled=g.mig_enabled,
                    instances=[MigInstanceStatus(
                        profile=i.profile, start=i.start, uuid=i.uuid, in_use=self.in_use(i),
                        resource=self.reservations.instance_resource(g.index, i.profile,
                                                                     i.start)
                        if i.uuid is not None else None)
                               for i in insts]))
        else:
            gpus = list(old.gpus)
        dpu = self.config.dpu.model_copy(update={"agent_endpoint": self.config.agent_endpoint})
        conditions = [c.model_copy() for c in old.conditions]
        T, F = ConditionStatus.TRUE, ConditionStatus.FALSE  # noqa: N806
        n_dev = sum(len(ds) for ds in devices.values())
        sick = sorted(d.id for ds in devices.values() for d in ds if not d.healthy)
        with self._lock:
            unregistered = sorted(self._registration_failed & set(devices))
        if backend_error is not None:
            set_condition(conditions, "Ready", F, "BackendError", backend_error[:1000],
                          observed_generation=gen)
        elif unregistered:
            set_condition(conditions, "Ready", F, "RegistrationFailed",
                          "the kubelet refused " + ", ".join(unregistered),
                          observed_generation=gen)
        else:
            msg = f"{n_dev} device(s) of {len(devices)} resource(s) advertised"
            msg += " to the Node's capacity (kwok)" if self.config.kwok else \
                " as ResourceSlices (DRA)" if self.dra is not None else " to the kubelet"
            if sick:
                msg += f"; unhealthy: {', '.join(sick)}"
            set_condition(conditions, "Ready", T, "DevicesAdvertised", msg,
                          observed_generation=gen)
        if r is not None:
            if r.errors:
                set_condition(conditions, "LayoutApplied", F, r.errors[0][0],
                              "; ".join(e[1] for e in r.errors)[:2000], observed_generation=gen)
            elif r.failures:
                set_condition(conditions, "LayoutApplied", F, "Failed",
                              "; ".join(r.failures)[:2000], observed_generation=gen)
            elif r.mig_pending:
                set_condition(conditions, "LayoutApplied", F, "MigModePending",
                              f"GPU(s) {r.mig_pending} need a reset to change MIG mode",
                              observed_generation=gen)
            elif r.blocked:
                set_condition(conditions, "LayoutApplied", F, "Blocked",
                              "in use: " + "; ".join(str(b) for b in r.blocked)[:2000],
                              observed_generation=gen)
            elif r.converged:
                set_condition(conditions, "LayoutApplied", T, "Applied",
                              "the GPUs match the spec", observed_generation=gen)
        if self.registry is not None and self.registry.agent_connected():
            set_condition(conditions, "DPUReady", T, "AgentConnected",
                          "the data-path agent accepted the buffer registry",
                          observed_generation=gen)
        elif not dpu.present and not self.config.agent_endpoint:
            set_condition(conditions, "DPUReady", F, "NoDPU",
                          "no DPU found and no agent endpoint configured",
                          observed_generation=gen)
        else:
            set_condition(conditions, "DPUReady", F, "AgentNotConnected",
                          "the data-path agent has not connected", observed_generation=gen)
        return GPUNodeStatus(
            gpus=gpus, gpu_count=len(gpus), dpu=dpu,
            allocation=DRA if self.dra is not None else DEVICE_PLUGIN,
            observed_generation=gen if r is not None else old.observed_generation,
            conditions=conditions)

    # ---- running --------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            try:
                events = self.backend.poll_health(1.0)
            except BackendError as exc:
                log.warning("health events: %s", exc)
                self._stop.wait(5.0)
                continue
            if not events:
                continue
            with self._lock:
                for ev in events:
                    if ev.healthy:
                        self.unhealthy.pop(ev.uuid, None)
                    else:
                        log.warning("device %s unhealthy: %s", ev.uuid, ev.reason)
                        self.unhealthy[ev.uuid] = ev.reason
            self.wake()

    def run(self, extra: list[Callable[[], None]] | None = None) -> None:
        """Serve until :meth:`stop`: watches, health events, plugins, periodic passes."""
        self.cluster.watch(self.wake, self._stop)
        threading.Thread(target=self._health_loop, name="health", daemon=True).start()
        if self.plugins is not None:
            self.plugins.start()
        if self.dra is not None:
            self.dra.start()
        for fn in extra or []:
            threading.Thread(target=fn, daemon=True).start()
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self.reconcile()
                except Exception:
                    log.exception("reconcile pass failed")
                    self._stop.wait(2.0)
                self._wake.wait(self.config.resync)
        finally:
            if self.plugins is not None:
                self.plugins.stop()
            if self.dra is not None:
                self.dra.stop()
            self.backend.close()


def make_backend(args: argparse.Namespace) -> tuple[GpuBackend, DPUStatus]:
    if args.backend == "simulated":
        from conspirator.deviceplugin.simulated import SimulatedBackend

        sim = SimulatedBackend.from_file(Path(args.spec_file),
                                         Path(args.state_file) if args.state_file else None)
        return sim, DPUStatus(present=sim.spec.dpu.present, model=sim.spec.dpu.model)
    from conspirator.deviceplugin.nvml import NvmlBackend

    return NvmlBackend(), detect_dpu()


def run_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from conspirator.deviceplugin.kube import KubeNodeAPI

    backend, dpu = make_backend(args)
    config = DaemonConfig(
        node=args.node_name, kwok=args.kwok, plugin_dir=Path(args.kubelet_socket_dir),
        registry_socket=Path(args.registry_socket) if args.registry_socket else None,
        container_socket_dir=args.container_socket_dir,
        agent_endpoint=args.dpu_agent_endpoint, dpu=dpu, resync=args.resync_seconds,
        pod_resources_socket=(Path(args.pod_resources_socket) if args.pod_resources_socket
                              else None))
    metrics = Metrics(args.node_name)
    cluster = KubeNodeAPI(args.node_name, args.kubeconfig)
    holders = kubelet_holders(config.plugin_dir, config.pod_resources_socket)
    dra: DraMode | None = None

    def pod_devices(pod: PodInfo) -> list[str]:
        """The devices a registering worker holds: its prepared claims' in DRA mode (the
        mode is settled before the registry serves), the kubelet's allocation otherwise."""
        if dra is not None:
            return dra.driver.devices_of_pod(pod.uid)
        return devices_of(holders, pod)

    registry: BufferRegistry | None = None
    extra: list[Callable[[], None]] = []
    if config.registry_socket is not None and not args.kwok:
        from conspirator.deviceplugin.podregistry import make_registry

        registry, serve = make_registry(args, cluster, metrics, pod_devices)
        extra.append(serve)
    if not args.kwok and choose(args.allocation, cluster.serves_resource_v1,
                                Path(args.plugins_registry_dir),
                                lambda: counters_kept(cluster.api, args.node_name, backend)
                                ) == DRA:
        from conspirator.deviceplugin.dra.kubeclient import KubeClaimReader, KubeSliceClient

        dra = DraMode(args.node_name, backend, KubeClaimReader(cluster.api),
                      KubeSliceClient(cluster.api, args.node_name),
                      AllocationConfig(config.node, config.registry_socket,
                                       config.container_socket_dir),
                      DraConfig(plugin_dir=Path(args.dra_plugin_dir),
                                registry_dir=Path(args.plugins_registry_dir),
                                cdi_dir=Path(args.cdi_dir)))
    fallback = None
    if dra is not None and args.allocation == "auto":
        fallback = dra.fall_back_unless_registered(args.dra_registration_timeout)
        dra = None if fallback else dra
    daemon = NodeDaemon(config, backend, cluster, metrics, registry, holders, dra)
    if fallback is not None:
        daemon.notices.append(("Warning", "DRANotRegistered", fallback))
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    log.info("node daemon for %s: backend %s, %s", args.node_name, backend.name,
             "kwok mode" if args.kwok else f"DRA driver at {args.dra_plugin_dir}"
             if dra is not None else f"kubelet at {config.plugin_dir}")
    try:
        daemon.run(extra)
    finally:
        if registry is not None:
            registry.close()
    return 0


__all__ = ["DaemonConfig", "NodeDaemon", "detect_dpu", "run_from_args"]
