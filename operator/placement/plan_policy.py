"""What a plan optimises, as the engine sees a ``SchedulingPolicy``: objective, prices, power.

The paper's objective counts GPUs used (``objective="gpus"``, the default: every GPU
costs 1).  ``cost`` prices each GPU by its model and pool (on-demand or spot, US$ per
GPU-hour); ``energy`` charges each powered GPU its idle power plus, per compute
slice in use, its share of the dynamic power ``tdp - idle``.  Both are normalised by
the dearest GPU of the cluster, so one GPU still costs at most 1 next to the unmet
penalty ``E2`` (a job is left unmet only when it cannot be served at all, or would
cost more than ``E2`` of the dearest GPUs), and the paper objective is the special
case of all prices equal.

Spot GPUs (``GpuState.spot``) host only jobs marked ``spot_tolerant``.  ``fairness``
and ``preemption`` are applied by :mod:`~conspirator.operator.placement.fairshare`.
The default figures and their sources are in docs/scheduling-policy.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from conspirator.operator.placement.cluster import GpuState
from conspirator.operator.placement.gpus import GpuModel, MigProfile

Objective = Literal["gpus", "cost", "energy"]
OBJECTIVES: tuple[Objective, ...] = ("gpus", "cost", "energy")


@dataclass(frozen=True, slots=True)
class GpuPrice:
    """US$ per GPU-hour of one GPU model, on demand and on the spot market."""

    on_demand: float
    spot: float

    def __post_init__(self) -> None:
        if self.on_demand <= 0 or self.spot <= 0:
            raise ValueError("prices must be > 0")


@dataclass(frozen=True, slots=True)
class GpuPower:
    """Watts of one GPU model: powered but idle, and at full load (TDP).

    ``slice_w`` is the power of one compute slice in use; ``None`` derives it as
    ``(tdp - idle) / compute slices``.
    """

    idle_w: float
    tdp_w: float
    slice_w: float | None = None

    def __post_init__(self) -> None:
        if self.idle_w < 0 or self.tdp_w <= self.idle_w:
            raise ValueError("power needs 0 <= idle_w < tdp_w")
        if self.slice_w is not None and self.slice_w < 0:
            raise ValueError("slice_w must be >= 0")

    def per_slice(self, model: GpuModel) -> float:
        if self.slice_w is not None:
            return self.slice_w
        return (self.tdp_w - self.idle_w) / model.compute


# Per-GPU list prices (US$/h) and power (W); sources in docs/scheduling-policy.md.
DEFAULT_PRICES: Mapping[str, GpuPrice] = MappingProxyType({
    "H200-141GB": GpuPrice(10.60, 3.72),
    "H100-94GB": GpuPrice(9.80, 3.40),
    "H100-80GB": GpuPrice(12.29, 3.93),
    "A100-80GB": GpuPrice(5.12, 1.64),
    "A100-40GB": GpuPrice(4.10, 1.23),
    "A30-24GB": GpuPrice(1.30, 0.52),
    "A10": GpuPrice(1.01, 0.40),
    "L4": GpuPrice(0.81, 0.29),
    "T4": GpuPrice(0.53, 0.16),
    "V100M32": GpuPrice(3.91, 1.17),
    "V100M16": GpuPrice(3.06, 0.92),
    "P100": GpuPrice(1.46, 0.44),
    "K80": GpuPrice(0.90, 0.27),
})
DEFAULT_POWER: Mapping[str, GpuPower] = MappingProxyType({
    "H200-141GB": GpuPower(90.0, 700.0),
    "H100-94GB": GpuPower(60.0, 400.0),
    "H100-80GB": GpuPower(80.0, 700.0),
    "A100-80GB": GpuPower(55.0, 400.0),
    "A100-40GB": GpuPower(50.0, 400.0),
    "A30-24GB": GpuPower(30.0, 165.0),
    "A10": GpuPower(20.0, 150.0),
    "L4": GpuPower(16.0, 72.0),
    "T4": GpuPower(10.0, 70.0),
    "V100M32": GpuPower(40.0, 300.0),
    "V100M16": GpuPower(40.0, 300.0),
    "P100": GpuPower(30.0, 250.0),
    "K80": GpuPower(25.0, 300.0),
})
FALLBACK_PRICE = GpuPrice(1.0, 0.3)
FALLBACK_POWER = GpuPower(30.0, 250.0)


@dataclass(frozen=True, slots=True)
class PlanPolicy:
    """The objective and rules of a plan (a ``SchedulingPolicy``'s spec, engine side)."""

    objective: Objective = "gpus"
    prices: Mapping[str, GpuPrice] = field(default_factory=lambda: DEFAULT_PRICES)
    power: Mapping[str, GpuPower] = field(default_factory=lambda: DEFAULT_POWER)
    fairness: bool = False
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    preemption: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if any(w <= 0 for w in self.tenant_weights.values()):
            raise ValueError("tenant weights must be > 0")
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))
        object.__setattr__(self, "power", MappingProxyType(dict(self.power)))
        object.__setattr__(self, "tenant_weights", MappingProxyType(dict(self.tenant_weights)))

    @property
    def is_default(self) -> bool:
        """The paper's plan: count GPUs, no fairness rule, no preemption."""
        return self.objective == "gpus" and not self.fairness and not self.preemption

    # --- what GPUs cost in the real units (reports) -----------------------------------

    def price(self, model: GpuModel, spot: bool) -> float:
        p = self.prices.get(model.name, FALLBACK_PRICE)
        return p.spot if spot else p.on_demand

    def power_of(self, model: GpuModel) -> GpuPower:
        return self.power.get(model.name, FALLBACK_POWER)

    def usd_per_hour(self, gpu: GpuState) -> float:
        """What ``gpu`` costs while powered (it is charged whether or not it is full)."""
        return self.price(gpu.model, gpu.spot) if gpu.instances else 0.0

    def watts(self, gpu: GpuState) -> float:
        """Power of ``gpu``: 0 when it holds nothing (powered down), else idle plus the
        slices in use (a time-sliced GPU: its share of time in use)."""
        if not gpu.instances:
            return 0.0
        pw = self.power_of(gpu.model)
        if gpu.time_share_used:
            return pw.idle_w + (pw.tdp_w - pw.idle_w) * min(1.0, gpu.time_share_used)
        return pw.idle_w + pw.per_slice(gpu.model) * gpu.compute_used

    # --- what the objective charges (normalised) --------------------------------------

    def _raw_gpu(self, model: GpuModel, spot: bool) -> float:
        if self.objective == "cost":
            return self.price(model, spot)
        if self.objective == "energy":
            return self.power_of(model).idle_w
        return 1.0

    def _raw_full(self, model: GpuModel, spot: bool) -> float:
        if self.objective == "energy":
            return self.power_of(model).tdp_w
        return self._raw_gpu(model, spot)

    def scale(self, gpus: Iterable[GpuState]) -> float:
        """The normaliser: the dearest fully used GPU of the cluster costs 1."""
        return max((self._raw_full(g.model, g.spot) for g in gpus), default=1.0) or 1.0

    def gpu_cost(self, model: GpuModel, spot: bool, scale: float) -> float:
        """Objective charge of powering one GPU (gpus: 1)."""
        return self._raw_gpu(model, spot) / scale

    def instance_cost(self, model: GpuModel, profile: MigProfile, scale: float) -> float:
        """Objective charge of one instance of ``profile`` in use (energy only)."""
        if self.objective != "energy":
            return 0.0
        return self.power_of(model).per_slice(model) * profile.compute_slices / scale


DEFAULT_POLICY = PlanPolicy()
