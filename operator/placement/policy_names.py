"""Policy names -> implementations, for the operator and the simulator."""

from __future__ import annotations

from collections.abc import Callable

from conspirator.operator.placement.baselines import BestFit, Gavel, NaiveSharing, WholeGpu
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.lpdive import LpDiveHeuristic
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.rules import RuledPolicy
from conspirator.operator.placement.submip import SubMipHeuristic

MIG_POLICIES: dict[str, Callable[[], PlacementPolicy]] = {
    "conspirator": ConspiratorPolicy,
    "greedy": GreedyHeuristic,
    "milp": MilpPolicy,
    "mixpack": MixPackHeuristic,
    "lpdive": LpDiveHeuristic,
    "submip": SubMipHeuristic,
    "whole-gpu": WholeGpu,
    "naive-sharing": NaiveSharing,
    "bestfit": BestFit,
    "gavel": Gavel,
}


PLAN_AWARE: dict[str, Callable[[PlanPolicy], PlacementPolicy]] = {
    "conspirator": lambda plan: ConspiratorPolicy(plan=plan),
    "greedy": lambda plan: GreedyHeuristic(plan=plan),
    "milp": lambda plan: MilpPolicy(plan=plan),
}
"""The policies that optimise a plan policy's objective (the others count GPUs)."""


def mig_policy(name: str, plan: PlanPolicy = DEFAULT_POLICY) -> PlacementPolicy:
    """The policy ``name`` under ``plan``: its objective where the policy optimises one
    (:data:`PLAN_AWARE`), its fairness and preemption rules around any policy."""
    if name not in MIG_POLICIES:
        raise KeyError(f"unknown MIG-track policy {name!r}; known: {', '.join(MIG_POLICIES)}")
    if plan.objective == "gpus" or name not in PLAN_AWARE:
        policy = MIG_POLICIES[name]()
    else:
        policy = PLAN_AWARE[name](plan)
    if plan.fairness or plan.preemption:
        return RuledPolicy(policy, plan)
    return policy
