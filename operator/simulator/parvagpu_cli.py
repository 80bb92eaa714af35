"""``conspirator simulate --track parvagpu``: its options and its run (docs/parvagpu-track.md)."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from rich.console import Console

from conspirator.cli import UsageError
from conspirator.operator.simulator.parvagpu import (
    POLICIES,
    markdown,
    run_track,
    table,
    write_summary,
)
from conspirator.operator.simulator.parvagpu_inputs import (
    ParvaInputError,
    load_profiles,
    load_published,
    load_slo_sets,
)

DATASET = "parvagpu"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parvagpu track (default: the packaged copy of ParvaGPU's files)")
    g.add_argument("--profiles", type=Path, help="folder of <model>.csv profiles")
    g.add_argument("--slo-rates", type=Path, help="SLO request rates CSV (one SLO set a row)")
    g.add_argument("--slo-latency", type=Path, help="SLO latencies CSV (ms, one set a row)")
    g.add_argument("--no-mps", action="store_true",
                   help="MIG only (one process per instance); default: MPS and MIG only")
    g.add_argument("--max-processes", type=int, default=None, metavar="N",
                   help="plan with at most N MPS processes per instance (ParvaGPU's own "
                   "configurator uses 3; default: every measured count)")
    g.add_argument("--published", type=Path,
                   help="ParvaGPU's GPU counts (gpus.csv) to report beside the plans")
    g.add_argument("--published-plans", type=Path,
                   help="folder of ParvaGPU's SLO<k>_ParvaGPU_deploy.csv to check likewise")


def packaged() -> Path:
    """The packaged copy of ``shared/data/parvagpu`` (``data/parvagpu/README.md``)."""
    return Path(str(resources.files("conspirator.operator.simulator").joinpath(
        "data", DATASET)))


def _default(given: Path | None, *parts: str) -> Path:
    return given if given is not None else packaged().joinpath(*parts)


def run_parvagpu(args: argparse.Namespace, policies: list[str], console: Console) -> int:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise UsageError(f"unknown parvagpu policy {', '.join(unknown)}; "
                         f"known: {', '.join(POLICIES)}")
    explicit = args.profiles is not None
    try:
        profiles = full = load_profiles(_default(args.profiles, "prof_data"))
        if args.max_processes is not None:
            if args.max_processes < 1:
                raise UsageError("--max-processes must be >= 1")
            profiles = profiles.limited(args.max_processes)
        sets = load_slo_sets(_default(args.slo_rates, "SLO", "SLO_req_rate.csv"),
                             _default(args.slo_latency, "SLO", "SLO_latency.csv"),
                             profiles.models)
        pub_path = args.published
        plans_dir = args.published_plans
        if not explicit and pub_path is None:
            pub_path = packaged() / "published" / "gpus.csv"
            plans_dir = plans_dir or packaged() / "published"
        published = load_published(pub_path) if pub_path and pub_path.is_file() else {}
        plans = {k: plans_dir / f"SLO{k}_ParvaGPU_deploy.csv" for k in range(1, len(sets) + 1)
                 if plans_dir and (plans_dir / f"SLO{k}_ParvaGPU_deploy.csv").is_file()}
        modes = [False] if args.no_mps else [True, False]
        with console.status("planning") as status:
            rows = run_track(profiles, sets, policies, modes, args.out, published, plans,
                             progress=status.update, published_table=full)
    except ParvaInputError as exc:
        raise UsageError(str(exc)) from None
    write_summary(rows, args.out / "parvagpu_summary.csv")
    (args.out / "parvagpu_summary.md").write_text(markdown(rows))
    console.print(table(rows))
    for r in rows:
        what = f"SLO set {r.slo_set} {r.policy}{'' if r.mps else ' (MIG only)'}"
        if r.invalid_gpus and r.repairable and r.models_met == r.models_total:
            console.print(f"[yellow]{what}: {r.invalid_gpus} GPU layout(s) invalid as written, "
                          "each valid at other start slices (summary: violations)[/yellow]")
            continue
        for v in r.violations:
            console.print(f"[red]{what}: {v}[/red]")
    console.print(f"wrote {args.out / 'parvagpu_summary.csv'}")
    return 0


__all__ = ["add_arguments", "run_parvagpu"]
