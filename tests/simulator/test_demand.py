"""Time-varying demand: the generator, the three policies' invariants, the CLI."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest

from conspirator.cli import main
from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.throughput import default_table
from conspirator.operator.simulator.autoscale import (
    ConspiratorAutoscaler,
    HpaReplicas,
    StaticPeak,
    repeated_layout,
)
from conspirator.operator.simulator.demand import DemandSpec, generate_traces, trace_for
from conspirator.operator.simulator.mig import reconfigurations
from conspirator.operator.simulator.mig_demand import run_demand
from conspirator.operator.simulator.mig_inputs import (
    JobEvent,
    NodeSpec,
    WorkloadSpec,
    generate_jobs,
)
from conspirator.operator.simulator.mig_report import COLUMNS

TABLE = default_table()
DAY = 24 * 3600.0
STEP = 300.0
NODES = [NodeSpec("a", gpu_model("A100-80GB"), 8), NodeSpec("h", gpu_model("H100-80GB"), 8)]


def long_job(jid: str = "j", rps: float = 1000.0, days: float = 3.0) -> JobEvent:
    return JobEvent(Job(jid, "resnet50", rps, 50.0, 8.0), 0.0, days * DAY)


def small_workload(seed: int) -> list[JobEvent]:
    return generate_jobs(seed, TABLE, WorkloadSpec(jobs=25, horizon_s=6 * 3600.0,
                                                   mean_duration_s=3 * 3600.0,
                                                   median_demand_rps=400.0))


# --- the generator --------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["diurnal", "bursty"])
def test_traces_are_seeded(pattern: str) -> None:
    events = small_workload(1)
    spec = DemandSpec(pattern=pattern)
    assert generate_traces(events, spec, 5) == generate_traces(events, spec, 5)
    assert generate_traces(events, spec, 5) != generate_traces(events, spec, 6)
    # A job's trace does not depend on the other jobs.
    assert generate_traces(events[:3], spec, 5)[events[0].job.id] == \
        generate_traces(events, spec, 5)[events[0].job.id]


def test_diurnal_mean_period_and_peak() -> None:
    ev = long_job()
    quiet = trace_for(ev, DemandSpec(pattern="diurnal", noise_sigma=0.0), 3)
    per_day = int(DAY / STEP)
    assert len(quiet.rates) == 3 * per_day
    assert quiet.mean_rps == pytest.approx(1000.0, rel=1e-3)  # whole days: the base rate
    assert quiet.rates[:per_day] == pytest.approx(quiet.rates[per_day:2 * per_day], rel=1e-3)
    amp = quiet.peak_rps / 1000.0 - 1.0
    assert 0.3 - 1e-3 <= amp <= 0.7 + 1e-3
    assert min(quiet.rates) == pytest.approx(1000.0 * (1.0 - amp), rel=1e-3)
    peak_hour = (quiet.rates.index(quiet.peak_rps) + 0.5) * STEP / 3600.0 % 24.0
    assert 12.0 - 0.1 <= peak_hour <= 16.0 + 0.1  # 14:00 +- 2 h of jitter
    noisy = trace_for(ev, DemandSpec(pattern="diurnal"), 3)
    ratios = [n / q for n, q in zip(noisy.rates, quiet.rates, strict=True)]
    assert statistics.fmean(ratios) == pytest.approx(1.0, abs=0.02)
    assert 0.02 < statistics.pstdev(ratios) < 0.08  # sigma 0.05


def test_bursty_has_bursts_on_the_base_rate() -> None:
    tr = trace_for(long_job(days=4.0), DemandSpec(pattern="bursty"), 11)
    assert min(tr.rates) == pytest.approx(1000.0)
    assert statistics.median(tr.rates) == pytest.approx(1000.0)  # mostly the base rate
    assert max(tr.rates) <= 4000.0 + 1e-6
    in_burst = [r for r in tr.rates if r > 1000.0 + 1e-6]
    assert max(in_burst) >= 2000.0  # a burst covering a whole step: 2-4x
    assert 0.02 < len(in_burst) / len(tr.rates) < 0.5


def test_static_pattern_is_the_declared_rate() -> None:
    tr = trace_for(long_job(days=0.5), DemandSpec(pattern="static"), 1)
    assert set(tr.rates) == {1000.0}


def test_repeated_layout() -> None:
    a100 = gpu_model("A100-80GB")
    by = {p.name: p for p in a100.planning_profiles}
    assert repeated_layout(a100, by["1g.10gb"]) == (0, 1, 2, 3, 4, 5, 6)
    assert repeated_layout(a100, by["2g.20gb"]) == (0, 2, 4)
    assert repeated_layout(a100, by["3g.40gb"]) == (0, 4)
    assert repeated_layout(a100, by["7g.80gb"]) == (0,)


def test_reconfigurations_count_changes_on_gpus_in_use_only() -> None:
    from collections import Counter

    before = {0: Counter([("1g", 6)]), 1: Counter([("1g", 6)])}
    after = {0: Counter([("1g", 6), ("1g", 5)]), 2: Counter([("3g", 0)])}
    # GPU 0 gains an instance next to a running one; GPU 1 is freed; GPU 2 is new.
    assert reconfigurations(before, after, {0, 1}, {0, 2}) == 1


# --- the policies' invariants ---------------------------------------------------------------

def test_static_peak_never_changes_a_job_after_arrival() -> None:
    events = small_workload(2)
    traces = generate_traces(events, DemandSpec(pattern="diurnal"), 2)
    first: dict[str, list[tuple[int, str, int]]] = {}

    def check(now: float, state: ClusterState) -> None:
        for jid in state.jobs:
            reps = sorted((g.uid, i.profile.name, i.start) for g, i in state.replicas(jid))
            assert first.setdefault(jid, reps) == reps
            assert state.served_rps(jid) >= traces[jid].peak_rps * (1 - 1e-6)

    res = run_demand(NODES, events, StaticPeak(TABLE), traces, 2, STEP, observer=check)
    assert len(first) == len(events)
    assert res.slo_attainment_pct == pytest.approx(100.0) and res.migrations == 0


def test_hpa_never_reslices_a_gpu_in_use() -> None:
    events = small_workload(3)
    traces = generate_traces(events, DemandSpec(pattern="diurnal"), 3)
    ctl = HpaReplicas(TABLE)

    def check(now: float, state: ClusterState) -> None:
        for g in state.gpus:
            if g.instances:
                prof, starts = ctl.partition[g.uid]
                assert all(i.profile.name == prof.name and i.start in starts
                           for i in g.instances)

    res = run_demand(NODES, events, ctl, traces, 3, STEP, observer=check)
    assert ctl.recuts and all(n == 0 for _, n in ctl.recuts)
    assert res.reconfigurations == 0 or res.reconfigurations <= 2 * len(ctl.recuts)
    assert res.migrations == 0


@pytest.mark.parametrize("window_s", [300.0, 900.0])
def test_conspirator_never_goes_below_the_windowed_lagged_recommendation(
        window_s: float) -> None:
    events = small_workload(4)
    traces = generate_traces(events, DemandSpec(pattern="diurnal"), 4)
    by_id = {e.job.id: e for e in events}
    ctl = ConspiratorAutoscaler(TABLE, target=0.8, window_s=window_s)
    checked = 0

    def check(now: float, state: ClusterState) -> None:
        nonlocal checked
        if now % STEP:
            return
        for jid in ctl.jobs:
            ev, tr = by_id[jid], traces[jid]
            recs = [tr.rate_at(ev.arrival_s) / 0.8] if ev.arrival_s >= now - window_s else []
            k = int(now // STEP)
            recs += [tr.rate_in_step(s - 1) / 0.8 for s in range(k, 0, -1)
                     if s * STEP >= max(now - window_s, ev.arrival_s)]
            assert state.served_rps(jid) >= max(recs) * (1 - 1e-6)
            checked += 1

    res = run_demand(NODES, events, ctl, traces, 4, STEP, replan_every_s=1800.0, observer=check)
    assert checked > 100
    assert res.slo_attainment_pct > 90.0


# --- the CLI ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["static", "diurnal", "bursty"])
def test_cli_each_pattern_writes_the_columns(tmp_path: Path, pattern: str) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,gpu,model\nn1,4,A100-80GB\nn2,2,T4\n")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("name,model,demand_rps,latency_slo_ms,memory_gib,arrival_s,duration_s\n"
                    "a,resnet50,3000,50,8,0,36000\nb,bert-base,100,100,8,600,20000\n")
    out = tmp_path / "out"
    pols = ["conspirator"] + (["static-peak", "hpa-replicas"] if pattern != "static" else [])
    argv = ["simulate", "--track", "mig", "--nodes", str(nodes), "--pods", str(jobs),
            "--seeds", "2", "--demand-pattern", pattern, "--out", str(out)]
    for p in pols:
        argv += ["--policy", p]
    assert main(argv) == 0
    with (out / "mig_summary.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    assert {r["policy"] for r in rows} == set(pols)
    assert {r["seed"] for r in rows} == {"42", "43", "mean"}
    for r in rows:
        assert 0.0 <= float(r["slo_attainment_pct"]) <= 100.0
        assert float(r["gpu_hours"]) > 0 and float(r["reconfigurations"]) >= 0
    if pattern != "static":
        assert (out / "demand_vs_capacity.png").stat().st_size > 0
        assert all(r["workload"] == f"jobs/{pattern}" for r in rows)


def test_cli_refuses_a_static_policy_under_varying_demand(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--track", "mig", "--demand-pattern", "diurnal",
                 "--policy", "greedy", "--seeds", "1"]) == 2
    assert "unknown policy greedy under --demand-pattern diurnal" in capsys.readouterr().err
