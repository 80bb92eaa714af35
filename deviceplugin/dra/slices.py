"""A node's GPUs as DRA ResourceSlices (resource.k8s.io/v1, Kubernetes 1.35).  Pure.

The model is NVIDIA's DRA driver's partitionable devices (kubernetes-sigs/
dra-driver-nvidia-gpu), on this project's MIG catalog (:mod:`conspirator.mig`):

* every healthy MIG-enabled GPU has one *counter set*, ``gpu-<index>-counters``: one
  counter of value 1 per memory slice (``memory-slice-0`` .. ``memory-slice-7``), the GPU's
  compute slices (``compute-slices``), its memory in bytes (``memory``) and its one set of
  media engines (``media-engines``: only one ``+me`` instance fits on a GPU);
* every possible placement (profile, start slice) of the GPU's model is one device,
  ``gpu-<index>-mig-<profile>-<start>`` (``1g.10gb+me`` at 3 is ``gpu-0-mig-1g-10gb-me-3``),
  which consumes the memory slices it covers, its compute slices and memory (memory slices
  times the GPU's memory per slice, so that every valid layout fits the ``memory``
  counter), and the media engines for ``+me`` profiles and the full profile;
* the whole GPU is one device, ``gpu-<index>``, which consumes every counter of its set, so
  the scheduler never hands out a GPU and one of its slices at once.  A GPU without MIG
  (not capable, or switched off) is only its whole device, consuming nothing.

The scheduler then allocates placements whose counters add up, i.e. exactly the layouts
MIG accepts (overlap, compute and the one-``+me`` rule; per-profile maxima follow from the
starts).  Unhealthy GPUs are left out.

Kubernetes 1.35 (``DRAPartitionableDevices``, alpha) wants the counter sets in slices of
their own (``spec.sharedCounters`` and ``spec.devices`` are exclusive), at most
:data:`MAX_COUNTER_SETS` sets per slice, and at most :data:`MAX_DEVICES_CONSUMING` devices
per slice once any consumes counters; :func:`build_slices` splits the pool accordingly, and
:func:`validate_slice` checks a slice against those limits (the API server's
``validateResourceSliceSpec``).

Device attributes: ``type`` (``mig`` or ``gpu``), ``uuid``, ``parentUUID``, ``productName``
(the catalog model), ``profile`` (``whole`` for a GPU), ``start``, ``node``, ``index`` (the
GPU's), ``migEnabled``, ``reservation``; capacity ``memory`` (bytes) and ``computeSlices``.

Reservations (the GPUNode spec's ``reservedFor``, as in device-plugin mode): a device
reserved for a job carries ``reservation`` = :func:`conspirator.mig.reservation_tag` of the
job, which the operator's claim templates select on (:func:`conspirator.mig.dra_selector`);
every other device carries ``reservation`` = ``""`` (always present: a CEL selector that
reads a missing attribute fails at run time).  On a GPU that holds a reservation only the
reserved devices are published: its free room is the plan's, not anybody's.  A placement's
MIG instance may not exist yet (it is created at NodePrepareResources), so its ``uuid`` is
a deterministic placeholder, a UUID-5 of the GPU UUID, profile and start, not the MIG
device UUID; the real one reaches the container through the CDI spec's environment.
"""

from __future__ import annotations

import hashlib
import re
import uuid as uuidlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conspirator.deviceplugin.backend import GpuInfo
from conspirator.mig import DRA_DRIVER, WHOLE, GpuModel, MigProfile, reservation_tag

DRIVER = DRA_DRIVER
API_VERSION = "resource.k8s.io/v1"
KIND = "ResourceSlice"
NODE_LABEL = "conspirator.io/node"
"""Label on every slice this driver publishes: the node's name (hashed when too long)."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "conspirator-node-daemon"

# The API server's limits (k8s.io/api resource/v1 types.go, 1.35).
MAX_DEVICES = 128
MAX_DEVICES_CONSUMING = 64
"""ResourceSliceMaxDevicesWithTaintsOrConsumesCounters."""
MAX_COUNTER_SETS = 8
MAX_COUNTERS_PER_SET = 32
MAX_CONSUMPTIONS_PER_DEVICE = 2
MAX_COUNTERS_PER_CONSUMPTION = 32
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_ATTRIBUTE_VALUE = 64
MAX_ID_LENGTH = 32
"""Longest attribute or capacity name (a C identifier)."""
MAX_NAME = 253

COMPUTE_COUNTER = "compute-slices"
MEMORY_COUNTER = "memory"
MEDIA_COUNTER = "media-engines"

_PLACEHOLDER_NS = uuidlib.UUID("3b0d3c52-5e0e-4a44-9a2b-7c1f5a6d2e41")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SliceError(ValueError):
    """A slice the API server would refuse."""


def slice_counter(i: int) -> str:
    return f"memory-slice-{i}"


def counter_set_name(gpu_index: int) -> str:
    return f"gpu-{gpu_index}-counters"


def device_name(gpu_index: int, profile: str | None = None, start: int = 0) -> str:
    """``gpu-0`` (a whole GPU) or ``gpu-0-mig-1g-10gb-3`` (``+me`` becomes ``-me``)."""
    if profile is None or profile == WHOLE:
        return f"gpu-{gpu_index}"
    slug = profile.replace("+", "-").replace(".", "-").lower()
    return f"gpu-{gpu_index}-mig-{slug}-{start}"


def placeholder_uuid(gpu_uuid: str, profile: str, start: int) -> str:
    """The ``uuid`` attribute of a placement whose instance may not exist yet."""
    return str(uuidlib.uuid5(_PLACEHOLDER_NS, f"{gpu_uuid}/{profile}@{start}"))


def is_dns_label(name: str) -> bool:
    return len(name) <= 63 and _DNS_LABEL.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class DevicePlacement:
    """What one published device stands for: a MIG placement, or a whole GPU."""

    name: str
    gpu_index: int
    gpu_uuid: str
    model: str
    profile: str
    """A MIG profile of the model, or :data:`conspirator.mig.WHOLE`."""
    start: int
    memory_slices: tuple[int, ...]
    """The memory slices it covers (every one of the GPU for a whole MIG GPU; none for a
    GPU without MIG)."""
    compute_slices: int
    memory_bytes: int
    media: bool
    """Takes the GPU's media engines (``+me``, the full profile, the whole GPU)."""

    @property
    def whole(self) -> bool:
        return self.profile == WHOLE


def _memory_bytes(gib: float) -> int:
    return round(gib * 2**30)


def _per_slice(model: GpuModel) -> int:
    return _memory_bytes(model.memory_gib) // model.memory_slices


def _placement(gpu: GpuInfo, prof: MigProfile, start: int) -> DevicePlacement:
    model = gpu.model
    return DevicePlacement(
        name=device_name(gpu.index, prof.name, start), gpu_index=gpu.index,
        gpu_uuid=gpu.uuid, model=model.name, profile=prof.name, start=start,
        memory_slices=tuple(range(start, start + prof.memory_slices)),
        compute_slices=prof.compute_slices, memory_bytes=_memory_bytes(prof.memory_gib),
        media=prof.media_extensions or prof == model.full_profile)


def _whole(gpu: GpuInfo) -> DevicePlacement:
    mig = gpu.mig_enabled and gpu.model.mig_capable
    model = gpu.model
    return DevicePlacement(
        name=device_name(gpu.index), gpu_index=gpu.index, gpu_uuid=gpu.uuid,
        model=model.name, profile=WHOLE, start=0,
        memory_slices=tuple(range(model.memory_slices)) if mig else (),
        compute_slices=model.compute, memory_bytes=_memory_bytes(gpu.memory_gib or
                                                                  model.memory_gib),
        media=True)


def gpu_devices(gpu: GpuInfo) -> list[DevicePlacement]:
    """Every device of one GPU: its placements (MIG on) and the whole GPU, by name order
    of the catalog (profiles as listed, starts ascending), the whole GPU last."""
    out: list[DevicePlacement] = []
    if gpu.mig_enabled and gpu.model.mig_capable:
        out = [_placement(gpu, p, s) for p in gpu.model.profiles for s in p.starts]
    out.append(_whole(gpu))
    return out


def device_table(gpus: Sequence[GpuInfo]) -> dict[str, DevicePlacement]:
    """Device name -> placement, for every GPU whatever its health (how a prepared
    device name is mapped back)."""
    return {d.name: d for gpu in gpus for d in gpu_devices(gpu)}


def _mig_on(gpu: GpuInfo) -> bool:
    return gpu.mig_enabled and gpu.model.mig_capable


def counter_set(gpu: GpuInfo) -> dict[str, Any]:
    """The shared counters of one MIG GPU."""
    model = gpu.model
    counters = {slice_counter(i): {"value": "1"} for i in range(model.memory_slices)}
    counters[COMPUTE_COUNTER] = {"value": str(model.compute_slices)}
    counters[MEMORY_COUNTER] = {"value": str(_per_slice(model) * model.memory_slices)}
    counters[MEDIA_COUNTER] = {"value": "1"}
    return {"name": counter_set_name(gpu.index), "counters": counters}


def consumption(gpu: GpuInfo, d: DevicePlacement) -> dict[str, Any]:
    """What a device of a MIG GPU takes from the GPU's counter set."""
    counters = {slice_counter(i): {"value": "1"} for i in d.memory_slices}
    counters[COMPUTE_COUNTER] = {"value": str(d.compute_slices)}
    counters[MEMORY_COUNTER] = {"value": str(_per_slice(gpu.model) * len(d.memory_slices))}
    if d.media:
        counters[MEDIA_COUNTER] = {"value": "1"}
    return {"counterSet": counter_set_name(gpu.index), "counters": counters}


def device_object(node: str, gpu: GpuInfo, d: DevicePlacement, reservation: str = ""
                  ) -> dict[str, Any]:
    """The ``spec.devices[]`` entry of one device (``reservation``: the tag, or "")."""
    mig_device = not d.whole
    attrs: dict[str, Any] = {
        "type": {"string": "mig" if mig_device else "gpu"},
        "uuid": {"string": placeholder_uuid(gpu.uuid, d.profile, d.start)
                 if mig_device else gpu.uuid},
        "parentUUID": {"string": gpu.uuid},
        "productName": {"string": d.model},
        "profile": {"string": d.profile},
        "start": {"int": d.start},
        "node": {"string": node},
        "index": {"int": gpu.index},
        "migEnabled": {"bool": _mig_on(gpu)},
        "reservation": {"string": reservation},
    }
    out: dict[str, Any] = {
        "name": d.name,
        "attributes": attrs,
        "capacity": {"memory": {"value": str(d.memory_bytes)},
                     "computeSlices": {"value": str(d.compute_slices)}},
    }
    if _mig_on(gpu):
        out["consumesCounters"] = [consumption(gpu, d)]
    return out


def slice_name(node: str, kind: str, i: int) -> str:
    """``<node>-conspirator.io-<kind>-<i>``; a node name too long for it is shortened and
    hashed, so the name stays a DNS subdomain of at most 253 characters."""
    suffix = f"-{DRIVER}-{kind}-{i}"
    if len(node) + len(suffix) <= MAX_NAME:
        return node + suffix
    digest = hashlib.sha256(node.encode()).hexdigest()[:10]
    keep = MAX_NAME - len(suffix) - len(digest) - 1
    return f"{node[:keep].rstrip('.-')}-{digest}{suffix}"


def node_label(node: str) -> str:
    """The :data:`NODE_LABEL` value: the node name, or a hash where it is over 63."""
    return node if len(node) <= 63 else hashlib.sha256(node.encode()).hexdigest()[:63]


def _slice(node: str, name: str, spec: dict[str, Any], generation: int, count: int
           ) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "labels": {NODE_LABEL: node_label(node),
                                              MANAGED_BY_LABEL: MANAGED_BY}},
        "spec": {"driver": DRIVER, "nodeName": node,
                 "pool": {"name": node, "generation": generation,
                          "resourceSliceCount": count},
                 **spec},
    }


def _published(gpu: GpuInfo, reservations: Mapping[tuple[int, str, int], str]
               ) -> list[tuple[DevicePlacement, str]]:
    """The devices of a GPU to publish, with their reservation tags."""
    reserved_gpu = any(k[0] == gpu.index for k in reservations)
    out = []
    for d in gpu_devices(gpu):
        owner = reservations.get((gpu.index, d.profile, d.start))
        if owner is None and reserved_gpu:
            continue
        out.append((d, reservation_tag(owner) if owner is not None else ""))
    return out


def build_slices(node: str, gpus: Sequence[GpuInfo], unhealthy: Collection[str] = (),
                 generation: int = 0,
                 reservations: Mapping[tuple[int, str, int], str] | None = None,
                 ) -> list[dict[str, Any]]:
    """The ResourceSlices of ``node``'s pool (named after the node).

    ``unhealthy``: UUIDs of GPUs to leave out.  ``reservations``: (GPU index, profile,
    start) -> owner (``namespace/name``), a whole GPU as (index, ``whole``, 0); the
    daemon's ``Reservations.instances`` and ``whole`` of the GPUNode spec.

    Counter-set slices come first (at most :data:`MAX_COUNTER_SETS` sets each), then
    device slices, each holding whole GPUs' devices up to the API's per-slice limit.  A
    node without healthy GPUs publishes one empty device slice, so that the pool says it
    has nothing (rather than vanishing).
    """
    healthy = [g for g in sorted(gpus, key=lambda g: g.index) if g.uuid not in unhealthy]
    sets = [counter_set(g) for g in healthy if _mig_on(g)]
    counter_specs = [{"sharedCounters": sets[i:i + MAX_COUNTER_SETS]}
                     for i in range(0, len(sets), MAX_COUNTER_SETS)]
    device_specs: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    consuming = False
    for gpu in healthy:
        devices = [device_object(node, gpu, d, tag)
                   for d, tag in _published(gpu, reservations or {})]
        if len(devices) > MAX_DEVICES_CONSUMING:  # no catalog model comes near (26 at most)
            raise SliceError(f"GPU {gpu.index} has {len(devices)} devices, more than "
                               f"one slice holds")
        with_gpu = consuming or _mig_on(gpu)
        if current and len(current) + len(devices) > (MAX_DEVICES_CONSUMING if with_gpu
                                                       else MAX_DEVICES):
            device_specs.append(current)
            current, with_gpu = [], _mig_on(gpu)
        current.extend(devices)
        consuming = with_gpu
    if current or not device_specs:
        device_specs.append(current)
    count = len(counter_specs) + len(device_specs)
    out = [_slice(node, slice_name(node, "counters", i), spec, generation, count)
           for i, spec in enumerate(counter_specs)]
    out += [_slice(node, slice_name(node, "devices", i), {"devices": devs}, generation, count)
            for i, devs in enumerate(device_specs)]
    return out


def _check_counters(where: str, counters: Mapping[str, Any], limit: int) -> None:
    if not counters:
        raise SliceError(f"{where}: no counters")
    if len(counters) > limit:
        raise SliceError(f"{where}: {len(counters)} counters, at most {limit}")
    for name in counters:
        if not is_dns_label(name):
            raise SliceError(f"{where}: counter {name!r} is not a DNS label")


def _check_device(where: str, dev: Mapping[str, Any]) -> None:
    name = dev.get("name", "")
    if not is_dns_label(name):
        raise SliceError(f"{where}: device name {name!r} is not a DNS label")
    attrs: Mapping[str, Any] = dev.get("attributes", {})
    caps: Mapping[str, Any] = dev.get("capacity", {})
    if len(attrs) + len(caps) > MAX_ATTRIBUTES_AND_CAPACITIES:
        raise SliceError(f"{where}: {len(attrs) + len(caps)} attributes and capacities")
    for key in [*attrs, *caps]:
        if len(key) > MAX_ID_LENGTH or _C_IDENT.fullmatch(key) is None:
            raise SliceError(f"{where}: attribute or capacity {key!r} is not a C identifier")
    for key, value in attrs.items():
        if len(value) != 1:
            raise SliceError(f"{where}: attribute {key} must set exactly one type")
        s = value.get("string")
        if isinstance(s, str) and len(s) > MAX_ATTRIBUTE_VALUE:
            raise SliceError(f"{where}: attribute {key} is over {MAX_ATTRIBUTE_VALUE}")
    uses = dev.get("consumesCounters", [])
    if len(uses) > MAX_CONSUMPTIONS_PER_DEVICE:
        raise SliceError(f"{where}: {len(uses)} counter consumptions")
    for use in uses:
        if not is_dns_label(use.get("counterSet", "")):
            raise SliceError(f"{where}: counter set {use.get('counterSet')!r}")
        _check_counters(where, use.get("counters", {}), MAX_COUNTERS_PER_CONSUMPTION)


def validate_slice(obj: Mapping[str, Any]) -> None:
    """Raise :class:`SliceError` where the API server's ResourceSlice validation (1.35)
    would refuse ``obj``: the limits of :mod:`this module <.slices>` and the name rules."""
    spec: Mapping[str, Any] = obj["spec"]
    name = obj["metadata"]["name"]
    if len(name) > MAX_NAME:
        raise SliceError(f"{name}: name over {MAX_NAME} characters")
    if "sharedCounters" in spec and "devices" in spec:
        raise SliceError(f"{name}: only one of sharedCounters and devices")
    pool = spec["pool"]
    if pool["resourceSliceCount"] <= 0 or pool["generation"] < 0:
        raise SliceError(f"{name}: pool generation/count out of range")
    sets = spec.get("sharedCounters", [])
    if len(sets) > MAX_COUNTER_SETS:
        raise SliceError(f"{name}: {len(sets)} counter sets, at most {MAX_COUNTER_SETS}")
    for cs in sets:
        if not is_dns_label(cs["name"]):
            raise SliceError(f"{name}: counter set name {cs['name']!r}")
        _check_counters(f"{name}/{cs['name']}", cs["counters"], MAX_COUNTERS_PER_SET)
    devices = spec.get("devices", [])
    consuming = any(d.get("consumesCounters") for d in devices)
    limit = MAX_DEVICES_CONSUMING if consuming else MAX_DEVICES
    if len(devices) > limit:
        raise SliceError(f"{name}: {len(devices)} devices, at most {limit}")
    names = [d["name"] for d in devices]
    if len(set(names)) != len(names):
        raise SliceError(f"{name}: duplicate device names")
    for d in devices:
        _check_device(f"{name}/{d.get('name')}", d)


def validate_pool(slices: Sequence[Mapping[str, Any]]) -> None:
    """Each slice valid, and across the pool: unique counter set and device names, one
    generation and a slice count equal to the number of slices, and every consumed counter
    defined in its set with enough of it for each device alone."""
    sets: dict[str, dict[str, int]] = {}
    names: set[str] = set()
    for s in slices:
        validate_slice(s)
        pool = s["spec"]["pool"]
        if pool["resourceSliceCount"] != len(slices):
            raise SliceError(f"{s['metadata']['name']}: resourceSliceCount is not "
                               f"{len(slices)}")
        for cs in s["spec"].get("sharedCounters", []):
            if cs["name"] in sets:
                raise SliceError(f"counter set {cs['name']} defined twice")
            sets[cs["name"]] = {k: int(v["value"]) for k, v in cs["counters"].items()}
    if len({s["spec"]["pool"]["generation"] for s in slices}) > 1:
        raise SliceError("the pool's slices disagree on its generation")
    for s in slices:
        for d in s["spec"].get("devices", []):
            if d["name"] in names:
                raise SliceError(f"device {d['name']} published twice")
            names.add(d["name"])
            for use in d.get("consumesCounters", []):
                have = sets.get(use["counterSet"])
                if have is None:
                    raise SliceError(f"{d['name']}: no counter set {use['counterSet']}")
                for k, v in use["counters"].items():
                    if k not in have or int(v["value"]) > have[k]:
                        raise SliceError(f"{d['name']}: counter {k} exceeds its set")


__all__ = [
    "API_VERSION",
    "DRIVER",
    "NODE_LABEL",
    "DevicePlacement",
    "SliceError",
    "build_slices",
    "counter_set",
    "counter_set_name",
    "device_name",
    "device_table",
    "gpu_devices",
    "placeholder_uuid",
    "slice_name",
    "validate_pool",
    "validate_slice",
]
