"""Heuristics versus the exact MILP on seeded MIG-track instances.

For every instance (``benchmarks/mig_instances.py``: 20 to 200 jobs on a
heterogeneous MIG cluster) five engines plan all jobs from an empty cluster: the
greedy (``heuristic.py``), the replica-mix search (``mixpack.py``), LP diving on
the MILP's relaxation (``lpdive.py``), restricted sub-MIPs on top of it
(``submip.py``) and the exact MILP (``milp.py``); the paper's objective (GPUs used +
weighted unmet demand) is compared.  The bar: a heuristic within 2% of the MILP's
value on every instance the MILP solves to proven optimality.  Results:
``OUT/NAME.csv`` and ``OUT/NAME.md``.  ``--check`` makes the exit status 1 when
none of ``mixpack``, ``lpdive`` and ``submip`` meets the bar.

    python benchmarks/mig_gap.py --out benchmarks/results/mig
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mig_instances
from mig_instances import make_instance

from conspirator.operator.placement.common import job_options
from conspirator.operator.placement.heuristic import GreedyHeuristic
from conspirator.operator.placement.lpdive import LpDiveHeuristic
from conspirator.operator.placement.milp import MilpPolicy
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.objective import E2_UNMET, score
from conspirator.operator.placement.submip import SubMipHeuristic
from conspirator.operator.placement.throughput import default_table

SIZES = (20, 50, 100, 150, 200)


@dataclass(frozen=True, slots=True)
class Row:
    seed: int
    jobs: int
    gpus: int
    greedy_value: float
    greedy_s: float
    mixpack_value: float
    mixpack_gpus: int
    mixpack_unmet: int
    mixpack_s: float
    lpdive_value: float
    lpdive_gpus: int
    lpdive_unmet: int
    lpdive_s: float
    submip_value: float
    submip_gpus: int
    submip_unmet: int
    submip_s: float
    milp_value: float
    milp_gpus: int
    milp_unmet: int
    milp_s: float
    milp_optimal: bool
    milp_gap: float

    infeasible_penalty: float

    def gap_pct(self, value: float) -> float:
        """Relative gap, leaving out the penalty of jobs no GPU can serve (a constant)."""
        base = self.milp_value - self.infeasible_penalty
        return 100.0 * (value - self.milp_value) / base if base else 0.0

    @property
    def greedy_gap_pct(self) -> float:
        return self.gap_pct(self.greedy_value)

    @property
    def mixpack_gap_pct(self) -> float:
        return self.gap_pct(self.mixpack_value)

    @property
    def lpdive_gap_pct(self) -> float:
        return self.gap_pct(self.lpdive_value)

    @property
    def submip_gap_pct(self) -> float:
        return self.gap_pct(self.submip_value)


def run_one(seed: int, n_jobs: int, time_limit: float) -> Row:
    table = default_table()
    state, jobs = make_instance(seed, n_jobs)
    g_state = state.copy()
    t0 = time.perf_counter()
    GreedyHeuristic().replan(g_state, jobs, table, migration_budget=None)
    g_s = time.perf_counter() - t0
    g = score(g_state, jobs)
    x_state = state.copy()
    t0 = time.perf_counter()
    MixPackHeuristic().place(x_state, jobs, table)
    x_s = time.perf_counter() - t0
    x = score(x_state, jobs)
    d_state = state.copy()
    t0 = time.perf_counter()
    LpDiveHeuristic().place(d_state, jobs, table)
    d_s = time.perf_counter() - t0
    d = score(d_state, jobs)
    s_state = state.copy()
    t0 = time.perf_counter()
    SubMipHeuristic().place(s_state, jobs, table)
    s_s = time.perf_counter() - t0
    s = score(s_state, jobs)
    m_state = state.copy()
    dec = MilpPolicy(time_limit_s=time_limit).place(m_state, jobs, table)
    m = score(m_state, jobs)
    models = list(state.models().values())
    constant = E2_UNMET * sum(j.weight for j in jobs if not job_options(j, models, table))
    return Row(seed, n_jobs, len(state.gpus), g.value, g_s, x.value, x.gpus_used, x.unmet_jobs,
               x_s, d.value, d.gpus_used, d.unmet_jobs, d_s, s.value, s.gpus_used,
               s.unmet_jobs, s_s, m.value, m.gpus_used,
               m.unmet_jobs, dec.solve_seconds, bool(dec.optimal),
               dec.mip_gap if dec.mip_gap is not None else float("nan"), constant)


def _summary(name: str, rows: list[Row], gap: str, secs: str) -> str:
    gaps = [getattr(r, gap) for r in rows]
    within = sum(1 for x in gaps if x <= 2.0)
    ratios = [r.milp_s / getattr(r, secs) for r in rows]
    return (f"- {name}: within 2% of the optimum on {within} of {len(rows)}; worst gap "
            f"{max(gaps):+.2f}%, median {statistics.median(gaps):+.2f}%; time median "
            f"{statistics.median(getattr(r, secs) for r in rows):.2f} s, max "
            f"{max(getattr(r, secs) for r in rows):.2f} s; median MILP/{name} time ratio "
            f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/mig"))
    ap.add_argument("--seeds", type=int, default=5, help="seeds per size")
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--gpus-per-job", type=float, default=mig_instances.GPUS_PER_JOB,
                    help="cluster size per job: 0.45 is tight, 0.9 leaves slack")
    ap.add_argument("--name", default="mig_gap", help="stem of the result files")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless mixpack, lpdive or submip is within 2%% on every "
                         "solved instance")
    args = ap.parse_args()
    mig_instances.GPUS_PER_JOB = args.gpus_per_job
    rows: list[Row] = []
    for n in args.sizes:
        for seed in range(args.seeds):
            r = run_one(seed, n, args.time_limit)
            rows.append(r)
            print(f"jobs={n:3d} seed={seed} greedy={r.greedy_value:.1f} ({r.greedy_s:.2f}s) "
                  f"mixpack={r.mixpack_value:.1f} ({r.mixpack_s:.2f}s) "
                  f"lpdive={r.lpdive_value:.1f} ({r.lpdive_s:.2f}s) "
                  f"submip={r.submip_value:.1f} ({r.submip_s:.2f}s) milp={r.milp_value:.1f} "
                  f"({r.milp_s:.2f}s, optimal={r.milp_optimal}) gaps "
                  f"{r.greedy_gap_pct:+.2f}% / {r.mixpack_gap_pct:+.2f}% / "
                  f"{r.lpdive_gap_pct:+.2f}% / {r.submip_gap_pct:+.2f}%", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    fields = [*Row.__dataclass_fields__, "greedy_gap_pct", "mixpack_gap_pct", "lpdive_gap_pct",
              "submip_gap_pct"]
    with (args.out / f"{args.name}.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for r in rows:
            w.writerow([getattr(r, f) for f in fields])
    solved = [r for r in rows if r.milp_optimal]
    worst = min(max((r.mixpack_gap_pct for r in solved), default=float("nan")),
                max((r.lpdive_gap_pct for r in solved), default=float("nan")),
                max((r.submip_gap_pct for r in solved), default=float("nan")))
    lines = [
        "# Heuristics vs MILP (MIG track)",
        "",
        f"Command: `python benchmarks/mig_gap.py --out {args.out} --seeds {args.seeds} "
        f"--sizes {' '.join(map(str, args.sizes))} --time-limit {args.time_limit:g} "
        f"--gpus-per-job {args.gpus_per_job:g} --name {args.name}`",
        "",
        "Gap: (heuristic - MILP) / (MILP - penalty of jobs no GPU can serve), in %.",
        "Times are wall seconds on this machine (2 shared cores), one thread each.",
        "",
        f"- instances: {len(rows)}; solved to proven optimality by the MILP: {len(solved)}; "
        f"MILP time median {statistics.median(r.milp_s for r in rows):.2f} s, max "
        f"{max(r.milp_s for r in rows):.2f} s",
    ]
    if solved:
        lines += [_summary("greedy", solved, "greedy_gap_pct", "greedy_s"),
                  _summary("mixpack", solved, "mixpack_gap_pct", "mixpack_s"),
                  _summary("lpdive", solved, "lpdive_gap_pct", "lpdive_s"),
                  _summary("submip", solved, "submip_gap_pct", "submip_s")]
    lines += [
        "",
        "| jobs | seed | GPUs | greedy | mixpack | lpdive | submip | MILP | optimal | "
        "greedy gap % | mixpack gap % | lpdive gap % | submip gap % | greedy s | mixpack s | "
        "lpdive s | submip s | MILP s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|---:|",
    ]
    lines += [
        f"| {r.jobs} | {r.seed} | {r.gpus} | {r.greedy_value:.1f} | {r.mixpack_value:.1f} | "
        f"{r.lpdive_value:.1f} | {r.submip_value:.1f} | {r.milp_value:.1f} | "
        f"{'yes' if r.milp_optimal else 'no'} | "
        f"{r.greedy_gap_pct:+.2f} | {r.mixpack_gap_pct:+.2f} | {r.lpdive_gap_pct:+.2f} | "
        f"{r.submip_gap_pct:+.2f} | {r.greedy_s:.2f} | {r.mixpack_s:.2f} | {r.lpdive_s:.2f} | "
        f"{r.submip_s:.2f} | {r.milp_s:.2f} |"
        for r in rows
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:14]))
    if args.check:
        return 0 if solved and worst <= 2.0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
