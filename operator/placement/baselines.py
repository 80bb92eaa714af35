"""Baseline policies for the MIG track, behind the same interface as the heuristic.

* ``whole-gpu``: every replica gets a whole GPU (the full profile on MIG GPUs),
  first fit in cluster order, blind to heterogeneity.
* ``naive-sharing``: GPUs are time-sliced, not partitioned; a job takes the first
  GPU (cluster order) with enough time and memory left, blind to heterogeneity.
  A replica holding a share ``s`` of a GPU serves ``s`` times the whole GPU's
  SLO-feasible throughput (an optimistic model: time slicing's extra latency is
  ignored, which favours the baseline).
* ``bestfit``: MIG partitions, blind to heterogeneity: the smallest profile that
  fits the job's memory and SLO, on the used GPU it leaves with the fewest free
  slices, else a new GPU in cluster order.
* ``gavel``: heterogeneity-aware without partitioning (Gavel, OSDI'20): whole GPUs
  of the model that gives the job the most throughput per GPU.

None of them migrates: ``replan`` places what is not yet placed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from conspirator.operator.placement.cluster import ClusterState, GpuState, Instance
from conspirator.operator.placement.common import Option, best_start, finish_job, job_options
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.gpus import GpuModel
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.objective import DEMAND_TOLERANCE
from conspirator.operator.placement.throughput import ThroughputTable


def _full(opts: Sequence[Option], model: GpuModel) -> Option | None:
    full = model.full_profile if model.mig_capable else model.whole
    for o in opts:
        if o.model.name == model.name and o.profile.name == full.name:
            return o
    return None


class _Greedy:
    """A replica-at-a-time policy; subclasses choose each replica's GPU and profile."""

    name = "baseline"

    def place(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable) -> Decision:
        t0 = time.perf_counter()
        dec = Decision(self.name)
        models = list(state.models().values())
        for job in jobs:  # arrival order: baselines do not reorder
            opts = job_options(job, models, table)
            added: list[tuple[GpuState, Instance]] = []
            remaining = job.demand_rps - state.served_rps(job.id)
            while remaining > job.demand_rps * DEMAND_TOLERANCE:
                pick = self.step(state, job, opts, remaining)
                if pick is None:
                    break
                gpu, opt, start, share = pick
                thr = opt.throughput * share if share else opt.throughput
                added.append((gpu, state.assign(job, gpu, opt.profile, start, thr, share)))
                remaining -= thr
            finish_job(state, job, dec, added, models, table)
        dec.solve_seconds = time.perf_counter() - t0
        return dec

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision:
        return self.place(state, [j for j in jobs if j.id not in state.jobs], table)

    def step(self, state: ClusterState, job: Job, opts: Sequence[Option],
             remaining: float) -> tuple[GpuState, Option, int, float] | None:
        raise NotImplementedError


class WholeGpu(_Greedy):
    name = "whole-gpu"

    def step(self, state: ClusterState, job: Job, opts: Sequence[Option],
             remaining: float) -> tuple[GpuState, Option, int, float] | None:
        for g in state.gpus:
            if g.instances:
                continue
            o = _full(opts, g.model)
            if o is not None:
                return g, o, 0, 0.0
        return None


class NaiveSharing(_Greedy):
    name = "naive-sharing"

    def step(self, state: ClusterState, job: Job, opts: Sequence[Option],
             remaining: float) -> tuple[GpuState, Option, int, float] | None:
        for g in state.gpus:
            if g.used_mask or not g.admits(job):
                continue
            o = _full(opts, g.model)
            if o is None:
                continue
            free_time = 1.0 - g.time_share_used
            if free_time <= 1e-6 or g.memory_used_gib + job.memory_gib > g.model.memory_gib:
                continue
            share = min(free_time, remaining / o.throughput)
            # A time-sliced replica holds the job's memory, not the whole GPU's.
            profile = replace(o.profile, memory_gib=job.memory_gib)
            return g, replace(o, replica=replace(o.replica, profile=profile)), 0, share
        return None


class BestFit(_Greedy):
    name = "bestfit"

    def step(self, state: ClusterState, job: Job, opts: Sequence[Option],
             remaining: float) -> tuple[GpuState, Option, int, float] | None:
        smallest: dict[str, Option] = {}
        for o in opts:
            cur = smallest.get(o.model.name)
            if cur is None or (o.profile.memory_slices, o.profile.compute_slices) < (
                    cur.profile.memory_slices, cur.profile.compute_slices):
                smallest[o.model.name] = o
        best: tuple[GpuState, Option, int, float] | None = None
        best_free = 1 << 30
        first_empty: tuple[GpuState, Option, int, float] | None = None
        for g in state.gpus:
            so = smallest.get(g.model.name)
            if so is None or not g.admits(job):
                continue
            starts = g.free_starts(so.profile)
            if not starts:
                continue
            if not g.instances:
                if first_empty is None:
                    first_empty = (g, so, best_start(g, so.profile, starts), 0.0)
                continue
            left = g.free_slots - so.profile.memory_slices
            if left < best_free:
                best_free = left
                best = (g, so, best_start(g, so.profile, starts), 0.0)
        return best or first_empty


class Gavel(_Greedy):
    name = "gavel"

    def step(self, state: ClusterState, job: Job, opts: Sequence[Option],
             remaining: float) -> tuple[GpuState, Option, int, float] | None:
        fulls = {g.model.name: _full(opts, g.model) for g in state.gpus}
        ranked = sorted((o for o in fulls.values() if o is not None),
                        key=lambda o: -o.throughput)
        for o in ranked:
            for g in state.gpus:
                if not g.instances and g.model.name == o.model.name:
                    return g, o, 0, 0.0
        return None
