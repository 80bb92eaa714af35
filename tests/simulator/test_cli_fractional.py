"""``conspirator simulate --track fractional`` end to end on a tiny trace."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conspirator.cli import main

NODES = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(
    f"n{k},64000,262144,{2 if k % 2 else 4},{'T4' if k % 2 else 'V100M32'}\n" for k in range(8))
PODS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time," \
       "deletion_time,scheduled_time\n" + "".join(
    f"p{k},4000,8192,1,{(250, 500, 1000, 750)[k % 4]},,LS,Running,{k},{k + 100},{k}\n"
    for k in range(40))


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.chdir(tmp_path)  # no shared/ data around: only explicit paths work
    monkeypatch.delenv("CONSPIRATOR_DATA", raising=False)
    (tmp_path / "nodes.csv").write_text(NODES)
    (tmp_path / "pods.csv").write_text(PODS)
    return tmp_path / "nodes.csv", tmp_path / "pods.csv"


def test_writes_the_published_long_format(trace: tuple[Path, Path], tmp_path: Path) -> None:
    nodes, pods = trace
    out = tmp_path / "out"
    code = main(["simulate", "--track", "fractional", "--nodes", str(nodes), "--pods", str(pods),
                 "--policy", "conspirator", "--policy", "fgd", "--seeds", "2", "--out", str(out)])
    assert code == 0
    with (out / "fractional_summary.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["workload", "policy", "metric", "arrived_gpu_demand_pct",
                                     "mean_over_seeds", "n_seeds"]
        rows = list(reader)
    assert {r["workload"] for r in rows} == {"pods"}
    assert {r["metric"] for r in rows} == {"gpu_alloc_ratio_pct", "frag_ratio_pct_of_idle",
                                           "frag_amount_pct"}
    assert "2" in {r["n_seeds"] for r in rows} <= {"1", "2"}
    assert (out / "fractional_summary.png").stat().st_size > 0


def test_missing_trace_is_a_usage_error(trace: tuple[Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--track", "fractional", "--seeds", "1", "--no-plot"]) == 2
    assert "pass --nodes and --pods" in capsys.readouterr().err


def test_bad_pod_row_names_file_row_field(trace: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = trace
    pods.write_text(PODS.replace("p3,4000,8192,1,750", "p3,4000,8192,1,lots"))
    code = main(["simulate", "--track", "fractional", "--nodes", str(nodes), "--pods", str(pods),
                 "--seeds", "1", "--no-plot", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "pods.csv" in err and "gpu_milli" in err


def test_unknown_policy(trace: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = trace
    assert main(["simulate", "--track", "fractional", "--nodes", str(nodes), "--pods",
                 str(pods), "--policy", "tetris"]) == 2
    assert "unknown fractional policy tetris" in capsys.readouterr().err
