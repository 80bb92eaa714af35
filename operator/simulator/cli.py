"""``conspirator simulate``: both evaluation tracks from the command line."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from conspirator.cli import UsageError
from conspirator.operator.placement.fractional.policy_names import POLICIES as FRACTIONAL_POLICIES
from conspirator.operator.placement.plan_policy import DEFAULT_POLICY, PlanPolicy
from conspirator.operator.placement.policy_names import MIG_POLICIES, mig_policy
from conspirator.operator.placement.throughput import default_table
from conspirator.operator.plan_spec import PolicyFileError, load_policy_file, plan_from_spec
from conspirator.operator.simulator import (
    fractional,
    fractional_report,
    mig_report,
    parvagpu_cli,
)
from conspirator.operator.simulator.autoscale import DEMAND_POLICIES, make_controller
from conspirator.operator.simulator.data_paths import alibaba
from conspirator.operator.simulator.demand import PATTERNS, DemandSpec, generate_traces
from conspirator.operator.simulator.mig import MigRunResult, run_mig
from conspirator.operator.simulator.mig_demand import run_demand
from conspirator.operator.simulator.mig_inputs import (
    InputError,
    JobEvent,
    default_nodes_path,
    generate_jobs,
    load_jobs,
    load_nodes,
)
from conspirator.operator.simulator.mig_spot import SpotSpec
from conspirator.operator.simulator.traces import TraceError

FIRST_SEED = 42  # FGD's seeds are 42..51; both tracks use the same numbering


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="evaluate placement policies on a trace",
        description="Trace-driven evaluation of placement policies. Track 'fractional' is "
        "the FGD benchmark on the Alibaba GPU trace; track 'mig' places inference jobs on "
        "MIG-capable clusters; track 'parvagpu' plans ParvaGPU's SLO sets on A100-80GB "
        "GPUs from its measured MIG x MPS profiles.",
    )
    p.add_argument("--track", choices=("fractional", "mig", "parvagpu"), default="fractional")
    p.add_argument("--nodes", type=Path, help="node list CSV (sn,gpu,model,...)")
    p.add_argument("--pods", type=Path,
                   help="pod list CSV (fractional) or job list CSV (mig; default: a seeded "
                   "generated workload)")
    p.add_argument("--policy", action="append", dest="policies", metavar="NAME",
                   help="policy to run (repeatable; default: conspirator)")
    p.add_argument("--seeds", type=int, default=10, help="number of seeds (from 42)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--migration-budget", type=int, default=8,
                   help="mig track: replicas a periodic re-plan may move")
    p.add_argument("--replan-every", type=float, default=3600.0,
                   help="mig track: seconds between global re-plans")
    p.add_argument("--demand-pattern", choices=PATTERNS, default="static",
                   help="mig track: how job request rates vary over time (docs/mig-track.md); "
                   "static: the declared rate, all-or-nothing service")
    p.add_argument("--demand-step", type=float, default=300.0,
                   help="mig track: seconds over which a time-varying rate is constant, and "
                   "between autoscaler decisions")
    p.add_argument("--target-utilization", type=float, default=0.8,
                   help="mig track, time-varying demand: the autoscalers' target utilization")
    p.add_argument("--scale-in-window", type=float, default=300.0,
                   help="mig track, time-varying demand: stabilization window of scale-in (s)")
    p.add_argument("--time-limit", type=float, default=10.0,
                   help="mig track, time-varying demand: the MILP's time limit (s) in the "
                   "conspirator policy's re-plans")
    p.add_argument("--policy-file", type=Path, metavar="YAML",
                   help="mig track: a SchedulingPolicy manifest (objective, prices, power, "
                   "fairness, preemption; docs/scheduling-policy.md)")
    p.add_argument("--spot-interruptions", type=float, default=1.0, metavar="PER_DAY",
                   help="mig track: mean times a spot node is taken back per day")
    p.add_argument("--spot-downtime", type=float, default=1800.0, metavar="S",
                   help="mig track: seconds a spot node stays away")
    parvagpu_cli.add_arguments(p)
    p.set_defaults(func=run)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise UsageError("--seeds must be >= 1")
    policies: list[str] = args.policies or ["conspirator"]
    # Wide enough for the tables when the output is a file or a CI log.
    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.track == "parvagpu":
        return parvagpu_cli.run_parvagpu(args, policies, console)
    if args.track == "mig":
        return _run_mig(args, policies, console)
    return _run_fractional(args, policies, console)


def _run_mig(args: argparse.Namespace, policies: list[str], console: Console) -> int:
    if args.demand_pattern != "static":
        return _run_demand(args, policies, console)
    unknown = [p for p in policies if p not in MIG_POLICIES]
    if unknown:
        raise UsageError(f"unknown mig policy {', '.join(unknown)}; "
                         f"known: {', '.join(MIG_POLICIES)}")
    table = default_table()
    try:
        nodes = load_nodes(args.nodes or default_nodes_path())
        fixed: list[JobEvent] | None = load_jobs(args.pods, table) if args.pods else None
        plan = plan_from_spec(load_policy_file(args.policy_file).spec) \
            if args.policy_file else DEFAULT_POLICY
        spot = SpotSpec(args.spot_interruptions, args.spot_downtime)
    except (InputError, PolicyFileError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    workload = args.pods.stem if args.pods else "generated-inference-mix"
    seeds = [FIRST_SEED + k for k in range(args.seeds)]
    results: list[MigRunResult] = []
    with _progress(console) as prog:
        for pol in policies:
            for seed in seeds:
                events = fixed if fixed is not None else generate_jobs(seed, table)
                task = prog.add_task(f"mig {pol} seed {seed}", total=len(events))
                results.append(run_mig(
                    nodes, events, mig_policy(pol, plan), table, seed,
                    replan_every_s=args.replan_every, migration_budget=args.migration_budget,
                    progress=functools.partial(prog.advance, task), plan=plan, spot=spot,
                    label=plan_label(pol, plan)))
                prog.remove_task(task)
    out: Path = args.out
    mig_report.write_summary(workload, results, out / "mig_summary.csv")
    console.print(mig_report.table(results))
    if not args.no_plot:
        mig_report.plot(results, out / "mig_summary.png")
    console.print(f"wrote {out / 'mig_summary.csv'}")
    return 0


def plan_label(policy: str, plan: PlanPolicy) -> str:
    """The policy column of a run: the policy, and the plan policy where it is not the
    paper's (``conspirator:cost+fair+preempt``)."""
    if plan.is_default:
        return policy
    return f"{policy}:{plan.objective}" + ("+fair" if plan.fairness else "") + \
        ("+preempt" if plan.preemption else "")


def _run_demand(args: argparse.Namespace, policies: list[str], console: Console) -> int:
    unknown = [p for p in policies if p not in DEMAND_POLICIES]
    if unknown:
        raise UsageError(f"unknown policy {', '.join(unknown)} under --demand-pattern "
                         f"{args.demand_pattern}; known: {', '.join(DEMAND_POLICIES)}")
    if not args.demand_step > 0:
        raise UsageError("--demand-step must be > 0")
    if not 0 < args.target_utilization <= 1:
        raise UsageError("--target-utilization must be in (0, 1]")
    if args.scale_in_window < 0:
        raise UsageError("--scale-in-window must be >= 0")
    table = default_table()
    try:
        nodes = load_nodes(args.nodes or default_nodes_path())
        fixed: list[JobEvent] | None = load_jobs(args.pods, table) if args.pods else None
    except InputError as exc:
        raise UsageError(str(exc)) from None
    workload = (args.pods.stem if args.pods else "generated-inference-mix") + \
        f"/{args.demand_pattern}"
    spec = DemandSpec(pattern=args.demand_pattern, step_s=args.demand_step)
    results: list[MigRunResult] = []
    with _progress(console) as prog:
        for pol in policies:
            for seed in [FIRST_SEED + k for k in range(args.seeds)]:
                events = fixed if fixed is not None else generate_jobs(seed, table)
                traces = generate_traces(events, spec, seed)
                task = prog.add_task(f"mig {pol} {args.demand_pattern} seed {seed}",
                                     total=len(events))
                ctl = make_controller(pol, table, args.target_utilization,
                                      args.scale_in_window, args.time_limit)
                results.append(run_demand(
                    nodes, events, ctl, traces, seed, spec.step_s,
                    replan_every_s=args.replan_every, migration_budget=args.migration_budget,
                    progress=functools.partial(prog.advance, task)))
                prog.remove_task(task)
    out: Path = args.out
    mig_report.write_summary(workload, results, out / "mig_summary.csv")
    console.print(mig_report.table(results, baseline="static-peak"))
    if not args.no_plot:
        mig_report.plot(results, out / "mig_summary.png")
        mig_report.plot_demand(results, FIRST_SEED, out / "demand_vs_capacity.png")
    console.print(f"wrote {out / 'mig_summary.csv'}")
    return 0


def _run_fractional(args: argparse.Namespace, policies: list[str], console: Console) -> int:
    unknown = [p for p in policies if p not in FRACTIONAL_POLICIES]
    if unknown:
        raise UsageError(f"unknown fractional policy {', '.join(unknown)}; "
                         f"known: {', '.join(FRACTIONAL_POLICIES)}")
    nodes = args.nodes or alibaba("openb_node_list_gpu_node.csv")
    pods = args.pods or alibaba("openb_pod_list_default.csv")
    if nodes is None or pods is None:
        raise UsageError("no trace found: pass --nodes and --pods, or set CONSPIRATOR_DATA "
                         "to the folder holding alibaba-gpu-v2023/")
    runs = len(policies) * args.seeds
    with _progress(console) as prog:
        task = prog.add_task("fractional runs", total=runs)

        def advance(done: int, total: int, what: str) -> None:
            prog.update(task, completed=done, description=f"fractional: {what}")

        try:
            rows = fractional.run_fractional(nodes, pods, policies, args.seeds, advance)
        except TraceError as exc:
            raise UsageError(str(exc)) from None
    out: Path = args.out
    fractional.write_summary(rows, out / "fractional_summary.csv")
    published_path = alibaba("fgd-expected-results/summary_mean_by_load.csv")
    published = (fractional.read_summary(published_path)
                 if published_path is not None and published_path.is_file() else [])
    console.print(fractional_report.table(rows, published))
    if not args.no_plot:
        fractional_report.plot(rows, published, out / "fractional_summary.png")
    console.print(f"wrote {out / 'fractional_summary.csv'}")
    return 0
