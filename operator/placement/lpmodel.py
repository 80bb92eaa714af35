"""A small sparse (MI)LP in row form and its solve with HiGHS (``highspy``).

:class:`LinearModel` collects columns (bounds, cost, integrality) and rows (``lo <=
sum a_j x_j <= hi``) as plain lists; ``to_highs`` hands them to HiGHS, integral or
relaxed.  :func:`new_highs` is the one HiGHS configuration every engine uses (silent,
seeded, single-threaded, time-limited) and :func:`solve` runs a model to a
:class:`Solution`.  Nothing here knows about GPUs: the pattern model of
:mod:`~conspirator.operator.placement.pattern` is built on it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np

INF = highspy.kHighsInf
"""HiGHS's infinity, for a row or bound without a limit."""


@dataclass(slots=True)
class LinearModel:
    """Columns and rows of a (MI)LP, added one at a time."""

    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    row_lo: list[float] = field(default_factory=list)
    row_hi: list[float] = field(default_factory=list)
    row_start: list[int] = field(default_factory=lambda: [0])
    row_index: list[int] = field(default_factory=list)
    row_value: list[float] = field(default_factory=list)
    offset: float = 0.0

    def var(self, lower: float, upper: float, cost: float = 0.0, integer: bool = True) -> int:
        self.cost.append(cost)
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(integer)
        return len(self.cost) - 1

    def row(self, terms: Iterable[tuple[int, float]], lo: float, hi: float) -> None:
        acc: dict[int, float] = defaultdict(float)
        for j, v in terms:
            acc[j] += v
        for j, v in acc.items():
            if v != 0.0:
                self.row_index.append(j)
                self.row_value.append(v)
        self.row_start.append(len(self.row_index))
        self.row_lo.append(lo)
        self.row_hi.append(hi)

    def objective_at(self, x: Sequence[float]) -> float:
        """The objective at column values ``x`` (the offset included)."""
        return sum(c * v for c, v in zip(self.cost, x, strict=True) if c) + self.offset

    def copy(self) -> LinearModel:
        """An independent copy (every list copied)."""
        return LinearModel(
            cost=list(self.cost), lower=list(self.lower), upper=list(self.upper),
            integer=list(self.integer), row_lo=list(self.row_lo), row_hi=list(self.row_hi),
            row_start=list(self.row_start), row_index=list(self.row_index),
            row_value=list(self.row_value), offset=self.offset,
        )

    def to_highs(self, relax: bool = False) -> highspy.HighsLp:
        lp = highspy.HighsLp()
        lp.num_col_ = len(self.cost)
        lp.num_row_ = len(self.row_lo)
        lp.col_cost_ = np.asarray(self.cost, dtype=np.float64)
        lp.col_lower_ = np.asarray(self.lower, dtype=np.float64)
        lp.col_upper_ = np.asarray(self.upper, dtype=np.float64)
        lp.row_lower_ = np.asarray(self.row_lo, dtype=np.float64)
        lp.row_upper_ = np.asarray(self.row_hi, dtype=np.float64)
        lp.offset_ = self.offset
        a = lp.a_matrix_
        a.format_ = highspy.MatrixFormat.kRowwise
        a.num_col_ = lp.num_col_
        a.num_row_ = lp.num_row_
        a.start_ = np.asarray(self.row_start, dtype=np.int32)
        a.index_ = np.asarray(self.row_index, dtype=np.int32)
        a.value_ = np.asarray(self.row_value, dtype=np.float64)
        if not relax:
            lp.integrality_ = [
                highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                for i in self.integer
            ]
        return lp



@dataclass(frozen=True, slots=True)
class Solution:
    """Column values of a solve, with what HiGHS says about them."""

    values: list[float]
    objective: float  # the solver's, tie-break included
    bound: float  # the solver's dual bound
    optimal: bool  # the solver's status



def new_highs(time_limit_s: float) -> highspy.Highs:
    """A silent, deterministic, single-threaded HiGHS with a time limit."""
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.silent()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("threads", 1)
    return h



def solve(md: LinearModel, time_limit_s: float, relax: bool = False, mip_rel_gap: float = 0.0,
          mip_abs_gap: float = 1e-6, start: list[float] | None = None) -> Solution | None:
    """Solve ``md`` (relaxed: its LP), warm-started from ``start`` (``None``: no plan found)."""
    h = new_highs(time_limit_s)
    if not relax:
        h.setOptionValue("mip_rel_gap", mip_rel_gap)
        h.setOptionValue("mip_abs_gap", mip_abs_gap)
    h.passModel(md.to_highs(relax))
    if start is not None:
        hs = highspy.HighsSolution()
        hs.col_value = [float(round(x)) if md.integer[j] else x for j, x in enumerate(start)]
        h.setSolution(hs)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    if info.primal_solution_status != highspy.kSolutionStatusFeasible:
        return None
    values = list(h.getSolution().col_value)
    objective = float(info.objective_function_value)
    optimal = status == highspy.HighsModelStatus.kOptimal
    bound = objective if relax else float(info.mip_dual_bound)
    if not math.isfinite(bound):
        bound = objective if optimal else -math.inf
    return Solution(values, objective, bound, optimal)



__all__ = ["INF", "LinearModel", "Solution", "new_highs", "solve"]
