"""The NVML backend on a real GPU: read-only queries only (DESIGN section 7 forbids changing MIG
mode, layouts or any setting of a GPU used for testing).  Skipped, with the reason, where NVML
or a GPU is missing, as on the development machines of this project."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conspirator.deviceplugin.backend import BackendError, GpuBackend
from conspirator.mig import catalog


@pytest.fixture(scope="module")
def nvml() -> Iterator[GpuBackend]:
    from conspirator.deviceplugin.nvml import NvmlBackend

    try:
        backend = NvmlBackend()
        gpus = backend.gpus()
    except BackendError as exc:
        pytest.skip(f"no NVML here ({exc}); the NVML backend is tested on GPU machines only")
    if not gpus:
        backend.close()
        pytest.skip("NVML found no GPU")
    yield backend
    backend.close()


def test_inventory(nvml: GpuBackend) -> None:
    for g in nvml.gpus():
        assert g.uuid.startswith("GPU-")
        assert g.memory_gib > 0
        if g.mig_capable:
            assert g.model.name in catalog(), f"{g.model.name} should be in the MIG catalog"


def test_profiles_and_placements_match_the_catalog(nvml: GpuBackend) -> None:
    for g in nvml.gpus():
        if not g.mig_capable:
            continue
        for prof in g.model.profiles:
            assert nvml.possible_placements(g.index, prof.name) == list(prof.starts), prof.name


def test_instances_are_read(nvml: GpuBackend) -> None:
    for g in nvml.gpus():
        for inst in nvml.instances(g.index):
            assert inst.gpu_index == g.index
            assert g.model.has_profile(inst.profile)
            if inst.complete:
                assert inst.uuid is not None and inst.uuid.startswith("MIG-")


def test_health_events_can_be_polled(nvml: GpuBackend) -> None:
    events = nvml.poll_health(0.01)
    assert all(not e.healthy for e in events)
