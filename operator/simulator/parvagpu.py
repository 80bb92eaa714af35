"""The ParvaGPU track: plan every SLO set on A100-80GB GPUs, check each plan, summarise.

For each SLO set, policy and mode (MPS segments, or MIG only with one process per
instance), the policy plans; the plan is written as a deployment map
(``DIR/plans/<policy>-<mode>/SLO<k>.csv``, ParvaGPU's format), read back and checked
(:mod:`~conspirator.operator.simulator.parvagpu_check`).  The summary's figures are the
checker's, not the planner's.  ParvaGPU's own published deployment maps can be checked
the same way (policy ``parvagpu-published``).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from conspirator.operator.placement.segment_greedy import plan_parvagpu
from conspirator.operator.placement.segment_milp import plan_milp
from conspirator.operator.placement.segments import Demand, SegmentPlan, SegmentTable
from conspirator.operator.simulator.parvagpu_check import CheckResult, check_plan
from conspirator.operator.simulator.parvagpu_inputs import load_plan, write_plan

Planner = Callable[[SegmentTable, list[Demand], bool], SegmentPlan]

PUBLISHED = "parvagpu-published"


def _conspirator(table: SegmentTable, demands: list[Demand], mps: bool) -> SegmentPlan:
    return plan_milp(table, demands, mps)


def _parvagpu(table: SegmentTable, demands: list[Demand], mps: bool) -> SegmentPlan:
    return plan_parvagpu(table, demands, mps)


POLICIES: dict[str, Planner] = {"conspirator": _conspirator, "parvagpu": _parvagpu}

SUMMARY_COLUMNS = ("slo_set", "policy", "mps", "gpus", "models_met", "models_total", "valid",
                   "invalid_layout_gpus", "repairable", "lower_bound", "optimal", "gpcs",
                   "solve_s", "parvagpu_published", "parvagpu_rerun", "violations")


@dataclass(frozen=True, slots=True)
class TrackRow:
    slo_set: int
    policy: str
    mps: bool
    gpus: int
    models_met: int
    models_total: int
    valid: bool
    invalid_gpus: int
    repairable: bool
    lower_bound: int | None
    optimal: bool | None
    gpcs: int
    solve_s: float | None
    published: int | None
    rerun: int | None
    violations: tuple[str, ...]


def _row(k: int, policy: str, mps: bool, res: CheckResult, plan: SegmentPlan,
         solve_s: float | None, published: dict[int, tuple[int, int]],
         proven: bool) -> TrackRow:
    pub = published.get(k)
    return TrackRow(k, policy, mps, res.gpus, len(res.met), res.total, res.valid,
                    res.invalid_gpus, res.repairable,
                    plan.lower_bound if proven else None, plan.optimal if proven else None,
                    sum(s.segment.gpcs for s in plan.segments), solve_s,
                    pub[0] if pub else None, pub[1] if pub else None, res.violations)


def evaluate(k: int, policy: str, mps: bool, plan: SegmentPlan, demands: list[Demand],
             table: SegmentTable, out: Path, solve_s: float | None,
             published: dict[int, tuple[int, int]], proven: bool = True) -> TrackRow:
    """Write ``plan``, read it back, check what was read: one summary row."""
    path = out / "plans" / f"{policy}-{'mps' if mps else 'mig'}" / f"SLO{k}.csv"
    write_plan(plan, path)
    res = check_plan(load_plan(path, table), demands)
    return _row(k, policy, mps, res, plan, solve_s, published, proven)


def run_track(table: SegmentTable, sets: list[list[Demand]], policies: list[str],
              modes: list[bool], out: Path, published: dict[int, tuple[int, int]],
              published_plans: dict[int, Path] | None = None,
              progress: Callable[[str], None] | None = None,
              published_table: SegmentTable | None = None) -> list[TrackRow]:
    """Every (SLO set, policy, mode), then ParvaGPU's published plan of the set if given
    (its segments looked up in ``published_table``, by default ``table``)."""
    rows: list[TrackRow] = []
    for k, demands in enumerate(sets, start=1):
        for pol in policies:
            for mps in modes:
                if progress is not None:
                    progress(f"SLO set {k}: {pol} ({'MPS' if mps else 'MIG only'})")
                t0 = time.perf_counter()
                plan = POLICIES[pol](table, demands, mps)
                dt = time.perf_counter() - t0
                rows.append(evaluate(k, pol, mps, plan, demands, table, out, dt, published,
                                     proven=pol == "conspirator"))
        if published_plans and k in published_plans:
            plan = load_plan(published_plans[k], published_table or table)
            rows.append(_row(k, PUBLISHED, True, check_plan(plan, demands), plan, None,
                             published, proven=False))
    return rows


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def write_summary(rows: list[TrackRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SUMMARY_COLUMNS)
        for r in rows:
            w.writerow([r.slo_set, r.policy, _fmt(r.mps), r.gpus, r.models_met, r.models_total,
                        _fmt(r.valid), r.invalid_gpus, _fmt(r.repairable),
                        _fmt(r.lower_bound), _fmt(r.optimal), r.gpcs,
                        _fmt(r.solve_s), _fmt(r.published), _fmt(r.rerun),
                        " | ".join(r.violations)])


def markdown(rows: list[TrackRow]) -> str:
    """The summary as a Markdown table: GPUs (models met) per SLO set and (policy, mode);
    ``*``: GPUs whose MIG layout as written is invalid (the same instances fit elsewhere)."""
    keys = list(dict.fromkeys((r.policy, r.mps) for r in rows))
    head = ["SLO set", *[f"{p} {'MPS' if m else 'MIG only'}" for p, m in keys],
            "ParvaGPU published", "ParvaGPU rerun"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = [0] * (len(keys) + 2)
    for k in sorted({r.slo_set for r in rows}):
        cells = [str(k)]
        for i, key in enumerate(keys):
            r = next((r for r in rows if (r.policy, r.mps) == key and r.slo_set == k), None)
            if r is None:
                cells.append("")
                continue
            totals[i] += r.gpus
            star = f" *{r.invalid_gpus}" if r.invalid_gpus else ""
            cells.append(f"{r.gpus} ({r.models_met}/{r.models_total}){star}")
        r0 = next(r for r in rows if r.slo_set == k)
        totals[-2] += r0.published or 0
        totals[-1] += r0.rerun or 0
        cells += [_fmt(r0.published), _fmt(r0.rerun)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(map(str, totals)) + " |")
    return "\n".join(lines) + "\n"


def table(rows: list[TrackRow]) -> Table:
    """Per SLO set and (policy, mode): GPUs, models met, and GPUs whose MIG layout as
    written is invalid ("re-sliced": the same instances fit at other start slices)."""
    keys = list(dict.fromkeys((r.policy, r.mps) for r in rows))
    t = Table(title="ParvaGPU track: A100-80GB GPUs per SLO set (checked plans)")
    t.add_column("SLO set", justify="right")
    for pol, mps in keys:
        t.add_column(f"{pol}\n{'MPS' if mps else 'MIG only'}", justify="right")
    has_pub = any(r.published is not None for r in rows)
    if has_pub:
        t.add_column("ParvaGPU\npublished/rerun", justify="right")
    sets = sorted({r.slo_set for r in rows})
    totals = dict.fromkeys(keys, 0)
    pub_total = [0, 0]
    for k in sets:
        cells = [str(k)]
        for key in keys:
            r = next((r for r in rows if (r.policy, r.mps) == key and r.slo_set == k), None)
            if r is None:
                cells.append("")
                continue
            totals[key] += r.gpus
            mark = ""
            if r.invalid_gpus:
                mark = f" [yellow]{r.invalid_gpus} re-sliced[/yellow]" if r.repairable \
                    else " [red]invalid layout[/red]"
            if r.models_met < r.models_total:
                mark += " [red]short[/red]"
            cells.append(f"{r.gpus} ({r.models_met}/{r.models_total} met){mark}")
        if has_pub:
            r0 = next(r for r in rows if r.slo_set == k)
            pub_total[0] += r0.published or 0
            pub_total[1] += r0.rerun or 0
            cells.append(f"{_fmt(r0.published)}/{_fmt(r0.rerun)}")
        t.add_row(*cells)
    t.add_row("total", *[str(totals[key]) for key in keys],
              *([f"{pub_total[0]}/{pub_total[1]}"] if has_pub else []), style="bold")
    return t


__all__ = ["POLICIES", "PUBLISHED", "SUMMARY_COLUMNS", "TrackRow", "evaluate", "markdown",
           "run_track",
           "table", "write_summary"]
