"""``make gpu-check`` (conspirator.deviceplugin.gpucheck) on the fake libnvidia-ml: it reports,
it finds a disagreement with the catalog, it makes no mutating NVML call, it skips (77)
without NVML.  A run on the fake proves the code path and its calls, not hardware."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conspirator.deviceplugin import gpucheck

from .fakenvml import DEVICES, LIBRARY, FakeNvml, config


def _run(**kw: Any) -> tuple[int, str]:
    lines: list[str] = []
    rc = gpucheck.run(lines.append, **kw)
    return rc, "\n".join(lines)


def test_it_checks_every_gpu_against_the_catalog(fake_nvml: FakeNvml) -> None:
    rc, out = _run(expect_fake=True)
    assert rc == 0, out
    assert "FAKE libnvidia-ml" in out and "not hardware" in out
    for model in ("A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB", "A30-24GB", "T4"):
        assert f"model {model}," in out
    assert "ok 1g.5gb (NVML id 19) at [0, 1, 2, 3, 4, 5, 6]" in out
    assert "ok 2g.12gb+me (NVML id 6) at [0, 2]" in out
    assert "FAIL" not in out and out.endswith("gpu-check: ok")
    assert fake_nvml.mutations() == 0


def test_it_finds_a_disagreement(fake_nvml: FakeNvml) -> None:
    doc = config([{"model": "A100-80GB"}, {"model": "H100-80GB", "migEnabled": False}])
    profs = doc["models"]["A100-80GB"]["profiles"]
    three = next(p for p in profs if p["name"] == "3g.40gb")
    three["placements"] = [4]
    doc["models"]["A100-80GB"]["profiles"] = [p for p in profs if p["name"] != "7g.80gb"]
    fake_nvml.load(doc)
    rc, out = _run()
    assert rc == 1
    assert "FAIL 3g.40gb: NVML places it at [4], the catalog at [0, 4]" in out
    assert "FAIL 7g.80gb: in the catalog, not offered by NVML" in out
    assert "MIG mode is off: NVML lists no profiles; not checked" in out
    assert out.endswith("gpu-check: FAILED, 2 mismatch(es)")
    assert fake_nvml.mutations() == 0


def test_it_reports_existing_instances_without_touching_them(fake_nvml: FakeNvml) -> None:
    from conspirator.deviceplugin.nvml import NvmlBackend

    b = NvmlBackend()
    try:
        b.create_instance(1, "3g.40gb", 4)
        b.create_gpu_instance(1, "1g.10gb", 0)
        before = fake_nvml.mutations()
        rc, out = _run()
        assert rc == 0, out
        assert "instances: 1g.10gb@0 (no CI), 3g.40gb@4" in out
        assert fake_nvml.mutations() == before
        assert [(i.profile, i.start) for i in b.instances(1)] == [("1g.10gb", 0), ("3g.40gb", 4)]
    finally:
        b.close()


def test_it_calls_no_mutating_method() -> None:
    source = inspect.getsource(gpucheck)
    for name in ("create_instance", "create_gpu_instance", "create_compute_instance",
                 "destroy_instance", "destroy_gpu_instance", "destroy_compute_instance",
                 "set_mig_mode", "nvmlDeviceSet", "nvmlDeviceCreate", "nvmlGpuInstanceCreate",
                 "nvmlGpuInstanceDestroy", "nvmlComputeInstanceDestroy", "nvmlDeviceReset",
                 "nvmlDeviceClear"):
        assert name not in source, name


def _subprocess(config_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(LIBRARY.parent),
           "FAKENVML_CONFIG": str(config_file)}
    return subprocess.run([sys.executable, "-m", "conspirator.deviceplugin.gpucheck",
                           "--expect-fake"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_pynvml_finds_the_fake_by_its_library_path(fake_nvml: FakeNvml) -> None:
    """As on a node: nvidia-ml-py's own loading (libnvidia-ml.so.1 on LD_LIBRARY_PATH)."""
    proc = _subprocess(DEVICES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-check: ok" in proc.stdout


def test_no_nvml_is_a_skip_with_the_reason(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    proc = _subprocess(tmp_path / "absent.json")  # the fake's nvmlInit: driver not loaded
    assert proc.returncode == gpucheck.SKIPPED == 77, proc.stdout + proc.stderr
    assert "gpu-check: SKIPPED: no NVML on this machine" in proc.stdout
    assert "Driver Not Loaded" in proc.stdout
