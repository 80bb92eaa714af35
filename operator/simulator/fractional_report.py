"""The fractional track on the terminal and in pictures, next to FGD's published means."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from conspirator.operator.simulator.fractional import SummaryRow, published_counterpart

ALLOC = "gpu_alloc_ratio_pct"
FRAG = "frag_ratio_pct_of_idle"


def _value(rows: Sequence[SummaryRow], policy: str, metric: str, load: int) -> float | None:
    for r in rows:
        if r.policy == policy and r.metric == metric and r.arrived_gpu_demand_pct == load:
            return r.mean_over_seeds
    return None


def table(ours: Sequence[SummaryRow], published: Sequence[SummaryRow]) -> Table:
    t = Table(title="Fractional track (FGD benchmark), mean over seeds")
    for col in ("policy", "alloc % @100", "alloc % @130", "published @130", "frag % idle @90",
                "published @90"):
        t.add_column(col, justify="left" if col == "policy" else "right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    workload = {r.workload for r in ours}
    pub = [r for r in published if r.workload in workload]
    for pol in dict.fromkeys(r.policy for r in ours):
        theirs = published_counterpart(pol)
        t.add_row(pol, fmt(_value(ours, pol, ALLOC, 100)), fmt(_value(ours, pol, ALLOC, 130)),
                  f"{fmt(_value(pub, theirs, ALLOC, 130))} ({theirs})",
                  fmt(_value(ours, pol, FRAG, 90)), fmt(_value(pub, theirs, FRAG, 90)))
    return t


def plot(ours: Sequence[SummaryRow], published: Sequence[SummaryRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workload = {r.workload for r in ours}
    policies = list(dict.fromkeys(r.policy for r in ours))
    theirs = list(dict.fromkeys(published_counterpart(p) for p in policies))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = ((axes[0], ALLOC, "GPU allocation ratio (%)", 0),
              (axes[1], ALLOC, "GPU allocation ratio (%), 80-130% demand", 80),
              (axes[2], FRAG, "fragmented share of idle GPU (%)", 0))
    for ax, metric, label, lo in panels:
        for name, rows, style in [(p, ours, "-") for p in policies] + [
                (t, published, "--") for t in theirs]:
            pts = sorted((r.arrived_gpu_demand_pct, r.mean_over_seeds) for r in rows
                         if r.policy == name and r.metric == metric
                         and r.workload in workload and r.arrived_gpu_demand_pct >= lo)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=style, marker="o", ms=3,
                        label=name + (" (published)" if style == "--" else ""))
        ax.set_xlabel("arrived GPU demand (% of capacity)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
