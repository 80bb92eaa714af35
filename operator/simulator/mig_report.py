"""Summaries of MIG-track runs: the CSV file, the terminal table, the plot."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from conspirator.operator.simulator.mig import MigRunResult

COLUMNS = ("workload", "policy", "seed", "jobs", "gpu_hours", "peak_gpus", "slo_miss_jobs",
           "slo_miss_pct", "never_served_jobs", "waiting_job_hours", "migrations",
           "decision_p50_ms", "decision_p99_ms", "replan_median_ms", "replan_max_ms",
           "mip_gap_max", "slo_attainment_pct", "reconfigurations", "cost_usd", "energy_kwh",
           "jain_fairness", "fair_share_min", "preemptions", "spot_interruptions")


def _row(workload: str, r: MigRunResult) -> dict[str, str]:
    return {
        "workload": workload, "policy": r.policy, "seed": str(r.seed), "jobs": str(r.jobs),
        "gpu_hours": f"{r.gpu_hours:.3f}", "peak_gpus": str(r.peak_gpus),
        "slo_miss_jobs": str(r.slo_miss_jobs), "slo_miss_pct": f"{r.slo_miss_pct:.2f}",
        "never_served_jobs": str(r.never_served_jobs),
        "waiting_job_hours": f"{r.waiting_job_hours:.3f}", "migrations": str(r.migrations),
        "decision_p50_ms": f"{r.decision_pct(50):.3f}",
        "decision_p99_ms": f"{r.decision_pct(99):.3f}",
        "replan_median_ms": f"{statistics.median(r.replans_ms):.3f}" if r.replans_ms else "",
        "replan_max_ms": f"{max(r.replans_ms):.3f}" if r.replans_ms else "",
        "mip_gap_max": f"{max(r.mip_gaps):.6f}" if r.mip_gaps else "",
        "slo_attainment_pct": f"{r.slo_attainment_pct:.3f}",
        "reconfigurations": str(r.reconfigurations),
        "cost_usd": f"{r.cost_usd:.2f}", "energy_kwh": f"{r.energy_kwh:.2f}",
        "jain_fairness": f"{r.jain_fairness:.4f}", "fair_share_min": f"{r.fair_share_min:.4f}",
        "preemptions": str(r.preemptions), "spot_interruptions": str(r.spot_interruptions),
    }


def means(results: Sequence[MigRunResult]) -> dict[str, dict[str, float]]:
    """Policy -> mean of each numeric metric over seeds."""
    out: dict[str, dict[str, float]] = {}
    for pol in dict.fromkeys(r.policy for r in results):
        rs = [r for r in results if r.policy == pol]
        out[pol] = {
            "gpu_hours": statistics.fmean(r.gpu_hours for r in rs),
            "peak_gpus": statistics.fmean(r.peak_gpus for r in rs),
            "slo_miss_pct": statistics.fmean(r.slo_miss_pct for r in rs),
            "waiting_job_hours": statistics.fmean(r.waiting_job_hours for r in rs),
            "migrations": statistics.fmean(r.migrations for r in rs),
            "decision_p50_ms": statistics.fmean(r.decision_pct(50) for r in rs),
            "decision_p99_ms": statistics.fmean(r.decision_pct(99) for r in rs),
            "replan_max_ms": max((max(r.replans_ms, default=0.0) for r in rs), default=0.0),
            "slo_attainment_pct": statistics.fmean(r.slo_attainment_pct for r in rs),
            "reconfigurations": statistics.fmean(r.reconfigurations for r in rs),
            "cost_usd": statistics.fmean(r.cost_usd for r in rs),
            "energy_kwh": statistics.fmean(r.energy_kwh for r in rs),
            "jain_fairness": statistics.fmean(r.jain_fairness for r in rs),
            "fair_share_min": statistics.fmean(r.fair_share_min for r in rs),
            "preemptions": statistics.fmean(r.preemptions for r in rs),
            "spot_interruptions": statistics.fmean(r.spot_interruptions for r in rs),
        }
    return out


def write_summary(workload: str, results: Sequence[MigRunResult], path: Path) -> None:
    """One row per (policy, seed), then one ``seed=mean`` row per policy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in results:
            w.writerow(_row(workload, r))
        for pol, m in means(results).items():
            n = sum(1 for r in results if r.policy == pol)
            w.writerow({"workload": workload, "policy": pol, "seed": "mean",
                        "jobs": str(sum(r.jobs for r in results if r.policy == pol) // n),
                        **{k: f"{v:.3f}" for k, v in m.items()}})


def table(results: Sequence[MigRunResult], baseline: str = "naive-sharing") -> Table:
    m = means(results)
    t = Table(title="MIG track (mean over seeds)")
    for col in ("policy", "GPU-hours", f"vs {baseline}", "peak GPUs", "SLO miss %",
                "attainment %", "waiting job-h", "migrations", "reconfig.",
                "decision p50 ms", "p99 ms", "re-plan max ms", "US$", "kWh", "Jain",
                "fair min", "preempt."):
        t.add_column(col, justify="left" if col == "policy" else "right")
    base = m.get(baseline, {}).get("gpu_hours")
    for pol, v in m.items():
        rel = f"{100 * (v['gpu_hours'] / base - 1):+.1f}%" if base else "-"
        t.add_row(pol, f"{v['gpu_hours']:.1f}", rel, f"{v['peak_gpus']:.1f}",
                  f"{v['slo_miss_pct']:.1f}", f"{v['slo_attainment_pct']:.2f}",
                  f"{v['waiting_job_hours']:.1f}", f"{v['migrations']:.1f}",
                  f"{v['reconfigurations']:.0f}", f"{v['decision_p50_ms']:.2f}",
                  f"{v['decision_p99_ms']:.2f}", f"{v['replan_max_ms']:.0f}",
                  f"{v['cost_usd']:.0f}", f"{v['energy_kwh']:.0f}",
                  f"{v['jain_fairness']:.3f}", f"{v['fair_share_min']:.3f}",
                  f"{v['preemptions']:.1f}")
    return t


def plot(results: Sequence[MigRunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = means(results)
    pols = list(m)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].bar(pols, [m[p]["gpu_hours"] for p in pols], color="tab:blue")
    axes[0].set_ylabel("GPU-hours (mean over seeds)")
    axes[0].set_title("GPU-hours")
    axes[1].bar(pols, [m[p]["slo_miss_pct"] for p in pols], color="tab:red")
    axes[1].set_ylabel("jobs missing their SLO at arrival (%)")
    axes[1].set_title("SLO misses")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_demand(results: Sequence[MigRunResult], seed: int, path: Path) -> None:
    """Offered demand vs provisioned capacity, and GPUs in use, over time, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.seed == seed and r.series]
    if not runs:
        return
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    first = runs[0].series
    axes[0].plot([s[0] / 3600 for s in first], [s[1] / 1000 for s in first], color="black",
                 lw=1.2, label="offered demand")
    for r in runs:
        hours = [s[0] / 3600 for s in r.series]
        axes[0].plot(hours, [s[2] / 1000 for s in r.series], lw=0.9,
                     label=f"{r.policy}: provisioned")
        axes[1].plot(hours, [s[3] for s in r.series], lw=0.9, label=r.policy)
    axes[0].set_ylabel("thousand requests/s (all jobs)")
    axes[0].set_title(f"Offered demand vs provisioned SLO-feasible capacity (seed {seed})")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("GPUs in use")
    axes[1].set_xlabel("hours")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
