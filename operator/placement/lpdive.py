"""LP diving over the pattern model, then exact packing and a short polish (policy ``lpdive``).

The MILP of :mod:`~conspirator.operator.placement.milp` is the pattern model
(:mod:`~conspirator.operator.placement.pattern`):
``y[i,m,p,t]`` replicas of job ``i`` on profile ``p`` of GPU model ``m`` in tenant
group ``t``, ``N`` GPUs per MIG configuration, ``delta[i]`` for an unmet job.  Its
LP relaxation solves in milliseconds; this heuristic turns it into an integer plan
the way cutting-stock codes do, with HiGHS as an LP solver only (no integer
variable, no branch and bound):

1. **LP.**  The MILP's own model (``pattern.build_problem`` / ``pattern.formulate``)
   is passed to HiGHS relaxed (steps 1 and 2 are
   :mod:`~conspirator.operator.placement.dive`'s :func:`lp_dive`).
2. **Dive.**  Jobs whose LP replica counts are already integral (and whose
   ``delta`` is 0 or 1) are fixed as they are.  Every other job gets rounding
   candidates: the LP's counts rounded down plus the fewest replicas of one target
   that cover the rest, or all replicas on one target; they are priced with the
   LP's slot prices (duals of the slot-capacity rows).  The jobs the LP is surest
   about (most of the rounded vector already in the LP) are fixed to their
   cheapest candidate, a share ``batch`` of the fractional ones at a time, and the
   LP is re-solved warm (dual simplex from the last basis).  When a batch makes
   the LP infeasible it is undone and its jobs are fixed one at a time, each to its
   first candidate that keeps the LP feasible, else to unmet.  The dive ends when
   every job is fixed: replica counts are integral, GPU counts need not be.
3. **Exact packing and repair.**  The counts go into the replica-mix search of
   :mod:`~conspirator.operator.placement.mixsearch`, whose buckets pay the *exact*
   fewest GPUs for their counts (:mod:`~conspirator.operator.placement.packing`):
   each job's dive counts become one more candidate mix of that job and are applied
   in the dive's order when they fit its GPU models' counts; a job they do not fit
   takes its cheapest fitting mix instead (or stays unplaced).
4. **Polish.**  ``mixpack``'s ruin-and-recreate runs from that plan with a small
   iteration budget (pull the jobs of one bucket plus a few others, reinsert, keep
   when no worse), and ``mixpack``'s decoding writes real layouts and start slices.

``benchmarks/mig_gap.py`` measures it against the exact MILP (docs/mig-track.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.common import slot_cost
from conspirator.operator.placement.dive import DiveResult, Target, lp_dive
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.mixpack import MixPackHeuristic
from conspirator.operator.placement.mixsearch import Mix, MixSearch, with_adds
from conspirator.operator.placement.objective import E1_GPU, E2_UNMET
from conspirator.operator.placement.throughput import ThroughputTable


class LpDiveHeuristic(MixPackHeuristic):
    """LP diving on the pattern model + exact packing + short polish (name ``lpdive``).

    ``polish`` is the ruin-and-recreate budget in iterations per job (plus 50);
    ``batch`` the share of the fractional jobs fixed per LP re-solve.  Without a
    dive (the LP not solved in time) it is ``mixpack``.
    """

    name = "lpdive"

    def __init__(self, polish: float = 5.0, batch: float = 0.25, seed: int = 0,
                 time_limit_s: float = 10.0, e1: float = E1_GPU, e2: float = E2_UNMET) -> None:
        super().__init__(seed=seed, time_limit_s=time_limit_s, e1=e1, e2=e2)
        self.polish = polish
        self.batch = batch
        self.last_dive: DiveResult | None = None

    def _start(self, s: MixSearch, state: ClusterState, jobs: Sequence[Job],
               table: ThroughputTable) -> bool:
        res = lp_dive(state, jobs, table, batch=self.batch, time_limit_s=self.time_limit_s,
                      e1=self.e1, e2=self.e2)
        self.last_dive = res
        live = sum(1 for j in s.jobs if j.mixes)
        self.iterations = int(self.polish * live) + 50
        if res is None:
            return False
        index = {sj.job.id: j for j, sj in enumerate(s.jobs)}
        buckets_of: dict[tuple[str, str], list[int]] = {}
        for b_i, b in enumerate(s.buckets):
            buckets_of.setdefault((b.model.name, b.group), []).append(b_i)
        for jid in res.order:
            j = index.get(jid)
            if j is None or not s.jobs[j].mixes:
                continue
            counts = res.counts[jid]
            if not counts:
                continue  # unmet: the polish may still serve it
            k = self._add_mixes(s, j, counts, buckets_of)
            if k is None:
                s.insert(j)
            else:
                s.take(j, k)
        return True

    def _add_mixes(self, s: MixSearch, j: int, counts: dict[Target, int],
                   buckets_of: dict[tuple[str, str], list[int]]) -> int | None:
        """Add the dive's counts as mixes of job ``j`` (one per choice of buckets);
        the index of the cheapest that fits, or ``None``."""
        sj = s.jobs[j]
        mg = sorted({(m, t) for m, _, t in counts})
        options = [buckets_of.get(k, []) for k in mg]
        if any(not o for o in options):
            return None
        thr_of = {(b, p): thr for b, p, thr, _ in sj.targets}
        keys: list[tuple[tuple[int, int, int], ...]] = []
        for combo_i, combo in enumerate(product(*options)):
            if combo_i >= 16:
                break
            where = dict(zip(mg, combo, strict=True))
            entries: list[tuple[int, int, int]] = []
            thr: list[float] = []
            share = 0.0
            for (m, p, t), n in sorted(counts.items()):
                b_i = where[(m, t)]
                prof = s.buckets[b_i].model.planning_profiles
                p_i = next(k for k, pr in enumerate(prof) if pr.name == p)
                if (b_i, p_i) not in thr_of:
                    break
                entries.append((b_i, p_i, n))
                thr.append(thr_of[(b_i, p_i)])
                share += n * slot_cost(s.buckets[b_i].model, prof[p_i])
            else:
                key = tuple(entries)
                keys.append(key)
                if key not in sj.index:
                    sj.mixes.append(with_adds(Mix(key, tuple(thr), share), s.buckets))
                    sj.index[key] = -1
        # Keep the mixes sorted by share (``insert`` relies on it); no choice is set yet.
        sj.mixes.sort(key=lambda mx: (mx.share, mx.entries))
        sj.index = {mx.entries: k for k, mx in enumerate(sj.mixes)}
        best: tuple[float, float, int] | None = None
        for key in keys:
            k = sj.index[key]
            d = s.added_cost(sj.mixes[k])
            if d is not None and (best is None or (d, sj.mixes[k].share) < best[:2]):
                best = (d, sj.mixes[k].share, k)
        return None if best is None else best[2]


__all__ = ["DiveResult", "LpDiveHeuristic", "lp_dive"]
