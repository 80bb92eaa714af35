"""GPU models and their MIG geometry.

MIG facts (profiles, slice counts, start positions) come from the NVIDIA MIG
user guide as collected in ``data/mig_profiles.json`` (a copy of
``shared/data/mig/profiles.json``; a test keeps them identical).  Non-MIG GPUs
are whole devices of a declared memory size.

A placement ``start:size`` occupies memory slices ``[start, start + size)``.
Layouts are handled as bit masks over memory slices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

WHOLE = "whole"
"""Profile name of a non-MIG GPU used as one device."""


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
    """A GPU model: memory, relative speed and, when MIG-capable, its profiles."""

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


@dataclass(frozen=True, slots=True)
class MigLayoutError(ValueError):
    """A placement that MIG would refuse, with NVML's reason."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def check_layout(model: GpuModel, placements: list[Placement] | tuple[Placement, ...]) -> None:
    """Raise :class:`MigLayoutError` unless ``placements`` is a valid layout on ``model``.

    The rules: each profile belongs to the model and starts at one of its start
    positions; instances never share a memory slice; the sum of compute slices
    stays within the GPU's; no profile exceeds its per-GPU maximum (this is what
    limits ``+me`` variants to one).
    """
    if not model.mig_capable:
        raise MigLayoutError(f"{model.name} is not MIG-capable")
    used = 0
    compute = 0
    counts: dict[str, int] = {}
    for pl in placements:
        prof = pl.profile
        if prof not in model.profiles:
            raise MigLayoutError(f"profile {prof.name} does not exist on {model.name}")
        if pl.start not in prof.starts:
            raise MigLayoutError(
                f"{prof.name} cannot start at slice {pl.start} on {model.name} "
                f"(valid starts: {list(prof.starts)})"
            )
        if used & pl.mask:
            raise MigLayoutError(f"{pl} overlaps another instance on {model.name}")
        used |= pl.mask
        compute += prof.compute_slices
        counts[prof.name] = counts.get(prof.name, 0) + 1
        if counts[prof.name] > prof.max_count:
            raise MigLayoutError(
                f"at most {prof.max_count} instance(s) of {prof.name} fit on {model.name}"
            )
    if compute > model.compute_slices:
        raise MigLayoutError(
            f"layout needs {compute} compute slices; {model.name} has {model.compute_slices}"
        )
    # One +me instance of any kind per GPU (one set of media engines).
    if sum(n for name, n in counts.items() if name.endswith("+me")) > 1:
        raise MigLayoutError(f"at most one +me instance fits on {model.name}")


def is_valid_layout(model: GpuModel, placements: list[Placement] | tuple[Placement, ...]) -> bool:
    try:
        check_layout(model, placements)
    except MigLayoutError:
        return False
    return True


# Non-MIG GPUs: memory in GiB.  G1/G2/G3 are Alibaba's internal codes; the
# trace does not say their memory, so the defaults are declared here and can be
# overridden per node file (column ``gpu_memory_gib``).
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


def _load_mig_models() -> dict[str, GpuModel]:
    raw: dict[str, Any] = json.loads(
        resources.files(__package__).joinpath("data/mig_profiles.json").read_text()
    )
    models: dict[str, GpuModel] = {}
    for name, g in raw["gpus"].items():
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
    """Every GPU model the engine knows, by name."""
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
