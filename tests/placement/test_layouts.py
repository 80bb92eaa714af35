"""Enumeration of MIG configurations: validity, maximality, completions, the user guide's list."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from conspirator.operator.placement.gpus import (
    GpuModel,
    Placement,
    catalog,
    check_layout,
    gpu_model,
    is_valid_layout,
)
from conspirator.operator.placement.layouts import Layout, all_layouts, completions, layouts

MIG_MODELS = [m for m in catalog().values() if m.mig_capable]

# The 19 GPU-instance configurations the NVIDIA MIG user guide lists for A100-40GB
# (profile@start, left to right across the 8 memory slices).
A100_SUPPORTED: list[str] = [
    "7g.40gb@0",
    "4g.20gb@0 3g.20gb@4",
    "4g.20gb@0 2g.10gb@4 1g.5gb@6",
    "4g.20gb@0 1g.5gb@4 1g.5gb@5 1g.5gb@6",
    "3g.20gb@0 3g.20gb@4",
    "3g.20gb@0 2g.10gb@4 1g.5gb@6",
    "3g.20gb@0 1g.5gb@4 1g.5gb@5 1g.5gb@6",
    "2g.10gb@0 2g.10gb@2 3g.20gb@4",
    "2g.10gb@0 1g.5gb@2 1g.5gb@3 3g.20gb@4",
    "1g.5gb@0 1g.5gb@1 2g.10gb@2 3g.20gb@4",
    "1g.5gb@0 1g.5gb@1 1g.5gb@2 1g.5gb@3 3g.20gb@4",
    "2g.10gb@0 2g.10gb@2 2g.10gb@4 1g.5gb@6",
    "2g.10gb@0 2g.10gb@2 1g.5gb@4 1g.5gb@5 1g.5gb@6",
    "2g.10gb@0 1g.5gb@2 1g.5gb@3 2g.10gb@4 1g.5gb@6",
    "1g.5gb@0 1g.5gb@1 2g.10gb@2 2g.10gb@4 1g.5gb@6",
    "2g.10gb@0 1g.5gb@2 1g.5gb@3 1g.5gb@4 1g.5gb@5 1g.5gb@6",
    "1g.5gb@0 1g.5gb@1 2g.10gb@2 1g.5gb@4 1g.5gb@5 1g.5gb@6",
    "1g.5gb@0 1g.5gb@1 1g.5gb@2 1g.5gb@3 2g.10gb@4 1g.5gb@6",
    "1g.5gb@0 1g.5gb@1 1g.5gb@2 1g.5gb@3 1g.5gb@4 1g.5gb@5 1g.5gb@6",
]


def parse(model: GpuModel, text: str) -> list[Placement]:
    out = []
    for item in text.split():
        name, start = item.split("@")
        out.append(Placement(model.profile(name), int(start)))
    return out


def counts_of(model: GpuModel, placements: list[Placement]) -> tuple[int, ...]:
    c = Counter(p.profile.name for p in placements)
    return tuple(c[p.name] for p in model.planning_profiles)


def dominated_by(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True))


def test_user_guide_a100_configurations_valid_and_covered() -> None:
    m = gpu_model("A100-40GB")
    assert len(A100_SUPPORTED) == 19
    assert len(set(A100_SUPPORTED)) == 19
    maximal = [lay.counts for lay in layouts(m)]
    for text in A100_SUPPORTED:
        placements = parse(m, text)
        check_layout(m, placements)
        c = counts_of(m, placements)
        assert any(dominated_by(c, mx) for mx in maximal), text
    # The guide predates 1g.10gb on A100-40GB: its list is exactly the valid layouts over
    # the other five profiles to which no further instance can be added.
    without = [frozenset(lay.placements) for lay in all_layouts(m)
               if lay.count("1g.10gb", m) == 0]
    inclusion_maximal = {s for s in without if not any(s < o for o in without)}
    assert inclusion_maximal == {frozenset(parse(m, t)) for t in A100_SUPPORTED}


@pytest.mark.parametrize("model", MIG_MODELS, ids=lambda m: m.name)
def test_every_maximal_layout_is_valid_and_maximal(model: GpuModel) -> None:
    maximal = layouts(model)
    assert maximal
    everything = [lay.counts for lay in all_layouts(model)]
    keys = [lay.counts for lay in maximal]
    assert len(set(keys)) == len(keys), "one realisation per multiset"
    for lay in maximal:
        check_layout(model, lay.placements)
        assert lay.counts == counts_of(model, list(lay.placements))
        assert not any(p.profile.media_extensions for p in lay.placements)
        # nothing valid strictly dominates it
        assert not any(dominated_by(lay.counts, o) and o != lay.counts for o in everything)
    # and every valid layout is covered by a maximal one
    for c in everything:
        assert any(dominated_by(c, k) for k in keys)


def test_a100_maximal_layout_count() -> None:
    # 28 Pareto-maximal profile multisets over the six planning profiles of an A100/H100/H200.
    for name in ("A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB"):
        assert len(layouts(gpu_model(name))) == 28


def test_a30_layouts_exhaustive() -> None:
    """A30: all subsets of the 7 planning placements checked one by one."""
    m = gpu_model("A30-24GB")
    placements = [Placement(p, s) for p in m.planning_profiles for s in p.starts]
    valid = {
        frozenset(sub)
        for r in range(len(placements) + 1)
        for sub in itertools.combinations(placements, r)
        if not sub or is_valid_layout(m, list(sub))
    }
    assert {frozenset(lay.placements) for lay in all_layouts(m)} == valid
    assert {lay.counts for lay in layouts(m)} == {(4, 0, 0), (2, 1, 0), (0, 2, 0), (0, 0, 1)}


@pytest.mark.parametrize("name", ["T4", "A10", "V100M32"])
def test_non_mig_has_one_whole_slot(name: str) -> None:
    m = gpu_model(name)
    (only,) = layouts(m)
    assert [p.profile.name for p in only.placements] == ["whole"]
    assert only.counts == (1,)
    assert completions(m, []) == layouts(m)
    assert completions(m, [Placement(m.whole, 0)]) == (Layout((), (0,)),)


def test_layouts_are_cached() -> None:
    m = gpu_model("H100-80GB")
    assert layouts(m) is layouts(m)
    assert completions(m, []) is layouts(m)


def _existing_samples(model: GpuModel) -> list[tuple[Placement, ...]]:
    everything = all_layouts(model)
    step = max(1, len(everything) // 60)
    return [lay.placements for lay in everything[::step]]


@pytest.mark.parametrize("name", ["A100-80GB", "A30-24GB"])
def test_completions_keep_existing_and_are_maximal(name: str) -> None:
    m = gpu_model(name)
    everything = all_layouts(m)
    for existing in _existing_samples(m):
        comps = completions(m, list(existing))
        assert comps
        keys = [c.counts for c in comps]
        for c in comps:
            check_layout(m, [*existing, *c.placements])
            assert not set(c.placements) & set(existing)
        # every valid superset of existing adds a multiset covered by some completion
        for lay in everything:
            if set(existing) <= set(lay.placements):
                added = [p for p in lay.placements if p not in existing]
                assert any(dominated_by(counts_of(m, added), k) for k in keys), (existing, lay)


def test_completion_examples() -> None:
    m = gpu_model("A100-80GB")
    full = [Placement(m.profile("7g.80gb"), 0)]
    assert completions(m, full) == (Layout((), (0,) * 6),)
    three = [Placement(m.profile("3g.40gb"), 0)]
    got = {c.counts for c in completions(m, three)}
    # right half of the GPU: 3g, 2g+1g(either), 1g x3, 1g.20gb x2, 1g+1g+1g.20gb
    assert (0, 0, 0, 1, 0, 0) in got
    assert (1, 0, 1, 0, 0, 0) in got
    assert (0, 1, 1, 0, 0, 0) in got
    assert (3, 0, 0, 0, 0, 0) in got
    assert (0, 2, 0, 0, 0, 0) in got
    assert (2, 1, 0, 0, 0, 0) in got
    assert all(c[4] == 0 and c[5] == 0 for c in got)
