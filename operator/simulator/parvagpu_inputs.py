"""Files of the ParvaGPU track: profiles, SLO sets, deployment maps, published GPU counts.

Formats are ParvaGPU's (``shared/data/parvagpu/README.md``):

* ``DIR/<model>.csv``: ``Mig instance,Batch size,Workload Number,Throughput,Latency``
  (GPCs, batch, MPS processes, requests/s *per process*, seconds per batch);
* SLO files: one row per SLO set, no header, one column per model in the alphabetical
  order of the profile files, ``N/A`` where the model is not served; rates in
  requests/s, latency SLOs in ms; the last line may lack its newline;
* deployment maps: ``Num instance,Num GPU,Model,Placement,Instance size,Batch size,Num
  proc`` (node, GPU in the node, model, MIG start slice, GPCs, batch, processes).

Every error names the file, the row (from 1, as an editor counts lines) and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

from conspirator.operator.placement.segments import (
    A100_80GB_PROFILES,
    Demand,
    PlacedSegment,
    Segment,
    SegmentPlan,
    SegmentTable,
)

PROFILE_HEADER = ("Mig instance", "Batch size", "Workload Number", "Throughput", "Latency")
DEPLOY_HEADER = ("Num instance", "Num GPU", "Model", "Placement", "Instance size",
                 "Batch size", "Num proc")
GPUS_PER_NODE = 8
NOT_SERVED = "N/A"


class ParvaInputError(ValueError):
    """A file of the ParvaGPU track that cannot be used, and where."""


def _number(path: Path, row: int, col: str, text: str, integer: bool = False) -> float:
    try:
        v = float(text) if not integer else int(text)
    except ValueError:
        raise ParvaInputError(f"{path}: row {row}, column {col}: {text!r} is not "
                              f"{'an integer' if integer else 'a number'}") from None
    if not math.isfinite(v) or v < 0:
        raise ParvaInputError(f"{path}: row {row}, column {col}: {text!r} must be a finite "
                              "number >= 0")
    return v


def _rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="") as f:
            return [[c.strip() for c in r] for r in csv.reader(f)]
    except OSError as exc:
        raise ParvaInputError(f"{path}: {exc.strerror}") from None


def load_profile(path: Path) -> list[Segment]:
    rows = _rows(path)
    if not rows or tuple(rows[0]) != PROFILE_HEADER:
        raise ParvaInputError(f"{path}: row 1: header must be {','.join(PROFILE_HEADER)}")
    out: list[Segment] = []
    for n, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        if len(r) != len(PROFILE_HEADER):
            raise ParvaInputError(f"{path}: row {n}: {len(r)} columns, expected "
                                  f"{len(PROFILE_HEADER)}")
        gpcs, batch, procs = (int(_number(path, n, PROFILE_HEADER[i], r[i], True))
                              for i in range(3))
        if gpcs not in A100_80GB_PROFILES:
            raise ParvaInputError(f"{path}: row {n}, column {PROFILE_HEADER[0]}: {gpcs} GPCs "
                                  f"is no A100-80GB profile (known: "
                                  f"{sorted(A100_80GB_PROFILES)})")
        if batch < 1 or procs < 1:
            raise ParvaInputError(f"{path}: row {n}: batch and processes must be >= 1")
        thr = _number(path, n, PROFILE_HEADER[3], r[3])
        lat = _number(path, n, PROFILE_HEADER[4], r[4])
        out.append(Segment(gpcs, batch, procs, thr, lat * 1000.0))
    return out


def load_profiles(folder: Path) -> SegmentTable:
    """Every ``*.csv`` of ``folder``, one model each (named by the file's stem)."""
    if not folder.is_dir():
        raise ParvaInputError(f"{folder}: not a folder of profile CSVs")
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise ParvaInputError(f"{folder}: no *.csv profile found")
    return SegmentTable({f.stem: load_profile(f) for f in files})


def _slo_file(path: Path, models: tuple[str, ...]) -> list[list[float | None]]:
    out: list[list[float | None]] = []
    for n, r in enumerate(_rows(path), start=1):
        if not r or r == [""]:
            continue
        if len(r) != len(models):
            raise ParvaInputError(f"{path}: row {n}: {len(r)} columns, expected {len(models)} "
                                  f"({', '.join(models)})")
        out.append([None if c == NOT_SERVED else _number(path, n, f"{k + 1} ({models[k]})", c)
                    for k, c in enumerate(r)])
    if not out:
        raise ParvaInputError(f"{path}: no SLO set")
    return out


def load_slo_sets(rates: Path, latency: Path, models: tuple[str, ...]) -> list[list[Demand]]:
    """One list of demands per SLO set (row), models in ``models``' (alphabetical) order."""
    rr = _slo_file(rates, models)
    ll = _slo_file(latency, models)
    if len(rr) != len(ll):
        raise ParvaInputError(f"{rates} has {len(rr)} SLO sets, {latency} {len(ll)}")
    sets: list[list[Demand]] = []
    for n, (rrow, lrow) in enumerate(zip(rr, ll, strict=True), start=1):
        demands: list[Demand] = []
        for k, (rate, slo) in enumerate(zip(rrow, lrow, strict=True)):
            where = f"row {n}, column {k + 1} ({models[k]})"
            if (rate is None) != (slo is None):
                raise ParvaInputError(f"{where}: {NOT_SERVED} in one of {rates.name} and "
                                      f"{latency.name} only")
            if rate is None or slo is None:
                continue
            if slo <= 0:
                raise ParvaInputError(f"{latency}: {where}: a latency SLO must be > 0")
            if rate > 0:
                demands.append(Demand(models[k], rate, slo))
        sets.append(demands)
    return sets


def load_plan(path: Path, table: SegmentTable) -> SegmentPlan:
    """A deployment map, its segments looked up in ``table`` (an unknown one is refused)."""
    rows = _rows(path)
    if not rows or tuple(rows[0]) != DEPLOY_HEADER:
        raise ParvaInputError(f"{path}: row 1: header must be {','.join(DEPLOY_HEADER)}")
    out: list[PlacedSegment] = []
    for n, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        if len(r) != len(DEPLOY_HEADER):
            raise ParvaInputError(f"{path}: row {n}: {len(r)} columns, expected "
                                  f"{len(DEPLOY_HEADER)}")
        node, gpu, start, gpcs, batch, procs = (
            int(_number(path, n, DEPLOY_HEADER[i], r[i], True)) for i in (0, 1, 3, 4, 5, 6))
        seg = table.find(r[2], gpcs, batch, procs)
        if seg is None:
            raise ParvaInputError(f"{path}: row {n}: {r[2]} has no measured segment of "
                                  f"{gpcs} GPCs, batch {batch}, {procs} process(es)")
        out.append(PlacedSegment(node * GPUS_PER_NODE + gpu, start, r[2], seg))
    return SegmentPlan(tuple(out))


def write_plan(plan: SegmentPlan, path: Path) -> None:
    """``plan`` as a deployment map (GPUs renumbered densely, eight per node)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dense = {g: k for k, g in enumerate(sorted({s.gpu for s in plan.segments}))}
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(DEPLOY_HEADER)
        for s in sorted(plan.segments, key=lambda s: (dense[s.gpu], s.start)):
            g = dense[s.gpu]
            w.writerow([g // GPUS_PER_NODE, g % GPUS_PER_NODE, s.model, s.start, s.segment.gpcs,
                        s.segment.batch, s.segment.processes])


def load_published(path: Path) -> dict[int, tuple[int, int]]:
    """``gpus.csv``: SLO set -> (published GPUs, GPUs of the rebuilt scheduler)."""
    rows = _rows(path)
    header = ("row", "parvagpu_gpus_published", "parvagpu_gpus_rerun")
    if not rows or tuple(rows[0]) != header:
        raise ParvaInputError(f"{path}: row 1: header must be {','.join(header)}")
    out: dict[int, tuple[int, int]] = {}
    for n, r in enumerate(rows[1:], start=2):
        if r:
            k, pub, rerun = (int(_number(path, n, header[i], r[i], True)) for i in range(3))
            out[k] = (pub, rerun)
    return out


def models_of(sets: Iterable[list[Demand]]) -> set[str]:
    return {d.model for s in sets for d in s}


__all__ = [
    "DEPLOY_HEADER",
    "GPUS_PER_NODE",
    "PROFILE_HEADER",
    "ParvaInputError",
    "load_plan",
    "load_profile",
    "load_profiles",
    "load_published",
    "load_slo_sets",
    "models_of",
    "write_plan",
]
