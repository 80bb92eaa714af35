"""The planner: one decision over a :class:`~conspirator.operator.cache.Work` value.

:func:`decide` is pure in the sense that matters to the controller: no I/O, no controller
state, no metrics object; it reads the work and the current :class:`Plan` and returns a
:class:`Decision` (the new plan, what changed, what to count).  The controller runs it off
the event loop and swaps the new plan in.  The one thing it mutates is the engine state
(``plan.engine``), which moves into the new plan: the old plan is not decided again (a pass
that fails resyncs, and the resync rebuilds the engine state from the API server).

The phases, in order (Kueue's scheduling cycle is the model):

1. :func:`phase_rebuild`: when the inventory, the profiles or a resync ask for it, a fresh
   engine state from the GPUNodes and the recorded reservations, in arrival order;
2. :func:`phase_release`: deleted jobs give their instances back;
2b. :func:`phase_retire`: migrating jobs whose new replicas run let the old ones go
   (make-before-break, :mod:`~conspirator.operator.migration`);
3. :func:`phase_revalidate`: changed jobs keep what still fits their spec;
3b. :func:`phase_rollout`: jobs whose workers run an older revision of their spec get new
   replicas in their other worker set while the old ones serve (where there is room);
4. :func:`phase_place`: waiting jobs, one at a time, in arrival order;
5. :func:`phase_replan`: the periodic global re-plan under each job's migration policy;
   the old instances of its moves are held (retiring) where nothing else needs them;
6. :func:`phase_diff`: which reservations changed (they are written first), and Events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from conspirator.api.v1alpha1 import ReplicaStatus
from conspirator.operator import migration, replan_job, rollouts
from conspirator.operator.cache import Work
from conspirator.operator.describe import (
    move_text,
    profile_counts,
    replica_slot,
    status_slot,
    where,
)
from conspirator.operator.global_replan import ReplanResult, replan
from conspirator.operator.manifests import worker_revision
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.placement.policy import PlacementPolicy
from conspirator.operator.replan_check import revalidate
from conspirator.operator.replan_job import Proposal
from conspirator.operator.tally import Tally
from conspirator.operator.translate import (
    EngineCluster,
    TableInfo,
    build_table,
    engine_job,
    place,
    rebuild_engine,
    restore,
    unknown_model_message,
)
from conspirator.operator.views import JobView, ProfileView, Replica

log = logging.getLogger("conspirator.operator")

JobEvent = tuple[str, str, str, bool]
"""(job key, reason, message, warning)."""
ProfilesKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Plan:
    """The operator's decisions: the reservations and why jobs wait."""

    reserved: dict[str, list[Replica]] = field(default_factory=dict)
    """Job key -> its replicas (jobs with none are absent)."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Job key -> why (part of) its demand is not placed."""
    failures: dict[str, str] = field(default_factory=dict)
    """Job key -> why it cannot be planned at all (an unknown model)."""
    announced: dict[str, str] = field(default_factory=dict)
    """Job key -> the last Unplaceable/UnknownModel message posted (posted once each)."""
    engine: EngineCluster | None = None
    """The engine's state of the cluster; None: rebuild it."""
    recorded: dict[str, list[ReplicaStatus]] | None = None
    """After a resync: the reservations as the statuses list them; the rebuild starts there."""
    table: TableInfo | None = None
    table_key: ProfilesKey | None = None
    retiring: dict[str, list[Replica]] = field(default_factory=dict)
    """Job key -> replicas the re-plan moved away that serve until the new ones run."""
    retiring_since: dict[str, float] = field(default_factory=dict)
    """Job key -> when its oldest retiring replica was moved (monotonic seconds)."""
    recorded_retiring: dict[str, list[ReplicaStatus]] | None = None
    """After a resync: ``status.retiring`` of every job (held again by the rebuild)."""
    sets: dict[str, int] = field(default_factory=dict)
    """Job key -> the worker set its reserved replicas run in (absent: 0)."""
    rolling: dict[str, int] = field(default_factory=dict)
    """Job key -> the worker set of its retiring replicas, for a rollout in progress (the
    old revision's workers serve until the new ones run)."""

    @classmethod
    def from_statuses(cls, jobs: Mapping[str, JobView]) -> Plan:
        """The plan right after a resync: nothing decided, the statuses to rebuild from."""
        recorded = rollouts.recorded_set
        sets = {k: recorded(v.replicas) for k, v in jobs.items() if recorded(v.replicas)}
        rolling = {k: recorded(v.retiring) for k, v in jobs.items()
                   if v.retiring and recorded(v.retiring) != sets.get(k, 0)}
        return cls(recorded={k: list(v.replicas) for k, v in jobs.items()},
                   recorded_retiring={k: list(v.retiring) for k, v in jobs.items()
                                      if v.retiring}, sets=sets, rolling=rolling)

    def successor(self) -> Plan:
        """A new plan with copies of the maps (the engine state moves over)."""
        return Plan(dict(self.reserved), dict(self.reasons), dict(self.failures),
                    dict(self.announced), self.engine, self.recorded, self.table,
                    self.table_key, dict(self.retiring), dict(self.retiring_since),
                    self.recorded_retiring, dict(self.sets), dict(self.rolling))

    def holding(self, key: str) -> list[Replica]:
        """Every instance job ``key`` holds: its reservation and its retiring replicas."""
        return [*self.reserved.get(key, []), *self.retiring.get(key, [])]

    def worker_set(self, key: str) -> int:
        """The worker set of job ``key``'s reserved replicas."""
        return self.sets.get(key, 0)

    def retiring_set(self, key: str) -> int:
        """The worker set of job ``key``'s retiring replicas."""
        return self.rolling.get(key, self.worker_set(key))

    def served(self, view: JobView) -> bool:
        reps = self.reserved.get(view.key)
        return bool(reps) and demand_met(sum(r.throughput_rps for r in reps or []),
                                         view.demand_rps)

    def jobs_on_node(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for m in (self.reserved, self.retiring):
            for k, reps in m.items():
                for r in reps:
                    out.setdefault(r.node, set()).add(k)
        return out


@dataclass(slots=True)
class Changes:
    """What the decision changed, for the writer."""

    reserved: dict[str, list[Replica]] = field(default_factory=dict)
    """Job key -> new reservation (empty list: released), for jobs whose replicas change."""
    old_nodes: set[str] = field(default_factory=set)
    """Nodes that held a changed reservation before (their layouts shrink)."""
    events: list[JobEvent] = field(default_factory=list)
    replan: ReplanResult | None = None
    render: set[str] = field(default_factory=set)
    """Jobs whose status must be re-rendered."""
    rebuilt: bool = False
    conflict: str = ""
    """Why a re-plan computed off the planner's path was dropped at commit ('' if not)."""
    leaving: dict[str, list[Replica]] = field(default_factory=dict)
    """Live job key -> instances it held before and no longer holds (their worker pods go:
    the writer picks those pods for the scale-down, or deletes them)."""


@dataclass(slots=True)
class Decision:
    plan: Plan
    changes: Changes
    tally: Tally


@dataclass(slots=True)
class Inputs:
    """What a decision needs besides the work and the plan."""

    policy: PlacementPolicy
    use_default_profiles: bool = True
    max_migrations: int = 0


def profiles_key(profiles: Mapping[str, ProfileView], use_defaults: bool) -> ProfilesKey:
    return (*sorted((p.name, p.resource_version) for p in profiles.values()),
            ("~defaults", str(use_defaults)))


@dataclass(slots=True)
class Cycle:
    """One decision in progress: what every phase reads and writes."""

    work: Work
    plan: Plan
    """The new plan (phases change it; the input plan's maps stay as they were)."""
    inputs: Inputs
    info: TableInfo
    live: dict[str, JobView]
    ordered: list[JobView]
    """Live jobs in arrival order (higher priority first, then older)."""
    before: dict[str, list[Replica]]
    """The reservations as they stand in the API server before this decision."""
    before_retiring: dict[str, list[Replica]]
    """The retiring replicas as they stand in the API server before this decision."""
    capacity: bool
    """Something freed or added capacity: every waiting job is tried again."""
    changes: Changes = field(default_factory=Changes)
    tally: Tally = field(default_factory=Tally)
    proposal: Proposal | None = None
    """A re-plan computed off the planner's path, to re-validate and commit."""

    @property
    def engine(self) -> EngineCluster:
        assert self.plan.engine is not None, "phase_rebuild runs first"
        return self.plan.engine


def decide(work: Work, plan: Plan, inputs: Inputs, proposal: Proposal | None = None
           ) -> Decision:
    """The phases of the module docstring, in order; with a ``proposal`` (a re-plan run on
    a snapshot, :mod:`~conspirator.operator.replan_job`), phase 5 commits what of it still
    fits instead of re-planning here."""
    new = plan.successor()
    info, table_changed = phase_table(work, new, inputs)
    live = work.live
    c = Cycle(work, new, inputs, info, live, sorted(live.values(), key=lambda v: v.order),
              {k: list(v) for k, v in new.reserved.items()},
              {k: list(v) for k, v in new.retiring.items()},
              capacity=work.capacity or table_changed, proposal=proposal)
    if work.rebuild or table_changed or new.engine is None:
        phase_rebuild(c)
    phase_release(c)
    phase_retire(c)
    if not c.changes.rebuilt:
        phase_revalidate(c)
    phase_rollout(c)
    phase_place(c)
    if work.replan or proposal is not None:
        phase_replan(c)
    phase_diff(c)
    c.tally.gpus_in_use = c.engine.gpus_in_use()
    c.tally.gpus_total = len(c.engine.state.gpus)
    c.tally.pending = sum(1 for v in live.values() if not new.served(v))
    return Decision(new, c.changes, c.tally)


def phase_table(work: Work, plan: Plan, inputs: Inputs) -> tuple[TableInfo, bool]:
    """0. The throughput table, rebuilt only when the ModelProfiles changed (then the
    engine state is rebuilt too: throughputs and what jobs may use changed)."""
    key = profiles_key(work.profiles, inputs.use_default_profiles)
    if plan.table is not None and key == plan.table_key:
        return plan.table, False
    plan.table = build_table(work.profiles.values(), use_defaults=inputs.use_default_profiles)
    plan.table_key = key
    for conflict in plan.table.conflicts:
        log.warning("%s", conflict)
    return plan.table, True


def phase_rebuild(c: Cycle) -> None:
    """1. A fresh engine state from the GPUNodes and the reservations, in arrival order:
    those listed at a resync, else the plan's own."""
    plan, ch = c.plan, c.changes
    recorded, plan.recorded = plan.recorded, None
    recorded_retiring, plan.recorded_retiring = plan.recorded_retiring, None
    entries = []
    for v in c.ordered:
        statuses = (recorded.get(v.key, []) if recorded is not None
                    else [r.to_status() for r in plan.reserved.get(v.key, [])])
        if statuses:
            entries.append((engine_job(v), statuses))
    old_retiring = plan.retiring

    def hold_retiring(cluster: EngineCluster) -> None:
        plan.retiring = {}
        for v in c.ordered:
            if recorded_retiring is not None:
                found = [migration.from_status(cluster, rs)
                         for rs in recorded_retiring.get(v.key, [])]
                reps = [r for r in found if r is not None]
            else:
                reps = old_retiring.get(v.key, [])
            _hold(c, cluster, v, reps)

    built = rebuild_engine(c.work.nodes.values(), entries, c.info.table,
                           before_blocking=hold_retiring)
    for msg in built.cluster.skipped:
        log.warning("GPU left out of planning: %s", msg)
    if built.blocked:
        log.info("%d instance(s) in use outside any reservation are not planned over",
                 len(built.blocked))
        log.debug("in use outside reservations: %s", "; ".join(built.blocked))
    restored = built.restored
    plan.reserved = restored.kept
    for k in [k for k in plan.retiring_since if k not in plan.retiring]:
        del plan.retiring_since[k]
    for k in plan.retiring:
        plan.retiring_since.setdefault(k, c.work.now_s)
    if recorded_retiring is not None:
        c.before_retiring = {k: list(v) for k, v in plan.retiring.items()}
    if recorded is not None:
        # What the statuses said is what stands (same slots: unchanged).
        c.before = {k: [] for k in recorded}
        for k, statuses in recorded.items():
            if k in plan.reserved and sorted(status_slot(x) for x in statuses) == \
                    sorted(replica_slot(r) for r in plan.reserved[k]):
                c.before[k] = list(plan.reserved[k])
    for k, whys in restored.dropped.items():
        ch.events.append((k, "ReplicasReleased",
                          f"released {len(whys)} replica(s): {'; '.join(whys)}", True))
    for k, n in restored.trimmed.items():
        ch.events.append((k, "ReplicasReleased", (
            f"released {n} replica(s) the demand no longer needs "
            f"({profile_counts(plan.reserved.get(k, []))} kept)"), False))
    plan.engine = built.cluster
    ch.render |= set(c.live)
    ch.rebuilt = True
    c.capacity = True


def phase_release(c: Cycle) -> None:
    """2. Deleted jobs give their instances back; what was said about them goes."""
    plan = c.plan
    for k in [k for k in plan.reserved if k not in c.live]:
        c.engine.state.release(k)
        del plan.reserved[k]
        c.capacity = True
    for k in [k for k in plan.retiring if k not in c.live]:
        migration.let_go(c.engine, k, plan.retiring.pop(k))
        plan.retiring_since.pop(k, None)
        c.capacity = True
    for m2 in (plan.sets, plan.rolling):
        for k in [k for k in m2 if k not in c.live]:
            del m2[k]
    for m in (plan.failures, plan.reasons):
        for k in [k for k in m if k not in c.live]:
            del m[k]


def phase_retire(c: Cycle) -> None:
    """2b. Migrating jobs whose new replicas run let their retiring replicas go."""
    plan, work = c.plan, c.work
    for k in sorted(plan.retiring):
        view = c.live[k]
        since = plan.retiring_since.get(k, work.now_s)
        count = work.registered.get(k)
        fresh = count[0] if count is not None and count[1] >= since else None
        ready = migration.new_replicas_running(
            plan.reserved.get(k, []), plan.retiring[k],
            [w for w in work.workers.values() if w.job_uid == view.uid], fresh,
            work.now_s - since, work.scraping and _has_agent(work, plan.holding(k)),
            plan.worker_set(k), plan.retiring_set(k))
        if not ready.done:
            continue
        gone = plan.retiring.pop(k)
        plan.retiring_since.pop(k, None)
        migration.let_go(c.engine, k, gone)
        c.capacity = True
        if plan.rolling.pop(k, None) is not None:
            c.changes.events.append((k, "RolledOut", (
                f"the new revision's replica(s) run ({ready.detail}): {len(gone)} replica(s) "
                f"of the old one go ({', '.join(where(r) for r in gone)}; their workers "
                f"drain)"), False))
            continue
        c.changes.events.append((k, "Migrated", (
            f"the new replica(s) run ({ready.detail}): {len(gone)} moved replica(s) go "
            f"({', '.join(where(r) for r in gone)}; their workers drain)"), False))


def _has_agent(work: Work, reps: list[Replica]) -> bool:
    """Whether some node of ``reps`` reports a DPU agent (that the operator scrapes)."""
    nodes = [work.nodes.get(r.node) for r in reps]
    return any(n is not None and n.dpu.endpoint and not n.dpu.missing for n in nodes)


def _hold(c: Cycle, cluster: EngineCluster, v: JobView, reps: list[Replica]) -> None:
    """Hold job ``v``'s retiring ``reps`` in ``cluster`` (those its own reservation took
    back are its again); what cannot be held is said in an Event."""
    mine = {r.slot for r in c.plan.reserved.get(v.key, [])}
    reps = [r for r in reps if r.slot not in mine]
    if not reps:
        return
    held, why = migration.hold(cluster, v.key, engine_job(v), reps)
    if held:
        c.plan.retiring[v.key] = held
    if why:
        c.changes.events.append((v.key, "Migrated", (
            f"{len(why)} moved replica(s) no longer held: {'; '.join(why)}"), True))


def phase_revalidate(c: Cycle) -> None:
    """3. Changed jobs: keep what still fits their spec, give back the surplus."""
    plan, live = c.plan, c.live
    for k in sorted(c.work.spec_dirty, key=lambda k: live[k].order if k in live else ()):
        if k not in live or k not in plan.reserved:
            continue
        old = plan.reserved.pop(k)
        c.engine.state.release(k)
        job = engine_job(live[k])
        if not c.info.knows(job.model):
            c.capacity = True
            continue
        res = restore(c.engine, [(job, [r.to_status() for r in old])], c.info.table)
        if res.kept.get(k):
            plan.reserved[k] = res.kept[k]
        if res.dropped.get(k):
            c.changes.events.append((k, "ReplicasReleased",
                                     f"released {len(res.dropped[k])} replica(s): "
                                     f"{'; '.join(res.dropped[k])}", True))
        if plan.reserved.get(k) != old:
            c.capacity = True


def phase_rollout(c: Cycle) -> None:
    """3b. Rollouts (:mod:`~conspirator.operator.rollouts`): a job whose workers run an
    older revision of its spec is placed again beside its held instances, the new replicas
    in its other worker set; with no room for both, its pods are replaced in place."""
    plan = c.plan
    for v in c.ordered:
        k = v.key
        if k in plan.retiring or k not in plan.reserved or k in plan.failures:
            continue
        stale = rollouts.stale_workers(v, c.work.workers.values(), plan.worker_set(k))
        if not stale:
            continue
        old = plan.reserved[k]
        started = rollouts.start(c.engine, v, engine_job(v), old, c.inputs.policy, c.info.table)
        c.tally.durations.append(("rollout", started.seconds))
        if started.new:
            plan.reserved[k], plan.retiring[k] = started.new, started.held
            plan.retiring_since[k] = c.work.now_s
            plan.rolling[k], plan.sets[k] = plan.worker_set(k), 1 - plan.worker_set(k)
            plan.announced.pop(k, None)
            c.capacity = True
            c.changes.events.append((k, "RollingOut", rollouts.started_text(
                v, stale, started, len(old)), False))
            continue
        if started.kept:
            plan.reserved[k] = started.kept
        else:
            plan.reserved.pop(k, None)
        _announce(plan, c.changes, k, "RollingOut", rollouts.no_room_text(v, started, len(old)),
                  memo=f"rollout:{worker_revision(v)}")


def phase_place(c: Cycle) -> None:
    """4. Waiting jobs, one at a time, in arrival order (the policy's arrival path)."""
    plan, ch, tally, spec_dirty = c.plan, c.changes, c.tally, c.work.spec_dirty
    for v in c.ordered:
        if not (c.capacity or v.key in spec_dirty or v.key not in plan.reserved):
            continue
        if plan.served(v):
            continue
        job = engine_job(v)
        if not c.info.knows(job.model):
            message = unknown_model_message(job.model, c.info)
            plan.failures[v.key] = message
            plan.reasons.pop(v.key, None)
            _announce(plan, ch, v.key, "UnknownModel", message, memo=message)
            tally.attempts["arrival", "failed"] += 1
            ch.render.add(v.key)
            continue
        plan.failures.pop(v.key, None)
        if v.key not in spec_dirty and not c.capacity and v.key in plan.reasons:
            continue  # nothing it could use changed since it was last refused
        placed = place(c.inputs.policy, c.engine, job, c.info.table)
        tally.durations.append(("arrival", placed.seconds))
        tally.attempts["arrival", "placed" if placed.ok else "unplaced"] += 1
        if placed.replicas:
            plan.reserved[v.key] = placed.replicas
        if placed.ok:
            plan.reasons.pop(v.key, None)
            plan.announced.pop(v.key, None)
        else:
            reason = placed.reason or "not placed"
            plan.reasons[v.key] = reason
            _announce(plan, ch, v.key, "Unplaceable", f"cannot be placed: {reason}",
                      memo=reason)
        ch.render.add(v.key)


def phase_replan(c: Cycle) -> None:
    """5. The global re-plan; an accepted one rebuilds the engine state from its result."""
    plan, ch = c.plan, c.changes
    if c.proposal is not None:
        found = _revalidated(c, c.proposal)
        if found is None:
            return
        result = found
    else:
        movable = {v.key: v.job.spec.migration.disruption_budget or 1
                   for v in c.ordered if v.job.spec.migration.allowed
                   and v.key not in plan.rolling}  # a rollout finishes first
        pending = [engine_job(v) for v in c.ordered
                   if not plan.served(v) and v.key not in plan.failures]
        result = replan(c.engine, movable, pending, c.inputs.policy, c.info.table,
                        c.inputs.max_migrations)
    ch.replan = result
    c.tally.durations.append(("replan", result.seconds))
    c.tally.replans["accepted" if result.accepted else "kept"] += 1
    log.info("global re-plan (%.2f s): %s", result.seconds, result.note)
    if not result.accepted:
        return
    old = {k: list(plan.reserved.get(k, [])) for k in result.moved}
    for k, reps in result.changed.items():
        if reps:
            plan.reserved[k] = reps
            plan.reasons.pop(k, None)
        else:
            plan.reserved.pop(k, None)
    c.tally.migrations += result.migrations
    old_engine = c.engine
    for k, n in result.moved.items():
        split = migration.split_moves(old_engine, old[k], plan.reserved.get(k, []),
                                      plan.reserved)
        if split.retiring:
            plan.retiring[k] = [*plan.retiring.get(k, []), *split.retiring]
            plan.retiring_since.setdefault(k, c.work.now_s)
        how = []
        if split.retiring:
            how.append(f"make-before-break for {len(split.retiring)}: the old replica(s) "
                       f"serve until the new ones run")
        if split.broken:
            how.append(f"break-before-make for {len(split.broken)} within the disruption "
                       f"budget ({'; '.join(why for _, why in split.broken)})")
        ch.events.append((k, "Migrating", move_text(old[k], plan.reserved.get(k, []), n,
                                                    result.note) + "; " + "; ".join(how), False))
    order = sorted(plan.reserved, key=lambda k: c.live[k].order)
    retiring, plan.retiring = plan.retiring, {}

    def hold_retiring(cluster: EngineCluster) -> None:
        for v in c.ordered:
            _hold(c, cluster, v, retiring.get(v.key, []))

    plan.engine = rebuild_engine(
        c.work.nodes.values(),
        [(engine_job(c.live[k]), [r.to_status() for r in plan.reserved[k]]) for k in order],
        c.info.table, before_blocking=hold_retiring).cluster
    for k in [k for k in plan.retiring_since if k not in plan.retiring]:
        del plan.retiring_since[k]


def _revalidated(c: Cycle, proposal: Proposal) -> ReplanResult | None:
    """The proposal's result trimmed to what still fits now; None: a conflict (said in
    ``Changes.conflict``)."""
    res = proposal.result
    if not res.accepted:
        c.changes.replan = res
        return None
    now = replan_job.now(c.engine, c.live, c.work.nodes.values(), c.plan.reserved,
                         c.plan.retiring, res.changed)
    verdict = revalidate(proposal.base, res.changed, res.moved, now)
    if not verdict.commit:
        c.changes.conflict = verdict.conflict
        log.info("global re-plan dropped: %s", verdict.conflict)
        return None
    for k, why in verdict.trimmed.items():
        log.info("global re-plan: %s left out (%s)", k, why)
    res.changed, res.moved = verdict.changed, verdict.moved
    res.accepted = bool(res.changed)
    return res if res.accepted else None


def phase_diff(c: Cycle) -> None:
    """6. The reservations that changed, and a Placed Event for each new one (moves have
    their Migrating Event)."""
    plan, ch, before = c.plan, c.changes, c.before
    moved = ch.replan.moved if ch.replan is not None and ch.replan.accepted else {}
    for k in set(c.before_retiring) | set(plan.retiring):
        if c.before_retiring.get(k, []) != plan.retiring.get(k, []):
            # The status lists its retiring replicas; a layout that frees them shrinks.
            ch.reserved.setdefault(k, list(plan.reserved.get(k, [])))
            ch.old_nodes |= {r.node for r in c.before_retiring.get(k, [])}
            ch.render.add(k)
    for k in set(before) | set(c.before_retiring):
        if k not in c.live:
            continue
        now = {r.slot for r in plan.holding(k)}
        gone = [r for r in [*before.get(k, []), *c.before_retiring.get(k, [])]
                if r.slot not in now]
        if gone:
            ch.leaving[k] = gone
    for k in set(before) | set(plan.reserved):
        if before.get(k, []) == plan.reserved.get(k, []):
            continue
        ch.reserved[k] = list(plan.reserved.get(k, []))
        ch.old_nodes |= {r.node for r in before.get(k, [])}
        ch.render.add(k)
        reps = plan.reserved.get(k)
        if reps and k in c.live and k not in moved and k not in plan.rolling:
            total = sum(r.throughput_rps for r in reps)
            ch.events.append((k, "Placed", (
                f"placed {len(reps)} replica(s) ({profile_counts(reps)}) on "
                f"{', '.join(sorted({r.node for r in reps}))}: {total:.0f} of "
                f"{c.live[k].demand_rps:g} requests/s"), False))


def _announce(plan: Plan, ch: Changes, key: str, reason: str, message: str, memo: str) -> None:
    """An Event for a job that cannot be placed, once per distinct ``memo``."""
    if plan.announced.get(key) != memo:
        ch.events.append((key, reason, message, True))
        plan.announced[key] = memo
