"""InferenceJob status from the operator's decision and what the cluster reports: pure.

Phases (``status.phase``):

* ``Failed``: the job cannot be planned at all (its model has no throughput figures);
* ``Pending``: not decided yet;
* ``Unschedulable``: no placement meets the demand with the GPUs there are (``message``
  says why);
* ``Partitioning``: placed; some node has not applied the MIG layout yet;
* ``Starting``: layouts applied; worker Deployments not all ready;
* ``Running``: every worker ready;
* ``Degraded``: placed below the demand (replicas lost and not replaced), or running
  workers lost readiness.

The data path (:func:`client_endpoints`, :func:`data_path_condition`): every node that holds
replicas and reports a DPU agent endpoint is listed in ``clientEndpoints``, connected agents
first, then by replicas there (then throughput, then node name), so the choice is stable;
``clientEndpoint`` is the first.  ``DataPathReady`` is True when some replica's node reports
its agent connected (GPUNode ``DPUReady``) and the job's token Secret exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from conspirator.api.v1alpha1 import (
    AutoscalingStatus,
    ClientEndpoint,
    ConditionStatus,
    ConditionType,
    InferenceJobStatus,
    JobPhase,
    ObservedLoad,
    ScalingMode,
    profile_summary,
    set_condition,
)
from conspirator.operator import manifests
from conspirator.operator.placement.objective import demand_met
from conspirator.operator.translate import device_id
from conspirator.operator.views import JobView, NodeView, Replica

MAX_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the operator decided for one job and what the cluster shows of it."""

    replicas: Sequence[Replica]
    reason: str | None = None
    """Why the job is not (fully) placed, when it is not."""
    failure: str | None = None
    """Why the job cannot be planned at all (unknown model)."""
    applied: Mapping[str, bool] | None = None
    """Node -> the node reports this job's instances (absent node: not applied)."""
    workers: Mapping[tuple[str, str], tuple[int, int]] | None = None
    """(node, profile) -> (ready, wanted) worker pods; absent: no Deployment yet."""
    source: str = ""
    """Where the throughput figures come from (ModelProfile or built-in defaults)."""
    token_secret: str | None = None
    """Name of the job's token Secret, once it exists."""
    observed: ObservedLoad | None = None
    """The load the DPU agents last reported (None: keep what the status shows)."""
    autoscaling: AutoscalingStatus | None = None
    """The autoscaler's last decision (None: keep what the status shows)."""
    retiring: Sequence[Replica] = ()
    """Moved replicas that serve until the new ones run (make-before-break)."""
    worker_set: int = 0
    """The worker set of ``replicas`` (:mod:`~conspirator.operator.rollouts`)."""
    retiring_set: int = 0
    """The worker set of ``retiring``."""


def claim_template(view: JobView, r: Replica, node: NodeView | None) -> str | None:
    """The ResourceClaimTemplate of the replica's workers, on a node in DRA mode."""
    return manifests.worker_name(view.name, r.node, r.profile) \
        if node is not None and node.dra else None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _nodes(replicas: Sequence[Replica]) -> list[str]:
    return sorted({r.node for r in replicas})


def client_endpoints(replicas: Sequence[Replica], nodes: Mapping[str, NodeView]
                     ) -> list[ClientEndpoint]:
    """The DPU agents of the nodes holding ``replicas``, best first (module docstring)."""
    count: dict[str, int] = {}
    rps: dict[str, float] = {}
    for r in replicas:
        count[r.node] = count.get(r.node, 0) + 1
        rps[r.node] = rps.get(r.node, 0.0) + r.throughput_rps
    out: list[ClientEndpoint] = []
    for name in sorted(count):
        nv = nodes.get(name)
        if nv is None or not nv.dpu.endpoint:
            continue
        out.append(ClientEndpoint(node=name, endpoint=nv.dpu.endpoint, replicas=count[name],
                                  throughput=round(rps[name], 3),
                                  connected=nv.dpu.connected))
    out.sort(key=lambda e: (not e.connected, -e.replicas, -(e.throughput or 0.0), e.node))
    return out


def data_path_condition(replicas: Sequence[Replica], nodes: Mapping[str, NodeView],
                        token_secret: str | None) -> tuple[bool, str, str]:
    """``DataPathReady``: (status, reason, message)."""
    where = _nodes(replicas)
    if not where:
        return False, "NotPlaced", "no replica placed"
    infos = {n: nodes[n].dpu for n in where if n in nodes}
    connected = [n for n in where if n in infos and infos[n].connected]
    if not connected:
        if all(n not in infos or infos[n].missing for n in where):
            return False, "NoDPU", f"no DPU agent on {', '.join(where)}"
        waiting = [f"{n} ({infos[n].reason or 'not reported'})" for n in where
                   if n in infos and not infos[n].missing]
        return False, "AgentNotConnected", \
            f"the DPU agent is not connected on {', '.join(waiting)}"
    if token_secret is None:
        return False, "TokenMissing", "the job's token Secret does not exist yet"
    return True, "AgentConnected", (
        f"DPU agent connected on {', '.join(connected)} of {len(where)} node(s); "
        f"clients prove the token in Secret {token_secret}")


def render(view: JobView, outcome: Outcome, nodes: Mapping[str, NodeView],
           now: datetime | None = None) -> InferenceJobStatus:
    """The job's new status; conditions keep their transition times when unchanged."""
    prev = view.job.status
    conditions = list(prev.conditions) if prev else []
    gen = view.generation
    demand = view.demand_rps
    replicas = list(outcome.replicas)
    served = sum(r.throughput_rps for r in replicas)
    applied = outcome.applied or {}
    workers = outcome.workers or {}

    def cond(kind: ConditionType, ok: bool, reason: str, message: str = "") -> None:
        set_condition(conditions, kind.value,
                      ConditionStatus.TRUE if ok else ConditionStatus.FALSE,
                      reason, _clip(message), observed_generation=gen, now=now)

    where = ", ".join(_nodes(replicas))
    if outcome.failure is not None:
        phase, message = JobPhase.FAILED, outcome.failure
        cond(ConditionType.PLACED, False, "UnknownModel", message)
        cond(ConditionType.PARTITIONED, False, "NotPlaced")
        cond(ConditionType.READY, False, "NotPlaced")
    elif not replicas:
        if outcome.reason is not None:
            phase, message = JobPhase.UNSCHEDULABLE, f"cannot be placed: {outcome.reason}"
            cond(ConditionType.PLACED, False, "Unschedulable", message)
        else:
            phase, message = JobPhase.PENDING, "waiting for a placement decision"
            cond(ConditionType.PLACED, False, "Pending", message)
        cond(ConditionType.PARTITIONED, False, "NotPlaced")
        cond(ConditionType.READY, False, "NotPlaced")
    else:
        summary = profile_summary([r.to_status() for r in replicas])
        placed_msg = (f"{len(replicas)} replica(s) ({summary})"
                      f" on {where}: {served:.0f} of {demand:g} requests/s"
                      + (f"; throughput from {outcome.source}" if outcome.source else ""))
        short = not demand_met(served, demand)
        if short:
            cond(ConditionType.PLACED, False, "PartiallyPlaced",
                 f"{placed_msg}; {outcome.reason or 'demand not met'}")
        else:
            cond(ConditionType.PLACED, True, "Placed", placed_msg)
        waiting = [n for n in _nodes(replicas) if not applied.get(n, False)]
        if waiting:
            cond(ConditionType.PARTITIONED, False, "WaitingForLayout",
                 f"waiting for {', '.join(waiting)} to apply the MIG layout")
            cond(ConditionType.READY, False, "WaitingForLayout")
            phase = JobPhase.PARTITIONING
            message = f"placed; waiting for {', '.join(waiting)} to apply the MIG layout"
        else:
            cond(ConditionType.PARTITIONED, True, "LayoutApplied",
                 f"MIG layout applied on {where}")
            groups = sorted({(r.node, r.profile) for r in replicas})
            ready = sum(workers.get(g, (0, 0))[0] for g in groups)
            wanted = sum(1 for _ in replicas)
            missing = [g for g in groups if g not in workers]
            if ready >= wanted and not missing:
                cond(ConditionType.READY, True, "WorkersReady", f"{ready} worker(s) ready")
                phase, message = JobPhase.RUNNING, f"serving on {where}"
            else:
                cond(ConditionType.READY, False, "WorkersStarting",
                     f"{ready} of {wanted} worker(s) ready")
                was_running = prev is not None and prev.phase in (JobPhase.RUNNING,
                                                                  JobPhase.DEGRADED)
                phase = JobPhase.DEGRADED if was_running else JobPhase.STARTING
                message = f"{ready} of {wanted} worker(s) ready on {where}"
        if short:
            phase = JobPhase.DEGRADED
            message = (f"serves {served:.0f} of {demand:g} requests/s: "
                       f"{outcome.reason or 'demand not met'}")
        if outcome.retiring and outcome.retiring_set != outcome.worker_set:
            message += (f"; rolling out: {len(outcome.retiring)} replica(s) of the old "
                        f"revision serve until the new ones run")
        elif outcome.retiring:
            message += (f"; migrating: {len(outcome.retiring)} moved replica(s) serve "
                        f"until the new ones run")
    ok, reason, dp_message = data_path_condition(replicas, nodes, outcome.token_secret)
    cond(ConditionType.DATA_PATH_READY, ok, reason, dp_message)
    endpoints = client_endpoints(replicas, nodes)
    return InferenceJobStatus(
        phase=phase,
        replicas=[r.to_status(device_id(nodes.get(r.node), r), claim_template(
            view, r, nodes.get(r.node)), outcome.worker_set) for r in replicas],
        retiring=[r.to_status(device_id(nodes.get(r.node), r), claim_template(
            view, r, nodes.get(r.node)), outcome.retiring_set) for r in outcome.retiring],
        replica_count=len(replicas),
        profiles=profile_summary([r.to_status() for r in replicas]) or None,
        estimated_throughput=round(served, 3),
        demand=demand,
        conditions=conditions,
        observed_generation=gen,
        client_endpoint=endpoints[0].endpoint if endpoints else None,
        client_endpoints=endpoints,
        token_secret=outcome.token_secret,
        message=_clip(message),
        observed=outcome.observed or (prev.observed if prev else None),
        autoscaling=_autoscaling(view, outcome, prev),
    )


def _autoscaling(view: JobView, outcome: Outcome,
                 prev: InferenceJobStatus | None) -> AutoscalingStatus | None:
    """``Auto`` jobs: the controller's decision, else what the status said, else the spec's
    first guess (so that a restarted operator plans for what was planned)."""
    if view.job.spec.scaling.mode is not ScalingMode.AUTO:
        return None
    if outcome.autoscaling is not None:
        return outcome.autoscaling
    if prev is not None and prev.autoscaling is not None:
        return prev.autoscaling
    return AutoscalingStatus(plannedRPS=view.demand_rps, reason="initial expectation "
                             "(spec.demand.requestsPerSecond)")


def same_status(a: InferenceJobStatus | None, b: InferenceJobStatus) -> bool:
    """Whether writing ``b`` over ``a`` would change nothing."""
    return a is not None and a.to_k8s() == b.to_k8s()
