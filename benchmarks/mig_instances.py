"""Seeded MIG-track instances: a heterogeneous cluster and a batch of inference jobs.

``make_instance(seed, n_jobs)`` returns an empty :class:`ClusterState` mixing
MIG-capable GPUs (A100-80GB, H100-80GB, H200-141GB) with non-MIG ones (T4,
A10, V100M32), and ``n_jobs`` jobs over the models of ``default_table()`` with
throughput demand, a p99 SLO, a memory need, a tenant, a share of dedicated
(isolated) jobs, occasional GPU-model restrictions and priorities, and a few
jobs no GPU can serve (they must come back unplaced with a reason).

Sizes are calibrated so that the exact MILP proves optimality within a minute:
the cluster has ``GPUS_PER_JOB`` GPUs per job (about a third more than the jobs
need), so the decisions are which GPU model and MIG profile each job gets and
how the profiles pack, with capacity binding for restricted or isolated jobs.
Measured (2 shared cores, ``MilpPolicy(60).place`` from empty, seeds 0-9):
every instance of 20, 50, 100, 150 and 200 jobs proven optimal, median 0.1 s
(20 jobs) to 0.7 s (200 jobs), slowest 18 s.  Tighter clusters
(``GPUS_PER_JOB = 0.3``) are harder: one 200-job seed in five hit the limit
with a 4% gap.
"""

from __future__ import annotations

import math
import random

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.gpus import GpuModel, gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.throughput import default_table

MIG_MODELS: tuple[tuple[str, float], ...] = (
    ("A100-80GB", 0.35),
    ("H100-80GB", 0.30),
    ("H200-141GB", 0.15),
)
NON_MIG_MODELS: tuple[tuple[str, float], ...] = (
    ("T4", 0.08),
    ("A10", 0.07),
    ("V100M32", 0.05),
)

# Memory of one replica (GiB): (low, high) per servable model.
MEMORY_GIB: dict[str, tuple[float, float]] = {
    "resnet18": (1.5, 4.0),
    "resnet50": (2.5, 8.0),
    "bert-base": (3.0, 12.0),
    "transformer": (5.0, 24.0),
    "lm": (8.0, 60.0),
    "recommendation": (6.0, 30.0),
}
SLO_MS: tuple[float, ...] = (10.0, 20.0, 25.0, 50.0, 100.0, 200.0)
ISOLATING_DEDICATED_SHARE = 0.5  # of the jobs of isolating tenants (~15% overall)
RESTRICTED_SHARE = 0.08
INFEASIBLE_SHARE = 0.02
GPUS_PER_JOB = 0.45  # cluster size relative to the number of jobs
GPUS_PER_NODE = (4, 8)


def _reference_rps(model: str) -> float:
    """Throughput of one 1g slice of an H100-80GB at batch 8 (the demand unit)."""
    table = default_table()
    for row in table:
        if row.model == model and row.gpu_model == "H100-80GB" and row.profile == "1g.10gb" \
                and row.batch == 8:
            return row.throughput_rps
    raise KeyError(model)


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    names = [n for n, _ in weighted]
    weights = [w for _, w in weighted]
    return rng.choices(names, weights=weights, k=1)[0]


def make_cluster(rng: random.Random, n_gpus: int) -> ClusterState:
    """Nodes of 4 or 8 GPUs of one model each until ``n_gpus`` GPUs exist."""
    nodes: list[tuple[str, GpuModel, int]] = []
    total = 0
    k = 0
    mig_seen: set[str] = set()
    while total < n_gpus or len(mig_seen) < len(MIG_MODELS):
        name = _pick(rng, MIG_MODELS + NON_MIG_MODELS)
        if total >= n_gpus:
            name = next(n for n, _ in MIG_MODELS if n not in mig_seen)
        if any(name == n for n, _ in MIG_MODELS):
            mig_seen.add(name)
        count = rng.choice(GPUS_PER_NODE)
        nodes.append((f"node-{k:03d}", gpu_model(name), count))
        total += count
        k += 1
    return ClusterState.from_nodes(nodes)


def make_jobs(rng: random.Random, n_jobs: int, gpu_models: list[str]) -> list[Job]:
    models = sorted(default_table().models)
    n_tenants = min(12, 2 + n_jobs // 20)
    tenants = [f"tenant-{k}" for k in range(n_tenants)]
    isolating = tenants[: max(1, min(3, n_tenants // 3))]  # tenants that ask for isolation
    jobs: list[Job] = []
    for k in range(n_jobs):
        model = rng.choice(models)
        lo, hi = MEMORY_GIB[model]
        memory = round(rng.uniform(lo, hi), 1)
        slo = rng.choice(SLO_MS)
        size = min(8.0, math.exp(rng.gauss(math.log(0.8), 1.0)))
        demand = round(max(1.0, size * _reference_rps(model)), 1)
        tenant = rng.choice(tenants)
        dedicated = tenant in isolating and rng.random() < ISOLATING_DEDICATED_SHARE
        allowed: frozenset[str] | None = None
        if rng.random() < RESTRICTED_SHARE:
            allowed = frozenset(rng.sample(gpu_models, rng.randint(1, min(3, len(gpu_models)))))
        priority = rng.choices((0, 1, 2), weights=(0.8, 0.15, 0.05), k=1)[0]
        if rng.random() < INFEASIBLE_SHARE:
            if rng.random() < 0.5:
                memory = 200.0  # more than any GPU
            else:
                slo = 0.2  # faster than any GPU
        jobs.append(Job(f"job-{k:04d}", model, demand, slo, memory, tenant=tenant,
                        dedicated_gpu=dedicated, allowed_gpus=allowed, priority=priority))
    return jobs


def make_instance(seed: int, n_jobs: int) -> tuple[ClusterState, list[Job]]:
    """A seeded MIG-track instance: an empty cluster and ``n_jobs`` jobs to place."""
    if n_jobs < 1:
        raise ValueError("n_jobs must be >= 1")
    rng = random.Random(f"mig-instance:{seed}:{n_jobs}")
    state = make_cluster(rng, max(4, math.ceil(GPUS_PER_JOB * n_jobs)))
    jobs = make_jobs(rng, n_jobs, sorted(state.models()))
    return state, jobs


__all__ = ["make_cluster", "make_instance", "make_jobs"]
