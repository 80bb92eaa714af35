"""Make-before-break moves of the global re-plan: pure.

When the re-plan moves a replica, its old instance is *retiring* rather than released:
it stays in the job's ``status.retiring`` (durable, so a restarted operator keeps it), in
the node's MIG layout, in the job's worker Deployment and, in the engine's state, taken
by a pseudo-job that nothing else may plan over.  Its worker keeps serving.  Once the
job's new replicas run (every worker Deployment of the job ready and, where the operator
scrapes the DPU agents, the agents counting all of the job's replicas ready) the
retiring instances go: their Deployments shrink, their workers drain (what they hold is
answered), and the layout frees them.

A move whose old instance overlaps an instance of the new plan (the re-plan gives its
slices to someone else, or re-cuts its GPU) cannot hold it: there is no room for both.
That move is break-before-make, as before, within the job's disruption budget; its
``Migrating`` Event says so.

Functions here take values and return values; :mod:`~conspirator.operator.planner` calls
them in its phases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from conspirator.api.v1alpha1 import ReplicaStatus
from conspirator.operator.placement.cluster import Instance
from conspirator.operator.placement.gpus import MigLayoutError
from conspirator.operator.placement.jobs import Job
from conspirator.operator.translate import EngineCluster, profile_on
from conspirator.operator.views import Replica, WorkerView, is_whole

RETIRING_PREFIX = "~retiring/"
"""Engine job ids of retiring instances: ``~retiring/<job key>/<node>/<gpu>/<start>``."""

AGENT_WAIT_S = 300.0
"""How long a migration waits for the DPU agents to count the new replicas before the
workers' readiness alone lets the old ones go (an agent that is not scraped)."""


def pseudo_id(key: str, r: Replica) -> str:
    return f"{RETIRING_PREFIX}{key}/{r.node}/{r.gpu_index}/{r.start}"


def from_status(cluster: EngineCluster, rs: ReplicaStatus) -> Replica | None:
    """A recorded retiring replica as a :class:`Replica`, if its GPU is still there."""
    where = cluster.by_uuid.get(rs.gpu_uuid or "")
    if where is None or where[0] != rs.node:
        return None
    g = cluster.gpus[where]
    return Replica(rs.node, where[1], cluster.info[where].uuid, g.model.name, rs.mig_profile,
                   rs.start_slice or 0, 0.0)


def hold(cluster: EngineCluster, key: str, job: Job, replicas: Iterable[Replica]
         ) -> tuple[list[Replica], list[str]]:
    """Take the retiring ``replicas`` of job ``key`` in the engine's state; returns those
    held and, for the others, why not (their slices are planned for something else)."""
    held: list[Replica] = []
    why: list[str] = []
    for r in replicas:
        g = cluster.gpus.get((r.node, r.gpu_index))
        prof = profile_on(g.model, r.profile) if g is not None else None
        if g is None or prof is None:
            why.append(f"{r.profile}@{r.start} on {r.node}/GPU {r.gpu_index}: GPU not planned")
            continue
        try:
            g.add(Instance(pseudo_id(key, r), job.tenant, prof, r.start, 0.0,
                           dedicated=job.dedicated_gpu))
        except MigLayoutError as e:
            why.append(f"{r.profile}@{r.start} on {r.node}/GPU {r.gpu_index}: {e}")
            continue
        held.append(r)
    return held, why


def let_go(cluster: EngineCluster, key: str, replicas: Iterable[Replica]) -> None:
    """Give the retiring ``replicas`` of job ``key`` back to the engine's state."""
    for r in replicas:
        g = cluster.gpus.get((r.node, r.gpu_index))
        if g is not None:
            g.remove_job(pseudo_id(key, r))


@dataclass(slots=True)
class Split:
    """The old replicas of a moved job: held until the new ones run, or broken now."""

    retiring: list[Replica] = field(default_factory=list)
    broken: list[tuple[Replica, str]] = field(default_factory=list)
    """Old replicas that cannot be held, each with why (no room for both)."""


def split_moves(cluster: EngineCluster, before: Sequence[Replica], after: Sequence[Replica],
                new_plan: Mapping[str, Sequence[Replica]]) -> Split:
    """Which of a moved job's old replicas (``before`` minus ``after``) can keep serving:
    those whose slices no replica of the ``new_plan`` (every job) uses."""
    kept = {r.slot for r in after}
    taken: dict[tuple[str, int], list[tuple[str, Replica]]] = {}
    for k, reps in new_plan.items():
        for x in reps:
            taken.setdefault((x.node, x.gpu_index), []).append((k, x))
    out = Split()
    for r in before:
        if r.slot in kept:
            continue
        clash = [(k, x) for k, x in taken.get((r.node, r.gpu_index), []) if _overlap(cluster, r, x)]
        if clash:
            k, x = clash[0]
            out.broken.append((r, f"no room for both: {r.profile}@{r.start} on {r.node}/GPU "
                                  f"{r.gpu_index} is re-planned for {x.profile}@{x.start} of {k}"))
        else:
            out.retiring.append(r)
    return out


def _overlap(cluster: EngineCluster, a: Replica, b: Replica) -> bool:
    """Whether two replicas on one GPU share slices (a whole GPU shares all of them)."""
    g = cluster.gpus.get((a.node, a.gpu_index))
    pa = profile_on(g.model, a.profile) if g is not None else None
    pb = profile_on(g.model, b.profile) if g is not None else None
    if pa is None or pb is None or is_whole(a.profile) or is_whole(b.profile):
        return True
    return bool(pa.mask(a.start) & pb.mask(b.start))


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a migrating job's new replicas run, and what shows it."""

    done: bool
    detail: str


def new_replicas_running(reserved: Sequence[Replica], retiring: Sequence[Replica],
                         workers: Iterable[WorkerView], registered: int | None,
                         waited_s: float, scraping: bool = True, reserved_set: int = 0,
                         retiring_set: int = 0) -> Readiness:
    """The retirement rule of the module docstring (and of a rollout's, :mod:`.rollouts`).

    ``workers``: the job's worker Deployments; ``registered``: replicas the DPU agents
    count ready for the job in a scrape newer than the move (None: none reported it);
    ``waited_s``: seconds since the move; ``scraping``: whether the operator scrapes the
    agents at all (if not, the workers' readiness is all there is to go by); the sets:
    which worker set runs the reserved and the retiring replicas.
    """
    want: dict[tuple[str, str, int], int] = {}
    for reps, s in ((reserved, reserved_set), (retiring, retiring_set)):
        for r in reps:
            want[(r.node, r.profile, s)] = want.get((r.node, r.profile, s), 0) + 1
    have = {(w.node, w.profile, w.worker_set): w for w in workers if not w.deleting}
    short = []
    for g, n in sorted(want.items()):
        w = have.get(g)
        ready = 0 if w is None else min(w.ready_replicas, w.replicas)
        if w is None or w.replicas < n or ready < n:
            short.append(f"{g[1]} on {g[0]}{' (set b)' if g[2] else ''} {ready}/{n}")
    if short:
        return Readiness(False, f"workers not ready: {', '.join(short)}")
    total = len(reserved) + len(retiring)
    if not scraping:
        return Readiness(True, "workers ready (the DPU agents are not scraped)")
    if registered is not None and registered >= total:
        return Readiness(True, f"{registered} replica(s) registered at the DPU agents")
    if waited_s >= AGENT_WAIT_S:
        seen = "not reported" if registered is None else f"{registered} of {total} reported"
        return Readiness(True, f"workers ready; the DPU agents' count {seen} after "
                               f"{waited_s:.0f} s")
    if registered is None:
        return Readiness(False, "waiting for the DPU agents to report the new replicas")
    return Readiness(False, f"{registered} of {total} replica(s) registered at the DPU agents")
