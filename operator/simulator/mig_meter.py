"""What a MIG-track run costs and how fair it is, integrated over time.

Per interval between events: US$ (each powered GPU at its model's and pool's price),
kWh (:meth:`PlanPolicy.watts`: idle power plus the slices in use) and, per tenant,
the demand served and its weighted fair share of what the cluster serves then, both in
GPU-equivalents (:mod:`~conspirator.operator.placement.fairshare`).  A tenant's ratio
is its served integral over its fair-share integral (capped at 1); the run reports the
lowest ratio and Jain's index over the ratios.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.fairshare import (
    EPS,
    jain,
    job_size,
    served_size,
    tenant_weights,
    waterfill,
)
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.plan_policy import PlanPolicy
from conspirator.operator.placement.throughput import ThroughputTable


class Meter:
    """Integrates cost, energy and tenants' served demand and fair shares."""

    def __init__(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
                 plan: PlanPolicy) -> None:
        self.plan = plan
        models = list(state.models().values())
        self.jobs = {j.id: j for j in jobs}
        self.sizes = {j.id: job_size(j, models, table) for j in jobs}
        self.weights = tenant_weights(jobs, self.sizes, plan.tenant_weights)
        self.cost_usd = 0.0
        self.energy_kwh = 0.0
        self.served: dict[str, float] = defaultdict(float)
        self.fair: dict[str, float] = defaultdict(float)

    def advance(self, state: ClusterState, active: Iterable[str], dt: float) -> None:
        if dt <= 0:
            return
        self.cost_usd += sum(self.plan.usd_per_hour(g) for g in state.gpus) * dt / 3600.0
        self.energy_kwh += sum(self.plan.watts(g) for g in state.gpus) * dt / 3.6e6
        demand: dict[str, float] = defaultdict(float)
        served: dict[str, float] = defaultdict(float)
        for jid in active:
            job = self.jobs[jid]
            demand[job.tenant] += self.sizes[jid]
            served[job.tenant] += served_size(state, job, self.sizes[jid])
        fair = waterfill(sum(served.values()), demand, self.weights)
        for t in demand:
            self.served[t] += served[t] * dt
            self.fair[t] += fair[t] * dt

    def ratios(self) -> dict[str, float]:
        return {t: min(1.0, self.served[t] / f) if f > EPS else 1.0
                for t, f in self.fair.items()}

    def fair_share_min(self) -> float:
        return min(self.ratios().values(), default=1.0)

    def jain(self) -> float:
        return jain(list(self.ratios().values()))
