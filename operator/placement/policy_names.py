"""Policy names -> implementations, for the operator and the simulator."""

from __future__ import annotations

from collections.abc import Callable

from conspirator.operator.placement.baselines import BestFit, Gavel, NaiveSharing, WholeGpu
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.lpdive import LpDiveHeuristic
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.policy import PlacementPolicy
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


def mig_policy(name: str) -> PlacementPolicy:
    try:
        return MIG_POLICIES[name]()
    except KeyError:
        raise KeyError(
            f"unknown MIG-track policy {name!r}; known: {', '.join(MIG_POLICIES)}"
        ) from None
