"""The fake libnvidia-ml itself (native/fakenvml): its device file agrees with conspirator/mig.py's
catalog, it exports exactly the NVML symbols the backend's calls look up through
nvidia-ml-py, and it refuses struct versions NVML would refuse.  Not hardware: docs/nvml.md."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml

from conspirator.deviceplugin.backend import BackendError
from conspirator.deviceplugin.nvml import NvmlBackend
from conspirator.mig import catalog, model_from_nvml

from .fakenvml import LIBRARY, FakeNvml, config, default_config


def test_the_device_file_is_the_catalog() -> None:
    models = default_config()["models"]
    mig_models = {k for k, m in catalog().items() if m.mig_capable}
    # Every MIG model of the catalog but H100-94GB (the list), and a non-MIG GPU.
    assert set(models) == (mig_models - {"H100-94GB"}) | {"T4"}
    for key, fake in models.items():
        ours = catalog()[key]
        assert model_from_nvml(fake["name"], fake["memoryMiB"] << 20) == key
        if not fake.get("profiles"):
            assert not ours.mig_capable
            continue
        assert (fake["memorySlices"], fake["computeSlices"]) == (ours.memory_slices,
                                                                 ours.compute_slices)
        theirs = {p["name"]: (p["memorySlices"], p["slices"], p["instances"],
                              tuple(p["placements"])) for p in fake["profiles"]}
        assert theirs == {p.name: (p.memory_slices, p.compute_slices, p.max_count, p.starts)
                          for p in ours.profiles}, key
        # The enum index asked with and the id NVML answers differ, as on real GPUs.
        ones = [p for p in fake["profiles"] if p["name"].startswith("1g.") and
                p["memorySlices"] == 1 and "+me" not in p["name"]]
        assert [(p["profile"], p["id"]) for p in ones] == [
            (pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE, 14 if key.startswith("A30") else 19)]
        assert len({p["id"] for p in fake["profiles"]}) == len(fake["profiles"])


def _exports() -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(LIBRARY)], check=True,
                         capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_it_exports_exactly_what_the_backend_looks_up(fake_nvml: FakeNvml, tmp_path: Path
                                                      ) -> None:
    """Every NVML symbol the fake exports is looked up by the bindings for a backend call, and
    nothing else is: a call the fake lacks would fail NVML_ERROR_FUNCTION_NOT_FOUND."""
    fake_nvml.load(config([{"model": "A100-80GB", "migEnabled": False}, {"model": "T4"}],
                          allowMigModeSet=True))
    pynvml._nvmlGetFunctionPointer_cache.clear()
    b = NvmlBackend()
    try:
        b.gpus()
        b.set_mig_mode(0, True)
        inst = b.create_instance(0, "3g.40gb", 4)
        assert inst.uuid is not None
        b.poll_health(0)
        fake_nvml.inject_xid(inst.uuid, 79)
        assert [e.uuid for e in b.poll_health(0)] == [inst.uuid]
        fake_nvml.process(inst.uuid, os.getpid())
        b.instances(0)
        with contextlib.suppress(BackendError):  # IN_USE, formatted with nvmlErrorString
            b.destroy_instance(0, 4)
        fake_nvml.process(inst.uuid, os.getpid(), running=False)
        b.destroy_instance(0, 4)
    finally:
        b.close()
    # nvmlErrorString is looked up once per process for a code pynvml has no text for.
    used = set(pynvml._nvmlGetFunctionPointer_cache) - {"nvmlErrorString"}
    nvml = {s for s in _exports() if s.startswith("nvml")}
    assert used == nvml - {"nvmlErrorString"}
    assert {s for s in _exports() if not s.startswith("nvml")} == {
        "fakenvml_allow_mig_mode_set", "fakenvml_inject_xid", "fakenvml_last_error",
        "fakenvml_load", "fakenvml_mutations", "fakenvml_process"}


class GpuInstanceProfileInfoV3(ctypes.Structure):
    """nvmlGpuInstanceProfileInfo_v3_t (nvml.h): no isP2pSupported, capabilities at the end."""

    _fields_ = [("version", ctypes.c_uint), ("id", ctypes.c_uint), ("sliceCount", ctypes.c_uint),
                ("instanceCount", ctypes.c_uint), ("multiprocessorCount", ctypes.c_uint),
                ("copyEngineCount", ctypes.c_uint), ("decoderCount", ctypes.c_uint),
                ("encoderCount", ctypes.c_uint), ("jpegCount", ctypes.c_uint),
                ("ofaCount", ctypes.c_uint), ("memorySizeMB", ctypes.c_ulonglong),
                ("name", ctypes.c_char * 96), ("capabilities", ctypes.c_uint)]


def test_struct_versions(fake_nvml: FakeNvml) -> None:
    """v2 and v3 of the GPU-instance profile info are both 152 bytes: only the version field
    tells them apart, and the fake fills the layout it names; others are refused."""
    v2 = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t
    assert ctypes.sizeof(v2) == ctypes.sizeof(GpuInstanceProfileInfoV3) == 152
    pynvml.nvmlInit()
    try:
        dev = pynvml.nvmlDeviceGetHandleByIndex(0)
        fn = pynvml.nvmlLib.nvmlDeviceGetGpuInstanceProfileInfoV
        one = pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE
        a = v2()
        assert fn(dev, one, ctypes.byref(a)) == pynvml.NVML_SUCCESS
        assert (a.id, a.isP2pSupported, a.sliceCount, a.name) == (19, 1, 1, "MIG 1g.5gb")
        b = GpuInstanceProfileInfoV3(version=(3 << 24) | 152)
        assert fn(dev, one, ctypes.byref(b)) == pynvml.NVML_SUCCESS
        assert (b.id, b.sliceCount, b.instanceCount, b.name) == (19, 1, 7, b"MIG 1g.5gb")
        for bad in (0, (1 << 24) | 152, (2 << 24) | 148, (4 << 24) | 152):
            c = v2()
            c.version = bad
            assert fn(dev, one, ctypes.byref(c)) == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        # The compute-instance profile info: v2 (136 bytes) is what the bindings send.
        assert pynvml.nvmlComputeInstanceProfileInfo_v2 == (2 << 24) | 136
    finally:
        pynvml.nvmlShutdown()


def test_calls_before_init_are_refused(fake_nvml: FakeNvml) -> None:
    lib = pynvml.nvmlLib
    count = ctypes.c_uint(99)
    refs = 0
    while lib.nvmlShutdown() == pynvml.NVML_SUCCESS:  # drop what earlier tests left open
        refs += 1
    try:
        assert lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == pynvml.NVML_ERROR_UNINITIALIZED
    finally:
        for _ in range(refs):
            lib.nvmlInitWithFlags(0)


def test_mutating_calls_are_counted_refused_or_not(fake_nvml: FakeNvml) -> None:
    b = NvmlBackend()
    try:
        assert fake_nvml.mutations() == 0
        b.gpus(), b.instances(0), b.possible_placements(0, "1g.5gb"), b.poll_health(0)
        assert fake_nvml.mutations() == 0
        with contextlib.suppress(BackendError):  # NO_PERMISSION: refused unless told
            b.set_mig_mode(0, False)
        b.create_instance(0, "7g.40gb", 0)
        assert fake_nvml.mutations() == 3
    finally:
        b.close()


def test_a_bad_device_file_says_why(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": {}, "gpus": [{"model": "B200"}]}')
    lib = fake_nvml.lib
    assert lib.fakenvml_load(str(bad).encode()) == -1
    assert b"unknown model" in lib.fakenvml_last_error()
    bad.write_text('{"models": {,}')
    assert lib.fakenvml_load(str(bad).encode()) == -1
    assert b"expected a key" in lib.fakenvml_last_error()
    fake_nvml.load()


_STEP = """
import json, sys
from conspirator.deviceplugin.nvml import NvmlBackend
b = NvmlBackend()
for op in sys.argv[1:]:
    kind, start = op.split(":")
    if kind == "gi":
        b.create_gpu_instance(0, "3g.71gb", int(start))
    elif kind == "ci":
        b.create_compute_instance(0, int(start))
print(json.dumps([[i.profile, i.start, i.gi_id, i.ci_id, i.uuid] for i in b.instances(0)]))
"""


def _step(tmp: Path, *ops: str, delay_ms: int = 0) -> list[list[object]]:
    """One process of its own (the fake found on LD_LIBRARY_PATH, as on a node) runs ``ops``
    on GPU 0 and prints the instances it then sees."""
    doc = tmp / "devices.json"
    doc.write_text(json.dumps(config([{"model": "H200-141GB"}])))
    env = {**os.environ, "LD_LIBRARY_PATH": str(LIBRARY.parent), "FAKENVML_CONFIG": str(doc),
           "FAKENVML_STATE": str(tmp / "driver.json"), "FAKENVML_OP_DELAY_MS": str(delay_ms)}
    proc = subprocess.run([sys.executable, "-c", _STEP, *ops], env=env, capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: list[list[object]] = json.loads(proc.stdout.splitlines()[-1])
    return out


def test_the_driver_state_outlives_the_process_that_changed_it(
        fake_nvml: FakeNvml, tmp_path: Path) -> None:
    """With FAKENVML_STATE, what one process made is what the next one finds, half-made
    instances included (a daemon killed between the GI and the CI call), as on a GPU."""
    assert _step(tmp_path) == []  # no state file yet: the device file's empty GPU
    made = _step(tmp_path, "gi:0", "ci:0", "gi:4")
    assert [(p, s, ci is not None) for p, s, _gi, ci, _u in made] == [
        ("3g.71gb", 0, True), ("3g.71gb", 4, False)]
    assert _step(tmp_path) == made  # the next process sees the same ids and UUIDs
    state = json.loads((tmp_path / "driver.json").read_text())
    assert state["mutations"] == 3
    finished = _step(tmp_path, "ci:4", delay_ms=50)
    assert finished[0] == made[0] and finished[1][3] is not None
    assert finished[1][4] not in (None, made[0][4])  # a new MIG UUID, never a reused one
    assert json.loads((tmp_path / "driver.json").read_text())["mutations"] == 4


def test_a_state_file_of_other_gpus_is_a_driver_that_does_not_load(
        fake_nvml: FakeNvml, tmp_path: Path) -> None:
    (tmp_path / "driver.json").write_text(json.dumps({"gpus": [], "mutations": 0}))
    doc = tmp_path / "devices.json"
    doc.write_text(json.dumps(config([{"model": "H200-141GB"}])))
    env = {**os.environ, "LD_LIBRARY_PATH": str(LIBRARY.parent), "FAKENVML_CONFIG": str(doc),
           "FAKENVML_STATE": str(tmp_path / "driver.json")}
    proc = subprocess.run([sys.executable, "-c", "import pynvml; pynvml.nvmlInit()"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "Driver Not Loaded" in proc.stderr, proc.stderr
