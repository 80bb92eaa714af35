"""The simulated backend: NVML's MIG semantics and errors, state that outlives the daemon."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conspirator.deviceplugin.backend import BackendError, ErrorCode
from conspirator.deviceplugin.simulated import NodeSpec, SimulatedBackend, SpecError

from .conftest import make_backend


def code_of(fn: object, *args: object) -> ErrorCode:
    with pytest.raises(BackendError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value.code


def test_inventory_from_the_spec_file(tmp_path: Path) -> None:
    spec = tmp_path / "node.yaml"
    spec.write_text(
        "node: n1\n"
        "gpus:\n"
        "  - {model: A100-80GB, count: 2, instances: [{profile: 3g.40gb, start: 4}]}\n"
        "  - {model: T4}\n"
        "dpu: {present: true, model: BlueField-2}\n")
    b = SimulatedBackend.from_file(spec)
    assert b.state_file == tmp_path / "node.state.json"
    gpus = b.gpus()
    assert [(g.index, g.model.name, g.mig_capable, g.mig_enabled) for g in gpus] == [
        (0, "A100-80GB", True, True), (1, "A100-80GB", True, True), (2, "T4", False, False)]
    assert gpus[0].memory_gib == 80
    assert len({g.uuid for g in gpus}) == 3 and all(g.uuid.startswith("GPU-") for g in gpus)
    # UUIDs are a function of the node and index: the same spec gives the same GPUs.
    again = SimulatedBackend(NodeSpec.load(spec), tmp_path / "other.json")
    assert [g.uuid for g in again.gpus()] == [g.uuid for g in gpus]
    [inst] = b.instances(0)
    assert (inst.profile, inst.start, inst.complete) == ("3g.40gb", 4, True)
    assert inst.uuid is not None and inst.uuid.startswith("MIG-")
    assert b.spec.dpu.present and b.spec.dpu.model == "BlueField-2"


@pytest.mark.parametrize(("doc", "message"), [
    ({"gpus": [{"model": "B200"}]}, "unknown GPU model 'B200'"),
    ({"gpus": [{"model": "T4", "migEnabled": True}]}, "T4 is not MIG-capable"),
    ({"gpus": [{"model": "A100-80GB", "instances": [{"profile": "3g.40gb", "start": 2}]}]},
     "cannot start at slice 2"),
    ({"gpus": [{"model": "A100-80GB", "instances": [
        {"profile": "4g.40gb", "start": 0}, {"profile": "3g.40gb", "start": 0}]}]}, "overlaps"),
    ({"gpus": [{"model": "A100-80GB", "count": 0}]}, "count must be >= 1"),
])
def test_bad_spec_files_are_refused(doc: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        NodeSpec.from_dict(doc)


def test_half_made_instances_and_two_step_destroy(tmp_path: Path) -> None:
    b = make_backend(tmp_path, [{"model": "H100-80GB"}])
    gi = b.create_gpu_instance(0, "2g.20gb", 2)
    assert not gi.complete and gi.uuid is None
    assert code_of(b.create_gpu_instance, 0, "2g.20gb", 2) == ErrorCode.INSUFFICIENT_RESOURCES
    done = b.create_instance(0, "2g.20gb", 2)  # finishes the half-made one
    assert done.complete and done.gi_id == gi.gi_id
    b.destroy_compute_instance(0, 2)
    assert not b.instances(0)[0].complete
    b.destroy_gpu_instance(0, 2)
    assert b.instances(0) == []
    assert b.operations() == 4


def test_a_device_is_in_use_while_its_holder_lives(tmp_path: Path) -> None:
    b = make_backend(tmp_path, [{"model": "A100-80GB", "instances": [
        {"profile": "1g.10gb", "start": 0}]}])
    [inst] = b.instances(0)
    assert inst.uuid is not None
    proc = subprocess.Popen(["sleep", "60"])
    try:
        b.claim(inst.uuid, proc.pid)
        [held] = b.instances(0)
        assert held.in_use and held.holders == (proc.pid,)
        assert code_of(b.destroy_compute_instance, 0, 0) == ErrorCode.IN_USE
        assert code_of(b.destroy_instance, 0, 0) == ErrorCode.IN_USE
    finally:
        proc.kill()
        proc.wait()
    # The process is gone: NVML would list no process on the device any more.
    assert not b.instances(0)[0].in_use
    b.destroy_instance(0, 0)
    assert b.instances(0) == []
    assert code_of(b.claim, "MIG-nope", os.getpid()) == ErrorCode.NOT_FOUND


def test_state_outlives_the_backend_object(tmp_path: Path) -> None:
    b = make_backend(tmp_path, [{"model": "A100-80GB"}])
    b.create_instance(0, "7g.80gb", 0)
    again = make_backend(tmp_path, [{"model": "A100-80GB"}])  # same state file: "restart"
    [inst] = again.instances(0)
    assert (inst.profile, inst.start) == ("7g.80gb", 0)
    assert inst.uuid == b.instances(0)[0].uuid


def test_mig_mode(tmp_path: Path) -> None:
    b = make_backend(tmp_path, [{"model": "A30-24GB", "migEnabled": False}])
    assert b.set_mig_mode(0, True)
    assert b.gpus()[0].mig_enabled
    b.create_instance(0, "2g.12gb", 2)
    assert code_of(b.create_gpu_instance, 0, "2g.12gb", 1) == ErrorCode.INVALID_ARGUMENT
    b.destroy_instance(0, 2)
    assert b.set_mig_mode(0, False)
    assert not b.gpus()[0].mig_enabled


def test_xid_health_events(tmp_path: Path) -> None:
    b = make_backend(tmp_path, [{"model": "A100-80GB", "instances": [
        {"profile": "3g.40gb", "start": 0}]}])
    mig = b.instances(0)[0].uuid
    assert mig is not None
    assert b.poll_health(0) == []
    b.inject_xid(mig, 31)  # an application's page fault: not the device's health
    assert b.poll_health(0) == []
    b.inject_xid(mig, 79)  # fallen off the bus
    [ev] = b.poll_health(0)
    assert (ev.uuid, ev.healthy, ev.xid) == (mig, False, 79)
    assert b.poll_health(0) == []  # reported once
    b.clear_health(mig)
    [ok] = b.poll_health(0)
    assert ok.healthy and ok.uuid == mig
