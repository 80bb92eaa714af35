"""The MIG layout applier: reconcile ``GPUNode.spec`` to the GPUs with the fewest changes.

:func:`plan` compares the desired layout of each GPU the spec lists with the instances
the backend reports, and :class:`Applier` carries the plan out.  An instance is
identified by (profile, start slice): one that is already where the spec wants it is
never touched; every other existing instance is destroyed and every missing one
created, which is the smallest set of MIG operations that reaches the spec (MIG cannot
move or resize an instance).

Rules:

- An instance in use (a process holds it, or the daemon knows a live pod was given it)
  is never destroyed: the change is *blocked* and reported; creations that would overlap
  it are deferred.  Everything else proceeds, and a later pass finishes once the
  instance is free.
- The desired layout is checked against the GPU model's MIG rules first
  (:func:`conspirator.mig.check_layout`); an invalid layout, an unknown GPU index or a
  UUID that does not match changes nothing on that GPU.
- No state is kept between passes: each pass plans from what the GPUs report, so it is
  idempotent (a converged GPU yields an empty plan) and crash-safe (a daemon killed
  between any two operations, even between creating a GPU instance and its compute
  instance, leaves a state from which the next pass converges).
- GPUs the spec does not list are left alone.

Order on a GPU: destroy unwanted half-made GPU instances, destroy unwanted free
instances, switch MIG mode if asked, complete wanted half-made instances, create the
missing ones.  Destroying first frees the slices the new instances need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from conspirator.api.v1alpha1 import GPULayout, GPUNodeSpec
from conspirator.deviceplugin.backend import (
    BackendError,
    ErrorCode,
    GpuBackend,
    GpuInfo,
    GpuInstance,
)
from conspirator.mig import GpuModel, MigLayoutError, Placement, check_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Blocked:
    """A change that cannot be made now: an instance in use that the spec removes."""

    gpu_index: int
    profile: str
    start: int
    uuid: str | None
    reason: str

    def __str__(self) -> str:
        return f"GPU {self.gpu_index} {self.profile}@{self.start} ({self.uuid}): {self.reason}"


@dataclass
class GpuPlan:
    """What one GPU needs."""

    index: int
    desired: tuple[tuple[str, int], ...] = ()
    destroy_incomplete: list[GpuInstance] = field(default_factory=list)
    destroy: list[GpuInstance] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    set_mig: bool | None = None
    complete: list[GpuInstance] = field(default_factory=list)
    create: list[tuple[str, int]] = field(default_factory=list)
    deferred: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None
    error_reason: str = ""

    @property
    def operations(self) -> int:
        """Number of backend calls the plan makes (GI and CI separately)."""
        return (
            len(self.destroy_incomplete)
            + sum(2 for _ in self.destroy)
            + (1 if self.set_mig is not None else 0)
            + len(self.complete)
            + 2 * len(self.create)
        )

    @property
    def empty(self) -> bool:
        return self.operations == 0


def desired_layout(layout: GPULayout) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(((i.profile, i.start) for i in layout.instances), key=lambda x: x[1]))


def _placements(model: GpuModel, items: Iterable[tuple[str, int]]) -> list[Placement]:
    return [Placement(model.profile(p), s) for p, s in items]


def plan_gpu(
    layout: GPULayout,
    gpu: GpuInfo | None,
    actual: list[GpuInstance],
    in_use: Callable[[GpuInstance], bool],
) -> GpuPlan:
    """The plan for one GPU the spec lists."""
    want = desired_layout(layout)
    p = GpuPlan(index=layout.index, desired=want)
    if gpu is None:
        p.error, p.error_reason = f"the node has no GPU {layout.index}", "UnknownGPU"
        return p
    if layout.uuid is not None and layout.uuid != gpu.uuid:
        p.error = f"GPU {gpu.index} is {gpu.uuid}, the spec names {layout.uuid}"
        p.error_reason = "UUIDMismatch"
        return p
    model = gpu.model
    if not gpu.mig_capable:
        if want:
            p.error = f"GPU {gpu.index} ({model.name}) is not MIG-capable"
            p.error_reason = "InvalidLayout"
        return p  # a non-MIG GPU is used whole; nothing to apply
    if not layout.mig_enabled and want:
        p.error, p.error_reason = "instances require migEnabled: true", "InvalidLayout"
        return p
    try:
        check_layout(model, _placements(model, want))
    except (KeyError, MigLayoutError) as exc:
        p.error = f"GPU {gpu.index} ({model.name}): {exc.args[0] if exc.args else exc}"
        p.error_reason = "InvalidLayout"
        return p

    wanted = set(want)
    remaining: list[tuple[str, int]] = []  # what stays on the GPU (kept, blocked, completed)
    have: set[tuple[str, int]] = set()
    for inst in actual:
        key = (inst.profile, inst.start)
        if key in wanted:
            have.add(key)
            remaining.append(key)
            if not inst.complete:
                p.complete.append(inst)
        elif not inst.complete:
            p.destroy_incomplete.append(inst)  # no compute instance: nothing can use it
        elif in_use(inst):
            p.blocked.append(Blocked(gpu.index, inst.profile, inst.start, inst.uuid,
                                     "in use"))
            remaining.append(key)
        else:
            p.destroy.append(inst)

    if gpu.mig_enabled != layout.mig_enabled:
        if p.blocked:
            pass  # the mode change waits for the instances in use
        else:
            p.set_mig = layout.mig_enabled
    if not layout.mig_enabled:
        return p

    for key in want:
        if key in have:
            continue
        try:
            check_layout(model, _placements(model, [*remaining, key]))
        except MigLayoutError:
            p.deferred.append(key)
            continue
        p.create.append(key)
        remaining.append(key)
    return p


def plan(
    spec: GPUNodeSpec,
    gpus: list[GpuInfo],
    actual: dict[int, list[GpuInstance]],
    in_use: Callable[[GpuInstance], bool],
) -> list[GpuPlan]:
    """Plans for every GPU the spec lists (GPUs it does not list are left alone)."""
    by_index = {g.index: g for g in gpus}
    return [
        plan_gpu(layout, by_index.get(layout.index), actual.get(layout.index, []), in_use)
        for layout in sorted(spec.gpus, key=lambda g: g.index)
    ]


@dataclass
class ApplyResult:
    """The outcome of one pass."""

    plans: list[GpuPlan]
    done: list[str] = field(default_factory=list)
    """Operations carried out, e.g. ``create 1g.10gb@3 on GPU 0``."""
    blocked: list[Blocked] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(reason, message) of GPUs whose layout was refused."""
    mig_pending: list[int] = field(default_factory=list)
    """GPUs whose MIG mode change waits for a reset."""
    converged: bool = False
    duration: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.done)


InUse = Callable[[GpuInstance], bool]


def default_in_use(inst: GpuInstance) -> bool:
    return inst.in_use


class Applier:
    """Carries plans out on a backend; one pass per :meth:`apply` call."""

    def __init__(self, backend: GpuBackend, in_use: InUse | None = None) -> None:
        self.backend = backend
        self.in_use: InUse = in_use or default_in_use

    def snapshot(self) -> tuple[list[GpuInfo], dict[int, list[GpuInstance]]]:
        gpus = self.backend.gpus()
        return gpus, {g.index: self.backend.instances(g.index) for g in gpus}

    def plan(self, spec: GPUNodeSpec) -> list[GpuPlan]:
        gpus, actual = self.snapshot()
        return plan(spec, gpus, actual, self.in_use)

    def apply(self, spec: GPUNodeSpec) -> ApplyResult:
        t0 = time.monotonic()
        plans = self.plan(spec)
        result = ApplyResult(plans=plans)
        for p in plans:
            if p.error is not None:
                result.errors.append((p.error_reason, p.error))
                continue
            self._apply_gpu(p, result)
        # What the GPUs look like now decides convergence, not what we meant to do.
        after = self.plan(spec)
        result.converged = all(p.error is None and p.empty and not p.blocked
                               and not p.deferred for p in after)
        result.blocked = [b for p in after for b in p.blocked]
        result.duration = time.monotonic() - t0
        return result

    def _step(self, result: ApplyResult, what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except BackendError as exc:
            log.warning("%s failed: %s", what, exc)
            result.failures.append(f"{what}: {exc}")
            return False
        log.info("%s", what)
        result.done.append(what)
        return True

    def _apply_gpu(self, p: GpuPlan, result: ApplyResult) -> None:
        b = self.backend
        i = p.index
        for inst in p.destroy_incomplete:
            self._step(result, f"destroy half-made {inst.profile}@{inst.start} on GPU {i}",
                       partial(b.destroy_gpu_instance, i, inst.start))
        for inst in p.destroy:
            # Check again right before destroying: a container may have started since.
            fresh = next((x for x in b.instances(i) if x.start == inst.start), None)
            if fresh is None:
                continue
            if self.in_use(fresh):
                continue  # reported as blocked by the final plan
            self._step(result, f"destroy {inst.profile}@{inst.start} ({inst.uuid}) on GPU {i}",
                       partial(b.destroy_instance, i, inst.start))
        if p.set_mig is not None:
            mode = p.set_mig
            try:
                applied = b.set_mig_mode(i, mode)
            except BackendError as exc:
                result.failures.append(f"MIG mode {'on' if mode else 'off'} on GPU {i}: {exc}")
                return
            result.done.append(f"MIG mode {'on' if mode else 'off'} on GPU {i}")
            if not applied:
                result.mig_pending.append(i)
                return
        for inst in p.complete:
            self._step(result, f"complete {inst.profile}@{inst.start} on GPU {i}",
                       partial(b.create_compute_instance, i, inst.start))
        for profile, start in p.create:
            self._step(result, f"create {profile}@{start} on GPU {i}",
                       partial(b.create_instance, i, profile, start))


def in_use_from(devices: Callable[[], set[str]]) -> InUse:
    """An in-use test: the backend's own answer, or a device id the caller knows is held."""

    def check(inst: GpuInstance) -> bool:
        return inst.in_use or (inst.uuid is not None and inst.uuid in devices())

    return check


__all__ = [
    "Applier",
    "ApplyResult",
    "Blocked",
    "ErrorCode",
    "GpuPlan",
    "desired_layout",
    "in_use_from",
    "plan",
    "plan_gpu",
]
