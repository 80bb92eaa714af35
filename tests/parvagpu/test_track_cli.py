"""``conspirator simulate --track parvagpu`` end to end on the packaged files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conspirator.cli import main
from conspirator.operator.placement.segments import SegmentTable
from conspirator.operator.simulator.parvagpu_check import check_plan
from conspirator.operator.simulator.parvagpu_inputs import load_plan, load_slo_sets


def test_track_writes_summary_and_plans(tmp_path: Path, data_dir: Path,
                                        profiles: SegmentTable,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["simulate", "--track", "parvagpu", "--policy", "conspirator", "--policy",
                 "parvagpu", "--out", str(out)])
    assert code == 0
    assert "ParvaGPU track" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "parvagpu_summary.csv").open()))
    for col in ("slo_set", "policy", "gpus", "models_met", "models_total", "solve_s"):
        assert col in rows[0]
    ours = {int(r["slo_set"]): r for r in rows if r["policy"] == "conspirator"
            and r["mps"] == "yes"}
    assert sorted(ours) == [1, 2, 3, 4, 5, 6]
    assert {r["policy"] for r in rows} == {"conspirator", "parvagpu", "parvagpu-published"}
    sets = load_slo_sets(data_dir / "SLO" / "SLO_req_rate.csv",
                         data_dir / "SLO" / "SLO_latency.csv", profiles.models)
    for k, r in ours.items():
        assert int(r["gpus"]) <= int(r["parvagpu_published"])
        plan = load_plan(out / "plans" / "conspirator-mps" / f"SLO{k}.csv", profiles)
        assert check_plan(plan, sets[k - 1]).valid
        assert int(r["models_met"]) == int(r["models_total"])


def test_no_mps_runs_mig_only(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "o"
    assert main(["simulate", "--track", "parvagpu", "--no-mps", "--max-processes", "3",
                 "--profiles", str(data_dir / "prof_data"), "--slo-rates",
                 str(data_dir / "SLO" / "SLO_req_rate.csv"), "--slo-latency",
                 str(data_dir / "SLO" / "SLO_latency.csv"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "parvagpu_summary.csv").open()))
    assert {r["mps"] for r in rows} == {"no"} and len(rows) == 6
    assert rows[0]["parvagpu_published"] == ""  # explicit files: no published counts


def test_unknown_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--track", "parvagpu", "--policy", "fgd", "--out",
                 str(tmp_path)]) == 2
    assert "unknown parvagpu policy fgd" in capsys.readouterr().err
