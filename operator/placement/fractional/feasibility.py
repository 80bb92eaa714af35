"""Why a pod fits nowhere: the reason a simulator records for a failed pod."""

from __future__ import annotations

from collections.abc import Callable

from conspirator.operator.placement.fractional.model import (
    FractionalCluster,
    Group,
    PodSpec,
    gpus_fit,
)


def unschedulable_reason(cluster: FractionalCluster, pod: PodSpec) -> str:
    """The first constraint that no node meets, checked in order: GPU model, CPU,
    memory, GPU shares; failing that, the fact that no node meets all at once."""
    groups = [g for g in cluster.iter_groups() if pod.accepts(g.model)]
    if not groups:
        allowed = "a GPU" if pod.gpu_spec is None else "GPU model " + "|".join(sorted(pod.gpu_spec))
        return f"no node with {allowed}"
    checks: list[tuple[str, Callable[[Group], bool]]] = [
        (f"{pod.cpu_milli} milli-CPU free", lambda g: g.cpu_left >= pod.cpu_milli),
        (f"{pod.memory_mib} MiB memory free", lambda g: g.mem_left >= pod.memory_mib),
    ]
    if pod.num_gpu > 0:
        checks.append(
            (
                f"{pod.num_gpu} GPU(s) with {pod.gpu_milli} milli-GPU free",
                lambda g: gpus_fit(g.gpus, pod.num_gpu, pod.gpu_milli),
            )
        )
    for label, ok in checks:
        if not any(ok(g) for g in groups):
            return f"no eligible node has {label}"
    return "no node has " + " and ".join(label for label, _ in checks) + " at once"
