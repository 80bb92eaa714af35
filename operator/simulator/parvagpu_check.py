"""An independent check of a segment plan against ParvaGPU's rules and MIG's.

It trusts nothing a planner says: the plan is read back from its deployment map
(:func:`~conspirator.operator.simulator.parvagpu_inputs.load_plan`, which looks every
segment up in the measured table again), then

* every segment serves a model of the SLO set and its measured batch latency is below
  ``0.9 * SLO / 2``;
* every model's segments sum to at least its request rate;
* every GPU's instances form a layout :func:`conspirator.mig.check_layout` accepts on
  an A100-80GB (real start slices, no shared memory slice, compute within 7 GPCs).

A GPU whose layout MIG would refuse as written is also tried with other start slices
for the same instances (:func:`relayout`): ParvaGPU's allocator tracks start slices
only, so its plans hold such GPUs, and ``repairable`` says whether each could be cut
validly with the instances it lists (the GPU count then stands).

A model is *met* when its rate is covered and every one of its segments is admissible.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from conspirator.mig import (
    GpuModel,
    MigLayoutError,
    MigProfile,
    Placement,
    check_layout,
    gpu_model,
    is_valid_layout,
)
from conspirator.operator.placement.segments import (
    A100_80GB,
    A100_80GB_PROFILES,
    Demand,
    PlacedSegment,
    SegmentPlan,
    admissible,
    latency_bound_ms,
)

RATE_TOLERANCE = 1e-6  # requests/s: float sums of the table's figures


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What the checker found: models met, GPUs used, and every violation in words."""

    gpus: int
    met: tuple[str, ...]
    total: int
    violations: tuple[str, ...]
    invalid_gpus: int = 0  # GPUs whose layout MIG refuses as written
    repairable: bool = True  # each of them has a valid layout of the same instances

    @property
    def valid(self) -> bool:
        """Every model met and every GPU's layout valid."""
        return not self.violations and len(self.met) == self.total


def check_plan(plan: SegmentPlan, demands: list[Demand]) -> CheckResult:
    by_model = {d.model: d for d in demands}
    violations: list[str] = []
    bad_models: set[str] = set()
    served: dict[str, float] = defaultdict(float)
    per_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in plan.segments:
        per_gpu[s.gpu].append(s)
        d = by_model.get(s.model)
        if d is None:
            violations.append(f"GPU {s.gpu}: {s.model} is not served in this SLO set")
            continue
        if not admissible(s.segment, d.slo_ms):
            bad_models.add(s.model)
            violations.append(
                f"GPU {s.gpu} slice {s.start}: {s.model} {s.segment.describe()} takes "
                f"{s.segment.batch_latency_ms:g} ms per batch, the bound is "
                f"{latency_bound_ms(d.slo_ms):g} ms")
        served[s.model] += s.segment.throughput_rps
    for d in demands:
        if served[d.model] + RATE_TOLERANCE < d.rate_rps:
            bad_models.add(d.model)
            violations.append(f"{d.model}: serves {served[d.model]:.1f} of {d.rate_rps:g} req/s")
    model = gpu_model(A100_80GB)
    invalid = 0
    repairable = True
    for g, segs in sorted(per_gpu.items()):
        profs = [model.profile(A100_80GB_PROFILES[s.segment.gpcs]) for s in segs]
        try:
            check_layout(model, [Placement(p, s.start) for p, s in zip(profs, segs,
                                                                        strict=True)])
        except MigLayoutError as exc:
            invalid += 1
            fix = relayout(model, profs)
            repairable = repairable and fix is not None
            violations.append(
                f"GPU {g}: invalid MIG layout "
                f"({' '.join(f'{s.segment.profile}@{s.start}' for s in segs)}): {exc}; "
                + (f"valid with the same instances as {' '.join(map(str, fix))}"
                   if fix is not None else "no valid layout of these instances exists"))
    met = tuple(d.model for d in demands if d.model not in bad_models)
    return CheckResult(len(per_gpu), met, len(demands), tuple(violations), invalid,
                       repairable)


def relayout(model: GpuModel, profiles: list[MigProfile]) -> tuple[Placement, ...] | None:
    """A valid layout of ``profiles`` on ``model`` (any start slices), or ``None``."""
    order = sorted(profiles, key=lambda p: (-p.memory_slices, -p.compute_slices, p.name))

    def rec(k: int, chosen: list[Placement]) -> tuple[Placement, ...] | None:
        if k == len(order):
            return tuple(chosen)
        p = order[k]
        prev = chosen[-1] if chosen and chosen[-1].profile == p else None
        for start in p.starts:
            if prev is not None and start <= prev.start:
                continue  # identical instances: one order of their starts only
            pl = Placement(p, start)
            if is_valid_layout(model, [*chosen, pl]):
                found = rec(k + 1, [*chosen, pl])
                if found is not None:
                    return found
        return None

    return rec(0, [])


__all__ = ["RATE_TOLERANCE", "CheckResult", "check_plan", "relayout"]
