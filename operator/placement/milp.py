"""The exact placement: a pattern-based MILP solved with HiGHS (``highspy``).

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

``replan`` re-solves every job (those in the state and those passed in).  Each
GPU that carries instances is then its own class and is either *kept* or
*freed*.  A kept GPU keeps its MIG geometry (its instance positions plus a
completion): each of its existing replicas is kept (binary ``keep[e,t]``) or
removed, a removed replica's slot becoming free for any job of that profile.
A freed GPU loses all its replicas and joins the pool of empty GPUs of its
model (any configuration).  At most ``migration_budget`` of the existing
replicas may be removed (moved elsewhere or dropped).  This is exact for plans
in which a GPU either keeps its geometry or is entirely re-partitioned; a plan
that keeps some replicas of a GPU *and* re-partitions the space freed around
them is not represented (see :class:`MilpPolicy.replan`).

A kept GPU costs ``E1`` in ``replan`` (in ``place`` every GPU already in use is a
constant).  Among plans of equal objective, a second solve (``prefer_fewer_moves``)
minimises the replicas removed.

When ``E1``, ``E2`` and the job weights are integers the objective takes
multiples of ``gcd(E1, E2)``, so HiGHS stops as soon as the gap is below one
step; ``Decision.mip_gap`` is the relative gap to the dual bound rounded up to
that step, and ``Decision.optimal`` says the gap is zero.

After solving, the counts are decoded into concrete GPUs and start slices and
written into the :class:`ClusterState` with ``state.assign``.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np

from conspirator.operator.placement.cluster import ClusterState, GpuState, Instance
from conspirator.operator.placement.common import (
    INSUFFICIENT_CAPACITY,
    NO_SOLUTION_IN_TIME,
    unplaced_reason,
)
from conspirator.operator.placement.decision import Decision, ReplicaPlacement, Unplaced
from conspirator.operator.placement.gpus import GpuModel, MigProfile, Placement
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.layouts import Layout, completions, layouts
from conspirator.operator.placement.objective import DEMAND_TOLERANCE, E1_GPU, E2_UNMET
from conspirator.operator.placement.throughput import ThroughputTable

SHARED = ""
"""Key of the shared tenant group (tenant groups are otherwise tenant names)."""

_INF = highspy.kHighsInf


# --- a small sparse model builder ---------------------------------------------------------

@dataclass(slots=True)
class _Model:
    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    row_lo: list[float] = field(default_factory=list)
    row_hi: list[float] = field(default_factory=list)
    row_start: list[int] = field(default_factory=lambda: [0])
    row_index: list[int] = field(default_factory=list)
    row_value: list[float] = field(default_factory=list)
    offset: float = 0.0

    def var(self, lower: float, upper: float, cost: float = 0.0, integer: bool = True) -> int:
        self.cost.append(cost)
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(integer)
        return len(self.cost) - 1

    def row(self, terms: Iterable[tuple[int, float]], lo: float, hi: float) -> None:
        acc: dict[int, float] = defaultdict(float)
        for j, v in terms:
            acc[j] += v
        for j, v in acc.items():
            if v != 0.0:
                self.row_index.append(j)
                self.row_value.append(v)
        self.row_start.append(len(self.row_index))
        self.row_lo.append(lo)
        self.row_hi.append(hi)

    def to_highs(self, relax: bool = False) -> highspy.HighsLp:
        lp = highspy.HighsLp()
        lp.num_col_ = len(self.cost)
        lp.num_row_ = len(self.row_lo)
        lp.col_cost_ = np.asarray(self.cost, dtype=np.float64)
        lp.col_lower_ = np.asarray(self.lower, dtype=np.float64)
        lp.col_upper_ = np.asarray(self.upper, dtype=np.float64)
        lp.row_lower_ = np.asarray(self.row_lo, dtype=np.float64)
        lp.row_upper_ = np.asarray(self.row_hi, dtype=np.float64)
        lp.offset_ = self.offset
        a = lp.a_matrix_
        a.format_ = highspy.MatrixFormat.kRowwise
        a.num_col_ = lp.num_col_
        a.num_row_ = lp.num_row_
        a.start_ = np.asarray(self.row_start, dtype=np.int32)
        a.index_ = np.asarray(self.row_index, dtype=np.int32)
        a.value_ = np.asarray(self.row_value, dtype=np.float64)
        if not relax:
            lp.integrality_ = [
                highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                for i in self.integer
            ]
        return lp


# --- the problem ----------------------------------------------------------------------------

@dataclass(slots=True)
class _Class:
    """GPUs that are interchangeable for the model (same model, same contents)."""

    model: GpuModel
    gpus: list[GpuState]
    configs: tuple[Layout, ...]
    groups: list[str]  # tenant groups the class may join
    pool: bool  # True: GPUs without instances (cost E1 each when used)
    keep: bool = False  # replan: an existing GPU that may keep or free its replicas


@dataclass(slots=True)
class _Existing:
    """An existing replica in ``replan``: may be kept in place or removed."""

    gpu: GpuState
    inst: Instance
    job_index: int
    groups: list[str]  # groups in which the GPU may keep it


@dataclass(slots=True)
class _Vars:
    n: dict[tuple[int, int, str], int] = field(default_factory=dict)  # (class, config, group)
    y: dict[tuple[int, str, str, str], int] = field(default_factory=dict)  # (job, model, prof, grp)
    keep: dict[tuple[int, str], int] = field(default_factory=dict)  # (existing index, group)
    delta: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Problem:
    state: ClusterState
    jobs: list[Job]
    demand: list[float]  # demand left to serve (rps) per job
    options: list[dict[tuple[str, str], float]]  # per job: (model, profile) -> rps
    classes: list[_Class]
    groups: list[str]
    existing: list[_Existing]
    replan: bool
    budget: int | None
    constant_gpus: int  # GPUs counted as used whatever the plan
    e1: float
    e2: float
    table: ThroughputTable
    keepable: int = 0  # existing replicas that may stay (replan)
    granularity: float = 0.0  # the objective takes multiples of it (0: unknown)
    model: _Model = field(default_factory=_Model)
    vars: _Vars = field(default_factory=_Vars)


def _job_groups(job: Job, groups: Sequence[str]) -> list[str]:
    if job.dedicated_gpu:
        return [job.tenant]
    return [SHARED] + ([job.tenant] if job.tenant in groups else [])


def _gpu_groups(instances: Iterable[Instance], groups: Sequence[str]) -> list[str]:
    """Groups a GPU carrying ``instances`` (all kept) may belong to."""
    insts = list(instances)
    out = []
    if not any(i.dedicated for i in insts):
        out.append(SHARED)
    tenants = {i.tenant for i in insts}
    out += [t for t in groups if t != SHARED and tenants <= {t}]
    return out


def _options(job: Job, models: Iterable[GpuModel],
             table: ThroughputTable) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    if job.model not in table.models:
        return out
    for m in models:
        for p in m.planning_profiles:
            opt = table.best(job, m, p)
            if opt is not None:
                out[(m.name, p.name)] = opt.throughput_rps
    return out


def _build_problem(state: ClusterState, jobs: Sequence[Job], table: ThroughputTable, *,
                   replan: bool, budget: int | None, e1: float, e2: float) -> _Problem:
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
    groups = [SHARED, *sorted(tenant_groups)]

    classes: list[_Class] = []
    existing: list[_Existing] = []
    constant = 0
    index = {j.id: k for k, j in enumerate(job_list)}
    for m in models:
        gpus = [g for g in state.gpus if g.model.name == m.name]
        empty = [g for g in gpus if g.empty]
        busy = [g for g in gpus if not g.empty]
        if replan:
            # Freed GPUs join the pool; the pool's size is bounded in the model.
            classes.append(_Class(m, empty + busy, layouts(m), groups, pool=True))
            for g in busy:
                classes.append(_Class(m, [g], completions(m, g.placements()), list(groups),
                                      pool=False, keep=True))
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
                    inst_groups = _job_groups(job, groups) if keepable else []
                    existing.append(_Existing(g, inst, k, inst_groups))
        else:
            if empty:
                classes.append(_Class(m, empty, layouts(m), groups, pool=True))
            constant += len(busy)
            by_key: dict[tuple[tuple[tuple[str, int], ...], tuple[str, ...]],
                         list[GpuState]] = defaultdict(list)
            for g in busy:
                pls = tuple(sorted((p.profile.name, p.start) for p in g.placements()))
                by_key[(pls, tuple(_gpu_groups(g.instances, groups)))].append(g)
            for (_, key_groups), members in by_key.items():
                grp = list(key_groups)
                confs = completions(m, members[0].placements())
                if grp and any(not c.empty for c in confs):
                    classes.append(_Class(m, members, confs, grp, pool=False))
    return _Problem(state, job_list, demand, options, classes, groups, existing, replan,
                    budget, constant, e1, e2, table)


def _granularity(pb: _Problem) -> float:
    """Step of the paper objective when ``e1``, ``e2`` and the weights are integers, else 0."""
    values = [pb.e1, pb.e2, *(j.weight for j in pb.jobs)]
    if not all(float(x).is_integer() and x > 0 for x in values):
        return 0.0
    return float(math.gcd(int(pb.e1), int(pb.e2)))


def _formulate(pb: _Problem) -> None:
    md, v = pb.model, pb.vars
    md.offset = pb.e1 * pb.constant_gpus
    # y and delta
    for i, job in enumerate(pb.jobs):
        d = pb.demand[i]
        if d <= job.demand_rps * DEMAND_TOLERANCE:
            continue  # already served
        jg = _job_groups(job, pb.groups)
        for (mname, pname), thr in pb.options[i].items():
            ub = float(math.ceil(d / thr - 1e-9))
            for t in jg:
                v.y[(i, mname, pname, t)] = md.var(0.0, ub)
        v.delta[i] = md.var(0.0, 1.0, pb.e2 * job.weight)
    # N / K per class
    for ci, cl in enumerate(pb.classes):
        for cj, conf in enumerate(cl.configs):
            for t in cl.groups:
                if cl.pool and conf.empty:
                    continue
                cost = pb.e1 if (cl.pool or cl.keep) else 0.0
                v.n[(ci, cj, t)] = md.var(0.0, float(len(cl.gpus)), cost)
    # keep (replan)
    pb.keepable = sum(1 for ex in pb.existing if ex.groups)
    pb.granularity = _granularity(pb)
    for ei, ex in enumerate(pb.existing):
        for t in ex.groups:
            v.keep[(ei, t)] = md.var(0.0, 1.0)

    n_of: dict[int, list[tuple[str, int]]] = defaultdict(list)  # class -> (group, column)
    for (ci, _cj, t), c in v.n.items():
        n_of[ci].append((t, c))
    keep_class = {cl.gpus[0].uid: ci for ci, cl in enumerate(pb.classes) if cl.keep}

    # class sizes
    kept_by_model: dict[str, list[int]] = defaultdict(list)
    for ci, cl in enumerate(pb.classes):
        cols = [c for _, c in n_of[ci]]
        if cl.keep:
            kept_by_model[cl.model.name].extend(cols)
        if not cols:
            continue
        md.row(((c, 1.0) for c in cols), -_INF, float(len(cl.gpus)))
    if pb.replan:
        # a GPU either keeps its geometry (one K) or joins its model's pool
        for ci, cl in enumerate(pb.classes):
            if not cl.pool:
                continue
            pool_cols = [c for _, c in n_of[ci]] + kept_by_model[cl.model.name]
            terms = [(c, 1.0) for c in pool_cols]
            md.row(terms, -_INF, float(len(cl.gpus)))

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
        md.row(terms, -_INF, 0.0)

    # keep only on a GPU kept in that group
    for (ei, t), c in v.keep.items():
        ex = pb.existing[ei]
        ci = keep_class[ex.gpu.uid]
        terms = [(c, 1.0)] + [(n, -1.0) for tt, n in n_of[ci] if tt == t]
        md.row(terms, -_INF, 0.0)

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
        md.row([*terms, (dc, d)], d, _INF)
        md.row([(c, 1.0) for c, _ in y_of[i] + kept_of[i]] + [(dc, 1.0)], 1.0, _INF)

    # migration budget
    if pb.replan and pb.budget is not None:
        md.row(((c, 1.0) for c in v.keep.values()), float(pb.keepable - pb.budget), _INF)


# --- solving and decoding -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Solution:
    values: list[float]
    objective: float  # the solver's, tie-break included
    bound: float  # the solver's dual bound
    optimal: bool  # the solver's status


def new_highs(time_limit_s: float) -> highspy.Highs:
    """A silent, deterministic, single-threaded HiGHS with a time limit."""
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.silent()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("threads", 1)
    return h


def _solve(md: _Model, time_limit_s: float, relax: bool = False, mip_rel_gap: float = 0.0,
           mip_abs_gap: float = 1e-6, start: list[float] | None = None) -> _Solution | None:
    h = new_highs(time_limit_s)
    if not relax:
        h.setOptionValue("mip_rel_gap", mip_rel_gap)
        h.setOptionValue("mip_abs_gap", mip_abs_gap)
    h.passModel(md.to_highs(relax))
    if start is not None:
        hs = highspy.HighsSolution()
        hs.col_value = [float(round(x)) if md.integer[j] else x for j, x in enumerate(start)]
        h.setSolution(hs)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    if info.primal_solution_status != highspy.kSolutionStatusFeasible:
        return None
    values = list(h.getSolution().col_value)
    objective = float(info.objective_function_value)
    optimal = status == highspy.HighsModelStatus.kOptimal
    bound = objective if relax else float(info.mip_dual_bound)
    if not math.isfinite(bound):
        bound = objective if optimal else -math.inf
    return _Solution(values, objective, bound, optimal)


def _decode(pb: _Problem, sol: _Solution) -> tuple[list[ReplicaPlacement], int]:
    state, v = pb.state, pb.vars
    val = sol.values

    def r(c: int) -> int:
        return round(val[c])

    # Which existing replicas are kept (replan).
    kept: set[int] = set()
    for (ei, _t), c in v.keep.items():
        if r(c) >= 1:
            kept.add(ei)
    before = Counter(
        (i.job_id, g.uid, i.profile.name, i.start) for g in state.gpus for i in g.instances
    )
    # GPUs in keep mode (replan) and their group
    keep_mode: dict[int, tuple[int, str]] = {}  # gpu uid -> (config index, group)
    for (ci, cj, t), c in v.n.items():
        cl = pb.classes[ci]
        if cl.keep and r(c) >= 1:
            keep_mode[cl.gpus[0].uid] = (cj, t)
    if pb.replan:
        for ei, ex in enumerate(pb.existing):
            if ei not in kept:
                state.unassign(ex.gpu, ex.inst)
        # Jobs being replanned take their new definition.
        for job in pb.jobs:
            if job.id in state.jobs:
                state.jobs[job.id] = job

    slots: dict[tuple[str, str, str], list[tuple[GpuState, Placement]]] = defaultdict(list)
    freed: dict[int, list[Placement]] = defaultdict(list)  # gpu uid -> slots of removed replicas
    for ei, ex in enumerate(pb.existing):
        if ei not in kept and ex.inst.profile in ex.gpu.model.planning_profiles:
            freed[ex.gpu.uid].append(Placement(ex.inst.profile, ex.inst.start))

    def open_gpus(ci: int, cl: _Class, members: Iterable[GpuState]) -> None:
        it = iter(members)
        for cj, conf in enumerate(cl.configs):
            for t in cl.groups:
                col = v.n.get((ci, cj, t))
                if col is None:
                    continue
                for _ in range(r(col)):
                    g = next(it)
                    extra = freed.get(g.uid, []) if cl.keep else []
                    for pl in (*conf.placements, *extra):
                        slots[(cl.model.name, pl.profile.name, t)].append((g, pl))

    # Existing GPUs first (their slots cost nothing more), then the pool.
    for ci, cl in enumerate(pb.classes):
        if not cl.pool:
            open_gpus(ci, cl, cl.gpus)
    for ci, cl in enumerate(pb.classes):
        if cl.pool:
            open_gpus(ci, cl, [g for g in cl.gpus if g.empty and g.uid not in keep_mode])
    for lst in slots.values():
        lst.reverse()  # pop() takes them in the order added

    placed: list[ReplicaPlacement] = []
    for (i, mname, pname, t), c in sorted(v.y.items()):
        n = r(c)
        if n <= 0 or r(v.delta[i]) >= 1:
            continue
        job = pb.jobs[i]
        thr = pb.options[i][(mname, pname)]
        for _ in range(n):
            g, pl = slots[(mname, pname, t)].pop()
            profile: MigProfile = pl.profile
            state.assign(job, g, profile, pl.start, thr)
            placed.append(ReplicaPlacement(job.id, g.node, g.uid, g.uuid, g.model.name,
                                           profile.name, pl.start, thr))
    after = Counter(
        (i.job_id, g.uid, i.profile.name, i.start) for g in state.gpus for i in g.instances
    )
    migrations = sum((before - after).values())
    if pb.replan:  # the whole plan, as the other policies report a replan
        placed = [
            ReplicaPlacement(i.job_id, g.node, g.uid, g.uuid, g.model.name, i.profile.name,
                             i.start, i.throughput_rps)
            for g in state.gpus for i in g.instances
        ]
    return placed, migrations


def _plan_bound(pb: _Problem, sol: _Solution) -> float:
    """A lower bound on the paper objective from the solver's dual bound."""
    bound = sol.bound
    g = pb.granularity
    if g > 0 and math.isfinite(bound):
        bound = g * math.ceil(bound / g - 1e-6)
    return bound


def _fewer_moves_model(pb: _Problem, value: float) -> _Model:
    """Phase 2 of ``replan``: fewest removed replicas among plans of objective <= ``value``."""
    md = pb.model
    out = _Model(
        cost=[0.0] * len(md.cost), lower=list(md.lower), upper=list(md.upper),
        integer=list(md.integer), row_lo=list(md.row_lo), row_hi=list(md.row_hi),
        row_start=list(md.row_start), row_index=list(md.row_index),
        row_value=list(md.row_value), offset=float(pb.keepable),
    )
    for c in pb.vars.keep.values():
        out.cost[c] = -1.0
    g = pb.granularity
    slack = 0.5 * g if g > 0 else 1e-6 * max(1.0, abs(value))
    out.row(((j, c) for j, c in enumerate(md.cost) if c), -_INF, value - md.offset + slack)
    return out


def _unplaced(pb: _Problem, sol: _Solution | None) -> list[Unplaced]:
    out: list[Unplaced] = []
    models = list(pb.state.models().values())
    for i, job in enumerate(pb.jobs):
        if i in pb.vars.delta:
            if sol is not None and round(sol.values[pb.vars.delta[i]]) < 1:
                continue
        elif pb.demand[i] <= job.demand_rps * DEMAND_TOLERANCE:
            continue
        served = pb.state.served_rps(job.id)
        unmet = max(0.0, job.demand_rps - served)
        if sol is None and pb.options[i]:
            reason = NO_SOLUTION_IN_TIME
        else:
            reason = unplaced_reason(job, models, pb.table)
        out.append(Unplaced(job.id, reason, unmet))
    return out


class MilpPolicy:
    """Exact MIG placement (``name = "milp"``) through HiGHS.

    ``time_limit_s`` bounds each solve; when it is reached the best plan found is
    applied and ``Decision.optimal`` is ``False`` with the remaining gap in
    ``Decision.mip_gap``.
    """

    name = "milp"

    def __init__(self, time_limit_s: float = 60.0, mip_rel_gap: float = 0.0,
                 e1: float = E1_GPU, e2: float = E2_UNMET,
                 prefer_fewer_moves: bool = True, moves_time_share: float = 0.25) -> None:
        if time_limit_s <= 0:
            raise ValueError("time_limit_s must be > 0")
        self.time_limit_s = time_limit_s
        self.mip_rel_gap = mip_rel_gap
        self.e1 = e1
        self.e2 = e2
        self.prefer_fewer_moves = prefer_fewer_moves
        self.moves_time_share = moves_time_share

    def place(self, state: ClusterState, jobs: Sequence[Job],
              table: ThroughputTable) -> Decision:
        """Place ``jobs`` without touching the instances already in ``state``.

        A job that already has replicas is topped up to its demand.
        ``Decision.placed`` lists the replicas created.
        """
        return self._run(state, jobs, table, replan=False, budget=None)

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision:
        """Re-solve every job of ``state.jobs`` plus ``jobs`` (new definitions win).

        At most ``migration_budget`` existing replicas that still meet their
        job's memory, SLO and allowed GPUs are removed from where they are
        (moved or dropped); replicas that no longer meet them are always
        removed and not counted against the budget.  A GPU either keeps its MIG
        geometry (kept replicas stay, removed ones free their slot for any job
        of the same profile, a completion may be added next to them) or is
        re-partitioned from scratch with all its replicas removed; plans that
        re-partition part of a GPU around replicas kept on it are not
        considered.  ``+me`` instances can be kept, their slots are not reused.

        Phase 1 minimises the paper objective (this is what ``optimal`` and
        ``mip_gap`` refer to); phase 2, given at most ``moves_time_share`` of the
        time limit, minimises the replicas removed among plans as good
        (``prefer_fewer_moves``).  ``Decision.placed`` lists every replica of
        the resulting plan, as the other policies' ``replan`` does;
        ``Decision.migrations`` counts the existing replicas no longer where
        they were.
        """
        if migration_budget is not None and migration_budget < 0:
            raise ValueError("migration_budget must be >= 0")
        return self._run(state, jobs, table, replan=True, budget=migration_budget)

    def _run(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
             replan: bool, budget: int | None) -> Decision:
        t0 = time.perf_counter()
        pb = _build_problem(state, jobs, table, replan=replan, budget=budget, e1=self.e1,
                            e2=self.e2)
        _formulate(pb)
        remaining = max(1e-3, self.time_limit_s - (time.perf_counter() - t0))
        g = pb.granularity
        # With a granular objective, a gap below one step already proves the plan optimal.
        abs_gap = 0.999 * g if g > 0 else 1e-6
        sol = _solve(pb.model, remaining, mip_rel_gap=self.mip_rel_gap, mip_abs_gap=abs_gap)
        decision = Decision(policy=self.name)
        plan: _Solution | None = sol
        if sol is not None:
            value = sol.objective
            bound = _plan_bound(pb, sol)
            if replan and self.prefer_fewer_moves and pb.vars.keep:
                # Phase 2: among plans as good as this one, remove the fewest replicas.
                left = self.time_limit_s - (time.perf_counter() - t0)
                limit = min(left, max(1.0, self.moves_time_share * self.time_limit_s))
                if limit > 0:
                    sol2 = _solve(_fewer_moves_model(pb, value), limit, mip_abs_gap=0.999,
                                  start=sol.values)
                    if sol2 is not None:
                        plan = sol2
            assert plan is not None
            value = sum(c * x for c, x in zip(pb.model.cost, plan.values, strict=True) if c)
            value += pb.model.offset
            decision.placed, decision.migrations = _decode(pb, plan)
            gap = max(0.0, value - bound) / max(abs(value), 1e-9) if math.isfinite(bound) \
                else math.inf
            decision.objective = value
            decision.mip_gap = gap if gap > 1e-9 else 0.0
            decision.optimal = decision.mip_gap == 0.0 or (sol.optimal and not self.mip_rel_gap)
        else:
            decision.optimal = False
        decision.unplaced = _unplaced(pb, plan)
        decision.solve_seconds = time.perf_counter() - t0
        return decision


def lower_bound(state: ClusterState, jobs: Sequence[Job], table: ThroughputTable, *,
                replan: bool = False, migration_budget: int | None = None,
                time_limit_s: float = 60.0, e1: float = E1_GPU, e2: float = E2_UNMET) -> float:
    """LP-relaxation value of the model :class:`MilpPolicy` would solve (a lower bound)."""
    pb = _build_problem(state, jobs, table, replan=replan, budget=migration_budget, e1=e1,
                        e2=e2)
    _formulate(pb)
    sol = _solve(pb.model, time_limit_s, relax=True)
    if sol is None:
        raise RuntimeError("LP relaxation not solved")
    return sol.objective


__all__ = ["INSUFFICIENT_CAPACITY", "SHARED", "MilpPolicy", "lower_bound"]
