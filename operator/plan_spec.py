"""A ``SchedulingPolicy`` as the placement engine's :class:`PlanPolicy`.

Shared by the operator (the policy named ``default`` in its cache) and the simulator
(``--policy-file``).  Prices and power the spec leaves out keep the engine's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from conspirator.api.v1alpha1 import PreemptionPolicy, SchedulingPolicy, SchedulingPolicySpec
from conspirator.operator.placement.plan_policy import (
    DEFAULT_POLICY,
    DEFAULT_POWER,
    DEFAULT_PRICES,
    GpuPower,
    GpuPrice,
    PlanPolicy,
)


def plan_from_spec(spec: SchedulingPolicySpec | None) -> PlanPolicy:
    """The engine's plan policy for ``spec`` (``None``: the paper's objective)."""
    if spec is None:
        return DEFAULT_POLICY
    prices = dict(DEFAULT_PRICES)
    prices.update({p.gpu_model.value: GpuPrice(p.on_demand_usd_per_hour, p.spot_usd_per_hour)
                   for p in spec.prices})
    power = dict(DEFAULT_POWER)
    power.update({p.gpu_model.value: GpuPower(p.idle_watts, p.tdp_watts, p.slice_watts)
                  for p in spec.power})
    return PlanPolicy(
        objective=spec.objective.value,
        prices=prices,
        power=power,
        fairness=spec.fairness.enabled,
        tenant_weights={w.tenant: w.weight for w in spec.fairness.tenant_weights},
        preemption=spec.preemption is PreemptionPolicy.PREEMPT_LOWER_PRIORITY,
    )


def is_spot_node(labels: Mapping[str, str], spec: SchedulingPolicySpec | None) -> bool:
    """Whether a node with ``labels`` belongs to the spot pool under ``spec``."""
    pairs = (spec or SchedulingPolicySpec()).spot_labels()
    return any(labels.get(k) == v for k, v in pairs)


class PolicyFileError(ValueError):
    """A policy file that is not a valid SchedulingPolicy manifest."""


def load_policy_file(path: Path) -> SchedulingPolicy:
    """Read a SchedulingPolicy manifest (YAML or JSON)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != "SchedulingPolicy":
        raise PolicyFileError(f"{path}: not a SchedulingPolicy manifest")
    try:
        return SchedulingPolicy.model_validate(raw)
    except ValueError as exc:
        raise PolicyFileError(f"{path}: {exc}") from None
