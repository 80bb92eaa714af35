"""Shared fixtures of the ParvaGPU tests: the packaged profiles and SLO sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from conspirator.operator.placement.segments import Demand, SegmentTable
from conspirator.operator.simulator.parvagpu_cli import packaged
from conspirator.operator.simulator.parvagpu_inputs import load_profiles, load_slo_sets


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return packaged()


@pytest.fixture(scope="session")
def profiles(data_dir: Path) -> SegmentTable:
    return load_profiles(data_dir / "prof_data")


@pytest.fixture(scope="session")
def slo_sets(data_dir: Path, profiles: SegmentTable) -> list[list[Demand]]:
    return load_slo_sets(data_dir / "SLO" / "SLO_req_rate.csv",
                         data_dir / "SLO" / "SLO_latency.csv", profiles.models)
