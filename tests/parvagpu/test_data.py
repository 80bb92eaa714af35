"""The packaged ParvaGPU files: identical to the shared copy, read as its README says."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from conspirator.operator.placement.segments import Demand, SegmentTable

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "parvagpu"


def test_packaged_copy_is_identical_to_shared(data_dir: Path) -> None:
    if not SHARED.is_dir():
        pytest.skip(f"no shared copy at {SHARED} to compare with")
    for f in sorted(p for p in SHARED.rglob("*") if p.is_file() and p.name != "README.md"):
        rel = f.relative_to(SHARED)
        assert filecmp.cmp(f, data_dir / rel, shallow=False), rel


def test_eleven_models_in_alphabetical_order(profiles: SegmentTable) -> None:
    assert profiles.models == ("bert", "densenet121", "densenet169", "densenet201",
                               "inceptionv3", "mobilenetv2", "resnet101", "resnet152",
                               "resnet50", "vgg16", "vgg19")


def test_throughput_is_per_process(profiles: SegmentTable) -> None:
    # bert, 1 GPC, batch 1: 74.408 req/s with one process, 52.42 per process with two.
    one = profiles.find("bert", 1, 1, 1)
    two = profiles.find("bert", 1, 1, 2)
    assert one is not None and two is not None
    assert one.throughput_rps == pytest.approx(74.408)
    assert two.throughput_rps == pytest.approx(2 * 52.42)
    assert two.batch_latency_ms == pytest.approx(19.0)


def test_unmeasured_points_are_dropped(profiles: SegmentTable) -> None:
    # resnet50 at batch 128 on 1 GPC is 0,0 in the file (did not fit).
    assert profiles.find("resnet50", 1, 128, 1) is None
    assert all(s.per_process_rps > 0 for m in profiles.models for s in profiles.points(m))


def test_slo_sets(slo_sets: list[list[Demand]]) -> None:
    assert [len(s) for s in slo_sets] == [6, 11, 11, 11, 11, 11]
    first = {d.model: d for d in slo_sets[0]}
    assert "densenet169" not in first  # N/A
    assert first["bert"].rate_rps == 19 and first["bert"].slo_ms == 6434
    sixth = {d.model: d for d in slo_sets[5]}
    assert sixth["inceptionv3"].slo_ms == 418.5
