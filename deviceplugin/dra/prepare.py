"""NodePrepareResources and NodeUnprepareResources of the DRA driver, on a GpuBackend.

Prepare, per claim (the kubelet names it: namespace, name, UID):

1. a claim already prepared (the checkpoint has its UID) is answered from the checkpoint,
   with no side effect (only a CDI spec that vanished is written again);
2. otherwise the claim is read from the API server (:class:`~.claims.ClaimReader`) and its
   allocation results of driver ``conspirator.io`` are checked: the pool must be this
   node's, the device one this node publishes (:func:`~.slices.device_table`), its GPU
   healthy, and no other prepared claim may hold it or overlap it;
3. each MIG placement's instance is made to exist through the backend: an instance at
   exactly that (profile, start) is used (a GPU instance left without its compute
   instance is completed), a placement overlapping any other instance is refused, a
   missing one is created (GI, then CI).  Nothing is ever destroyed, so an instance in use
   is never touched; a whole GPU is given only while MIG is off or the GPU has no
   instance;
4. the claim's CDI spec is written (:mod:`.cdi`), the claim checkpointed, and the CDI ids
   returned.

Every refusal is the claim's error string (the kubelet retries the claim); other claims of
the same call are prepared regardless.  Devices created before a later one failed are
left: the retry finds and uses them.

Unprepare removes the claim's CDI spec and forgets it; the instances stay (the layout
applier owns their lifetime; :meth:`DraDriver.held` tells it which are in use).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from conspirator.deviceplugin.backend import BackendError, DeviceNode, GpuBackend, GpuInstance
from conspirator.deviceplugin.dra.cdi import (
    DEFAULT_CDI_DIR,
    cdi_device_id,
    claim_spec,
    remove_spec,
    spec_path,
    write_spec,
)
from conspirator.deviceplugin.dra.checkpoint import Checkpoint, PreparedClaim, PreparedDevice
from conspirator.deviceplugin.dra.claims import (
    AllocatedDevice,
    ClaimError,
    ClaimReader,
    ClaimRef,
    allocated_devices,
    consumer_pods,
)
from conspirator.deviceplugin.dra.slices import DRIVER, DevicePlacement, device_table
from conspirator.mig import resource_name

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path("/var/lib/kubelet/plugins/conspirator.io/checkpoint.json")


class ContainerEdits(Protocol):
    """What a container gets for a claim: the device plugin's ``ContainerAllocation``
    (:mod:`conspirator.deviceplugin.plugin`) has these attributes."""

    envs: dict[str, str]
    mounts: list[tuple[str, str, bool]]
    """(container path, host path, read-only)."""


EditsBuilder = Callable[[str, list[PreparedDevice]], ContainerEdits]
"""Builds a claim's environment and mounts from its resource name
(``conspirator.io/mig-<profile>``, or ``conspirator.io`` for mixed profiles) and devices;
the node daemon passes the function its device plugin's Allocate uses."""


@dataclass(frozen=True, slots=True)
class PrepareResult:
    """One claim's answer: its devices, or the error that refused it."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


def _mask(slices: Sequence[int]) -> int:
    m = 0
    for s in slices:
        m |= 1 << s
    return m


def _overlaps(p: DevicePlacement, q: DevicePlacement) -> bool:
    """Two devices of the same GPU that cannot both be given (a whole GPU overlaps every
    other device of its GPU; a device whose GPU changed, looked up as None, too)."""
    if p.gpu_index != q.gpu_index:
        return False
    return p.whole or q.whole or bool(_mask(p.memory_slices) & _mask(q.memory_slices))


def _instance_slices(backend_inst: GpuInstance, placement_of: Mapping[tuple[str, int],
                                                                        DevicePlacement]
                     ) -> tuple[int, ...]:
    p = placement_of.get((backend_inst.profile, backend_inst.start))
    return p.memory_slices if p is not None else ()


class DraDriver:
    """The prepared claims of one node, on its GPUs."""

    def __init__(self, node: str, backend: GpuBackend, claims: ClaimReader,
                 edits: EditsBuilder, checkpoint: Path = DEFAULT_CHECKPOINT,
                 cdi_dir: Path = DEFAULT_CDI_DIR,
                 unhealthy: Callable[[], Collection[str]] = lambda: ()) -> None:
        self.node = node
        self.backend = backend
        self.claims = claims
        self.edits = edits
        self.cdi_dir = cdi_dir
        self.unhealthy = unhealthy
        """UUIDs of the GPUs (or MIG devices) now unhealthy: not prepared."""
        self.checkpoint = Checkpoint(checkpoint)
        self._lock = threading.Lock()

    # ---- queries --------------------------------------------------------------------

    def prepared(self) -> dict[str, PreparedClaim]:
        with self._lock:
            return dict(self.checkpoint.claims)

    def held(self) -> dict[str, str]:
        """MIG device (or GPU) UUID -> UID of the prepared claim holding it: the daemon
        counts these as in use, so the layout applier never destroys them."""
        with self._lock:
            return {d.uuid: c.uid for c in self.checkpoint.claims.values() for d in c.devices}

    def devices_of_pod(self, pod_uid: str) -> list[str]:
        """The MIG device (or GPU) UUIDs of the prepared claims reserved for the pod: what
        its buffer registration carries, as the kubelet's PodResources API gives it in
        device-plugin mode."""
        with self._lock:
            return sorted(d.uuid for c in self.checkpoint.claims.values()
                          if pod_uid in c.consumers for d in c.devices)

    # ---- prepare --------------------------------------------------------------------

    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        """Prepare each claim; the answer by claim UID."""
        out: dict[str, PrepareResult] = {}
        with self._lock:
            for ref in refs:
                try:
                    out[ref.uid] = PrepareResult(devices=self._prepare(ref))
                except (ClaimError, BackendError) as exc:
                    log.warning("prepare %s: %s", ref, exc)
                    out[ref.uid] = PrepareResult(error=str(exc))
        return out

    def _prepare(self, ref: ClaimRef) -> tuple[PreparedDevice, ...]:
        done = self.checkpoint.claims.get(ref.uid)
        if done is not None:
            if not Path(done.cdi_spec).exists():
                self._write_cdi(ref.uid, list(done.devices))
            return done.devices
        claim = self.claims.get(ref.namespace, ref.name)
        if claim is None:
            raise ClaimError(f"claim {ref} not found")
        allocated = allocated_devices(claim, ref)
        plan = self._plan(ref, allocated)
        devices = [self._make(ref, a, p) for a, p in plan]
        path = self._write_cdi(ref.uid, devices)
        self.checkpoint.put(PreparedClaim(uid=ref.uid, namespace=ref.namespace,
                                          name=ref.name, devices=tuple(devices),
                                          cdi_spec=str(path),
                                          consumers=consumer_pods(claim)))
        log.info("prepared %s: %s", ref, ", ".join(d.device for d in devices) or "no devices")
        return tuple(devices)

    def _plan(self, ref: ClaimRef, allocated: Sequence[AllocatedDevice]
              ) -> list[tuple[AllocatedDevice, DevicePlacement]]:
        """Check every device of the claim before touching a GPU."""
        gpus = {g.index: g for g in self.backend.gpus()}
        table = device_table(list(gpus.values()))
        sick = set(self.unhealthy())
        taken = [(c.uid, d) for c in self.checkpoint.claims.values() for d in c.devices]
        plan: list[tuple[AllocatedDevice, DevicePlacement]] = []
        mine: list[DevicePlacement] = []
        for a in allocated:
            if a.pool != self.node:
                raise ClaimError(f"device {a.device} of claim {ref} is in pool {a.pool!r}, "
                                 f"not this node's ({self.node})")
            p = table.get(a.device)
            if p is None:
                raise ClaimError(f"claim {ref}: this node has no device {a.device!r}")
            gpu = gpus[p.gpu_index]
            if gpu.uuid in sick:
                raise ClaimError(f"claim {ref}: GPU {gpu.index} ({gpu.uuid}) is unhealthy")
            if not p.whole and not gpu.model.has_profile(p.profile):
                raise ClaimError(f"claim {ref}: {gpu.model.name} has no profile {p.profile}")
            for uid, other in taken:
                q = table.get(other.device)
                if other.gpu_index == p.gpu_index and (q is None or _overlaps(p, q)):
                    raise ClaimError(f"claim {ref}: device {a.device} overlaps {other.device}, "
                                     f"prepared for claim {uid}")
            for q in mine:
                if _overlaps(p, q):
                    raise ClaimError(f"claim {ref}: devices {q.name} and {p.name} overlap")
            self._check_instances(ref, p)
            mine.append(p)
            plan.append((a, p))
        return plan

    def _check_instances(self, ref: ClaimRef, p: DevicePlacement) -> None:
        gpu = next(g for g in self.backend.gpus() if g.index == p.gpu_index)
        if not gpu.mig_enabled:
            if not p.whole:
                raise ClaimError(f"claim {ref}: GPU {gpu.index} has MIG off")
            return
        existing = self.backend.instances(p.gpu_index)
        if p.whole:
            if existing:
                names = ", ".join(f"{i.profile}@{i.start}" for i in existing)
                raise ClaimError(f"claim {ref}: whole GPU {gpu.index} still holds MIG "
                                 f"instances ({names})")
            return
        by_shape = {(q.profile, q.start): q for q in device_table([gpu]).values()}
        for inst in existing:
            if (inst.profile, inst.start) == (p.profile, p.start):
                continue
            if _mask(_instance_slices(inst, by_shape)) & _mask(p.memory_slices) or \
                    inst.start == p.start:
                raise ClaimError(f"claim {ref}: {p.profile}@{p.start} on GPU {gpu.index} "
                                 f"overlaps its {inst.profile}@{inst.start} instance")

    def _make(self, ref: ClaimRef, a: AllocatedDevice, p: DevicePlacement) -> PreparedDevice:
        if p.whole:
            uuid = p.gpu_uuid
        else:
            inst = self.backend.create_instance(p.gpu_index, p.profile, p.start)
            if inst.uuid is None:  # pragma: no cover - create_instance completes it
                raise ClaimError(f"claim {ref}: {p.name} has no compute instance")
            if inst.uuid in set(self.unhealthy()):
                raise ClaimError(f"claim {ref}: MIG device {inst.uuid} is unhealthy")
            uuid = inst.uuid
        return PreparedDevice(request=a.request, pool=a.pool, device=a.device,
                              gpu_index=p.gpu_index, gpu_uuid=p.gpu_uuid, profile=p.profile,
                              start=p.start, uuid=uuid, cdi_id=cdi_device_id(ref.uid, a.device),
                              share_id=a.share_id)

    def _write_cdi(self, uid: str, devices: list[PreparedDevice]) -> Path:
        profiles = sorted({d.profile for d in devices})
        resource = resource_name(profiles[0]) if len(profiles) == 1 else DRIVER
        edits = self.edits(resource, devices)
        nodes: dict[str, tuple[str, list[DeviceNode]]] = {
            d.device: (d.uuid, self.backend.device_nodes([d.uuid])) for d in devices}
        return write_spec(self.cdi_dir, uid, claim_spec(uid, edits.envs, edits.mounts, nodes))

    # ---- unprepare ------------------------------------------------------------------

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        """Unprepare each claim: its error by UID ("" when done; a claim never prepared,
        or unprepared before, is done)."""
        out: dict[str, str] = {}
        with self._lock:
            for ref in refs:
                try:
                    self._unprepare(ref)
                    out[ref.uid] = ""
                except OSError as exc:
                    log.warning("unprepare %s: %s", ref, exc)
                    out[ref.uid] = f"unprepare {ref}: {exc}"
        return out

    def _unprepare(self, ref: ClaimRef) -> None:
        claim = self.checkpoint.claims.get(ref.uid)
        remove_spec(Path(claim.cdi_spec) if claim is not None
                    else spec_path(self.cdi_dir, ref.uid))
        if claim is not None:
            self.checkpoint.remove(ref.uid)
            log.info("unprepared %s", ref)


__all__ = [
    "DEFAULT_CHECKPOINT",
    "ContainerEdits",
    "DraDriver",
    "EditsBuilder",
    "PrepareResult",
]
