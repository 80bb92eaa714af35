"""The SchedulingPolicy bars on the MIG track: cost, energy and the fair share.

1. **Objectives.**  The default MIG workload on a priced heterogeneous cluster
   (``--nodes``, default ``mig_nodes_priced.csv``: A100/H100/H200/A30/T4/L4, on-demand
   and spot nodes, spot nodes taken back about once a day for 30 min) planned by
   ``--policy`` under the objectives ``gpus``, ``cost`` and ``energy``
   (``benchmarks/policies/*.yaml``).  Bars: ``cost`` spends at least 20% less US$ than
   ``gpus`` at the same SLO attainment (within 0.1 points); ``energy`` uses fewer kWh.
2. **Fair share.**  The same workload on a cluster of ``--fair-model`` GPUs sized so
   that the mean demand (GPU-equivalents, ``fairshare.job_size``) is ``--oversubscription``
   (1.5) times the GPUs, planned with ``gpus`` and with ``fair.yaml`` (fairness and
   preemption).  Bar: every tenant gets at least 0.9 of its weighted fair share
   (``fair_share_min`` >= 0.9 on every seed).

Writes ``OUT/mig_summary.csv`` (every run), ``OUT/fair_nodes.csv`` and ``OUT/bar.md``.

    python benchmarks/policies.py --seeds 2 --out benchmarks/results/policies
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from conspirator.operator.placement.fairshare import job_size
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.policy_names import mig_policy
from conspirator.operator.placement.throughput import default_table
from conspirator.operator.plan_spec import load_policy_file, plan_from_spec
from conspirator.operator.simulator import mig_report
from conspirator.operator.simulator.cli import FIRST_SEED, plan_label
from conspirator.operator.simulator.mig import MigRunResult, run_mig
from conspirator.operator.simulator.mig_inputs import JobEvent, generate_jobs, load_nodes
from conspirator.operator.simulator.mig_spot import SpotSpec

HERE = Path(__file__).resolve().parent
PRICED = HERE.parent / "operator/simulator/data/mig_nodes_priced.csv"
OBJECTIVES = ("gpus", "cost", "energy")


def fair_nodes(events: list[JobEvent], model: str, ratio: float, path: Path) -> float:
    """Write a node CSV of ``model`` GPUs with mean demand ``ratio`` x the GPU count;
    returns the mean demand in GPU-equivalents."""
    table = default_table()
    m = gpu_model(model)
    horizon = max(e.arrival_s + e.duration_s for e in events)
    mean = sum(job_size(e.job, [m], table) * e.duration_s for e in events) / horizon
    gpus = max(1, round(mean / ratio))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write("sn,gpu,model\n")
        for k in range(math.ceil(gpus / 8)):
            fh.write(f"{model.lower()}-{k:02d},{min(8, gpus - 8 * k)},{model}\n")
    return mean


def one(args: tuple[str, str, str, int]) -> MigRunResult:
    nodes_path, policy, policy_file, seed = args
    table = default_table()
    plan = plan_from_spec(load_policy_file(Path(policy_file)).spec)
    return run_mig(load_nodes(Path(nodes_path)), generate_jobs(seed, table),
                   mig_policy(policy, plan), table, seed, plan=plan, spot=SpotSpec(),
                   label=f"{plan_label(policy, plan)}@{Path(nodes_path).stem}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--policy", default="conspirator")
    ap.add_argument("--nodes", type=Path, default=PRICED)
    ap.add_argument("--fair-model", default="A100-80GB")
    ap.add_argument("--oversubscription", type=float, default=1.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/policies"))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    seeds = [FIRST_SEED + k for k in range(a.seeds)]
    fair_path = a.out / "fair_nodes.csv"
    demand = fair_nodes(generate_jobs(seeds[0], default_table()), a.fair_model,
                        a.oversubscription, fair_path)
    runs = [(str(a.nodes), a.policy, str(HERE / f"policies/{o}.yaml"), s)
            for o in OBJECTIVES for s in seeds]
    runs += [(str(fair_path), a.policy, str(HERE / f"policies/{f}.yaml"), s)
             for f in ("gpus", "fair") for s in seeds]
    with ProcessPoolExecutor(a.workers) as pool:
        results = list(pool.map(one, runs))
    a.out.mkdir(parents=True, exist_ok=True)
    mig_report.write_summary("generated-inference-mix", results, a.out / "mig_summary.csv")
    text = bar(a.out / "mig_summary.csv", a.policy, a.nodes.stem, seeds, demand,
               fair_path, time.perf_counter() - t0)
    (a.out / "bar.md").write_text(text)
    print(text)
    return 0 if "NOT MET" not in text else 1


def bar(summary: Path, policy: str, nodes: str, seeds: list[int], demand: float,
        fair_path: Path, seconds: float) -> str:
    rows = list(csv.DictReader(summary.open()))
    mean = {r["policy"]: r for r in rows if r["seed"] == "mean"}

    def key(obj: str, where: str) -> str:
        return f"{policy}:{obj}@{where}" if obj != "gpus" else f"{policy}@{where}"

    g, c, e = (mean[key(o, nodes)] for o in OBJECTIVES)
    f0, f1 = mean[key("gpus", fair_path.stem)], mean[key("gpus+fair+preempt", fair_path.stem)]
    usd = {n: float(r["cost_usd"]) for n, r in zip(OBJECTIVES, (g, c, e), strict=True)}
    kwh = {n: float(r["energy_kwh"]) for n, r in zip(OBJECTIVES, (g, c, e), strict=True)}
    att = {n: float(r["slo_attainment_pct"]) for n, r in zip(OBJECTIVES, (g, c, e),
                                                              strict=True)}
    saving = 1 - usd["cost"] / usd["gpus"]
    ok_cost = saving >= 0.2 and att["cost"] >= att["gpus"] - 0.1
    ok_energy = kwh["energy"] < kwh["gpus"]
    fair_rows = [r for r in rows if r["policy"] == key("gpus+fair+preempt", fair_path.stem)
                 and r["seed"] != "mean"]
    worst = min(float(r["fair_share_min"]) for r in fair_rows)
    ok_fair = worst >= 0.9
    gpus = sum(int(x.split(",")[1]) for x in fair_path.read_text().splitlines()[1:])

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    lines = [f"# SchedulingPolicy bars, policy `{policy}` ({len(seeds)} seeds, mean)", "",
             f"Objectives on `{nodes}`:", "",
             "| objective | US$ | kWh | GPU-hours | SLO attainment % | spot interruptions |",
             "|---|---:|---:|---:|---:|---:|"]
    for n, r in zip(OBJECTIVES, (g, c, e), strict=True):
        lines.append(f"| {n} | {float(r['cost_usd']):.0f} | {float(r['energy_kwh']):.0f} | "
                     f"{float(r['gpu_hours']):.0f} | {float(r['slo_attainment_pct']):.2f} | "
                     f"{float(r['spot_interruptions']):.1f} |")
    lines += ["", f"- cost spends {100 * saving:.1f}% less than gpus (bar: >= 20% at the same "
              f"attainment): **{verdict(ok_cost)}**",
              f"- energy uses {100 * (1 - kwh['energy'] / kwh['gpus']):.1f}% less energy than "
              f"gpus (bar: less): **{verdict(ok_energy)}**", "",
              f"Fair share on {gpus} {fair_path.stem} GPUs, mean demand {demand:.1f} "
              f"GPU-equivalents ({demand / gpus:.2f}x):", "",
              "| plan | lowest tenant share of its fair share | Jain | preemptions | "
              "SLO attainment % |", "|---|---:|---:|---:|---:|"]
    for name, r in (("gpus", f0), ("gpus + fairness + preemption", f1)):
        lines.append(f"| {name} | {float(r['fair_share_min']):.3f} | "
                     f"{float(r['jain_fairness']):.3f} | {float(r['preemptions']):.1f} | "
                     f"{float(r['slo_attainment_pct']):.2f} |")
    lines += ["", f"- every tenant gets >= 0.9 of its weighted fair share on every seed "
              f"(worst {worst:.3f}): **{verdict(ok_fair)}**", "",
              f"Run time: {seconds:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
