"""Weighted max-min fair shares of demand met per tenant, and Jain's index over them.

Demand is measured in *GPU-equivalents*: a job's rate divided by the best throughput
per share of a GPU any (GPU model, profile) of the cluster offers it
(:func:`job_size`), so tenants asking for different models compare on one scale.
The capacity a plan divides is what it serves in that unit; a tenant's weighted fair
share of it is the water-filling of :func:`waterfill` (each tenant gets capacity in
proportion to its weight, never more than it asks, and what a tenant does not need
goes to the others).  A tenant's weight is the policy's, or else the size-weighted
mean of its jobs' ``1 + priority``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.common import job_options
from conspirator.operator.placement.gpus import GpuModel
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.throughput import ThroughputTable

EPS = 1e-9


def job_size(job: Job, models: Iterable[GpuModel], table: ThroughputTable) -> float:
    """GPU-equivalents the job needs at its most efficient option (0: it has none)."""
    opts = job_options(job, models, table)
    if not opts:
        return 0.0
    return job.demand_rps / max(o.throughput / o.cost for o in opts)


def waterfill(capacity: float, demand: Mapping[str, float],
              weight: Mapping[str, float]) -> dict[str, float]:
    """Weighted max-min split of ``capacity`` among tenants asking ``demand``."""
    share = dict.fromkeys(demand, 0.0)
    left = max(0.0, capacity)
    open_ = {t for t, d in demand.items() if d > EPS}
    while left > EPS and open_:
        total_w = sum(weight[t] for t in open_)
        step = min((demand[t] - share[t]) / weight[t] for t in open_)
        step = min(step, left / total_w)
        for t in list(open_):
            share[t] += step * weight[t]
            if share[t] >= demand[t] - EPS:
                share[t] = demand[t]
                open_.discard(t)
        left = max(capacity, 0.0) - sum(share.values())
    return share


def jain(xs: Sequence[float]) -> float:
    """Jain's fairness index ``(sum x)^2 / (n sum x^2)``: 1 when all are equal."""
    if not xs:
        return 1.0
    sq = sum(x * x for x in xs)
    return (sum(xs) ** 2) / (len(xs) * sq) if sq > 0 else 1.0


def tenant_weights(jobs: Iterable[Job], sizes: Mapping[str, float],
                   declared: Mapping[str, float]) -> dict[str, float]:
    """Each tenant's weight: ``declared`` where given, else its jobs' mean ``1 + priority``
    weighted by size."""
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for j in jobs:
        s = max(sizes.get(j.id, 0.0), EPS)
        num[j.tenant] += s * j.weight
        den[j.tenant] += s
    return {t: declared.get(t, num[t] / den[t]) for t in num}


def served_size(state: ClusterState, job: Job, size: float) -> float:
    """The GPU-equivalents of ``job``'s demand that ``state`` serves."""
    return size * min(1.0, state.served_rps(job.id) / job.demand_rps)


class FairShares:
    """The tenants' demand, weights and (for a given capacity) fair shares of some jobs."""

    def __init__(self, jobs: Sequence[Job], models: Iterable[GpuModel],
                 table: ThroughputTable, declared: Mapping[str, float]) -> None:
        models = list(models)
        self.jobs = list(jobs)
        self.sizes = {j.id: job_size(j, models, table) for j in self.jobs}
        self.demand: dict[str, float] = defaultdict(float)
        for j in self.jobs:
            self.demand[j.tenant] += self.sizes[j.id]
        self.weights = tenant_weights(self.jobs, self.sizes, declared)

    def served(self, state: ClusterState) -> dict[str, float]:
        out = dict.fromkeys(self.demand, 0.0)
        for j in self.jobs:
            out[j.tenant] += served_size(state, j, self.sizes[j.id])
        return out

    def shares(self, capacity: float) -> dict[str, float]:
        return waterfill(capacity, self.demand, self.weights)

    def ratios(self, state: ClusterState) -> dict[str, float]:
        """Per tenant: served / weighted fair share of what ``state`` serves in all
        (capped at 1; a tenant with no share counts as 1)."""
        served = self.served(state)
        fair = self.shares(sum(served.values()))
        return {t: min(1.0, served[t] / fair[t]) if fair[t] > EPS else 1.0 for t in served}
