"""Policies of the fractional-sharing track by name."""

from __future__ import annotations

import random

from conspirator.operator.placement.fractional.baselines import (
    BestFitPolicy,
    DotProductPolicy,
    FgdPolicy,
    GpuClusteringPolicy,
    GpuPackingPolicy,
    RandomPolicy,
)
from conspirator.operator.placement.fractional.conspirator import ConspiratorPolicy
from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.policies import FractionalPolicy, PolicyFactory

POLICIES: dict[str, PolicyFactory] = {
    "conspirator": ConspiratorPolicy,
    "fgd": FgdPolicy,
    "bestfit": BestFitPolicy,
    "random": RandomPolicy,
    "dotprod": DotProductPolicy,
    "gpupacking": GpuPackingPolicy,
    "gpuclustering": GpuClusteringPolicy,
}
"""Policy name -> constructor taking the fragmentation measure and a random generator."""

PUBLISHED_NAMES: dict[str, str] = {
    "random": "01-Random",
    "dotprod": "02-DotProd",
    "gpuclustering": "03-GpuClustering",
    "gpupacking": "04-GpuPacking",
    "bestfit": "05-BestFit",
    "fgd": "06-FGD",
}
"""Our policy name -> its name in FGD's published results."""


def make_policy(name: str, measure: FragMeasure, rng: random.Random) -> FractionalPolicy:
    """The policy called ``name`` (see :data:`POLICIES`)."""
    try:
        factory = POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ValueError(f"unknown fractional policy {name!r} (known: {known})") from None
    return factory(measure, rng)
