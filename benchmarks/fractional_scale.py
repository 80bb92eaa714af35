"""Scale micro-benchmark of the fractional-sharing track's ``conspirator`` policy.

Measures, on the Alibaba trace cluster (6,212 GPUs):

- single-arrival latency: the cluster is filled with the seed-42 arrival
  stream until 90% of GPU capacity is allocated; then each of the next
  ``--arrivals`` pods is timed from ``choose`` to ``place`` (warm: the policy
  keeps what it derived for earlier pods, as a running scheduler would);
- the same on the 90%-full cluster with every cached score dropped before
  each pod (cold: the worst case, every node state scored afresh);
- the global re-plan of the whole pod list (8,152 pods) from scratch;
- the peak resident memory of the process.

Usage (from the repository root)::

    python benchmarks/fractional_scale.py \\
        --nodes ../shared/data/alibaba-gpu-v2023/openb_node_list_gpu_node.csv \\
        --pods ../shared/data/alibaba-gpu-v2023/openb_pod_list_default.csv \\
        --out benchmarks/results/fractional/scale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import time
from pathlib import Path

from conspirator.operator.placement.fractional.conspirator import ConspiratorPolicy
from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import FractionalCluster
from conspirator.operator.placement.fractional.replan import place_in_order, random_order, replan
from conspirator.operator.placement.fractional.workload import build_target_workload
from conspirator.operator.simulator.fractional import arrival_order, node_order
from conspirator.operator.simulator.traces import load_nodes, load_pods

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alibaba-gpu-v2023"
RESULT = Path(__file__).resolve().parent / "results" / "fractional" / "scale.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 4),
        "p90_ms": round(percentile(ms, 0.90), 4),
        "p99_ms": round(percentile(ms, 0.99), 4),
        "max_ms": round(max(ms), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=Path, default=DATA / "openb_node_list_gpu_node.csv")
    parser.add_argument("--pods", type=Path, default=DATA / "openb_pod_list_default.csv")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--arrivals", type=int, default=1000)
    parser.add_argument("--fill", type=float, default=0.90, help="allocation to pre-fill to")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    nodes, pods = load_nodes(args.nodes), load_pods(args.pods)
    measure = FragMeasure(build_target_workload(pods))
    policy = ConspiratorPolicy(measure)
    cluster = FractionalCluster(node_order(nodes, args.seed))
    stream = iter(arrival_order(pods, cluster.total_gpu_milli, args.seed))

    # pre-fill
    start = time.perf_counter()
    prefilled = 0
    for pod in stream:
        choice = policy.choose(cluster, pod)
        if choice is not None:
            cluster.place(pod, choice)
        prefilled += 1
        if cluster.used_gpu_milli >= args.fill * cluster.total_gpu_milli:
            break
    prefill_s = time.perf_counter() - start
    fill_ratio = cluster.used_gpu_milli / cluster.total_gpu_milli

    # cold: each pod scored against a 90%-full cluster with no cached scores
    sample_rng = random.Random(args.seed)
    cold: list[float] = []
    for pod in sample_rng.sample(pods, min(200, len(pods))):
        for group in cluster.iter_groups():
            group.memo.clear()
        t0 = time.perf_counter()
        policy.choose(cluster, pod)
        cold.append(time.perf_counter() - t0)
    groups_at_fill = len(cluster.groups)

    # warm: the live arrival stream, choose + place
    warm: list[float] = []
    failed = 0
    for pod in stream:
        if len(warm) >= args.arrivals:
            break
        t0 = time.perf_counter()
        choice = policy.choose(cluster, pod)
        if choice is not None:
            cluster.place(pod, choice)
        else:
            failed += 1
        warm.append(time.perf_counter() - t0)

    # global re-plan of the whole pod list
    t0 = time.perf_counter()
    plan = replan(nodes, pods)
    replan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    place_in_order(nodes, random_order(0)(pods), ConspiratorPolicy(measure))
    single_s = time.perf_counter() - t0

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "what": "conspirator policy, fractional-sharing track, Alibaba trace v2023",
        "nodes_file": args.nodes.name,
        "pods_file": args.pods.name,
        "nodes": len(nodes),
        "gpus": cluster.total_gpu_milli // 1000,
        "pods": len(pods),
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "note": "2 cores shared with other jobs; pure Python, one process",
        },
        "prefill": {
            "seed": args.seed,
            "arrivals": prefilled,
            "gpu_alloc_ratio": round(fill_ratio, 4),
            "seconds": round(prefill_s, 3),
            "distinct_node_states": groups_at_fill,
        },
        "single_arrival_warm": {
            **summary_ms(warm),
            "failed": failed,
            "gpu_alloc_ratio_after": round(cluster.used_gpu_milli / cluster.total_gpu_milli, 4),
        },
        "single_arrival_cold": summary_ms(cold),
        "global_replan": {
            "pods": len(pods),
            "attempts": 3,
            "seconds": round(replan_s, 3),
            "seconds_one_order": round(single_s, 3),
            "placed": len(plan.placements),
            "failed": len(plan.failed),
            "gpu_alloc_ratio": round(plan.gpu_alloc_ratio, 4),
        },
        "peak_rss_mib": round(peak_rss_mib, 1),
        "targets": {"p50_ms": 1.0, "p99_ms": 10.0, "replan_seconds": 5.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
