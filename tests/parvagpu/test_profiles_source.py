"""ParvaGPU's measurements as a throughput source: the engine's table and ModelProfiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conspirator.api.v1alpha1.modelprofile import ModelProfileSpec
from conspirator.cli import main
from conspirator.mig import gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.segments import (
    SegmentTable,
    admissible,
    throughput_table,
)


def test_engine_table_admits_what_parvagpus_rule_admits(profiles: SegmentTable) -> None:
    table = throughput_table(profiles)
    a100 = gpu_model("A100-80GB")
    for slo in (20.0, 60.0, 200.0):
        job = Job("j", "resnet50", 100.0, slo, 1.0)
        for gpcs, name in ((1, "1g.10gb"), (3, "3g.40gb"), (7, "7g.80gb")):
            opt = table.best(job, a100, a100.profile(name))
            ok = [s for s in profiles.points("resnet50")
                  if s.gpcs == gpcs and s.processes == 1 and admissible(s, slo)]
            if not ok:
                assert opt is None
            else:
                assert opt is not None
                assert opt.throughput_rps == pytest.approx(
                    max(s.throughput_rps for s in ok), abs=1e-3)
    # Only the measured GPU model has rows.
    h100 = gpu_model("H100-80GB")
    assert table.best(Job("j", "bert", 1.0, 1e5, 1.0), h100, h100.profiles[0]) is None


def test_default_profiles_source_parvagpu(tmp_path: Path) -> None:
    out = tmp_path / "mp.yaml"
    assert main(["default-profiles", "--source", "parvagpu", "--out", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["metadata"]["name"] for d in docs][:2] == ["bert", "densenet121"]
    assert len(docs) == 11
    for d in docs:
        spec = ModelProfileSpec.model_validate(d["spec"])
        assert {e.gpu_model.value for e in spec.entries} == {"A100-80GB"}
        assert {e.mig_profile for e in spec.entries} <= {
            "1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}


def test_default_profiles_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["default-profiles", "--source", "parvagpu", "--profiles",
                 str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
