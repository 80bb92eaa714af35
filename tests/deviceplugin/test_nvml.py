"""The NVML backend through the real ``nvidia-ml-py`` bindings, on the fake libnvidia-ml
(native/fakenvml/, loaded as pynvml's NVML library): the calls, struct versions and error
handling, never the hardware's behaviour (docs/nvml.md).  Nothing here skips; the read-only
check of a real GPU is ``make gpu-check`` (DESIGN section 7: no test changes a real GPU)."""

from __future__ import annotations

import itertools
import os

import pytest

from conspirator.deviceplugin.backend import BackendError, ErrorCode
from conspirator.deviceplugin.nvml import NvmlBackend
from conspirator.mig import LayoutFault, MigLayoutError, Placement, catalog, check_layout

from .fakenvml import FakeNvml, config

MIG_MODELS = ["A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB", "A30-24GB"]


def code_of(fn: object, *args: object) -> ErrorCode:
    with pytest.raises(BackendError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value.code


def test_inventory(nvml: NvmlBackend) -> None:
    gpus = nvml.gpus()
    assert [g.model.name for g in gpus] == [*MIG_MODELS, "T4"]
    assert [g.index for g in gpus] == list(range(6)) and [g.minor for g in gpus] == list(range(6))
    assert len({g.uuid for g in gpus}) == 6 and all(g.uuid.startswith("GPU-") for g in gpus)
    assert [g.mig_capable for g in gpus] == [True] * 5 + [False]
    assert [g.mig_enabled for g in gpus] == [True] * 5 + [False]
    assert all(g.mig_pending is None for g in gpus)
    # NVML's memory, not the catalog's: an H100 80GB reports 79.6 GiB, a T4 15 GiB.
    assert [g.memory_gib for g in gpus] == [40.0, 80.0, 79.6, 140.4, 24.0, 15.0]
    assert all(nvml.instances(g.index) == [] for g in gpus)


def test_profile_ids_are_not_the_enum(nvml: NvmlBackend) -> None:
    """NVML's profile info ``id`` (what the other calls take) differs from the
    ``NVML_GPU_INSTANCE_PROFILE_*`` index it was asked with, as on real GPUs."""
    ids = {name: p.nvml_id for name, p in nvml.profiles(0).items()}
    assert ids == {"1g.5gb": 19, "1g.5gb+me": 20, "1g.10gb": 15, "2g.10gb": 14, "3g.20gb": 9,
                   "4g.20gb": 5, "7g.40gb": 0}
    assert {n: p.nvml_id for n, p in nvml.profiles(4).items()} == {
        "1g.6gb": 14, "1g.6gb+me": 21, "2g.12gb": 5, "2g.12gb+me": 6, "4g.24gb": 0}
    inst = nvml.create_instance(0, "1g.5gb", 3)
    assert (inst.profile, inst.start) == ("1g.5gb", 3)


def test_profiles_and_placements_match_the_catalog(nvml: NvmlBackend) -> None:
    for g in nvml.gpus():
        names = {p.name for p in g.model.profiles}
        assert set(nvml.profiles(g.index)) == names, g.model.name
        for prof in g.model.profiles:
            assert nvml.possible_placements(g.index, prof.name) == list(prof.starts), prof.name
            nv = nvml.profiles(g.index)[prof.name]
            assert (nv.compute_slices, nv.memory_slices) == (prof.compute_slices,
                                                             prof.memory_slices)
    assert nvml.possible_placements(5, "1g.10gb") == []
    assert nvml.possible_placements(0, "3g.40gb") == []  # an A100-80GB profile on a 40GB


@pytest.mark.parametrize("model", MIG_MODELS)
def test_every_single_placement(fake_nvml: FakeNvml, model: str) -> None:
    """Every profile at every slice, valid or not, as ``check_layout`` says."""
    fake_nvml.load(config([{"model": model}]))
    b = NvmlBackend()
    m = catalog()[model]
    try:
        for prof in m.profiles:
            for start in range(m.memory_slices + 1):
                if start in prof.starts:
                    made = b.create_instance(0, prof.name, start)
                    assert made.complete and made.uuid and made.uuid.startswith("MIG-")
                    b.destroy_instance(0, start)
                else:
                    assert code_of(b.create_gpu_instance, 0, prof.name, start) == \
                        ErrorCode.INVALID_ARGUMENT, (prof.name, start)
                assert b.instances(0) == []
    finally:
        b.close()


def _verdict(placements: list[Placement], model: str) -> ErrorCode | None:
    try:
        check_layout(catalog()[model], placements)
    except MigLayoutError as exc:
        return (ErrorCode.INVALID_ARGUMENT if exc.fault == LayoutFault.INVALID_PLACEMENT
                else ErrorCode.INSUFFICIENT_RESOURCES)
    return None


@pytest.mark.parametrize("model", MIG_MODELS)
def test_every_pair_of_placements(fake_nvml: FakeNvml, model: str) -> None:
    """Every ordered pair of valid placements: the second is created, or refused with the
    code ``check_layout`` predicts (INSUFFICIENT_RESOURCES on overlaps, compute slices,
    per-profile maxima and the one set of media engines)."""
    fake_nvml.load(config([{"model": model}]))
    b = NvmlBackend()
    m = catalog()[model]
    try:
        for first, second in itertools.product(m.placements, repeat=2):
            b.create_gpu_instance(0, first.profile.name, first.start)
            want = _verdict([first, second], model)
            if want is None:
                b.create_gpu_instance(0, second.profile.name, second.start)
                b.destroy_gpu_instance(0, second.start)
            else:
                got = code_of(b.create_gpu_instance, 0, second.profile.name, second.start)
                assert got == want, (str(first), str(second))
            b.destroy_gpu_instance(0, first.start)
        assert b.instances(0) == []
    finally:
        b.close()


def test_a_full_layout_and_its_devices(nvml: NvmlBackend) -> None:
    made = [nvml.create_instance(1, "1g.10gb", s) for s in range(7)]
    insts = nvml.instances(1)
    assert [(i.profile, i.start, i.complete) for i in insts] == [("1g.10gb", s, True)
                                                                 for s in range(7)]
    assert [i.uuid for i in insts] == [i.uuid for i in made]
    assert len({i.gi_id for i in insts}) == 7 and {i.ci_id for i in insts} == {0}
    assert code_of(nvml.create_gpu_instance, 1, "1g.10gb+me", 6) == \
        ErrorCode.INSUFFICIENT_RESOURCES
    for s in range(7):
        nvml.destroy_instance(1, s)
    assert nvml.instances(1) == []


def test_half_made_instances_and_two_step_destroy(nvml: NvmlBackend) -> None:
    gi = nvml.create_gpu_instance(2, "2g.20gb", 2)
    assert not gi.complete
    [half] = nvml.instances(2)
    assert (half.profile, half.start, half.uuid, half.ci_id) == ("2g.20gb", 2, None, None)
    done = nvml.create_instance(2, "2g.20gb", 2)  # finishes it, as after a crash
    assert done.complete and done.gi_id == gi.gi_id
    assert code_of(nvml.create_compute_instance, 2, 2) == ErrorCode.INSUFFICIENT_RESOURCES
    assert code_of(nvml.destroy_gpu_instance, 2, 2) == ErrorCode.IN_USE  # its CI lives
    nvml.destroy_compute_instance(2, 2)
    assert not nvml.instances(2)[0].complete
    assert code_of(nvml.destroy_compute_instance, 2, 2) == ErrorCode.NOT_FOUND
    nvml.destroy_gpu_instance(2, 2)
    assert nvml.instances(2) == []
    assert code_of(nvml.destroy_gpu_instance, 2, 2) == ErrorCode.NOT_FOUND


def test_in_use_refusal(nvml: NvmlBackend, fake_nvml: FakeNvml) -> None:
    inst = nvml.create_instance(3, "3g.71gb", 4)
    assert inst.uuid is not None
    fake_nvml.process(inst.uuid, 4242)
    fake_nvml.process(inst.uuid, os.getpid())
    [held] = nvml.instances(3)
    assert held.in_use and held.holders == tuple(sorted((4242, os.getpid())))
    assert code_of(nvml.destroy_compute_instance, 3, 4) == ErrorCode.IN_USE
    assert code_of(nvml.destroy_instance, 3, 4) == ErrorCode.IN_USE
    assert nvml.instances(3)[0].complete  # refused: nothing was destroyed
    fake_nvml.process(inst.uuid, 4242, running=False)
    fake_nvml.process(inst.uuid, os.getpid(), running=False)
    assert not nvml.instances(3)[0].in_use
    nvml.destroy_instance(3, 4)
    assert nvml.instances(3) == []


def test_errors_for_gpus_without_mig(fake_nvml: FakeNvml) -> None:
    fake_nvml.load(config([{"model": "A100-80GB", "migEnabled": False}, {"model": "T4"}]))
    b = NvmlBackend()
    try:
        off, t4 = b.gpus()
        assert (off.mig_capable, off.mig_enabled, t4.mig_capable) == (True, False, False)
        assert b.instances(0) == [] and b.instances(1) == []
        assert code_of(b.create_gpu_instance, 0, "1g.10gb", 0) == ErrorCode.NOT_SUPPORTED
        assert code_of(b.create_gpu_instance, 1, "1g.10gb", 0) == ErrorCode.NOT_SUPPORTED
        assert code_of(b.create_gpu_instance, 7, "1g.10gb", 0) == ErrorCode.NOT_FOUND
        assert code_of(b.instances, 7) == ErrorCode.NOT_FOUND
        assert code_of(b.destroy_gpu_instance, 0, 0) == ErrorCode.NOT_FOUND
        # MIG changes need permission the fake withholds unless a test grants it.
        assert code_of(b.set_mig_mode, 0, True) == ErrorCode.NO_PERMISSION
        assert code_of(b.set_mig_mode, 1, True) == ErrorCode.NOT_SUPPORTED
    finally:
        b.close()


def test_mig_mode_changes(fake_nvml: FakeNvml) -> None:
    fake_nvml.load(config([{"model": "A30-24GB", "migEnabled": False}], allowMigModeSet=True))
    b = NvmlBackend()
    try:
        assert b.possible_placements(0, "2g.12gb") == []  # NVML offers no profile: MIG off
        assert b.set_mig_mode(0, True)
        assert b.gpus()[0].mig_enabled
        assert b.possible_placements(0, "2g.12gb") == [0, 2]
        b.create_instance(0, "2g.12gb", 2)
        assert code_of(b.set_mig_mode, 0, False) == ErrorCode.IN_USE
        b.destroy_instance(0, 2)
        # A change that waits for a GPU reset: reported as pending, not done.
        fake_nvml.allow_mig_mode_set(True, needs_reset=True)
        assert b.set_mig_mode(0, False) is False
        gpu = b.gpus()[0]
        assert (gpu.mig_enabled, gpu.mig_pending) == (True, False)
    finally:
        b.close()


def test_xid_makes_the_mig_device_unhealthy(nvml: NvmlBackend, fake_nvml: FakeNvml) -> None:
    a = nvml.create_instance(0, "3g.20gb", 0)
    b = nvml.create_instance(0, "3g.20gb", 4)
    assert a.uuid and b.uuid
    assert nvml.poll_health(0.01) == []  # registers for XID events, none yet
    assert fake_nvml.inject_xid(b.uuid, 31) == 1  # an application's page fault
    assert nvml.poll_health(0.01) == []
    fake_nvml.inject_xid(b.uuid, 79)  # fallen off the bus
    [ev] = nvml.poll_health(0.01)
    assert (ev.uuid, ev.healthy, ev.xid) == (b.uuid, False, 79)
    gpu = nvml.gpus()[5].uuid
    fake_nvml.inject_xid(gpu, 48)  # a whole GPU's double-bit ECC error
    [ev] = nvml.poll_health(0.01)
    assert (ev.uuid, ev.healthy, ev.xid) == (gpu, False, 48)
    assert nvml.poll_health(0.01) == []


def test_health_poll_waits_for_its_timeout(nvml: NvmlBackend) -> None:
    import time

    t0 = time.monotonic()
    assert nvml.poll_health(0.2) == []
    assert time.monotonic() - t0 >= 0.19


def test_device_nodes_are_only_existing_files(nvml: NvmlBackend) -> None:
    inst = nvml.create_instance(0, "7g.40gb", 0)
    assert inst.uuid is not None
    nodes = nvml.device_nodes([inst.uuid])
    assert all(os.path.exists(n.path) for n in nodes)
