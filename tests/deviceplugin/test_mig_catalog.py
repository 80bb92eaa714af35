"""The core's MIG catalog (conspirator.mig, used by the node daemon) agrees with the placement
engine's and with the shared data file."""

from __future__ import annotations

from pathlib import Path

import pytest

from conspirator import mig
from conspirator.operator.placement import gpus

ROOT = Path(__file__).resolve().parents[2]


def test_the_placement_engine_uses_the_core_catalog() -> None:
    assert gpus.catalog is mig.catalog and gpus.GpuModel is mig.GpuModel


def test_the_data_file_is_the_shared_one() -> None:
    core = (ROOT / "conspirator" / "data" / "mig_profiles.json").read_bytes()
    shared = ROOT.parent / "shared" / "data" / "mig" / "profiles.json"
    if shared.exists():
        assert core == shared.read_bytes()


def test_same_models_profiles_and_rules() -> None:
    theirs = gpus.catalog()
    ours = mig.catalog()
    assert set(ours) == set(theirs)
    for name, m in ours.items():
        t = theirs[name]
        assert (m.memory_gib, m.memory_slices, m.compute_slices) == (
            t.memory_gib, t.memory_slices, t.compute_slices)
        assert [(p.name, p.memory_slices, p.compute_slices, p.max_count, p.starts)
                for p in m.profiles] == [
            (p.name, p.memory_slices, p.compute_slices, p.max_count, p.starts)
            for p in t.profiles]
        # Same verdict on every pair of placements.
        for a in m.placements:
            for b in m.placements:
                ta = gpus.Placement(t.profile(a.profile.name), a.start)
                tb = gpus.Placement(t.profile(b.profile.name), b.start)
                assert mig.is_valid_layout(m, [a, b]) == gpus.is_valid_layout(t, [ta, tb])


@pytest.mark.parametrize(("nvml_name", "gib", "model"), [
    ("NVIDIA A100-SXM4-80GB", 80, "A100-80GB"),
    ("NVIDIA A100-PCIE-40GB", 40, "A100-40GB"),
    ("NVIDIA H100 80GB HBM3", 79.6, "H100-80GB"),
    ("NVIDIA H100 NVL", 93.6, "H100-94GB"),
    ("NVIDIA H200", 140.4, "H200-141GB"),
    ("NVIDIA A30", 24, "A30-24GB"),
    ("Tesla T4", 15, "T4"),
    ("Tesla V100-SXM2-32GB", 32, "V100M32"),
    ("NVIDIA A10", 22.5, "A10"),
    ("NVIDIA L4", 22.5, "L4"),
])
def test_nvml_product_names(nvml_name: str, gib: float, model: str) -> None:
    assert mig.model_from_nvml(nvml_name, int(gib * 2**30)) == model


def test_unknown_product() -> None:
    with pytest.raises(KeyError, match="not in the catalog"):
        mig.model_from_nvml("NVIDIA L40S", 48 * 2**30)


def test_errors_say_which_nvml_refusal() -> None:
    a100 = mig.gpu_model("A100-80GB")
    p = a100.profile
    with pytest.raises(mig.MigLayoutError) as err:
        mig.check_layout(a100, [mig.Placement(p("3g.40gb"), 2)])
    assert err.value.fault == mig.LayoutFault.INVALID_PLACEMENT
    with pytest.raises(mig.MigLayoutError) as err:
        mig.check_layout(a100, [mig.Placement(p("4g.40gb"), 0), mig.Placement(p("1g.10gb"), 3)])
    assert err.value.fault == mig.LayoutFault.INSUFFICIENT_RESOURCES
    with pytest.raises(mig.MigLayoutError) as err:
        mig.check_layout(mig.gpu_model("T4"), [])
    assert err.value.fault == mig.LayoutFault.NOT_MIG_CAPABLE


def test_resource_names() -> None:
    assert mig.resource_name("1g.10gb") == "conspirator.io/mig-1g.10gb"
    assert mig.resource_name("1g.10gb+me") == "conspirator.io/mig-1g.10gb.me"
    for name in ("1g.10gb", "1g.10gb+me", "7g.141gb"):
        assert mig.profile_of_resource(mig.resource_name(name)) == name
