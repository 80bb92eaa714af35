"""The paper's objective: GPUs used plus weighted unmet demand.

``e1 * sum_j Y_j + e2 * sum_i w_i * delta_i`` where ``Y_j`` marks a used GPU and
``delta_i`` a job whose demand is not met (``w_i = 1 + priority``).  With the
default ``e2`` a job is only left unmet when it cannot be served at all or would
cost more than ``e2`` GPUs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy

E1_GPU = 1.0
E2_UNMET = 100.0
DEMAND_TOLERANCE = 1e-6  # relative: served >= demand * (1 - tol) counts as met


@dataclass(frozen=True, slots=True)
class Score:
    gpus_used: int
    unmet_jobs: int
    unmet_weight: float
    value: float


def demand_met(served: float, demand: float) -> bool:
    return served >= demand * (1.0 - DEMAND_TOLERANCE)


def plan_cost(state: ClusterState, policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """What ``policy``'s objective charges for the GPUs and instances in use (gpus: the
    count of GPUs used)."""
    if policy.objective == "gpus":
        return float(state.gpus_used())
    scale = policy.scale(state.gpus)
    total = 0.0
    for g in state.gpus:
        if g.instances:
            total += policy.gpu_cost(g.model, g.spot, scale)
            total += sum(policy.instance_cost(g.model, i.profile, scale)
                         for i in g.instances if not i.time_share)
    return total


def score(state: ClusterState, jobs: Iterable[Job], e1: float = E1_GPU,
          e2: float = E2_UNMET, policy: PlanPolicy = DEFAULT_POLICY) -> Score:
    """The objective of the plan in ``state`` (``policy``: what a GPU costs; default one)."""
    used = state.gpus_used()
    unmet = [j for j in jobs if not demand_met(state.served_rps(j.id), j.demand_rps)]
    w = sum(j.weight for j in unmet)
    return Score(used, len(unmet), w, e1 * plan_cost(state, policy) + e2 * w)
