"""The pattern model of MIG placement: the problem, its (MI)LP and nothing else.

The exact policy (:mod:`~conspirator.operator.placement.milp`) solves it, ``lpdive``
dives on its LP, ``submip`` solves restricted copies of it;
:mod:`~conspirator.operator.placement.pattern_decode` writes a solution into the
cluster.  :func:`build_problem` reads the cluster and the jobs into a
:class:`PatternProblem`, :func:`formulate` writes its
:class:`~conspirator.operator.placement.lpmodel.LinearModel`.

Formulation (DESIGN section 5, with real MIG geometry)
------------------------------------------------------
GPUs of one model that carry nothing are interchangeable, so instead of one
variable per physical GPU the model counts how many GPUs of each *class* use
each *configuration* for each *tenant group*:

* configurations are the Pareto-maximal MIG layouts of
  :mod:`~conspirator.operator.placement.layouts` (one ``whole`` slot on a
  non-MIG GPU); a GPU that already carries instances uses a *completion* of its
  layout instead (its instances stay where they are);
* tenant groups are ``shared`` plus one group per tenant with dedicated jobs.
  A GPU in tenant ``t``'s group hosts only tenant ``t``; a GPU in the shared
  group hosts no dedicated job.  Dedicated jobs use their tenant's group only,
  other jobs the shared group or their tenant's group.

Variables, all integer (``delta`` binary):

* ``N[m,c,t]``: empty GPUs of model ``m`` using configuration ``c`` in group ``t``;
  ``sum_{c,t} N[m,c,t] <= #empty GPUs of m``;
* ``K[k,c,t]``: GPUs of existing class ``k`` (identical model, layout and
  tenants) completed with ``c`` in group ``t``; ``sum_{c,t} K[k,c,t] <= |k|``;
* ``y[i,m,p,t]``: replicas of job ``i`` on profile ``p`` of model ``m`` in group
  ``t``, with ``sum_i y[i,m,p,t] <= sum_c count(c,p) * (N[m,c,t] + sum_k K[k,c,t])``
  (slots of one model, profile and group are interchangeable: their throughput
  is the table's and any subset of a valid layout is valid);
* ``delta[i]``: job ``i``'s demand is unmet:
  ``sum thr(i,m,p) * y[i,m,p,t] >= D_i * (1 - delta_i)`` (coefficients capped at
  ``D_i``, an exact strengthening) and ``sum y[i,...] >= 1 - delta_i``.

Objective: ``E1 * GPUs used + E2 * sum_i weight_i * delta_i`` (the constants of
:mod:`~conspirator.operator.placement.objective`; GPUs already in use count as
used).  Since the count of GPUs, not their identity, enters the model, there is
no GPU symmetry to break.

With ``replan`` every job (those in the state and those passed in) is re-solved.
Each GPU that carries instances is then its own class and is either *kept* or
*freed*.  A kept GPU keeps its MIG geometry (its instance positions plus a
completion): each of its existing replicas is kept (binary ``keep[e,t]``) or
removed, a removed replica's slot becoming free for any job of that profile.
A freed GPU loses all its replicas and joins the pool of empty GPUs of its
model (any configuration).  At most ``budget`` of the existing replicas may be
removed (moved elsewhere or dropped).  A kept GPU costs ``E1`` in ``replan`` (in
``place`` every GPU already in use is a constant).

When ``E1``, ``E2`` and the job weights are integers the objective takes
multiples of ``gcd(E1, E2)``: :attr:`PatternProblem.granularity`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conspirator.operator.placement.cluster import ClusterState, GpuState, Instance
from conspirator.operator.placement.common import SHARED, job_groups, job_options, spot_group
from conspirator.operator.placement.gpus import GpuModel
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.layouts import Layout, completions, layouts
from conspirator.operator.placement.lpmodel import INF, LinearModel
from conspirator.operator.placement.objective import DEMAND_TOLERANCE
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy
from conspirator.operator.placement.throughput import ThroughputTable


@dataclass(slots=True)
class GpuClass:
    """GPUs that are interchangeable for the model (same model, same contents)."""

    model: GpuModel
    gpus: list[GpuState]
    configs: tuple[Layout, ...]
    groups: list[str]  # tenant groups the class may join
    pool: bool  # True: GPUs without instances (cost E1 each when used)
    keep: bool = False  # replan: an existing GPU that may keep or free its replicas
    spot: bool = False  # GPUs of the spot pool (their groups are the spot variants)


@dataclass(slots=True)
class ExistingReplica:
    """An existing replica in ``replan``: may be kept in place or removed."""

    gpu: GpuState
    inst: Instance
    job_index: int
    groups: list[str]  # groups in which the GPU may keep it


@dataclass(slots=True)
class PatternVars:
    """Column indices of the model's variables, by what they count."""

    n: dict[tuple[int, int, str], int] = field(default_factory=dict)  # (class, config, group)
    y: dict[tuple[int, str, str, str], int] = field(default_factory=dict)  # (job, model, prof, grp)
    keep: dict[tuple[int, str], int] = field(default_factory=dict)  # (existing index, group)
    delta: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class PatternProblem:
    """Everything the model is built from, and the model once formulated."""

    state: ClusterState
    jobs: list[Job]
    demand: list[float]  # demand left to serve (rps) per job
    options: list[dict[tuple[str, str], float]]  # per job: (model, profile) -> rps
    classes: list[GpuClass]
    groups: list[str]
    existing: list[ExistingReplica]
    replan: bool
    budget: int | None
    constant_gpus: int  # GPUs counted as used whatever the plan
    e1: float
    e2: float
    table: ThroughputTable
    plan: PlanPolicy = DEFAULT_POLICY
    scale: float = 1.0  # the plan's normaliser (PlanPolicy.scale)
    keepable: int = 0  # existing replicas that may stay (replan)
    granularity: float = 0.0  # the objective takes multiples of it (0: unknown)
    model: LinearModel = field(default_factory=LinearModel)
    vars: PatternVars = field(default_factory=PatternVars)

    @property
    def optimality_gap(self) -> float:
        """HiGHS's ``mip_abs_gap`` for this model: with a granular objective a gap below one
        step already proves the plan optimal."""
        g = self.granularity
        if g > 0:
            return 0.999 * g
        # A priced objective: a thousandth of the dearest GPU is not worth proving.
        return 1e-6 if self.plan.objective == "gpus" else 1e-3

    def gpu_cost(self, cl: GpuClass) -> float:
        """Objective charge of one GPU of class ``cl`` in use (gpus: ``e1``)."""
        return self.e1 * self.plan.gpu_cost(cl.model, cl.spot, self.scale)

    def instance_cost(self, model: GpuModel, profile_name: str) -> float:
        if self.plan.objective != "energy":
            return 0.0
        prof = next(p for p in model.planning_profiles if p.name == profile_name)
        return self.e1 * self.plan.instance_cost(model, prof, self.scale)

    def round_bound(self, bound: float) -> float:
        """A lower bound on the objective rounded up to the objective's step (if any)."""
        g = self.granularity
        if g > 0 and math.isfinite(bound):
            return g * math.ceil(bound / g - 1e-6)
        return bound



def _gpu_groups(instances: Iterable[Instance], groups: Sequence[str],
                spot: bool) -> list[str]:
    """Groups a GPU carrying ``instances`` (all kept) may belong to."""
    insts = list(instances)
    out = []
    if not any(i.dedicated for i in insts):
        out.append(SHARED)
    tenants = {i.tenant for i in insts}
    out += [t for t in groups if t != SHARED and tenants <= {t}]
    return _pool_groups(out, spot)


def _pool_groups(groups: Sequence[str], spot: bool) -> list[str]:
    """The groups of a GPU of the on-demand pool (``groups``) or of the spot pool."""
    return [spot_group(g) for g in groups] if spot else list(groups)


def _options(job: Job, models: Iterable[GpuModel],
             table: ThroughputTable) -> dict[tuple[str, str], float]:
    """(GPU model, profile) -> throughput of one replica, for every feasible option."""
    return {(o.model.name, o.profile.name): o.throughput for o in job_options(job, models, table)}


def build_problem(state: ClusterState, jobs: Sequence[Job], table: ThroughputTable, *,
                  replan: bool, budget: int | None, e1: float, e2: float,
                  plan: PlanPolicy = DEFAULT_POLICY) -> PatternProblem:
    """The problem of placing ``jobs`` into ``state`` (``replan``: every job afresh).

    GPUs that are down take no part; spot GPUs form their own classes, whose groups are
    the spot variants (only spot-tolerant jobs may use them).
    """
    models = sorted(state.models().values(), key=lambda m: m.name)
    if replan:
        planned: dict[str, Job] = dict(state.jobs)
        for j in jobs:
            planned[j.id] = j
        job_list = list(planned.values())
        demand = [j.demand_rps for j in job_list]
    else:
        seen: dict[str, Job] = {}
        for j in jobs:
            seen[j.id] = j
        job_list = list(seen.values())
        demand = [max(0.0, j.demand_rps - state.served_rps(j.id)) for j in job_list]
    options = [_options(j, models, table) for j in job_list]

    tenant_groups = {j.tenant for j in job_list if j.dedicated_gpu}
    if not replan:
        tenant_groups |= {i.tenant for g in state.gpus for i in g.instances if i.dedicated}
    base_groups = [SHARED, *sorted(tenant_groups)]
    has_spot = any(g.spot and not g.down for g in state.gpus)
    groups = base_groups + (_pool_groups(base_groups, True) if has_spot else [])

    classes: list[GpuClass] = []
    existing: list[ExistingReplica] = []
    constant = 0
    index = {j.id: k for k, j in enumerate(job_list)}
    for m, spot in ((m, spot) for m in models for spot in (False, True)):
        gpus = [g for g in state.gpus if g.model.name == m.name and g.spot == spot]
        grp_all = _pool_groups(base_groups, spot)
        if replan and any(g.down and not g.empty for g in gpus):
            raise ValueError(f"a {m.name} GPU that is down still carries replicas")
        gpus = [g for g in gpus if not g.down]
        empty = [g for g in gpus if g.empty]
        busy = [g for g in gpus if not g.empty]
        if not gpus:
            continue
        if replan:
            # Freed GPUs join the pool; the pool's size is bounded in the model.
            classes.append(GpuClass(m, empty + busy, layouts(m), grp_all, pool=True, spot=spot))
            for g in busy:
                classes.append(GpuClass(m, [g], completions(m, g.placements()), list(grp_all),
                                      pool=False, keep=True, spot=spot))
                for inst in g.instances:
                    if inst.job_id not in index:
                        raise ValueError(f"{g.uuid} carries a replica of {inst.job_id!r}, "
                                         f"which is not in state.jobs")
                    k = index[inst.job_id]
                    job = job_list[k]
                    # A whole non-MIG GPU's replica has the pseudo-profile ``whole``,
                    # which is not in ``m.profiles``: it is kept like any instance.
                    own = inst.profile in m.profiles or (not m.mig_capable
                                                         and inst.profile == m.whole)
                    keepable = (job.model in table.models and own
                                and table.best(job, m, inst.profile) is not None)
                    inst_groups = [t for t in job_groups(job, groups) if t in grp_all] \
                        if keepable else []
                    existing.append(ExistingReplica(g, inst, k, inst_groups))
        else:
            if empty:
                classes.append(GpuClass(m, empty, layouts(m), grp_all, pool=True, spot=spot))
            constant += len(busy)
            by_key: dict[tuple[tuple[tuple[str, int], ...], tuple[str, ...]],
                         list[GpuState]] = defaultdict(list)
            for g in busy:
                pls = tuple(sorted((p.profile.name, p.start) for p in g.placements()))
                by_key[(pls, tuple(_gpu_groups(g.instances, base_groups, spot)))].append(g)
            for (_, key_groups), members in by_key.items():
                grp = list(key_groups)
                confs = completions(m, members[0].placements())
                if grp and any(not c.empty for c in confs):
                    classes.append(GpuClass(m, members, confs, grp, pool=False, spot=spot))
    return PatternProblem(state, job_list, demand, options, classes, groups, existing, replan,
                    budget, constant, e1, e2, table, plan=plan, scale=plan.scale(state.gpus))



def _granularity(pb: PatternProblem) -> float:
    """Step of the paper objective when ``e1``, ``e2`` and the weights are integers, else 0."""
    values = [pb.e1, pb.e2, *(j.weight for j in pb.jobs)]
    if pb.plan.objective != "gpus" or not all(float(x).is_integer() and x > 0 for x in values):
        return 0.0
    return float(math.gcd(int(pb.e1), int(pb.e2)))



def _kept_served(pb: PatternProblem) -> set[int]:
    """Jobs a re-plan must keep served: their replicas still valid meet their demand.

    Keeping every such replica where it is remains a feasible plan, so fixing these jobs'
    ``delta`` at 0 costs no feasibility; without it the objective may drop a served job
    when the GPUs it frees weigh more than its unmet penalty, and a re-plan would then
    take capacity away from a running job.
    """
    if not pb.replan:
        return set()
    rps: dict[int, float] = defaultdict(float)
    for ex in pb.existing:
        if ex.groups:
            rps[ex.job_index] += ex.inst.throughput_rps
    return {i for i, r in rps.items()
            if r >= pb.jobs[i].demand_rps * (1.0 - DEMAND_TOLERANCE)}


def _constant_cost(pb: PatternProblem) -> float:
    """``place``: what the busy GPUs and their instances cost under ``pb.plan``."""
    total = 0.0
    for g in pb.state.gpus:
        if g.instances:
            total += pb.e1 * pb.plan.gpu_cost(g.model, g.spot, pb.scale)
            total += sum(pb.e1 * pb.plan.instance_cost(g.model, i.profile, pb.scale)
                         for i in g.instances if not i.time_share)
    return total


def formulate(pb: PatternProblem) -> None:
    """Write ``pb.model`` (and ``pb.vars``, ``keepable``, ``granularity``) from ``pb``."""
    md, v = pb.model, pb.vars
    if pb.plan.objective == "gpus":
        md.offset = pb.e1 * pb.constant_gpus
    else:  # what the GPUs and instances kept as they are cost (place: every busy GPU)
        md.offset = 0.0 if pb.replan else _constant_cost(pb)
    served = _kept_served(pb)
    # y and delta
    for i, job in enumerate(pb.jobs):
        d = pb.demand[i]
        if d <= job.demand_rps * DEMAND_TOLERANCE:
            continue  # already served
        jg = job_groups(job, pb.groups)
        for (mname, pname), thr in pb.options[i].items():
            ub = float(math.ceil(d / thr - 1e-9))
            m = pb.state.models()[mname]
            icost = pb.instance_cost(m, pname)
            for t in jg:
                v.y[(i, mname, pname, t)] = md.var(0.0, ub, icost)
        v.delta[i] = md.var(0.0, 0.0 if i in served else 1.0, pb.e2 * job.weight)
    # N / K per class
    for ci, cl in enumerate(pb.classes):
        for cj, conf in enumerate(cl.configs):
            for t in cl.groups:
                if cl.pool and conf.empty:
                    continue
                cost = pb.gpu_cost(cl) if (cl.pool or cl.keep) else 0.0
                v.n[(ci, cj, t)] = md.var(0.0, float(len(cl.gpus)), cost)
    # keep (replan)
    pb.keepable = sum(1 for ex in pb.existing if ex.groups)
    pb.granularity = _granularity(pb)
    for ei, ex in enumerate(pb.existing):
        kcost = pb.e1 * pb.plan.instance_cost(ex.gpu.model, ex.inst.profile, pb.scale) \
            if not ex.inst.time_share else 0.0
        for t in ex.groups:
            v.keep[(ei, t)] = md.var(0.0, 1.0, kcost)

    n_of: dict[int, list[tuple[str, int]]] = defaultdict(list)  # class -> (group, column)
    for (ci, _cj, t), c in v.n.items():
        n_of[ci].append((t, c))
    keep_class = {cl.gpus[0].uid: ci for ci, cl in enumerate(pb.classes) if cl.keep}

    # class sizes
    kept_by_model: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for ci, cl in enumerate(pb.classes):
        cols = [c for _, c in n_of[ci]]
        if cl.keep:
            kept_by_model[(cl.model.name, cl.spot)].extend(cols)
        if not cols:
            continue
        md.row(((c, 1.0) for c in cols), -INF, float(len(cl.gpus)))
    if pb.replan:
        # a GPU either keeps its geometry (one K) or joins its model's pool
        for ci, cl in enumerate(pb.classes):
            if not cl.pool:
                continue
            pool_cols = [c for _, c in n_of[ci]] + kept_by_model[(cl.model.name, cl.spot)]
            terms = [(c, 1.0) for c in pool_cols]
            md.row(terms, -INF, float(len(cl.gpus)))

    # slot capacity per (model, profile, group)
    cap: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for (_i, mname, pname, t), c in v.y.items():
        cap[(mname, pname, t)].append((c, 1.0))
    for (ci, cj, t), c in v.n.items():
        cl = pb.classes[ci]
        conf = cl.configs[cj]
        for p, cnt in zip(cl.model.planning_profiles, conf.counts, strict=True):
            key = (cl.model.name, p.name, t)
            if cnt and key in cap:
                cap[key].append((c, -float(cnt)))
    # replan: slots of removed replicas on kept GPUs
    for ei, ex in enumerate(pb.existing):
        if ex.inst.profile not in ex.gpu.model.planning_profiles:
            continue
        ci = keep_class[ex.gpu.uid]
        for t in pb.classes[ci].groups:
            key = (ex.gpu.model.name, ex.inst.profile.name, t)
            if key not in cap:
                continue
            cap[key] += [(c, -1.0) for tt, c in n_of[ci] if tt == t]
            if (ei, t) in v.keep:
                cap[key].append((v.keep[(ei, t)], 1.0))
    for terms in cap.values():
        md.row(terms, -INF, 0.0)

    # keep only on a GPU kept in that group
    for (ei, t), c in v.keep.items():
        ex = pb.existing[ei]
        ci = keep_class[ex.gpu.uid]
        terms = [(c, 1.0)] + [(n, -1.0) for tt, n in n_of[ci] if tt == t]
        md.row(terms, -INF, 0.0)

    # demand
    kept_of: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (ei, _t), c in v.keep.items():
        ex = pb.existing[ei]
        kept_of[ex.job_index].append((c, ex.inst.throughput_rps))
    y_of: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (i, mname, pname, _t), c in v.y.items():
        y_of[i].append((c, pb.options[i][(mname, pname)]))
    for i, dc in v.delta.items():
        d = pb.demand[i] * (1.0 - DEMAND_TOLERANCE)
        terms = [(c, min(thr, d)) for c, thr in y_of[i] + kept_of[i]]
        md.row([*terms, (dc, d)], d, INF)
        md.row([(c, 1.0) for c, _ in y_of[i] + kept_of[i]] + [(dc, 1.0)], 1.0, INF)

    # migration budget
    if pb.replan and pb.budget is not None:
        md.row(((c, 1.0) for c in v.keep.values()), float(pb.keepable - pb.budget), INF)



__all__ = ["SHARED", "ExistingReplica", "GpuClass", "PatternProblem", "PatternVars",
           "build_problem", "formulate"]
