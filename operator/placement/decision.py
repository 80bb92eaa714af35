"""What a placement policy returns: replicas placed, jobs left unplaced with a reason."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReplicaPlacement:
    """One replica of a job on one GPU instance."""

    job_id: str
    node: str
    gpu_uid: int
    gpu_uuid: str
    gpu_model: str
    profile: str
    start: int
    throughput_rps: float


@dataclass(frozen=True, slots=True)
class Unplaced:
    """A job (or the unmet part of its demand) that could not be placed, and why."""

    job_id: str
    reason: str
    unmet_rps: float


@dataclass(slots=True)
class Decision:
    """The outcome of one policy call."""

    policy: str
    placed: list[ReplicaPlacement] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    migrations: int = 0
    solve_seconds: float = 0.0
    objective: float | None = None
    mip_gap: float | None = None
    optimal: bool | None = None
    preempted: list[str] = field(default_factory=list)
    """Jobs that had replicas before and lost them to serve higher priorities or a fairer
    share (the fairness and preemption rules of a plan policy)."""

    def unplaced_ids(self) -> set[str]:
        return {u.job_id for u in self.unplaced}
