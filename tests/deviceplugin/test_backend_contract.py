"""One contract, two backends: the simulated one (node spec file) and the NVML one (the real
nvidia-ml-py on the fake libnvidia-ml, native/fakenvml) answer the daemon's calls alike, the
NVML error codes included.  The NVML side proves calls and error paths, not hardware."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conspirator.deviceplugin.backend import BackendError, ErrorCode, GpuBackend
from conspirator.deviceplugin.daemon import DaemonConfig, NodeDaemon
from conspirator.deviceplugin.nvml import NvmlBackend

from .conftest import make_backend
from .fakenvml import FakeNvml, config
from .fakes import FakeNodeAPI

GPUS: list[dict[str, Any]] = [
    {"model": "A100-80GB"}, {"model": "A100-80GB", "migEnabled": False}, {"model": "T4"},
    {"model": "H100-80GB"}, {"model": "A30-24GB"},
]


@dataclass
class Rig:
    """A backend and what processes and the hardware do to its devices."""

    backend: GpuBackend
    hold: Callable[[str, int], None]
    release: Callable[[str, int], None]
    xid: Callable[[str, int], None]


@pytest.fixture(params=["simulated", "nvml"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    if request.param == "simulated":
        sim = make_backend(tmp_path, GPUS)
        yield Rig(sim, sim.claim, sim.release, sim.inject_xid)
        return
    fake = FakeNvml(tmp_path)
    fake.load(config(GPUS, allowMigModeSet=True))
    nv = NvmlBackend()

    def xid(uuid: str, code: int) -> None:
        fake.inject_xid(uuid, code)

    yield Rig(nv, fake.process, lambda u, p: fake.process(u, p, running=False), xid)
    nv.close()


def code_of(fn: Callable[..., object], *args: object) -> ErrorCode:
    with pytest.raises(BackendError) as err:
        fn(*args)
    return err.value.code


def test_inventory(rig: Rig) -> None:
    gpus = rig.backend.gpus()
    assert [(g.index, g.model.name, g.mig_capable, g.mig_enabled) for g in gpus] == [
        (0, "A100-80GB", True, True), (1, "A100-80GB", True, False), (2, "T4", False, False),
        (3, "H100-80GB", True, True), (4, "A30-24GB", True, True)]
    assert len({g.uuid for g in gpus}) == 5 and all(g.uuid.startswith("GPU-") for g in gpus)
    assert all(rig.backend.instances(g.index) == [] for g in gpus)


def test_possible_placements_are_the_catalogs(rig: Rig) -> None:
    for index in (0, 3, 4):
        model = rig.backend.gpus()[index].model
        for prof in model.profiles:
            assert rig.backend.possible_placements(index, prof.name) == list(prof.starts)
    assert rig.backend.possible_placements(2, "1g.10gb") == []
    assert rig.backend.possible_placements(4, "3g.40gb") == []


def test_nvml_errors(rig: Rig) -> None:
    b = rig.backend
    assert code_of(b.create_gpu_instance, 0, "3g.40gb", 2) == ErrorCode.INVALID_ARGUMENT
    assert code_of(b.create_gpu_instance, 0, "3g.20gb", 0) == ErrorCode.INVALID_ARGUMENT
    b.create_instance(0, "4g.40gb", 0)
    assert code_of(b.create_gpu_instance, 0, "1g.10gb", 3) == ErrorCode.INSUFFICIENT_RESOURCES
    b.create_instance(0, "3g.40gb", 4)
    assert code_of(b.create_gpu_instance, 0, "1g.10gb", 6) == ErrorCode.INSUFFICIENT_RESOURCES
    assert code_of(b.create_gpu_instance, 1, "1g.10gb", 0) == ErrorCode.NOT_SUPPORTED
    assert code_of(b.create_gpu_instance, 2, "1g.10gb", 0) == ErrorCode.NOT_SUPPORTED
    assert code_of(b.create_gpu_instance, 9, "1g.10gb", 0) == ErrorCode.NOT_FOUND
    assert code_of(b.instances, 9) == ErrorCode.NOT_FOUND
    assert code_of(b.destroy_gpu_instance, 0, 2) == ErrorCode.NOT_FOUND
    assert code_of(b.destroy_gpu_instance, 0, 4) == ErrorCode.IN_USE  # it has its CI
    assert code_of(b.set_mig_mode, 0, False) == ErrorCode.IN_USE
    assert code_of(b.set_mig_mode, 2, True) == ErrorCode.NOT_SUPPORTED
    assert code_of(b.create_instance, 0, "1g.10gb", 4) == ErrorCode.INSUFFICIENT_RESOURCES


def test_half_made_instances_and_two_step_destroy(rig: Rig) -> None:
    b = rig.backend
    gi = b.create_gpu_instance(3, "2g.20gb", 2)
    assert not gi.complete and gi.uuid is None
    assert code_of(b.create_gpu_instance, 3, "2g.20gb", 2) == ErrorCode.INSUFFICIENT_RESOURCES
    done = b.create_instance(3, "2g.20gb", 2)
    assert done.complete and done.gi_id == gi.gi_id
    assert done.uuid is not None and done.uuid.startswith("MIG-")
    assert code_of(b.create_compute_instance, 3, 2) == ErrorCode.INSUFFICIENT_RESOURCES
    b.destroy_compute_instance(3, 2)
    [half] = b.instances(3)
    assert not half.complete and half.ci_id is None
    assert code_of(b.destroy_compute_instance, 3, 2) == ErrorCode.NOT_FOUND
    b.destroy_gpu_instance(3, 2)
    assert b.instances(3) == []


def test_a_device_is_in_use_while_a_process_holds_it(rig: Rig) -> None:
    b = rig.backend
    inst = b.create_instance(4, "1g.6gb", 3)
    assert inst.uuid is not None and not inst.in_use
    pid = os.getpid()
    rig.hold(inst.uuid, pid)
    [held] = b.instances(4)
    assert held.in_use and held.holders == (pid,)
    assert code_of(b.destroy_compute_instance, 4, 3) == ErrorCode.IN_USE
    assert code_of(b.destroy_instance, 4, 3) == ErrorCode.IN_USE
    rig.release(inst.uuid, pid)
    assert not b.instances(4)[0].in_use
    b.destroy_instance(4, 3)
    assert b.instances(4) == []


def test_mig_mode(rig: Rig) -> None:
    b = rig.backend
    assert b.set_mig_mode(1, True)
    assert b.gpus()[1].mig_enabled
    b.create_instance(1, "7g.80gb", 0)
    assert code_of(b.set_mig_mode, 1, False) == ErrorCode.IN_USE
    b.destroy_instance(1, 0)
    assert b.set_mig_mode(1, False)
    assert not b.gpus()[1].mig_enabled
    assert b.set_mig_mode(1, False)  # already so


def test_xid_health_events(rig: Rig) -> None:
    b = rig.backend
    inst = b.create_instance(0, "3g.40gb", 0)
    assert inst.uuid is not None
    assert b.poll_health(0) == []
    rig.xid(inst.uuid, 13)  # an application's fault, not the device's
    assert b.poll_health(0) == []
    rig.xid(inst.uuid, 79)
    [ev] = b.poll_health(0)
    assert (ev.uuid, ev.healthy, ev.xid) == (inst.uuid, False, 79)


def test_the_daemon_applies_a_layout_and_drops_unhealthy_devices(rig: Rig) -> None:
    cluster = FakeNodeAPI()
    d = NodeDaemon(DaemonConfig(node="node-1", kwok=True), rig.backend, cluster)
    r3 = "conspirator.io/mig-3g.40gb"
    cluster.set_spec([{"index": 0, "instances": [{"profile": "3g.40gb", "start": 0},
                                                 {"profile": "3g.40gb", "start": 4}]}])
    r = d.reconcile()
    assert r is not None and r.converged
    assert cluster.capacity[r3] == (2, 2)  # (the T4 and the A100 without MIG: whole GPUs)
    assert [(i.profile, i.start) for i in rig.backend.instances(0)] == [("3g.40gb", 0),
                                                                       ("3g.40gb", 4)]
    assert rig.backend.poll_health(0) == []
    sick = rig.backend.instances(0)[1].uuid
    assert sick is not None
    rig.xid(sick, 79)
    for ev in rig.backend.poll_health(0):
        d.unhealthy[ev.uuid] = ev.reason
    d.reconcile()
    assert cluster.capacity[r3] == (2, 1)
    assert sick in cluster.condition("Ready")[2]

