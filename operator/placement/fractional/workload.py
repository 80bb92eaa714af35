"""FGD's *target workload*: the task types a cluster expects, with their popularity.

Fragmentation is measured against it (see :mod:`.frag`).  As in FGD's
simulator (``GetTypicalPods``), a task type is a pod's resource shape without
memory: CPU, number of GPUs, milli-GPU per GPU and allowed GPU models.  Types
are ranked by how many pods of the trace have them; the most popular ones are
kept until they cover ``popularity_threshold`` of the pods (95% in FGD's
experiments, CPU-only pods included), and their frequencies are renormalised
to sum to one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from conspirator.operator.placement.fractional.model import PodShape, PodSpec

DEFAULT_POPULARITY_THRESHOLD = 0.95


@dataclass(frozen=True, slots=True)
class TaskType:
    """One task type of the target workload and its popularity (0..1)."""

    cpu_milli: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: frozenset[str] | None
    popularity: float

    @property
    def shape(self) -> PodShape:
        return (self.cpu_milli, self.num_gpu, self.gpu_milli, self.gpu_spec)


@dataclass(frozen=True, slots=True)
class TargetWorkload:
    """Task types and their popularity; popularities sum to one."""

    tasks: tuple[TaskType, ...]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a target workload needs at least one task type")
        total = sum(t.popularity for t in self.tasks)
        if abs(total - 1.0) > 1e-6 or any(t.popularity < 0 for t in self.tasks):
            raise ValueError(f"task popularities must be >= 0 and sum to 1, got {total}")

    @property
    def has_model_constraints(self) -> bool:
        return any(t.gpu_spec is not None for t in self.tasks)


def _rank_key(item: tuple[PodShape, int]) -> tuple[int, int, int, int, str]:
    """Most popular first; ties in FGD's order (larger CPU, milli-GPU, count, spec first)."""
    (cpu, num, milli, spec), count = item
    spec_str = "|".join(sorted(spec)) if spec else ""
    return (count, cpu, milli, num, spec_str)


def build_target_workload(
    pods: Iterable[PodSpec],
    *,
    popularity_threshold: float = DEFAULT_POPULARITY_THRESHOLD,
    include_cpu_pods: bool = True,
) -> TargetWorkload:
    """The target workload of a pod list, as FGD's simulator derives it."""
    if not 0 < popularity_threshold <= 1:
        raise ValueError("popularity_threshold must be in (0, 1]")
    counts: Counter[PodShape] = Counter(p.shape for p in pods if include_cpu_pods or p.num_gpu > 0)
    if not counts:
        raise ValueError("no pods to derive a target workload from")
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=_rank_key, reverse=True)
    kept: list[tuple[PodShape, int]] = []
    covered = 0
    for shape, count in ranked:
        if covered >= popularity_threshold * total:
            break
        kept.append((shape, count))
        covered += count
    return TargetWorkload(
        tuple(
            TaskType(cpu, num, milli, spec, count / covered)
            for (cpu, num, milli, spec), count in kept
        )
    )
