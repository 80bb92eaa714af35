"""Bad ParvaGPU files are refused, naming the row and the column."""

from __future__ import annotations

from pathlib import Path

import pytest

from conspirator.cli import main
from conspirator.operator.simulator.parvagpu_inputs import (
    ParvaInputError,
    load_profile,
    load_slo_sets,
)

MODELS = ("a", "b", "c")


def _slo(tmp_path: Path, rates: str, lat: str) -> tuple[Path, Path]:
    r, lt = tmp_path / "r.csv", tmp_path / "l.csv"
    r.write_text(rates)
    lt.write_text(lat)
    return r, lt


def test_no_trailing_newline_and_na(tmp_path: Path) -> None:
    r, lt = _slo(tmp_path, "1,N/A,3\n4,5,6", "10,N/A,30\n40,50,60")
    sets = load_slo_sets(r, lt, MODELS)
    assert [[d.model for d in s] for s in sets] == [["a", "c"], ["a", "b", "c"]]
    assert sets[1][2].rate_rps == 6 and sets[1][2].slo_ms == 60


@pytest.mark.parametrize(("rates", "lat", "where"), [
    ("1,2,3\n4,x,6", "1,2,3\n4,5,6", "row 2, column 2 (b)"),
    ("1,2,3\n4,5", "1,2,3\n4,5,6", "row 2: 2 columns, expected 3"),
    ("1,2,3", "1,N/A,3", "row 1, column 2 (b): N/A in one"),
    ("1,2,3", "1,2,-3", "row 1, column 3 (c)"),
    ("1,2,3", "1,2,0", "row 1, column 3 (c): a latency SLO must be > 0"),
    ("1,2,3\n1,2,3", "1,2,3", "2 SLO sets"),
])
def test_bad_slo_files(tmp_path: Path, rates: str, lat: str, where: str) -> None:
    r, lt = _slo(tmp_path, rates, lat)
    with pytest.raises(ParvaInputError, match=where.replace("(", r"\(").replace(")", r"\)")):
        load_slo_sets(r, lt, MODELS)


def test_bad_profile(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("Mig instance,Batch size,Workload Number,Throughput,Latency\n"
                 "1,1,1,10,0.01\n5,1,1,10,0.01\n")
    with pytest.raises(ParvaInputError, match="row 3, column Mig instance: 5 GPCs"):
        load_profile(p)
    p.write_text("Mig,Batch\n")
    with pytest.raises(ParvaInputError, match="row 1: header"):
        load_profile(p)


def test_cli_refuses_bad_file(tmp_path: Path, data_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text(",".join(["1"] * 10 + ["oops"]))
    code = main(["simulate", "--track", "parvagpu", "--profiles", str(data_dir / "prof_data"),
                 "--slo-rates", str(rates), "--slo-latency",
                 str(data_dir / "SLO" / "SLO_latency.csv"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "row 1, column 11 (vgg19)" in err and "'oops'" in err
