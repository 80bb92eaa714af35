"""MIG facts shared by every component: GPU models, MIG profiles, placements, layout rules.

This module is the core's copy of the GPU/MIG catalog, so that processes that must not
import the operator (the node daemon, DESIGN section 2) check layouts by the same rules
the placement engine plans with.  The facts come from the NVIDIA MIG user guide as
collected in ``data/mig_profiles.json`` (identical to ``shared/data/mig/profiles.json``
and to the placement engine's copy; a test keeps all three identical).

A placement ``start:size`` occupies memory slices ``[start, start + size)``; layouts are
handled as bit masks over memory slices.  :func:`check_layout` raises
:class:`MigLayoutError` with a :class:`LayoutFault` saying which of NVML's refusals the
layout would meet: an invalid placement (``NVML_ERROR_INVALID_ARGUMENT``: the profile
does not exist on the model or cannot start there) or a lack of room
(``NVML_ERROR_INSUFFICIENT_RESOURCES``: overlapping slices, compute slices or a
per-profile maximum exhausted).

The names and semantics match ``conspirator.operator.placement.gpus`` (which may import
this module instead of its own copy).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

WHOLE = "whole"
"""Profile name of a non-MIG GPU used as one device."""

RESOURCE_PREFIX = "conspirator.io/mig-"
"""Extended-resource prefix of MIG devices: ``conspirator.io/mig-<profile>``."""


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU-instance profile of a MIG-capable GPU model."""

    name: str
    memory_slices: int
    compute_slices: int
    max_count: int
    starts: tuple[int, ...]
    memory_gib: float
    media_extensions: bool = False

    def mask(self, start: int) -> int:
        """Bit mask of the memory slices an instance placed at ``start`` occupies."""
        return ((1 << self.memory_slices) - 1) << start


@dataclass(frozen=True, slots=True)
class Placement:
    """A profile at a start slice: one concrete MIG instance position."""

    profile: MigProfile
    start: int

    @property
    def mask(self) -> int:
        return self.profile.mask(self.start)

    def __str__(self) -> str:
        return f"{self.profile.name}@{self.start}"


@dataclass(frozen=True, slots=True)
class GpuModel:
    """A GPU model: memory and, when MIG-capable, its profiles and placements."""

    name: str
    memory_gib: float
    memory_slices: int = 0
    compute_slices: int = 0
    profiles: tuple[MigProfile, ...] = ()
    placements: tuple[Placement, ...] = field(default=(), repr=False)

    @property
    def mig_capable(self) -> bool:
        return bool(self.profiles)

    def profile(self, name: str) -> MigProfile:
        for p in self.profiles:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.profiles) or "none (not MIG-capable)"
        raise KeyError(f"GPU model {self.name} has no MIG profile {name!r}; known: {known}")

    def has_profile(self, name: str) -> bool:
        return any(p.name == name for p in self.profiles)

    def profile_by_shape(
        self, compute_slices: int, memory_slices: int, media_extensions: bool = False
    ) -> MigProfile:
        """The profile with these slice counts (how NVML's profile info maps to a name)."""
        for p in self.profiles:
            if (p.compute_slices, p.memory_slices, p.media_extensions) == (
                compute_slices,
                memory_slices,
                media_extensions,
            ):
                return p
        raise KeyError(
            f"GPU model {self.name} has no profile with {compute_slices} compute and "
            f"{memory_slices} memory slices{' (+me)' if media_extensions else ''}"
        )

    @property
    def full_profile(self) -> MigProfile:
        """The profile that takes the whole GPU (7g on 8-slice GPUs, 4g on A30)."""
        return max(self.profiles, key=lambda p: (p.memory_slices, p.compute_slices))

    @property
    def planning_profiles(self) -> tuple[MigProfile, ...]:
        """Profiles the planner uses: the ``+me`` variants are left to explicit requests.

        A non-MIG GPU has one pseudo-profile, :data:`WHOLE`, taking the whole device.
        """
        if not self.mig_capable:
            return (self.whole,)
        return tuple(p for p in self.profiles if not p.media_extensions)

    @property
    def whole(self) -> MigProfile:
        """The pseudo-profile of a non-MIG GPU used as one device (one slot)."""
        return MigProfile(WHOLE, 1, 1, 1, (0,), self.memory_gib)

    @property
    def slots(self) -> int:
        """Memory slices, or 1 for a non-MIG GPU (one slot: the whole device)."""
        return self.memory_slices if self.mig_capable else 1

    @property
    def compute(self) -> int:
        """Compute slices, or 1 for a non-MIG GPU."""
        return self.compute_slices if self.mig_capable else 1


class LayoutFault(StrEnum):
    """Why MIG refuses a layout, as NVML would answer creating its last instance."""

    INVALID_PLACEMENT = "InvalidPlacement"
    """``NVML_ERROR_INVALID_ARGUMENT``: unknown profile, or a start it cannot take."""
    INSUFFICIENT_RESOURCES = "InsufficientResources"
    """``NVML_ERROR_INSUFFICIENT_RESOURCES``: the slices or engines are taken."""
    NOT_MIG_CAPABLE = "NotMigCapable"
    """``NVML_ERROR_NOT_SUPPORTED``: the GPU has no MIG."""


class MigLayoutError(ValueError):
    """A placement that MIG would refuse, with NVML's reason."""

    def __init__(self, reason: str, fault: LayoutFault = LayoutFault.INVALID_PLACEMENT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fault = fault

    def __str__(self) -> str:
        return self.reason


def check_placement(model: GpuModel, placement: Placement) -> None:
    """Raise :class:`MigLayoutError` unless ``placement`` exists on ``model`` at all."""
    if not model.mig_capable:
        raise MigLayoutError(f"{model.name} is not MIG-capable", LayoutFault.NOT_MIG_CAPABLE)
    prof = placement.profile
    if prof not in model.profiles:
        raise MigLayoutError(f"profile {prof.name} does not exist on {model.name}")
    if placement.start not in prof.starts:
        raise MigLayoutError(
            f"{prof.name} cannot start at slice {placement.start} on {model.name} "
            f"(valid starts: {list(prof.starts)})"
        )


def check_layout(model: GpuModel, placements: list[Placement] | tuple[Placement, ...]) -> None:
    """Raise :class:`MigLayoutError` unless ``placements`` is a valid layout on ``model``.

    The rules: each profile belongs to the model and starts at one of its start
    positions; instances never share a memory slice; the sum of compute slices
    stays within the GPU's; no profile exceeds its per-GPU maximum (this is what
    limits ``+me`` variants to one).  Placements are checked in order, so the error
    names the first one that does not fit next to those before it.
    """
    if not model.mig_capable:
        raise MigLayoutError(f"{model.name} is not MIG-capable", LayoutFault.NOT_MIG_CAPABLE)
    used = 0
    compute = 0
    counts: dict[str, int] = {}
    room = LayoutFault.INSUFFICIENT_RESOURCES
    for pl in placements:
        check_placement(model, pl)
        prof = pl.profile
        if used & pl.mask:
            raise MigLayoutError(f"{pl} overlaps another instance on {model.name}", room)
        used |= pl.mask
        compute += prof.compute_slices
        counts[prof.name] = counts.get(prof.name, 0) + 1
        if counts[prof.name] > prof.max_count:
            raise MigLayoutError(
                f"at most {prof.max_count} instance(s) of {prof.name} fit on {model.name}", room
            )
        if compute > model.compute_slices:
            raise MigLayoutError(
                f"layout needs {compute} compute slices; {model.name} has "
                f"{model.compute_slices}",
                room,
            )
        # One +me instance of any kind per GPU (one set of media engines).
        if sum(n for name, n in counts.items() if name.endswith("+me")) > 1:
            raise MigLayoutError(f"at most one +me instance fits on {model.name}", room)


def is_valid_layout(model: GpuModel, placements: list[Placement] | tuple[Placement, ...]) -> bool:
    try:
        check_layout(model, placements)
    except MigLayoutError:
        return False
    return True


# Non-MIG GPUs: memory in GiB.  G1/G2/G3 are Alibaba's internal codes; the
# trace does not say their memory, so the defaults are declared here.
NON_MIG_MEMORY_GIB: dict[str, float] = {
    "T4": 16.0,
    "P100": 16.0,
    "V100M16": 16.0,
    "V100M32": 32.0,
    "A10": 24.0,
    "L4": 24.0,
    "K80": 12.0,
    "G1": 16.0,
    "G2": 32.0,
    "G3": 32.0,
}


def load_profiles_json() -> dict[str, Any]:
    """The raw MIG facts (``data/mig_profiles.json``)."""
    raw: dict[str, Any] = json.loads(
        resources.files("conspirator").joinpath("data/mig_profiles.json").read_text()
    )
    return raw


def _load_mig_models() -> dict[str, GpuModel]:
    models: dict[str, GpuModel] = {}
    for name, g in load_profiles_json()["gpus"].items():
        total = float(g["total_memory_gib"])
        slices = int(g["memory_slices"])
        profs = tuple(
            MigProfile(
                name=p["profile"],
                memory_slices=int(p["memory_slices"]),
                compute_slices=int(p["compute_slices"]),
                max_count=int(p["max_count"]),
                starts=tuple(int(s) for s in p["start_positions"]),
                memory_gib=float(p.get("usable_memory_gib", total * p["memory_slices"] / slices)),
                media_extensions=p["profile"].endswith("+me"),
            )
            for p in g["profiles"]
        )
        placements = tuple(Placement(p, s) for p in profs for s in p.starts)
        models[name] = GpuModel(
            name=name,
            memory_gib=total,
            memory_slices=slices,
            compute_slices=int(g["compute_slices"]),
            profiles=profs,
            placements=placements,
        )
    return models


@cache
def catalog() -> dict[str, GpuModel]:
    """Every GPU model known, by name."""
    models = _load_mig_models()
    for name, mem in NON_MIG_MEMORY_GIB.items():
        models[name] = GpuModel(name=name, memory_gib=mem)
    return models


# Short names used by traces and users for the MIG models.
ALIASES: dict[str, str] = {"A30": "A30-24GB", "H200": "H200-141GB", "A100": "A100-80GB"}


def gpu_model(name: str, memory_gib: float | None = None) -> GpuModel:
    """Look up a GPU model by name; ``memory_gib`` declares the size of a non-MIG model.

    Raises ``KeyError`` with the list of known models for an unknown name.
    """
    models = catalog()
    key = ALIASES.get(name, name)
    if key not in models:
        raise KeyError(f"unknown GPU model {name!r}; known: {', '.join(sorted(models))}")
    model = models[key]
    if memory_gib is not None and not model.mig_capable and memory_gib != model.memory_gib:
        return GpuModel(name=model.name, memory_gib=memory_gib)
    return model


_NVML_NAME_RULES: tuple[tuple[str, str, float | None, str], ...] = (
    # (regex on the NVML product name, catalog model, memory threshold GiB, model above it)
    (r"\bA100\b", "A100-40GB", 60.0, "A100-80GB"),
    (r"\bH100\b", "H100-80GB", 88.0, "H100-94GB"),
    (r"\bH200\b", "H200-141GB", None, ""),
    (r"\bA30\b", "A30-24GB", None, ""),
    (r"\bV100\b", "V100M16", 24.0, "V100M32"),
    (r"\bT4\b", "T4", None, ""),
    (r"\bP100\b", "P100", None, ""),
    (r"\bA10\b", "A10", None, ""),
    (r"\bL4\b", "L4", None, ""),
)


def model_from_nvml(product_name: str, memory_bytes: int) -> str:
    """The catalog model of a GPU as NVML names it (e.g. ``NVIDIA A100-SXM4-80GB``).

    NVML reports a product name and the total memory; the catalog distinguishes memory
    variants (A100 40/80 GB, H100 80/94 GB, V100 16/32 GB).  Raises ``KeyError`` for a
    product the catalog does not know.
    """
    gib = memory_bytes / 2**30
    name = product_name.replace("-", " ")
    for pattern, model, threshold, bigger in _NVML_NAME_RULES:
        if re.search(pattern, name):
            return bigger if threshold is not None and gib > threshold else model
    raise KeyError(f"GPU {product_name!r} ({gib:.0f} GiB) is not in the catalog")


RESERVATION_TAG_LEN = 10
"""Hex digits of a reservation's tag in its resource name (40 bits: no two jobs of one
node collide in practice; the name stays within Kubernetes' 63 characters)."""

_RESERVED = re.compile(rf"(?P<profile>.+)-r(?P<tag>[0-9a-f]{{{RESERVATION_TAG_LEN}}})")


def resource_name(profile: str) -> str:
    """The extended resource of a MIG profile: ``conspirator.io/mig-1g.10gb``.

    Kubernetes resource names allow no ``+``; ``1g.10gb+me`` becomes ``mig-1g.10gb.me``.
    """
    return RESOURCE_PREFIX + profile.replace("+", ".")


def reservation_tag(owner: str) -> str:
    """The short, stable tag of a reservation owner (a job's ``namespace/name``)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:RESERVATION_TAG_LEN]


def reserved_resource_name(profile: str, owner: str) -> str:
    """The extended resource of the instances of ``profile`` reserved for ``owner``:
    ``conspirator.io/mig-1g.10gb-r<tag>``.

    In device-plugin mode the node daemon advertises a reserved instance only under its
    owner's resource and the owner's workers request only that one, so the kubelet cannot
    hand a pod an instance the plan reserved for another job, whatever order it admits
    pods in.
    """
    return f"{resource_name(profile)}-r{reservation_tag(owner)}"


DRA_DRIVER = "conspirator.io"
"""The DRA driver's name: ResourceSlices, claims' allocation results, CDI kind prefix."""
DRA_DEVICE_CLASS = "mig.conspirator.io"
"""The DeviceClass of the driver's devices (the chart installs it)."""


def dra_selector(profile: str, owner: str) -> str:
    """The CEL selector of a worker's ResourceClaimTemplate: the driver's devices of
    ``profile`` that the node daemon publishes as reserved for ``owner`` (device attribute
    ``reservation`` = :func:`reservation_tag`), so the scheduler allocates a worker only an
    instance the plan reserved for its job."""
    a = f'device.attributes["{DRA_DRIVER}"]'
    return (f'device.driver == "{DRA_DRIVER}" && {a}.profile == "{profile}" && '
            f'{a}.reservation == "{reservation_tag(owner)}"')


def profile_of_resource(resource: str) -> str:
    """Inverse of :func:`resource_name` (and the profile of a
    :func:`reserved_resource_name`)."""
    if not resource.startswith(RESOURCE_PREFIX):
        raise ValueError(f"{resource!r} is not a {RESOURCE_PREFIX}<profile> resource")
    name = resource[len(RESOURCE_PREFIX) :]
    if (m := _RESERVED.fullmatch(name)) is not None:
        name = m["profile"]
    return name[: -len(".me")] + "+me" if name.endswith(".me") else name


def is_reserved_resource(resource: str) -> bool:
    """``resource`` is a :func:`reserved_resource_name`."""
    return resource.startswith(RESOURCE_PREFIX) and \
        _RESERVED.fullmatch(resource[len(RESOURCE_PREFIX):]) is not None


__all__ = [
    "ALIASES",
    "DRA_DEVICE_CLASS",
    "DRA_DRIVER",
    "NON_MIG_MEMORY_GIB",
    "RESERVATION_TAG_LEN",
    "RESOURCE_PREFIX",
    "WHOLE",
    "GpuModel",
    "LayoutFault",
    "MigLayoutError",
    "MigProfile",
    "Placement",
    "catalog",
    "check_layout",
    "check_placement",
    "dra_selector",
    "gpu_model",
    "is_reserved_resource",
    "is_valid_layout",
    "model_from_nvml",
    "profile_of_resource",
    "reservation_tag",
    "reserved_resource_name",
    "resource_name",
]
