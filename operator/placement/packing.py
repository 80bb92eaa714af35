"""Exact packing of MIG instance counts into GPUs: how many GPUs, and which layouts.

Given how many instances of each planning profile a set of GPUs of one model must
hold (a *count vector*, aligned with ``GpuModel.planning_profiles``), the fewest
GPUs that hold them is what the pattern MILP (``milp.py``) pays for a bucket of
interchangeable GPUs.  :func:`min_gpus` computes it exactly and :func:`pack`
returns one packing with real start slices.

Every 8-slice MIG model of the catalogue (A100-40/80GB, H100-80/94GB, H200-141GB)
shares one geometry, solved in closed form:

* a ``7g`` takes a GPU; a ``4g`` (start 0) pairs with a ``3g`` at start 4 (a full
  GPU; pairing never hurts, see below); other ``3g`` go two to a GPU or alone at
  start 4;
* what is left of a GPU is a set of *slice pairs*: ``U`` pairs (slices 0-1, 2-3,
  4-5) hold a ``2g``, a ``1g`` with two slices or two ``1g`` with one slice; the
  ``R`` pair (slices 6-7) holds one ``1g`` (a ``2g`` cannot start at 6, a one-slice
  ``1g`` cannot start at 7).  An empty GPU offers 3 U + 1 R, the right half of a
  ``4g`` GPU 1 U + 1 R, the left half of a lone ``3g`` GPU 2 U.  Every pair uses
  at most 2 compute slices (R: 1), which is exactly what the GPU has left, so the
  compute limit never binds beyond the pairs;
* the small instances fit a set of pairs iff ``2g <= U`` and, putting two-slice
  ``1g`` on R pairs first (an R pair holds only one one-slice ``1g``), the
  one-slice ``1g`` fit two per free U pair and one per free R pair.

Pairing a ``4g`` with a ``3g`` dominates: apart they take two GPUs and leave
1 U + 1 R and 2 U, no more than one empty GPU's 3 U + 1 R.  Two lone ``3g``
(2 x 2 U) beat a ``3g`` pair plus an empty GPU (3 U + 1 R) only sometimes, so the
number of lone ``3g`` is searched (same parity as the unpaired ``3g``).

Other models (A30, or any other geometry) use an exact memoised search over
the Pareto-maximal layouts of :mod:`~conspirator.operator.placement.layouts`
(every GPU of an optimal packing is one of them, minus what it does not need);
a non-MIG GPU holds one ``whole`` instance.  ``tests/placement/test_packing.py``
checks the closed form against that search and every packing against
:func:`~conspirator.operator.placement.gpus.check_layout`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from conspirator.operator.placement.gpus import GpuModel, MigProfile, Placement
from conspirator.operator.placement.layouts import Layout, layouts

# The 8-slice geometry: (memory slices, compute slices) -> (starts, max count).
_EIGHT: dict[tuple[int, int], tuple[tuple[int, ...], int]] = {
    (1, 1): ((0, 1, 2, 3, 4, 5, 6), 7),
    (2, 1): ((0, 2, 4, 6), 4),
    (2, 2): ((0, 2, 4), 3),
    (4, 3): ((0, 4), 2),
    (4, 4): ((0,), 1),
    (8, 7): ((0,), 1),
}
_ORDER = ((1, 1), (2, 1), (2, 2), (4, 3), (4, 4), (8, 7))  # Z, Y, X, 3g, 4g, 7g

INFEASIBLE = 1 << 30
"""What :meth:`PatternSearch.count` returns when no pattern holds a needed profile."""


@dataclass(frozen=True, slots=True)
class Geometry:
    """How to pack one GPU model: closed form (8-slice MIG), search, or whole GPUs."""

    model: GpuModel
    kind: str  # "eight", "search" or "whole"
    index: tuple[int, ...]  # eight: planning-profile index of Z, Y, X, 3g, 4g, 7g

    @property
    def profiles(self) -> tuple[MigProfile, ...]:
        return self.model.planning_profiles


@cache
def geometry(model: GpuModel) -> Geometry:
    """The packing geometry of ``model``."""
    if not model.mig_capable:
        return Geometry(model, "whole", ())
    profs = model.planning_profiles
    shapes = {(p.memory_slices, p.compute_slices): k for k, p in enumerate(profs)}
    eight = (
        model.memory_slices == 8 and model.compute_slices == 7 and len(profs) == len(_EIGHT)
        and set(shapes) == set(_EIGHT)
        and all((p.starts, p.max_count) == _EIGHT[(p.memory_slices, p.compute_slices)]
                for p in profs)
    )
    if eight:
        return Geometry(model, "eight", tuple(shapes[s] for s in _ORDER))
    return Geometry(model, "search", ())


# --- the 8-slice closed form ----------------------------------------------------------------

def _small_fit(x: int, y: int, z: int, u: int, r: int) -> bool:
    """Whether x 2g, y two-slice 1g and z one-slice 1g fit u U pairs and r R pairs."""
    if x > u:
        return False
    yr = min(y, r)
    yu = y - yr
    if yu > u - x:
        return False
    return z <= 2 * (u - x - yu) + (r - yr)


def _fresh_needed(x: int, y: int, z: int, u: int, r: int) -> int:
    """Fewest empty GPUs (3 U + 1 R each) to add to u U and r R pairs for the small ones."""
    if not (x or y or z):
        return 0
    # Lower bounds: 2g need U pairs; everything needs pairs (at most two per pair).
    n = max(0, -(-(x - u) // 3), -(-(2 * x + 2 * y + z - 2 * u - 2 * r) // 8))
    while not _small_fit(x, y, z, u + 3 * n, r + n):
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class _EightPlan:
    g7: int
    k: int  # 4g + 3g GPUs
    e: int  # 4g GPUs with a free right half
    p3: int  # 3g + 3g GPUs
    s: int  # lone 3g GPUs (3g at 4, left half free)
    n: int  # empty GPUs for the small instances

    @property
    def total(self) -> int:
        return self.g7 + self.k + self.e + self.p3 + self.s + self.n


@cache
def _eight_plan(z: int, y: int, x: int, d: int, e: int, g: int) -> _EightPlan:
    k = min(d, e)
    e1, d1 = e - k, d - k
    best: _EightPlan | None = None
    for s in range(d1 % 2, d1 + 1, 2):
        n = _fresh_needed(x, y, z, e1 + 2 * s, e1)
        plan = _EightPlan(g, k, e1, (d1 - s) // 2, s, n)
        if best is None or plan.total < best.total:
            best = plan
    assert best is not None
    return best


def _eight_pack(geo: Geometry, counts: Sequence[int]) -> list[list[Placement]]:
    profs = geo.profiles
    pz, py, px, p3, p4, p7 = (profs[i] for i in geo.index)
    z, y, x, d, e, g = (counts[i] for i in geo.index)
    plan = _eight_plan(z, y, x, d, e, g)
    gpus: list[list[Placement]] = []
    u_pairs: list[tuple[int, int]] = []  # (gpu, start)
    r_pairs: list[tuple[int, int]] = []
    gpus += [[Placement(p7, 0)] for _ in range(plan.g7)]
    gpus += [[Placement(p4, 0), Placement(p3, 4)] for _ in range(plan.k)]
    gpus += [[Placement(p3, 0), Placement(p3, 4)] for _ in range(plan.p3)]
    for _ in range(plan.e):
        u_pairs.append((len(gpus), 4))
        r_pairs.append((len(gpus), 6))
        gpus.append([Placement(p4, 0)])
    for _ in range(plan.s):
        u_pairs += [(len(gpus), 0), (len(gpus), 2)]
        gpus.append([Placement(p3, 4)])
    for _ in range(plan.n):
        u_pairs += [(len(gpus), 0), (len(gpus), 2), (len(gpus), 4)]
        r_pairs.append((len(gpus), 6))
        gpus.append([])
    u_pairs.reverse()
    r_pairs.reverse()
    for _ in range(x):
        gi, st = u_pairs.pop()
        gpus[gi].append(Placement(px, st))
    for _ in range(y):
        gi, st = r_pairs.pop() if r_pairs else u_pairs.pop()
        gpus[gi].append(Placement(py, st))
    left = z
    while left and u_pairs:
        gi, st = u_pairs.pop()
        gpus[gi].append(Placement(pz, st))
        left -= 1
        if left:
            gpus[gi].append(Placement(pz, st + 1))
            left -= 1
    while left:
        gi, st = r_pairs.pop()
        gpus[gi].append(Placement(pz, st))
        left -= 1
    return [sorted(g, key=lambda p: p.start) for g in gpus if g]


# --- exact search over patterns (other geometries, partly used GPUs) ------------------------

@dataclass(frozen=True, slots=True)
class PatternSet:
    """Patterns a GPU may take: count vectors with one concrete realisation each."""

    counts: tuple[tuple[int, ...], ...]
    placements: tuple[tuple[Placement, ...], ...]

    @staticmethod
    def of(lays: Sequence[Layout]) -> PatternSet:
        keep = [lay for lay in lays if not lay.empty]
        return PatternSet(tuple(lay.counts for lay in keep),
                          tuple(lay.placements for lay in keep))


def _size_order(profiles: Sequence[MigProfile]) -> tuple[int, ...]:
    return tuple(sorted(range(len(profiles)),
                        key=lambda k: (-profiles[k].memory_slices, -profiles[k].compute_slices)))


class PatternSearch:
    """Fewest patterns covering a count vector, exact (memoised depth-first search).

    The largest profile still needed must sit in some pattern of an optimal cover,
    so only patterns holding it are branched on.  Meant for small vectors (A30
    buckets, partly used GPUs); the 8-slice models use the closed form.
    """

    def __init__(self, patterns: PatternSet, profiles: Sequence[MigProfile]) -> None:
        self.patterns = patterns
        self.order = _size_order(profiles)
        self._memo: dict[tuple[int, ...], tuple[int, int]] = {(0,) * len(profiles): (0, -1)}
        self._cap = [max((c[k] for c in patterns.counts), default=0)
                     for k in range(len(profiles))]

    def count(self, v: tuple[int, ...]) -> int:
        """Fewest patterns covering ``v`` (:data:`INFEASIBLE` if no pattern holds a profile)."""
        got = self._memo.get(v)
        if got is not None:
            return got[0]
        if any(n and not cap for n, cap in zip(v, self._cap, strict=True)):
            self._memo[v] = (INFEASIBLE, -1)
            return INFEASIBLE
        top = next(k for k in self.order if v[k])
        best, arg = INFEASIBLE, -1
        lb = max(-(-n // cap) for n, cap in zip(v, self._cap, strict=True) if n)
        for pi, c in enumerate(self.patterns.counts):
            if not c[top]:
                continue
            rest = tuple(max(0, a - b) for a, b in zip(v, c, strict=True))
            val = 1 + self.count(rest)
            if val < best:
                best, arg = val, pi
                if best <= lb:
                    break
        self._memo[v] = (best, arg)
        return best

    def cover(self, v: tuple[int, ...]) -> list[int]:
        """The patterns (indices into ``patterns``, one per GPU) of an optimal cover."""
        if self.count(v) >= INFEASIBLE:
            raise ValueError(f"no cover of {v}")
        out: list[int] = []
        while any(v):
            _, arg = self._memo[v]
            out.append(arg)
            c = self.patterns.counts[arg]
            v = tuple(max(0, a - b) for a, b in zip(v, c, strict=True))
            self.count(v)
        return out


@cache
def _search_for(model: GpuModel) -> PatternSearch:
    return PatternSearch(PatternSet.of(layouts(model)), model.planning_profiles)


def _take(placements: Sequence[Placement], need: list[int],
          profiles: Sequence[MigProfile]) -> list[Placement]:
    """The placements of a pattern that serve the still-needed counts (the rest left out)."""
    out: list[Placement] = []
    for pl in placements:
        k = profiles.index(pl.profile)
        if need[k] > 0:
            need[k] -= 1
            out.append(pl)
    return out


# --- public ---------------------------------------------------------------------------------

_COUNTERS: dict[str, Callable[[tuple[int, ...]], int]] = {}


def counter(model: GpuModel) -> Callable[[tuple[int, ...]], int]:
    """A fast memoised :func:`min_gpus` for one model (for search loops)."""
    key = f"{model.name}/{model.memory_gib:g}"
    fn = _COUNTERS.get(key)
    if fn is not None:
        return fn
    geo = geometry(model)
    memo: dict[tuple[int, ...], int] = {}
    if geo.kind == "whole":
        def fn(counts: tuple[int, ...]) -> int:
            return counts[0]
    elif geo.kind == "eight":
        i0, i1, i2, i3, i4, i5 = geo.index

        def fn(counts: tuple[int, ...]) -> int:
            got = memo.get(counts)
            if got is None:
                got = _eight_plan(counts[i0], counts[i1], counts[i2], counts[i3], counts[i4],
                                  counts[i5]).total
                memo[counts] = got
            return got
    else:
        fn = _search_for(model).count
    _COUNTERS[key] = fn
    return fn


def min_gpus(model: GpuModel, counts: tuple[int, ...]) -> int:
    """Fewest empty GPUs of ``model`` that hold ``counts`` (aligned with planning profiles)."""
    geo = geometry(model)
    if geo.kind == "whole":
        return counts[0]
    if geo.kind == "eight":
        i = geo.index
        return _eight_plan(counts[i[0]], counts[i[1]], counts[i[2]], counts[i[3]],
                           counts[i[4]], counts[i[5]]).total
    return _search_for(model).count(counts)


def pack(model: GpuModel, counts: Sequence[int]) -> list[list[Placement]]:
    """A packing of ``counts`` into :func:`min_gpus` GPUs: the placements of each GPU."""
    geo = geometry(model)
    if geo.kind == "whole":
        return [[Placement(model.whole, 0)] for _ in range(counts[0])]
    if geo.kind == "eight":
        return _eight_pack(geo, counts)
    search = _search_for(model)
    need = list(counts)
    out = []
    for pi in search.cover(tuple(counts)):
        out.append(_take(search.patterns.placements[pi], need, model.planning_profiles))
    return [g for g in out if g]


__all__ = ["INFEASIBLE", "Geometry", "PatternSearch", "PatternSet", "counter", "geometry",
           "min_gpus", "pack"]
