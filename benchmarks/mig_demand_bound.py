"""An idealized bound on what autoscaling can save against peak provisioning.

Fluid model, per job of the default workload under a demand pattern: capacity is
divisible and bought at the job's best throughput per GPU share (the best of its
feasible (GPU model, profile) options), but never below its smallest feasible slice
(a running job holds at least one replica).  Per step an autoscaler at target
utilization ``u`` needs ``max(smallest, rate / u / best)`` GPUs; peak provisioning
needs ``max(smallest, peak / best)`` over the whole lifetime.  No lag, no packing,
no fragmentation: the ratio of the two integrals is the best ratio of GPU-hours a
``u``-targeting autoscaler could reach against a *perfectly packed* static-peak.
Writes ``OUT/fluid_bound.md``.

    python benchmarks/mig_demand_bound.py --pattern diurnal --seeds 10 \\
        --out benchmarks/results/mig/demand_diurnal
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from conspirator.operator.placement.common import job_options
from conspirator.operator.placement.throughput import default_table
from conspirator.operator.simulator.demand import DemandSpec, generate_traces
from conspirator.operator.simulator.mig_inputs import (
    default_nodes_path,
    generate_jobs,
    load_nodes,
)

FIRST_SEED = 42


def ratios(pattern: str, seed: int, targets: tuple[float, ...]) -> list[float]:
    table = default_table()
    models = list({n.model.name: n.model for n in load_nodes(default_nodes_path())}.values())
    events = generate_jobs(seed, table)
    traces = generate_traces(events, DemandSpec(pattern=pattern), seed)
    auto = dict.fromkeys(targets, 0.0)
    peak = 0.0
    for ev in events:
        opts = job_options(ev.job, models, table)
        if not opts:
            continue
        smallest = min(o.cost for o in opts)
        best = max(o.throughput / o.cost for o in opts)  # rps per GPU
        tr = traces[ev.job.id]
        hours = ev.duration_s / 3600.0
        peak += max(smallest, tr.peak_rps / best) * hours
        for u in targets:
            auto[u] += statistics.fmean(max(smallest, r / u / best) for r in tr.rates) * hours
    return [auto[u] / peak for u in targets]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pattern", choices=("diurnal", "bursty"), default="diurnal")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    targets = (0.8, 0.9, 1.0)
    rows = [ratios(a.pattern, FIRST_SEED + k, targets) for k in range(a.seeds)]
    lines = [f"# Fluid bound, {a.pattern} demand, default workload ({a.seeds} seeds)", "",
             "Autoscaled / peak-provisioned GPU-hours with divisible capacity at each job's "
             "best efficiency, at least its smallest slice; no lag, perfect packing "
             "(benchmarks/mig_demand_bound.py).", "",
             "| target utilization | mean ratio | min | max |", "|---:|---:|---:|---:|"]
    for i, u in enumerate(targets):
        col = [r[i] for r in rows]
        lines.append(f"| {u:.1f} | {statistics.fmean(col):.3f} | {min(col):.3f} | "
                     f"{max(col):.3f} |")
    text = "\n".join(lines) + "\n"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "fluid_bound.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
