"""Inference jobs as the placement engine sees them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Job:
    """An inference job: serve ``model`` at ``demand_rps`` with p99 under ``latency_slo_ms``.

    ``memory_gib`` is the GPU memory one replica needs.  ``dedicated_gpu`` asks that no
    other tenant share a physical GPU with any replica of this job.  ``allowed_gpus``
    limits the GPU models (``None``: any).  ``priority`` weighs unmet demand in the
    objective (higher is more important; weight ``1 + priority``).  ``spot_tolerant``
    lets the job run on spot GPUs, which the provider may take back at any time.
    """

    id: str
    model: str
    demand_rps: float
    latency_slo_ms: float
    memory_gib: float
    tenant: str = "default"
    dedicated_gpu: bool = False
    allowed_gpus: frozenset[str] | None = None
    priority: int = 0
    max_batch: int = 256
    spot_tolerant: bool = False

    def __post_init__(self) -> None:
        if self.demand_rps <= 0:
            raise ValueError(f"job {self.id}: demand_rps must be > 0, got {self.demand_rps}")
        if self.latency_slo_ms <= 0:
            raise ValueError(f"job {self.id}: latency_slo_ms must be > 0")
        if self.memory_gib <= 0:
            raise ValueError(f"job {self.id}: memory_gib must be > 0")
        if self.max_batch < 1:
            raise ValueError(f"job {self.id}: max_batch must be >= 1")

    @property
    def weight(self) -> float:
        return 1.0 + self.priority

    def allows(self, gpu_model: str) -> bool:
        return self.allowed_gpus is None or gpu_model in self.allowed_gpus
