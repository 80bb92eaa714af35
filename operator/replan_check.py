"""Optimistic re-validation of a global re-plan computed off the planner's path: pure.

The re-plan runs on a :class:`Snapshot` of the plan while arrivals, departures and node
changes keep being decided.  Before its result is committed, :func:`revalidate` checks it
against the plan as it is now:

* the GPU inventory changed (a node came, went or changed its GPUs): **conflict**;
* a job the re-plan *moves* left, changed its spec, holds a different reservation or has
  retiring replicas it did not have: **conflict** (a job that left is simply dropped from
  the result: the slices it frees are free);
* a *waiting* job the re-plan places left, changed its spec or was placed meanwhile by the
  arrival path: its entry is **trimmed** (the arrival's placement stands);
* every new replica must fit on its GPU now: not over an instance another job holds now
  (arrivals placed meanwhile, retiring replicas), not over another new replica, and not
  next to another tenant where either side needs a dedicated GPU: else **conflict**.

A conflict drops the whole result (the controller retries once on a fresh snapshot); trimming
keeps the rest, which still fits and moves no job more than its budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from conspirator.operator.placement.cluster import ClusterState, GpuState
from conspirator.operator.translate import profile_on
from conspirator.operator.views import Replica

SpecId = tuple[str, int, float]
"""(uid, generation, planned requests/s) of a job: what its placement depends on."""


@dataclass(slots=True)
class Snapshot:
    """What the re-plan started from (taken under the planner's lock)."""

    inventory: int
    """Hash of every GPUNode's inventory key."""
    specs: dict[str, SpecId]
    reserved: dict[str, list[Replica]]
    retiring: frozenset[str]


@dataclass(slots=True)
class Now:
    """The plan as it is at commit time."""

    inventory: int
    specs: Mapping[str, SpecId]
    """Live jobs only."""
    reserved: Mapping[str, list[Replica]]
    retiring: frozenset[str]
    state: ClusterState
    gpus: Mapping[tuple[str, int], GpuState]
    tenants: Mapping[str, tuple[str, bool]]
    """Job key -> (tenant, dedicated GPU), for the jobs of the result."""


@dataclass(slots=True)
class Verdict:
    commit: bool
    changed: dict[str, list[Replica]] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    trimmed: dict[str, str] = field(default_factory=dict)
    """Job key -> why its entry was left out."""
    conflict: str = ""


def _slots(reps: list[Replica]) -> list[tuple[str, int, str, int]]:
    return sorted(r.slot for r in reps)


def revalidate(base: Snapshot, changed: Mapping[str, list[Replica]],
               moved: Mapping[str, int], now: Now) -> Verdict:
    """Whether the re-plan's ``changed``/``moved`` still fit ``now`` (module docstring)."""
    if now.inventory != base.inventory:
        return Verdict(False, conflict="the GPU inventory changed during the re-plan")
    keep: dict[str, list[Replica]] = {}
    out = Verdict(True)
    for key in sorted(changed):
        mover = key in moved
        if key not in now.specs:
            out.trimmed[key] = "left during the re-plan"
            continue
        why = ""
        if now.specs[key] != base.specs.get(key):
            why = "its spec changed during the re-plan"
        elif _slots(now.reserved.get(key, [])) != _slots(base.reserved.get(key, [])):
            why = "its reservation changed during the re-plan"
        elif mover and key in now.retiring and key not in base.retiring:
            why = "it started migrating during the re-plan"
        if why and mover:
            return Verdict(False, conflict=f"{key}: {why}")
        if why:
            out.trimmed[key] = why
            continue
        keep[key] = changed[key]
    clash = fits(keep, now)
    if clash:
        return Verdict(False, trimmed=out.trimmed, conflict=clash)
    out.changed = keep
    out.moved = {k: n for k, n in moved.items() if k in keep}
    return out


def fits(changed: Mapping[str, list[Replica]], now: Now) -> str:
    """Why the replicas of ``changed`` do not fit the GPUs as they are now ('' if they do);
    each job's current reservation is released first."""
    leaving: dict[tuple[str, int], set[tuple[str, str, int]]] = {}
    for key in changed:
        for r in now.reserved.get(key, []):
            leaving.setdefault((r.node, r.gpu_index), set()).add((key, r.profile, r.start))
    per_gpu: dict[tuple[str, int], list[tuple[str, Replica]]] = {}
    for key, reps in changed.items():
        for r in reps:
            per_gpu.setdefault((r.node, r.gpu_index), []).append((key, r))
    for where in sorted(per_gpu):
        g = now.gpus.get(where)
        if g is None:
            return f"{where[0]}/GPU {where[1]} is no longer planned"
        gone = leaving.get(where, set())
        stay = [i for i in g.instances if (i.job_id, i.profile.name, i.start) not in gone]
        used = 0
        for i in stay:
            used |= i.mask
        tenants = [(i.tenant, i.dedicated) for i in stay]
        for key, r in sorted(per_gpu[where], key=lambda kr: (kr[1].start, kr[0])):
            prof = profile_on(g.model, r.profile)
            if prof is None or r.start not in prof.starts:
                return f"{r.profile}@{r.start} is not a placement on {r.node}/GPU {r.gpu_index}"
            mask = prof.mask(r.start)
            if mask & used:
                return (f"{key}: {r.profile}@{r.start} on {r.node}/GPU {r.gpu_index} is "
                        f"taken now")
            tenant, dedicated = now.tenants[key]
            if any(t != tenant and (dedicated or d) for t, d in tenants):
                return f"{key}: {r.node}/GPU {r.gpu_index} now hosts another tenant"
            used |= mask
            tenants.append((tenant, dedicated))
    return ""
