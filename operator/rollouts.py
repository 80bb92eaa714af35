"""Make-before-break rollouts of a new worker revision: pure.

A job's *worker revision* is what of its spec its worker pods run (model, image, args, data
path: :func:`~conspirator.operator.manifests.worker_revision`); every worker Deployment says
which one it runs.  When the user changes it, the Deployments of the job's reserved
replicas run an older revision (:func:`stale_workers`), and a rollout starts
(:func:`start`): the job is placed again on free capacity while its current instances are
held for the old workers (as the re-plan's retiring replicas are, :mod:`.migration`), so
the old workers keep serving.  Each job has two *worker sets* (Deployments named
``<job>-<node>-<profile>`` and the same ending in ``-b``): the new replicas start in the
other set, with the new template; the old set's Deployments keep their template, and go
once the new replicas run and are registered at the DPU agents (the planner's retirement
phase).  Then the next rollout alternates back.

When the job's new replicas do not all fit beside the old ones (a full node, a lone GPU),
there is no room for both: nothing is held, the reservation stays, and the Deployments
replace their pods in place (``RollingUpdate`` with ``maxSurge: 0``, at most the job's
disruption budget at a time), which the ``RollingOut`` Event says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conspirator.api.v1alpha1 import ReplicaStatus
from conspirator.operator import migration
from conspirator.operator.describe import profile_counts
from conspirator.operator.manifests import worker_revision
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.placement.throughput import ThroughputTable
from conspirator.operator.translate import EngineCluster, place, restore
from conspirator.operator.views import JobView, Replica, WorkerView


def stale_workers(view: JobView, workers: Iterable[WorkerView], worker_set: int) -> list[str]:
    """The older revisions the job's live Deployments of ``worker_set`` run (sorted; empty:
    none, nothing to roll out).  Deployments that do not say (made by an older operator)
    are updated in place, as before."""
    want = worker_revision(view)
    return sorted({w.revision for w in workers
                   if w.job_uid == view.uid and w.worker_set == worker_set and not w.deleting
                   and w.replicas > 0 and w.revision and w.revision != want})


@dataclass(slots=True)
class Started:
    """A rollout's start: the new replicas and the held old ones, or why not and the
    reservation as it stays."""

    new: list[Replica] = field(default_factory=list)
    held: list[Replica] = field(default_factory=list)
    kept: list[Replica] = field(default_factory=list)
    why: str = ""
    seconds: float = 0.0


def start(cluster: EngineCluster, view: JobView, job: Job, old: Sequence[Replica],
          policy: PlacementPolicy, table: ThroughputTable) -> Started:
    """Place ``job`` again beside its ``old`` replicas, which are held (for its old
    workers) in ``cluster``'s state; all or nothing: where the new replicas do not meet
    the job's demand, the state is as before and ``kept`` is the old reservation."""
    key = view.key
    cluster.state.release(key)
    held, why = migration.hold(cluster, key, job, old)
    placed = place(policy, cluster, job, table) if not why else None
    if placed is not None and placed.ok and placed.replicas:
        return Started(new=placed.replicas, held=held, seconds=placed.seconds)
    # No room for both: back to the old reservation.
    cluster.state.release(key)
    migration.let_go(cluster, key, held)
    back = restore(cluster, [(job, [r.to_status() for r in old])], table)
    reason = "; ".join(why) if why else (placed.reason if placed is not None and placed.reason
                                         else "no new replica fits")
    return Started(kept=back.kept.get(key, []), why=reason,
                   seconds=placed.seconds if placed is not None else 0.0)


def recorded_set(statuses: Iterable[ReplicaStatus]) -> int:
    """The worker set a job's status records for its replicas (0 when none says)."""
    return max((rs.worker_set or 0 for rs in statuses), default=0)


def started_text(view: JobView, stale: Sequence[str], started: Started, old: int) -> str:
    new = started.new
    return (f"new worker revision {worker_revision(view)} (was {', '.join(stale)}): "
            f"make-before-break: {len(new)} new replica(s) ({profile_counts(new)} on "
            f"{', '.join(sorted({r.node for r in new}))}) start beside the {old} old one(s), "
            f"which serve until the new ones run")


def no_room_text(view: JobView, started: Started, old: int) -> str:
    budget = view.job.spec.migration.disruption_budget or 1
    return (f"new worker revision {worker_revision(view)}: no room for both ({started.why}): the "
            f"{old} worker(s) are replaced in place, at most {budget} at a time (the "
            f"disruption budget)")
