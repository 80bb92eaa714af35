"""In-process benchmark of the operator's global re-plan (not a test; no cluster).

Builds the planner's inputs the way the API server would send them: ``--gpus / 8`` GPUNodes
(A100-80GB and H100-80GB alternating, MIG on), ``--jobs`` InferenceJobs with the seeded mix of
``benchmarks/operator_scale.py`` (resnet50, resnet18, bert-base; 100-1,500 requests/s; half
with one of 8 tenants).  Every job is placed by the arrival path (one planner pass), then
the global re-plan runs as the operator runs it:

* ``replan_s``: :func:`~conspirator.operator.global_replan.replan` on the engine state (the
  part that runs off the planner's critical path), with the phases it spends its time in;
* ``commit_s``: the planner pass that re-validates the proposal and commits it;
* ``rebuild_s``: a restarted operator's first pass (every reservation read back from the
  statuses); ``restart_changed`` counts the reservations that pass changed (0 expected).

    python benchmarks/operator_replan.py --jobs 1000 --gpus 800 [--jobs 10000 --gpus 8000]
        [--out benchmarks/results/operator]

Writes ``DIR/replan_<jobs>.json`` per size and ``DIR/replan.md`` (all sizes in the file).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import resource
import threading
import time
from pathlib import Path
from typing import Any

from conspirator.operator import replan_job
from conspirator.operator.cache import Work
from conspirator.operator.global_replan import ReplanResult
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.planner import Inputs, Plan, decide
from conspirator.operator.views import JobView, NodeView

API = "conspirator.io/v1alpha1"
MODELS = ("A100-80GB", "H100-80GB")


def node_body(i: int, gpus: int) -> dict[str, Any]:
    model = MODELS[i % 2]
    name = f"scale-{model.split('-')[0].lower()}-{i:04d}"
    return {"apiVersion": API, "kind": "GPUNode",
            "metadata": {"name": name, "generation": 1, "resourceVersion": "1"},
            "spec": {},
            "status": {"gpus": [{"index": g, "uuid": f"GPU-{name}-{g}", "model": model,
                                 "memoryGiB": 80, "migCapable": True, "migEnabled": True,
                                 "instances": []} for g in range(gpus)]}}


def job_body(i: int, rng: random.Random) -> dict[str, Any]:
    """The job mix of benchmarks/operator_scale.py's workload()."""
    model = rng.choice(["resnet50", "resnet18", "bert-base"])
    rps = float(rng.choice([100, 200, 400, 700, 1000, 1500]))
    p99 = float(rng.choice([25, 50, 100]))
    memory = float(rng.choice([2, 4, 8]))
    batch = rng.choice([4, 8, 16])
    spec: dict[str, Any] = {
        "model": {"name": model, "image": "conspirator/worker:0.1.0"},
        "demand": {"requestsPerSecond": rps, "p99LatencyMs": p99, "gpuMemoryGiB": memory},
        "dataPath": {"inputShape": [3, 224, 224], "dtype": "float16", "maxBatch": batch},
        "migration": {"allowed": True},
    }
    if rng.random() < 0.5:
        spec["tenant"] = f"tenant-{rng.randrange(8)}"
    created = f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
    return {"apiVersion": API, "kind": "InferenceJob",
            "metadata": {"name": f"job-{i:05d}", "namespace": "scale", "uid": f"uid-{i}",
                         "generation": 1, "creationTimestamp": created,
                         "resourceVersion": str(i + 1)},
            "spec": spec}


def work(jobs: dict[str, JobView], nodes: dict[str, NodeView], *, replan: bool = False,
         rebuild: bool = False, dirty: set[str] | None = None) -> Work:
    return Work(jobs=dict(jobs), nodes=dict(nodes), profiles={}, workers={},
                spec_dirty=set(dirty or ()), status_dirty=set(), nodes_dirty=set(),
                rebuild=rebuild, capacity=rebuild, replan=replan)


def snapshot(plan: Plan, jobs: dict[str, JobView], nodes: dict[str, NodeView]
             ) -> replan_job.ReplanJob:
    assert plan.engine is not None and plan.table is not None
    ordered = sorted(jobs.values(), key=lambda v: v.order)
    return replan_job.snapshot(plan.engine, plan.table.table, ordered, nodes.values(),
                               plan.reserved, plan.retiring,
                               {v.key: plan.served(v) for v in ordered}, plan.failures)


def with_status(body: dict[str, Any], reps: list[Any]) -> dict[str, Any]:
    out = dict(body)
    out["status"] = {"replicas": [r.to_status().model_dump(by_alias=True, mode="json",
                                                          exclude_none=True) for r in reps]}
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def bench(n_jobs: int, n_gpus: int, seed: int, deadline: float, arrivals: int,
          profile: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    bodies = [job_body(i, rng) for i in range(n_jobs)]
    nodes = {v.name: v for v in (NodeView.from_body(node_body(i, 8))
                                 for i in range(n_gpus // 8))}
    jobs = {v.key: v for v in map(JobView.from_body, bodies)}
    policy = ConspiratorPolicy(time_limit_s=10.0)
    inputs = Inputs(policy=policy, max_migrations=8)
    t = time.perf_counter()
    d = decide(work(jobs, nodes, rebuild=True, dirty=set(jobs)), Plan(), inputs)
    out: dict[str, Any] = {"jobs": n_jobs, "gpus": n_gpus, "nodes": len(nodes),
                           "place_all_one_pass_s": round(time.perf_counter() - t, 2),
                           "placed": len(d.plan.reserved),
                           "gpus_in_use": d.tally.gpus_in_use}
    plan = d.plan
    # Cold: every pool solved (no deadline), profiled where asked.
    job = snapshot(plan, jobs, nodes)
    prof = cProfile.Profile()
    if profile:
        prof.enable()
    cold = replan_job.run(job, policy, 8)
    if profile:
        prof.disable()
        stats = pstats.Stats(prof)
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])  # type: ignore[attr-defined]
        out["profile_cumulative_s"] = {f"{k[0].split('site-packages/')[-1]}:{k[2]}":
                                       round(v[3], 2) for k, v in top[:25]}
    out["replan_cold_s"] = round(cold.seconds, 2)
    out["replan_cold"] = {"note": cold.note, "pools": cold.pools, "solved": cold.solved,
                          "held_gpus": cold.held_gpus, "frozen_gpus": cold.frozen_gpus}
    # Warm: the next periodic re-plan, nothing changed since (kept pools are not re-solved).
    warm = replan_job.run(snapshot(plan, jobs, nodes), policy, 8, known=frozenset(cold.kept))
    out["replan_warm_s"] = round(warm.seconds, 3)
    out["replan_warm_note"] = warm.note
    # With the operator's deadline (--replan-deadline), on a thread, while arrivals are
    # decided one pass each on the live plan (the GIL is shared, as in the operator).
    job = snapshot(plan, jobs, nodes)
    box: dict[str, ReplanResult] = {}
    th = threading.Thread(target=lambda: box.setdefault(
        "r", replan_job.run(job, policy, 8, deadline_s=deadline)))
    th.start()
    lat: list[float] = []
    new: list[str] = []
    for i in range(arrivals):
        v = JobView.from_body(job_body(n_jobs + i, rng))
        jobs[v.key] = v
        new.append(v.key)
        t = time.perf_counter()
        plan = decide(work(jobs, nodes, dirty={v.key}), plan, inputs).plan
        lat.append(time.perf_counter() - t)
        if not th.is_alive():
            break
    th.join()
    res = box["r"]
    out["replan_s"] = round(res.seconds, 2)
    out["replan_note"] = res.note
    out["arrivals_during_replan"] = len(lat)
    out["arrival_decision_p50_ms_during_replan"] = round(1000 * pct(lat, 0.5), 1)
    out["arrival_decision_p99_ms_during_replan"] = round(1000 * pct(lat, 0.99), 1)
    t = time.perf_counter()
    d = decide(work(jobs, nodes), plan, inputs, replan_job.Proposal(job.base, res))
    out["commit_s"] = round(time.perf_counter() - t, 3)
    out["commit"] = ("conflict: " + d.changes.conflict if d.changes.conflict else
                     "committed" if d.changes.replan is not None and d.changes.replan.accepted
                     else "nothing to commit")
    plan = d.plan
    # Restart: a plan rebuilt from the statuses alone changes no reservation.
    listed: dict[str, JobView] = {}
    by_key = {f"scale/job-{i:05d}": b for i, b in enumerate(bodies)}
    for k in jobs:
        body = by_key.get(k)
        if body is None:
            continue  # the arrivals of this run are left out of the restart check
        listed[k] = JobView.from_body(with_status(body, plan.reserved.get(k, [])))
    t = time.perf_counter()
    r = decide(work(listed, nodes, rebuild=True, dirty=set(listed)),
               Plan.from_statuses(listed), inputs)
    out["restart_rebuild_s"] = round(time.perf_counter() - t, 2)
    out["restart_changed"] = sorted(k for k in listed
                                    if r.plan.reserved.get(k) != plan.reserved.get(k))[:20]
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, action="append")
    ap.add_argument("--gpus", type=int, action="append")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--deadline", type=float, default=20.0)
    ap.add_argument("--arrivals", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/operator"))
    a = ap.parse_args()
    sizes = list(zip(a.jobs or [1000], a.gpus or [800], strict=True))
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, g in sizes:
        r = bench(n, g, a.seed, a.deadline, a.arrivals, a.profile)
        r["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
        r["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
        (a.out / f"replan_{n}.json").write_text(json.dumps(r, indent=2) + "\n")
        print(json.dumps(r, indent=2), flush=True)
        rows.append(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
