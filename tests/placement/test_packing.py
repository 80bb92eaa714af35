"""Exact packing of MIG instance counts (``packing.py``).

The 8-slice closed form must agree with an exact search over the Pareto-maximal
layouts, and every packing must be a valid layout per GPU holding exactly the
requested instances, in exactly :func:`min_gpus` GPUs.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conspirator.operator.placement.gpus import check_layout, gpu_model
from conspirator.operator.placement.layouts import layouts
from conspirator.operator.placement.packing import (
    PatternSearch,
    PatternSet,
    counter,
    geometry,
    min_gpus,
    pack,
)

EIGHT = ["A100-40GB", "A100-80GB", "H100-80GB", "H100-94GB", "H200-141GB"]


def _check_packing(name: str, counts: tuple[int, ...]) -> None:
    model = gpu_model(name)
    gpus = pack(model, counts)
    assert len(gpus) == min_gpus(model, counts) == counter(model)(counts)
    seen: Counter[str] = Counter()
    for pls in gpus:
        assert pls, "a packing opens no empty GPU"
        if model.mig_capable:
            check_layout(model, pls)
        else:
            assert len(pls) == 1
        seen.update(p.profile.name for p in pls)
    assert [seen[p.name] for p in model.planning_profiles] == list(counts)


@pytest.mark.parametrize("name", EIGHT)
def test_eight_slice_models_use_the_closed_form(name: str) -> None:
    assert geometry(gpu_model(name)).kind == "eight"


def test_other_geometries() -> None:
    assert geometry(gpu_model("A30-24GB")).kind == "search"
    assert geometry(gpu_model("T4")).kind == "whole"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EIGHT), st.lists(st.integers(0, 9), min_size=6, max_size=6))
def test_closed_form_matches_exact_search(name: str, raw: list[int]) -> None:
    model = gpu_model(name)
    counts = tuple(raw)
    exact = PatternSearch(PatternSet.of(layouts(model)), model.planning_profiles).count(counts)
    assert min_gpus(model, counts) == exact
    _check_packing(name, counts)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=3, max_size=3))
def test_a30_packing(raw: list[int]) -> None:
    _check_packing("A30-24GB", tuple(raw))


@pytest.mark.parametrize(("counts", "gpus"), [
    # planning profiles of A100-80GB: 1g.10gb, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb
    ((7, 0, 0, 0, 0, 0), 1),  # seven one-slice 1g fill a GPU (slice 7 stays free)
    ((8, 0, 0, 0, 0, 0), 2),
    ((0, 4, 0, 0, 0, 0), 1),
    ((0, 8, 0, 0, 0, 0), 2),
    ((1, 0, 3, 0, 0, 0), 1),  # 2g at 0, 2, 4 and a 1g at 6
    ((2, 0, 3, 0, 0, 0), 2),  # no second 1g: a one-slice 1g cannot start at 7
    ((0, 1, 3, 0, 0, 0), 1),  # 1g.20gb at 6
    ((0, 0, 0, 1, 1, 0), 1),  # 4g at 0 + 3g at 4
    ((4, 0, 0, 1, 0, 0), 1),  # 3g at 4, four 1g on the left
    ((2, 0, 1, 1, 0, 0), 1),  # 3g at 4, 2g at 0, 1g at 2 and 3
    ((0, 0, 0, 3, 0, 0), 2),
    ((0, 0, 0, 0, 2, 0), 2),
    ((3, 0, 0, 0, 1, 0), 1),  # 4g at 0, 1g at 4, 5, 6
    ((1, 1, 1, 0, 1, 0), 2),  # the 4g's right half holds only 3 compute slices
    ((0, 0, 0, 0, 0, 3), 3),
])
def test_packings_by_hand(counts: tuple[int, ...], gpus: int) -> None:
    assert min_gpus(gpu_model("A100-80GB"), counts) == gpus
    _check_packing("A100-80GB", counts)


def test_non_mig_gpu_holds_one_replica() -> None:
    assert min_gpus(gpu_model("T4"), (5,)) == 5
    _check_packing("T4", (5,))
