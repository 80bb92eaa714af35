"""FGD's fragmentation measure (Weng et al., ATC'23, section 4).

For one task type ``t``, the idle GPU share of a node that ``t`` cannot use is

- all of it, if ``t`` needs no GPU (a CPU-only task cannot use GPUs), if the
  node's GPU model is not one ``t`` accepts, or if ``t`` does not fit on the
  node (not enough CPU, or fewer than ``t.num_gpu`` GPUs with ``t.gpu_milli``
  free);
- otherwise, the free share of the GPUs that individually have less than
  ``t.gpu_milli`` free (for a whole-GPU task: every partially used GPU).

The node's fragmentation is the popularity-weighted expectation of that
amount over the target workload; a cluster's is the sum over its nodes.
Memory plays no part, as in FGD's simulator.  FGD places a pod where the
increase of this measure is smallest.
"""

from __future__ import annotations

from bisect import bisect_right

from conspirator.operator.placement.fractional.model import GpuState
from conspirator.operator.placement.fractional.workload import TargetWorkload, TaskType


def task_fragment(model: str | None, cpu_left: int, gpus: GpuState, task: TaskType) -> int:
    """Milli-GPU idle on a node (free CPU ``cpu_left``, free GPU shares ``gpus``)
    that ``task`` cannot use."""
    idle = sum(gpus)
    if task.num_gpu == 0:
        return idle
    if task.gpu_spec is not None and model not in task.gpu_spec:
        return idle
    usable = sum(1 for g in gpus if g >= task.gpu_milli)
    if usable < task.num_gpu or cpu_left < task.cpu_milli:
        return idle
    return sum(g for g in gpus if g < task.gpu_milli)


def node_fragmentation(
    model: str | None, cpu_left: int, gpus: GpuState, workload: TargetWorkload
) -> float:
    """Expected milli-GPU of the node unusable by a task drawn from ``workload``."""
    return sum(t.popularity * task_fragment(model, cpu_left, gpus, t) for t in workload.tasks)


class FragMeasure:
    """Memoised :func:`node_fragmentation` for one target workload.

    The result depends on the free CPU only through which task types' CPU
    requests it covers, so the memo key uses that bucket instead of the exact
    value; the GPU model is part of the key only if some task type constrains it.
    """

    def __init__(self, workload: TargetWorkload) -> None:
        self.workload = workload
        self._cpu_only = sum(t.popularity for t in workload.tasks if t.num_gpu == 0)
        self._gpu_tasks = tuple(
            (t.cpu_milli, t.num_gpu, t.gpu_milli, t.gpu_spec, t.popularity)
            for t in workload.tasks
            if t.num_gpu > 0
        )
        self._cpu_steps = sorted({t[0] for t in self._gpu_tasks})
        self._by_model = workload.has_model_constraints
        self._memo: dict[tuple[str | None, int, GpuState], float] = {}

    def __len__(self) -> int:
        return len(self._memo)

    def frag(self, model: str | None, cpu_left: int, gpus: GpuState) -> float:
        """Fragmentation (milli-GPU) of a node in canonical state ``gpus``."""
        key = (model if self._by_model else None, bisect_right(self._cpu_steps, cpu_left), gpus)
        value = self._memo.get(key)
        if value is None:
            value = self._compute(model, cpu_left, gpus)
            self._memo[key] = value
        return value

    def _compute(self, model: str | None, cpu_left: int, gpus: GpuState) -> float:
        idle = sum(gpus)
        if idle == 0:
            return 0.0
        total = self._cpu_only * idle
        for cpu, num, milli, spec, p in self._gpu_tasks:
            if (spec is not None and model not in spec) or cpu_left < cpu:
                total += p * idle
                continue
            usable = 0
            partial = 0
            for g in gpus:
                if g >= milli:
                    usable += 1
                else:
                    partial += g
            total += p * (partial if usable >= num else idle)
        return total
