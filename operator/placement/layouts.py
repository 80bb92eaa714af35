"""Enumeration of MIG configurations ("layouts") per GPU model.

A *layout* is a set of concrete MIG placements (profile at a start slice) that
:func:`~conspirator.operator.placement.gpus.check_layout` accepts.  The exact
placement model only needs the layouts that are maximal as *multisets of
profiles*: any subset of a valid layout is valid (an instance can always be
left out), so a layout whose profile counts are dominated componentwise by
another valid layout adds no capacity.  Each maximal multiset is kept with one
concrete realisation, so that a solver's choice can be written back as start
slices.

Only planning profiles are used (``+me`` variants are left to explicit
requests).  A non-MIG GPU has exactly one configuration: one ``whole`` slot.

:func:`completions` answers the incremental question: given the instances a
GPU already carries (which stay where they are), which maximal sets of new
instances can be added next to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from conspirator.operator.placement.gpus import (
    GpuModel,
    MigProfile,
    Placement,
    is_valid_layout,
)


@dataclass(frozen=True, slots=True)
class Layout:
    """One MIG configuration: concrete placements plus their profile counts.

    ``counts`` is aligned with the model's ``planning_profiles`` (the number of
    instances of each planning profile in ``placements``).
    """

    placements: tuple[Placement, ...]
    counts: tuple[int, ...]

    def count(self, profile: MigProfile | str, model: GpuModel) -> int:
        """Instances of ``profile`` (object or name) in this layout."""
        name = profile if isinstance(profile, str) else profile.name
        for p, n in zip(model.planning_profiles, self.counts, strict=True):
            if p.name == name:
                return n
        return 0

    @property
    def empty(self) -> bool:
        return not self.placements

    def __str__(self) -> str:
        return " ".join(str(p) for p in self.placements) or "(empty)"


def _counts(model: GpuModel, placements: Iterable[Placement]) -> tuple[int, ...]:
    names = [p.name for p in model.planning_profiles]
    out = [0] * len(names)
    for pl in placements:
        out[names.index(pl.profile.name)] += 1
    return tuple(out)


def _dominated(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether ``a`` <= ``b`` componentwise and ``a`` != ``b``."""
    return a != b and all(x <= y for x, y in zip(a, b, strict=True))


def pareto_maximal(candidates: Iterable[Layout]) -> tuple[Layout, ...]:
    """Keep one layout per Pareto-maximal profile-count vector (first one seen)."""
    by_counts: dict[tuple[int, ...], Layout] = {}
    for lay in candidates:
        by_counts.setdefault(lay.counts, lay)
    keys = list(by_counts)
    keep = [k for k in keys if not any(_dominated(k, other) for other in keys)]
    # Deterministic order: larger layouts (more compute) first, then by counts.
    keep.sort(key=lambda k: tuple(-x for x in k))
    return tuple(by_counts[k] for k in keep)


def _extensions(model: GpuModel, fixed: Sequence[Placement]) -> Iterator[tuple[Placement, ...]]:
    """Every set of planning placements that ``fixed`` plus it make a valid layout.

    Placements are tried in a fixed order and each set is produced once
    (depth-first search over increasing indices).
    """
    cands = [Placement(p, s) for p in model.planning_profiles for s in p.starts]
    used0 = 0
    for pl in fixed:
        used0 |= pl.mask
    cands = [c for c in cands if not c.mask & used0]

    def rec(start: int, used: int, chosen: list[Placement]) -> Iterator[tuple[Placement, ...]]:
        yield tuple(chosen)
        for k in range(start, len(cands)):
            c = cands[k]
            if c.mask & used:
                continue
            chosen.append(c)
            if is_valid_layout(model, [*fixed, *chosen]):
                yield from rec(k + 1, used | c.mask, chosen)
            chosen.pop()

    for pls in rec(0, used0, []):
        yield tuple(sorted(pls, key=lambda p: (p.start, p.profile.name)))


def _whole_layout(model: GpuModel) -> Layout:
    return Layout((Placement(model.whole, 0),), (1,))


@cache
def all_layouts(model: GpuModel) -> tuple[Layout, ...]:
    """Every valid layout of ``model`` over planning profiles (the empty one included)."""
    if not model.mig_capable:
        return (Layout((), (0,)), _whole_layout(model))
    return tuple(Layout(pls, _counts(model, pls)) for pls in _extensions(model, ()))


@cache
def layouts(model: GpuModel) -> tuple[Layout, ...]:
    """The Pareto-maximal layouts of ``model``, one concrete realisation each.

    A non-MIG model has exactly one: a single ``whole`` slot.
    """
    if not model.mig_capable:
        return (_whole_layout(model),)
    return pareto_maximal(all_layouts(model))


def completions(model: GpuModel, existing: Sequence[Placement]) -> tuple[Layout, ...]:
    """Maximal sets of new planning placements that fit next to ``existing``.

    The returned layouts hold only the *added* placements (the existing ones
    stay where they are); their counts are Pareto-maximal.  When nothing fits,
    the single empty layout is returned.  An invalid ``existing`` layout yields
    the empty layout only (nothing can be added to a GPU in an unknown state).
    """
    return _completions(model, tuple(sorted(existing, key=lambda p: (p.start, p.profile.name))))


@cache
def _completions(model: GpuModel, existing: tuple[Placement, ...]) -> tuple[Layout, ...]:
    empty = Layout((), tuple(0 for _ in model.planning_profiles))
    if not existing:
        return layouts(model)
    if not model.mig_capable:
        return (empty,)  # the whole device is taken
    if not is_valid_layout(model, existing):
        return (empty,)
    found = (Layout(pls, _counts(model, pls)) for pls in _extensions(model, existing))
    return pareto_maximal(found)


__all__ = ["Layout", "all_layouts", "completions", "layouts", "pareto_maximal"]
