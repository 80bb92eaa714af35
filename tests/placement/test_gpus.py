"""MIG geometry: every valid and every invalid placement, per GPU model.

The expected facts are written out here from the NVIDIA MIG user guide (as
tabled in DESIGN section 5), independently of the catalog file they check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conspirator.operator.placement.gpus import (
    WHOLE,
    GpuModel,
    MigLayoutError,
    MigProfile,
    Placement,
    catalog,
    check_layout,
    gpu_model,
    is_valid_layout,
)

# (memory slices, compute slices) -> documented start positions, 8-slice GPUs.
STARTS_8: dict[tuple[int, int], tuple[int, ...]] = {
    (1, 1): (0, 1, 2, 3, 4, 5, 6),
    (2, 1): (0, 2, 4, 6),
    (2, 2): (0, 2, 4),
    (4, 3): (0, 4),
    (4, 4): (0,),
    (8, 7): (0,),
}
# A30-24GB: 4 memory slices, 4 compute slices.
STARTS_4: dict[tuple[int, int], tuple[int, ...]] = {
    (1, 1): (0, 1, 2, 3),
    (2, 2): (0, 2),
    (4, 4): (0,),
}
# Per-GPU maximum of each planning profile (DESIGN table).
MAX_8: dict[tuple[int, int], int] = {(1, 1): 7, (2, 1): 4, (2, 2): 3, (4, 3): 2, (4, 4): 1,
                                     (8, 7): 1}
MAX_4: dict[tuple[int, int], int] = {(1, 1): 4, (2, 2): 2, (4, 4): 1}

# Planning-profile names per model, in the DESIGN table's row order.
NAMES: dict[str, list[str]] = {
    "A100-40GB": ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"],
    "A100-80GB": ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
    "H100-80GB": ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
    "H200-141GB": ["1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"],
    "A30-24GB": ["1g.6gb", "2g.12gb", "4g.24gb"],
}
NON_MIG = ["T4", "P100", "V100M16", "V100M32", "A10", "K80"]

MIG_MODELS = [m for m in catalog().values() if m.mig_capable]


def pl(model: GpuModel, name: str, start: int) -> Placement:
    return Placement(model.profile(name), start)


def documented_starts(model: GpuModel, p: MigProfile) -> tuple[int, ...]:
    table = STARTS_8 if model.memory_slices == 8 else STARTS_4
    return table[(p.memory_slices, p.compute_slices)]


def test_catalog_has_the_documented_models() -> None:
    names = set(catalog())
    assert set(NAMES) <= names
    assert set(NON_MIG) <= names
    for name in NAMES:
        assert gpu_model(name).mig_capable
    for name in NON_MIG:
        assert not gpu_model(name).mig_capable


@pytest.mark.parametrize("name", sorted(NAMES))
def test_profiles_match_the_user_guide(name: str) -> None:
    model = gpu_model(name)
    planning = model.planning_profiles
    assert [p.name for p in planning] == NAMES[name]
    slices, compute = (8, 7) if name != "A30-24GB" else (4, 4)
    assert (model.memory_slices, model.compute_slices) == (slices, compute)
    maxima = MAX_8 if slices == 8 else MAX_4
    for p in planning:
        assert p.max_count == maxima[(p.memory_slices, p.compute_slices)], p.name
        assert p.starts == documented_starts(model, p), p.name
        # The name's "Ng" is the compute slice count.
        assert p.name.startswith(f"{p.compute_slices}g."), p.name
    for p in model.profiles:
        if p.media_extensions:
            assert p.name.endswith("+me")
            assert p.max_count == 1


@pytest.mark.parametrize("model", MIG_MODELS, ids=lambda m: m.name)
def test_single_placement_valid_exactly_at_documented_starts(model: GpuModel) -> None:
    for p in model.profiles:
        base = p.name.removesuffix("+me")
        expected = documented_starts(model, model.profile(base))
        for start in range(model.memory_slices):
            ok = is_valid_layout(model, [Placement(p, start)])
            assert ok == (start in expected), f"{model.name} {p.name}@{start}"


@pytest.mark.parametrize("model", MIG_MODELS, ids=lambda m: m.name)
def test_pairs_valid_iff_disjoint_and_within_compute(model: GpuModel) -> None:
    """Every pair of planning placements: valid exactly when the slices are disjoint."""
    placements = [Placement(p, s) for p in model.planning_profiles for s in p.starts]
    for a in placements:
        for b in placements:
            slices_a = set(range(a.start, a.start + a.profile.memory_slices))
            slices_b = set(range(b.start, b.start + b.profile.memory_slices))
            disjoint = not slices_a & slices_b
            within = a.profile.compute_slices + b.profile.compute_slices <= model.compute_slices
            assert is_valid_layout(model, [a, b]) == (disjoint and within), f"{a} + {b}"


def test_a100_examples() -> None:
    m = gpu_model("A100-80GB")
    check_layout(m, [pl(m, "4g.40gb", 0), pl(m, "3g.40gb", 4)])
    check_layout(m, [pl(m, "3g.40gb", 0), pl(m, "3g.40gb", 4)])
    check_layout(m, [pl(m, "1g.10gb", s) for s in range(7)])
    check_layout(m, [pl(m, "2g.20gb", 0), pl(m, "2g.20gb", 2), pl(m, "2g.20gb", 4),
                     pl(m, "1g.10gb", 6)])
    check_layout(m, [pl(m, "1g.20gb", s) for s in (0, 2, 4, 6)])
    with pytest.raises(MigLayoutError, match="overlaps"):
        check_layout(m, [pl(m, "4g.40gb", 0), pl(m, "3g.40gb", 0)])
    with pytest.raises(MigLayoutError, match="overlaps"):
        check_layout(m, [pl(m, "7g.80gb", 0), pl(m, "1g.10gb", 6)])
    with pytest.raises(MigLayoutError, match="cannot start"):
        check_layout(m, [pl(m, "3g.40gb", 2)])
    # 1g x 8 is impossible: the eighth would have to start at slice 7.
    with pytest.raises(MigLayoutError):
        check_layout(m, [pl(m, "1g.10gb", s) for s in range(8)])
    with pytest.raises(MigLayoutError, match="overlaps"):
        check_layout(m, [pl(m, "1g.10gb", s) for s in range(7)] + [pl(m, "1g.10gb", 6)])
    # The same profile twice at the same start overlaps.
    with pytest.raises(MigLayoutError, match="overlaps"):
        check_layout(m, [pl(m, "2g.20gb", 2), pl(m, "2g.20gb", 2)])


def test_compute_overflow_refused() -> None:
    """Compute is a budget of its own: a model with 8 one-slice starts but 7 SMs slices."""
    p = MigProfile("1g.x", 1, 1, 8, tuple(range(8)), 10.0)
    m = GpuModel("X", 80.0, 8, 7, (p,))
    check_layout(m, [Placement(p, s) for s in range(7)])
    with pytest.raises(MigLayoutError, match="compute slices"):
        check_layout(m, [Placement(p, s) for s in range(8)])


def test_max_count_enforced() -> None:
    p = MigProfile("1g.x", 1, 1, 2, tuple(range(8)), 10.0)
    m = GpuModel("X", 80.0, 8, 7, (p,))
    check_layout(m, [Placement(p, 0), Placement(p, 1)])
    with pytest.raises(MigLayoutError, match="at most 2"):
        check_layout(m, [Placement(p, 0), Placement(p, 1), Placement(p, 2)])


@pytest.mark.parametrize("model", MIG_MODELS, ids=lambda m: m.name)
def test_at_most_one_media_extension_instance(model: GpuModel) -> None:
    me = [p for p in model.profiles if p.media_extensions]
    assert me, f"{model.name} documents +me profiles"
    one = me[0]
    plain = model.profile(one.name.removesuffix("+me"))
    # One +me next to plain instances is fine.
    check_layout(model, [Placement(one, 0), Placement(plain, 1)])
    with pytest.raises(MigLayoutError):
        check_layout(model, [Placement(one, 0), Placement(one, 1)])
    if len(me) > 1:  # two different +me profiles are refused too (one media engine set)
        a, b = me[0], me[1]
        with pytest.raises(MigLayoutError, match=r"\+me"):
            check_layout(model, [Placement(a, 0), Placement(b, b.starts[-1])])


def test_a30_geometry() -> None:
    m = gpu_model("A30-24GB")
    assert (m.memory_slices, m.compute_slices) == (4, 4)
    check_layout(m, [pl(m, "1g.6gb", s) for s in range(4)])
    check_layout(m, [pl(m, "2g.12gb", 0), pl(m, "2g.12gb", 2)])
    check_layout(m, [pl(m, "2g.12gb", 0), pl(m, "1g.6gb", 2), pl(m, "1g.6gb", 3)])
    check_layout(m, [pl(m, "4g.24gb", 0)])
    with pytest.raises(MigLayoutError, match="cannot start"):
        check_layout(m, [pl(m, "2g.12gb", 1)])
    with pytest.raises(MigLayoutError, match="overlaps"):
        check_layout(m, [pl(m, "4g.24gb", 0), pl(m, "1g.6gb", 3)])
    with pytest.raises(MigLayoutError, match="cannot start"):
        check_layout(m, [pl(m, "1g.6gb", 4)])
    with pytest.raises(MigLayoutError, match=r"\+me"):
        check_layout(m, [pl(m, "1g.6gb+me", 0), pl(m, "2g.12gb+me", 2)])


def test_profile_unknown_to_the_model_refused() -> None:
    a100 = gpu_model("A100-80GB")
    h200 = gpu_model("H200-141GB")
    with pytest.raises(MigLayoutError, match="does not exist"):
        check_layout(a100, [Placement(h200.profile("1g.18gb"), 0)])
    with pytest.raises(KeyError, match="no MIG profile"):
        a100.profile("9g.1tb")


@pytest.mark.parametrize("name", NON_MIG)
def test_non_mig_gpu_is_one_whole_slot(name: str) -> None:
    m = gpu_model(name)
    assert [p.name for p in m.planning_profiles] == [WHOLE]
    assert (m.slots, m.compute) == (1, 1)
    assert m.whole.memory_gib == m.memory_gib
    with pytest.raises(MigLayoutError, match="not MIG-capable"):
        check_layout(m, [Placement(m.whole, 0)])


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="A100-80GB"):
        gpu_model("B200-1TB")
    assert gpu_model("A100") is gpu_model("A100-80GB")
    assert gpu_model("T4", memory_gib=15.0).memory_gib == 15.0


def _shared_profiles() -> Path:
    # tests/placement/test_gpus.py -> repository root -> ../shared
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mig" / "profiles.json"


def test_catalog_copy_equals_shared_data() -> None:
    shared = _shared_profiles()
    if not shared.is_file():
        pytest.skip(f"shared MIG catalog not found at {shared} (no ../shared next to the repo)")
    ours = Path(__file__).resolve().parents[2] / "conspirator" / "data" / "mig_profiles.json"
    assert json.loads(ours.read_text()) == json.loads(shared.read_text())
