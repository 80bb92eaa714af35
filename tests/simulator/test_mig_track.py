"""The MIG-track simulator and its inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conspirator.cli import main
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.policy_names import mig_policy
from conspirator.operator.placement.throughput import default_table
from conspirator.operator.simulator.mig import run_mig
from conspirator.operator.simulator.mig_inputs import (
    InputError,
    JobEvent,
    NodeSpec,
    WorkloadSpec,
    generate_jobs,
    load_jobs,
    load_nodes,
)

TABLE = default_table()
JOB_HEADER = "name,model,demand_rps,latency_slo_ms,memory_gib,arrival_s,duration_s\n"


def whole_gpu_job(jid: str) -> Job:
    # 80 GiB per replica: only a whole A100-80GB (7g.80gb) holds it.
    return Job(jid, "resnet50", 100.0, 100.0, 70.0)


def test_gpu_hours_integrate_gpus_in_use() -> None:
    nodes = [NodeSpec("n", gpu_model("A100-80GB"), 1)]
    events = [JobEvent(whole_gpu_job("a"), 0.0, 3600.0)]
    res = run_mig(nodes, events, mig_policy("conspirator"), TABLE, seed=1)
    assert res.gpu_hours == pytest.approx(1.0)
    assert res.slo_miss_jobs == 0 and res.peak_gpus == 1


def test_job_waits_until_capacity_frees_and_is_counted_as_a_miss() -> None:
    nodes = [NodeSpec("n", gpu_model("A100-80GB"), 1)]
    events = [JobEvent(whole_gpu_job("a"), 0.0, 3600.0),
              JobEvent(whole_gpu_job("b"), 600.0, 3600.0)]
    res = run_mig(nodes, events, mig_policy("conspirator"), TABLE, seed=1)
    assert res.slo_miss_jobs == 1 and res.never_served_jobs == 0
    assert res.waiting_job_hours == pytest.approx(3000 / 3600)
    assert "insufficient capacity" in res.unplaced_reasons["b"]
    # An inference service's window is fixed: b ends at 600 + 3600 s whenever it started.
    assert res.gpu_hours == pytest.approx(1.0 + 600 / 3600)


def test_conspirator_uses_fewer_gpu_hours_than_naive_sharing() -> None:
    nodes = [NodeSpec("a", gpu_model("A100-80GB"), 8), NodeSpec("h", gpu_model("H100-80GB"), 8)]
    events = generate_jobs(7, TABLE, WorkloadSpec(jobs=40, median_demand_rps=300.0))
    ours = run_mig(nodes, events, mig_policy("conspirator"), TABLE, seed=7)
    naive = run_mig(nodes, events, mig_policy("naive-sharing"), TABLE, seed=7)
    assert ours.never_served_jobs == 0
    assert ours.gpu_hours < naive.gpu_hours


def test_generated_workload_is_seeded() -> None:
    assert generate_jobs(3, TABLE) == generate_jobs(3, TABLE)
    assert generate_jobs(3, TABLE) != generate_jobs(4, TABLE)


@pytest.mark.parametrize(("row", "needle"), [
    ("j,resnet50,abc,50,4,0,10", "row 1, field demand_rps: expected requests/s > 0, got 'abc'"),
    ("j,resnet50,-5,50,4,0,10", "field demand_rps"),
    ("j,gpt9,5,50,4,0,10", "row 1, field model: expected a profiled model"),
    ("j,resnet50,5,50,4,0,0", "field duration_s"),
    ("j,resnet50,5,50,4,0", "row 1"),
])
def test_bad_job_rows_name_file_row_and_field(tmp_path: Path, row: str, needle: str) -> None:
    f = tmp_path / "jobs.csv"
    f.write_text(JOB_HEADER + row + "\n")
    with pytest.raises(InputError) as exc:
        load_jobs(f, TABLE)
    assert "jobs.csv" in str(exc.value) and needle in str(exc.value)


def test_bad_node_rows(tmp_path: Path) -> None:
    f = tmp_path / "nodes.csv"
    f.write_text("sn,gpu,model\nx,2,B300\n")
    with pytest.raises(InputError, match=r"nodes.csv row 1, field model: expected a known GPU"):
        load_nodes(f)
    f.write_text("sn,gpu\nx,2\n")
    with pytest.raises(InputError, match="missing column"):
        load_nodes(f)
    f.write_text("sn,gpu,model\nx,two,T4\n")
    with pytest.raises(InputError, match="field gpu"):
        load_nodes(f)


def test_declared_memory_of_non_mig_model(tmp_path: Path) -> None:
    f = tmp_path / "nodes.csv"
    f.write_text("sn,gpu,model,gpu_memory_gib\nx,2,G2,48\n")
    [n] = load_nodes(f)
    assert n.model.memory_gib == 48.0 and n.gpus == 2


def test_cli_mig_track_writes_summary(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,gpu,model\nn1,4,A100-80GB\nn2,2,T4\n")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(JOB_HEADER + "a,resnet50,300,50,8,0,3600\nb,bert-base,100,100,8,60,600\n")
    out = tmp_path / "out"
    code = main(["simulate", "--track", "mig", "--nodes", str(nodes), "--pods", str(jobs),
                 "--policy", "conspirator", "--policy", "whole-gpu", "--seeds", "2",
                 "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "mig_summary.csv").open()))
    assert {r["policy"] for r in rows} == {"conspirator", "whole-gpu"}
    assert {r["seed"] for r in rows} == {"42", "43", "mean"}
    assert all(r["workload"] == "jobs" for r in rows)
    assert (out / "mig_summary.png").stat().st_size > 0


def test_cli_refuses_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--track", "mig", "--policy", "magic", "--seeds", "1"]) == 2
    assert "unknown mig policy magic" in capsys.readouterr().err
