"""The fractional-sharing track: FGD's benchmark, reproduced.

Semantics follow FGD's simulator (``hkust-adsl/kubernetes-scheduler-simulator``,
experiments of the ATC'23 paper):

- Per seed, the node list is shuffled (FGD's simulator prefixes node names
  with a random permutation index; its scheduler then prefers the first of
  equally scored nodes, so this order is every policy's tie-break).
- Per seed, the pod list is shuffled, then *tuned* up: pods drawn at random
  (with replacement) from the list are appended until the GPU demand that has
  arrived would exceed ``tune_ratio`` (1.3) times the cluster's GPU capacity.
- Pods arrive one by one in that order and never leave; each is placed on
  arrival or fails (with the reason recorded).  Nothing migrates.
- After every arrival the simulator records the arrived GPU demand, the
  allocated milli-GPU and the cluster's fragmentation (FGD's measure against
  the target workload of the *original* pod list, see
  :mod:`conspirator.operator.placement.fractional.frag`).
- Column ``k`` of the results is the mean of a metric over the arrivals at
  which arrived demand, in percent of capacity and rounded, equals ``k``
  (those within one point when there is none), as FGD's analysis scripts do.
  Metrics: ``gpu_alloc_ratio_pct`` (allocated share of GPU capacity),
  ``frag_ratio_pct_of_idle`` (fragmented share of idle GPU capacity) and
  ``frag_amount_pct`` (fragmented share of total GPU capacity).

The output is the long format of FGD's ``summary_mean_by_load.csv``
(``workload, policy, metric, arrived_gpu_demand_pct, mean_over_seeds, n_seeds``)
so that our rows and the published ones compare line by line.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from conspirator.operator.placement.fractional.feasibility import unschedulable_reason
from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import FractionalCluster, NodeSpec, PodSpec
from conspirator.operator.placement.fractional.policy_names import (
    POLICIES,
    PUBLISHED_NAMES,
    make_policy,
)
from conspirator.operator.placement.fractional.workload import (
    TargetWorkload,
    build_target_workload,
)
from conspirator.operator.simulator.traces import load_nodes, load_pods

FIRST_SEED = 42
"""FGD's experiments use seeds 42..51."""
TUNE_RATIO = 1.3
"""Arrived GPU demand at the end of a run, as a multiple of GPU capacity."""
LOADS: tuple[int, ...] = tuple(range(0, 131, 10))
"""Arrived-demand percentages reported in the summary."""
METRICS: tuple[str, ...] = ("gpu_alloc_ratio_pct", "frag_ratio_pct_of_idle", "frag_amount_pct")
SUMMARY_COLUMNS: tuple[str, ...] = (
    "workload",
    "policy",
    "metric",
    "arrived_gpu_demand_pct",
    "mean_over_seeds",
    "n_seeds",
)
MAX_WORKERS = 2

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, label)``, called in the calling process after each run."""


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True, slots=True)
class FailedPod:
    name: str
    reason: str


@dataclass(slots=True)
class RunResult:
    """One (policy, seed) run: per-arrival series and the pods that failed.

    ``series[metric][k]`` is the metric at ``k`` % arrived demand (k = 0..130).
    """

    workload: str
    policy: str
    seed: int
    total_gpu_milli: int
    arrivals: int
    failed: list[FailedPod]
    series: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def placed(self) -> int:
        return self.arrivals - len(self.failed)

    def failure_reasons(self) -> Counter[str]:
        return Counter(f.reason for f in self.failed)


def arrival_order(
    pods: Sequence[PodSpec], total_gpu_milli: int, seed: int, tune_ratio: float = TUNE_RATIO
) -> list[PodSpec]:
    """The pods in arrival order for ``seed``: FGD's shuffle, then its tuning.

    Tuning appends random copies of pods (drawn from the list sorted by name)
    while the arrived GPU demand stays within ``tune_ratio`` x capacity; a
    demand above that target is cut by dropping random pods instead.
    """
    rng = random.Random(seed)
    by_name = sorted(pods, key=lambda p: p.name)
    order = list(by_name)
    rng.shuffle(order)
    if tune_ratio <= 0:
        return order
    target = tune_ratio * total_gpu_milli
    demand = sum(p.total_gpu_milli for p in order)
    while demand > target and order:
        demand -= order.pop(rng.randrange(len(order))).total_gpu_milli
    if demand < target and by_name and any(p.num_gpu for p in by_name):
        i = 0
        while True:
            pod = by_name[rng.randrange(len(by_name))]
            # FGD's stop test adds the per-GPU share, not the pod's total
            if demand + pod.gpu_milli > target:
                break
            demand += pod.total_gpu_milli
            order.append(pod.renamed(f"{pod.name}-tuned-{i}"))
            i += 1
    return order


def node_order(nodes: Sequence[NodeSpec], seed: int) -> list[NodeSpec]:
    """The nodes in the order that breaks ties for ``seed``."""
    order = sorted(nodes, key=lambda n: n.name)
    random.Random(f"{seed}/nodes").shuffle(order)
    return order


_MEASURES: dict[TargetWorkload, FragMeasure] = {}


def measure_for(workload: TargetWorkload) -> FragMeasure:
    """A process-wide memoised fragmentation measure for ``workload``."""
    measure = _MEASURES.get(workload)
    if measure is None:
        measure = _MEASURES[workload] = FragMeasure(workload)
    return measure


def simulate(
    nodes: Sequence[NodeSpec],
    pods: Sequence[PodSpec],
    policy: str,
    seed: int,
    *,
    workload_name: str = "workload",
    tune_ratio: float = TUNE_RATIO,
) -> RunResult:
    """Run one policy on one seed and discretise its series by arrived demand."""
    cluster = FractionalCluster(node_order(nodes, seed))
    measure = measure_for(build_target_workload(pods))
    chooser = make_policy(policy, measure, random.Random(f"{seed}/{policy}"))
    order = arrival_order(pods, cluster.total_gpu_milli, seed, tune_ratio)

    frag = measure.frag
    node_frag = [
        frag(g.model, g.cpu_left, g.gpus) for g in map(cluster.group_of, range(len(nodes)))
    ]
    total_frag = sum(node_frag)
    arrived = 0
    arrived_series: list[int] = []
    used_series: list[int] = []
    frag_series: list[float] = []
    failed: list[FailedPod] = []
    for pod in order:
        arrived += pod.total_gpu_milli
        choice = chooser.choose(cluster, pod)
        if choice is None:
            failed.append(FailedPod(pod.name, unschedulable_reason(cluster, pod)))
        else:
            cluster.place(pod, choice)
            g = cluster.group_of(choice.node)
            value = frag(g.model, g.cpu_left, g.gpus)
            total_frag += value - node_frag[choice.node]
            node_frag[choice.node] = value
        arrived_series.append(arrived)
        used_series.append(cluster.used_gpu_milli)
        frag_series.append(max(0.0, total_frag))  # no negative rounding residue
    result = RunResult(workload_name, policy, seed, cluster.total_gpu_milli, len(order), failed)
    result.series = discretize(arrived_series, used_series, frag_series, cluster.total_gpu_milli)
    return result


def discretize(
    arrived: Sequence[int], used: Sequence[int], frag: Sequence[float], total_gpu_milli: int
) -> dict[str, dict[int, float]]:
    """Per-arrival series -> metric -> {arrived demand % (0..130): value}, as FGD's
    ``merge_*_discrete`` scripts compute them."""
    buckets: dict[int, list[tuple[float, float, float]]] = {}
    for a, u, f in zip(arrived, used, frag, strict=True):
        idle = total_gpu_milli - u
        point = (
            round(100 * u / total_gpu_milli, 2),
            round(100 * f / idle, 2) if idle > 0 else 0.0,
            f,
        )
        buckets.setdefault(round(100 * a / total_gpu_milli), []).append(point)
    series: dict[str, dict[int, float]] = {m: {} for m in METRICS}
    for k in range(131):
        points = buckets.get(k) or [p for j in (k - 1, k, k + 1) for p in buckets.get(j, [])]
        if not points:
            continue
        n = len(points)
        series["gpu_alloc_ratio_pct"][k] = round(sum(p[0] for p in points) / n, 2)
        series["frag_ratio_pct_of_idle"][k] = sum(p[1] for p in points) / n
        series["frag_amount_pct"][k] = round(
            100 * sum(p[2] for p in points) / n / total_gpu_milli, 2
        )
    return series


# --------------------------------------------------------------------------- many runs


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One line of ``fractional_summary.csv`` (FGD's long format)."""

    workload: str
    policy: str
    metric: str
    arrived_gpu_demand_pct: int
    mean_over_seeds: float
    n_seeds: int


def _run_task(
    nodes_csv: Path, pods_csv: Path, policy: str, seed: int, tune_ratio: float
) -> RunResult:
    return simulate(
        load_nodes(nodes_csv),
        load_pods(pods_csv),
        policy,
        seed,
        workload_name=pods_csv.stem,
        tune_ratio=tune_ratio,
    )


def run_fractional_runs(
    nodes_csv: Path,
    pods_csv: Path,
    policies: Sequence[str],
    seeds: int = 10,
    progress: ProgressCallback | None = None,
    *,
    workers: int = MAX_WORKERS,
    tune_ratio: float = TUNE_RATIO,
) -> list[RunResult]:
    """Every (policy, seed) run, seeds ``42 .. 42 + seeds - 1``, in that order.

    Runs go to at most ``workers`` (<= 2) processes; ``workers=1`` runs them here.
    """
    load_nodes(nodes_csv), load_pods(pods_csv)  # fail early, in this process
    unknown = [name for name in policies if name not in POLICIES]
    if unknown:
        known = ", ".join(POLICIES)
        raise ValueError(f"unknown fractional policy {', '.join(unknown)} (known: {known})")
    tasks = [(p, s) for p in policies for s in range(FIRST_SEED, FIRST_SEED + seeds)]
    results: dict[tuple[str, int], RunResult] = {}
    workers = max(1, min(workers, MAX_WORKERS, len(tasks)))
    if workers == 1:
        for done, (p, s) in enumerate(tasks, 1):
            results[(p, s)] = _run_task(nodes_csv, pods_csv, p, s, tune_ratio)
            if progress is not None:
                progress(done, len(tasks), f"{p} seed {s}")
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(_run_task, nodes_csv, pods_csv, p, s, tune_ratio): (p, s)
                for p, s in tasks
            }
            for done, future in enumerate(as_completed(futures), 1):
                p, s = futures[future]
                results[(p, s)] = future.result()
                if progress is not None:
                    progress(done, len(tasks), f"{p} seed {s}")
    return [results[t] for t in tasks]


def summarize(results: Iterable[RunResult], loads: Sequence[int] = LOADS) -> list[SummaryRow]:
    """Mean over seeds per (workload, policy, metric, load), in the published row order
    (metric, then policy in first-seen order, then load)."""
    grouped: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        grouped.setdefault((r.workload, r.policy), []).append(r)
    rows: list[SummaryRow] = []
    for metric in METRICS:
        for (workload, policy), runs in grouped.items():
            for k in loads:
                values = [r.series[metric][k] for r in runs if k in r.series.get(metric, {})]
                if values:
                    mean = round(sum(values) / len(values), 3)
                    rows.append(SummaryRow(workload, policy, metric, k, mean, len(values)))
    return rows


def run_fractional(
    nodes_csv: Path,
    pods_csv: Path,
    policies: Sequence[str],
    seeds: int = 10,
    progress: ProgressCallback | None = None,
    *,
    workers: int = MAX_WORKERS,
    tune_ratio: float = TUNE_RATIO,
) -> list[SummaryRow]:
    """Simulate ``policies`` over ``seeds`` seeds (42, 43, ...) and summarise by load."""
    return summarize(
        run_fractional_runs(
            nodes_csv, pods_csv, policies, seeds, progress, workers=workers, tune_ratio=tune_ratio
        )
    )


# --------------------------------------------------------------------------- files


def write_summary(rows: Iterable[SummaryRow], path: Path) -> None:
    """Write ``rows`` as CSV in the exact format of FGD's ``summary_mean_by_load.csv``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SUMMARY_COLUMNS)
        for r in rows:
            writer.writerow(
                (
                    r.workload,
                    r.policy,
                    r.metric,
                    r.arrived_gpu_demand_pct,
                    r.mean_over_seeds,
                    r.n_seeds,
                )
            )


def read_summary(path: Path) -> list[SummaryRow]:
    """Rows of a summary file (ours or FGD's published one)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            SummaryRow(
                row["workload"],
                row["policy"],
                row["metric"],
                int(row["arrived_gpu_demand_pct"]),
                float(row["mean_over_seeds"]),
                int(row["n_seeds"]),
            )
            for row in csv.DictReader(handle)
        ]


@dataclass(frozen=True, slots=True)
class ComparisonRow:
    """Our mean next to the published mean of the corresponding FGD policy."""

    workload: str
    policy: str
    published_policy: str
    metric: str
    arrived_gpu_demand_pct: int
    ours: float
    published: float

    @property
    def difference(self) -> float:
        return round(self.ours - self.published, 3)


def published_counterpart(policy: str) -> str:
    """FGD's name for ``policy``; ours (``conspirator``) is compared with FGD."""
    return PUBLISHED_NAMES.get(policy, PUBLISHED_NAMES["fgd"])


def compare_with_published(
    ours: Iterable[SummaryRow], published: Iterable[SummaryRow]
) -> list[ComparisonRow]:
    """Join our rows with the published ones on (workload, policy, metric, load)."""
    index = {
        (r.workload, r.policy, r.metric, r.arrived_gpu_demand_pct): r.mean_over_seeds
        for r in published
    }
    out: list[ComparisonRow] = []
    for r in ours:
        theirs = published_counterpart(r.policy)
        key = (r.workload, theirs, r.metric, r.arrived_gpu_demand_pct)
        if key in index:
            out.append(
                ComparisonRow(
                    r.workload,
                    r.policy,
                    theirs,
                    r.metric,
                    r.arrived_gpu_demand_pct,
                    r.mean_over_seeds,
                    index[key],
                )
            )
    return out


def comparison_markdown(
    rows: Sequence[ComparisonRow], loads: Sequence[int] = (90, 100, 130)
) -> str:
    """A Markdown table of ``rows``: one line per (workload, policy, metric), ours /
    published (difference) at each of ``loads``."""
    cells: dict[tuple[str, str, str, str], dict[int, ComparisonRow]] = {}
    for r in rows:
        if r.arrived_gpu_demand_pct in loads:
            key = (r.workload, r.policy, r.published_policy, r.metric)
            cells.setdefault(key, {})[r.arrived_gpu_demand_pct] = r
    head = " | ".join(f"{k}%: ours / published (diff)" for k in loads)
    lines = [
        f"| workload | policy | vs | metric | {head} |",
        "|---|---|---|---|" + "---:|" * len(loads),
    ]
    for (workload, policy, theirs, metric), by_load in cells.items():
        values = []
        for k in loads:
            c = by_load.get(k)
            values.append(
                "n/a" if c is None else f"{c.ours:.2f} / {c.published:.2f} ({c.difference:+.2f})"
            )
        lines.append(
            f"| {workload} | {policy} | {theirs} | {metric} | " + " | ".join(values) + " |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m conspirator.operator.simulator.fractional``: run the benchmark and
    write ``fractional_summary.csv`` (and ``comparison.md`` given ``--published``)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--nodes", type=Path, required=True, help="node list CSV")
    parser.add_argument("--pods", type=Path, required=True, help="pod list CSV")
    parser.add_argument("--policies", default="conspirator,fgd,bestfit")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 42, 43, ... (default 10)")
    parser.add_argument("--workers", type=int, default=MAX_WORKERS)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--published", type=Path, help="FGD's summary_mean_by_load.csv")
    args = parser.parse_args(argv)

    def progress(done: int, total: int, label: str) -> None:
        print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)

    rows = run_fractional(
        args.nodes,
        args.pods,
        [p.strip() for p in args.policies.split(",") if p.strip()],
        args.seeds,
        progress,
        workers=args.workers,
    )
    write_summary(rows, args.out / "fractional_summary.csv")
    if args.published is not None:
        table = comparison_markdown(compare_with_published(rows, read_summary(args.published)))
        command = "python -m conspirator.operator.simulator.fractional " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        (args.out / "comparison.md").write_text(
            f"# Fractional track: ours vs FGD's published means\n\nCommand: `{command}`\n\n"
            + table,
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
