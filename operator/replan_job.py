"""The global re-plan as a job off the planner's path: the snapshot it runs on, the run,
and the commit-time view it is re-validated against.

Under the planner's lock the controller takes a :class:`ReplanJob` (:func:`snapshot`: a
copy of the engine's state, cheap since :meth:`ClusterState.copy` shares the frozen values,
and what the result will be checked against); a worker thread runs :func:`run` on it while
passes keep placing arrivals on the live state; the commit pass checks the result with
:func:`~conspirator.operator.replan_check.revalidate` against :func:`now` and applies what
survives (``planner.decide(..., proposal=...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from conspirator.operator.global_replan import ReplanResult, replan
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.throughput import ThroughputTable
from conspirator.operator.replan_check import Now, Snapshot, SpecId
from conspirator.operator.translate import EngineCluster, engine_job
from conspirator.operator.views import JobView, NodeView, Replica


@dataclass(slots=True)
class ReplanJob:
    engine: EngineCluster
    movable: dict[str, int]
    pending: list[Job]
    table: ThroughputTable
    base: Snapshot


@dataclass(slots=True)
class Proposal:
    """A re-plan's result and the snapshot it was computed on, for the commit pass."""

    base: Snapshot
    result: ReplanResult


def inventory(nodes: Iterable[NodeView]) -> int:
    return hash(tuple(sorted((n.name, n.inventory_key()) for n in nodes)))


def spec_id(v: JobView) -> SpecId:
    return (v.uid, v.generation, v.demand_rps)


def snapshot(engine: EngineCluster, table: ThroughputTable, ordered: Iterable[JobView],
             nodes: Iterable[NodeView], reserved: Mapping[str, list[Replica]],
             retiring: Iterable[str], served: Mapping[str, bool],
             failures: Iterable[str], rolling: Iterable[str] = ()) -> ReplanJob:
    """The re-plan's inputs: ``ordered`` live jobs in arrival order; ``served`` and
    ``failures`` say which are waiting; ``rolling`` jobs (a rollout in progress) stay."""
    ordered = list(ordered)
    failed, stay = set(failures), set(rolling)
    copy = engine.state.copy()
    cluster = EngineCluster(copy, {(g.node, g.index): g for g in copy.gpus}, engine.info,
                            engine.by_uuid, list(engine.skipped))
    return ReplanJob(
        engine=cluster,
        movable={v.key: v.job.spec.migration.disruption_budget or 1
                 for v in ordered if v.job.spec.migration.allowed and v.key not in stay},
        pending=[engine_job(v) for v in ordered
                 if not served.get(v.key) and v.key not in failed],
        table=table,
        base=Snapshot(inventory(nodes), {v.key: spec_id(v) for v in ordered},
                      dict(reserved), frozenset(retiring)))


def run(job: ReplanJob, policy: PlacementPolicy, max_migrations: int, *,
        deadline_s: float | None = None, known: frozenset[int] = frozenset()
        ) -> ReplanResult:
    """The re-plan itself (a worker thread runs it; it reads only ``job``)."""
    return replan(job.engine, job.movable, job.pending, policy, job.table, max_migrations,
                  deadline_s=deadline_s, known=known)


def now(engine: EngineCluster, live: Mapping[str, JobView], nodes: Iterable[NodeView],
        reserved: Mapping[str, list[Replica]], retiring: Iterable[str],
        keys: Iterable[str]) -> Now:
    """The plan at commit time; ``keys``: the jobs of the result (their tenants)."""
    tenants = {}
    for k in keys:
        v = live.get(k)
        if v is not None:
            j = v.job
            tenants[k] = (j.tenant, j.spec.isolation.dedicated_gpu)
    return Now(inventory(nodes), {k: spec_id(v) for k, v in live.items()}, reserved,
               frozenset(retiring), engine.state, engine.gpus, tenants)
