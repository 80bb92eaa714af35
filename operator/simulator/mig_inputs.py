"""Inputs of the MIG track: GPU node lists and inference-job lists (CSV), and the
seeded default workload.

Node CSV (the Alibaba node-list format; extra columns ignored):
``sn,gpu,model`` and optionally ``gpu_memory_gib`` for non-MIG models of declared size
and ``pool`` (``on-demand``, the default, or ``spot``).

Job CSV: ``name,model,demand_rps,latency_slo_ms,memory_gib,arrival_s,duration_s`` and
optionally ``tenant,dedicated_gpu,allowed_gpus,priority,max_batch,spot_tolerant``
(``allowed_gpus`` separated by ``|``; empty means any).

Every error names the file, the row (1 = first data row) and the field.
"""

from __future__ import annotations

import csv
import functools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

from conspirator.operator.placement.gpus import GpuModel, gpu_model
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.throughput import ThroughputTable

T = TypeVar("T")


class InputError(ValueError):
    """Bad input: the message names the file, row and field."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    model: GpuModel
    gpus: int
    spot: bool = False


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job with its arrival time and duration in the simulation (seconds)."""

    job: Job
    arrival_s: float
    duration_s: float


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{path.name}: missing column(s) {', '.join(missing)}; "
                             f"header is {','.join(header)}")
        for n, row in enumerate(reader, start=1):
            if None in row:
                raise InputError(f"{path.name} row {n}: more fields than the header has")
            yield n, {k: (v or "").strip() for k, v in row.items()}


def _field(path: Path, n: int, row: dict[str, str], name: str, conv: Callable[[str], T],
           what: str, default: T | None = None) -> T:
    raw = row.get(name, "")
    if raw == "" and default is not None:
        return default
    try:
        return conv(raw)
    except (ValueError, KeyError) as exc:
        raise InputError(
            f"{path.name} row {n}, field {name}: expected {what}, got {raw!r}"
            + (f" ({exc})" if isinstance(exc, KeyError) else "")
        ) from None


def _pos_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(s)
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v) or v < 0:
        raise ValueError(s)
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise ValueError(s)
    return v


def _pool(s: str) -> bool:
    if s in ("spot", "on-demand"):
        return s == "spot"
    raise ValueError(s)


def _bool(s: str) -> bool:
    low = s.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no", ""):
        return False
    raise ValueError(s)


def load_nodes(path: Path) -> list[NodeSpec]:
    nodes: list[NodeSpec] = []
    for n, row in _rows(path, ("sn", "gpu", "model")):
        count = _field(path, n, row, "gpu", _nonneg_int, "a GPU count >= 0")
        if count == 0:
            continue
        mem = _field(path, n, row, "gpu_memory_gib", _pos_float, "memory in GiB > 0", -1.0)
        model = _field(path, n, row, "model", functools.partial(
            gpu_model, memory_gib=None if mem < 0 else mem), "a known GPU model")
        spot = _field(path, n, row, "pool", _pool, "on-demand or spot", False)
        nodes.append(NodeSpec(row["sn"] or f"node-{n}", model, count, spot))
    if not nodes:
        raise InputError(f"{path.name}: no node with a GPU")
    return nodes


def load_jobs(path: Path, table: ThroughputTable) -> list[JobEvent]:
    out: list[JobEvent] = []
    required = ("name", "model", "demand_rps", "latency_slo_ms", "memory_gib", "arrival_s",
                "duration_s")
    for n, row in _rows(path, required):
        def model_name(s: str) -> str:
            if s not in table.models:
                raise ValueError(s)
            return s

        allowed_raw = row.get("allowed_gpus", "")
        allowed = None
        if allowed_raw:
            allowed = frozenset(
                _field(path, n, {"allowed_gpus": a}, "allowed_gpus",
                       lambda s: gpu_model(s).name, "GPU models separated by |")
                for a in allowed_raw.split("|")
            )
        job = Job(
            id=row["name"] or f"job-{n}",
            model=_field(path, n, row, "model", model_name,
                         f"a profiled model ({', '.join(sorted(table.models))})"),
            demand_rps=_field(path, n, row, "demand_rps", _pos_float, "requests/s > 0"),
            latency_slo_ms=_field(path, n, row, "latency_slo_ms", _pos_float, "ms > 0"),
            memory_gib=_field(path, n, row, "memory_gib", _pos_float, "GiB > 0"),
            tenant=row.get("tenant") or "default",
            dedicated_gpu=_field(path, n, row, "dedicated_gpu", _bool, "true or false", False),
            allowed_gpus=allowed,
            priority=_field(path, n, row, "priority", _nonneg_int, "an integer >= 0", 0),
            max_batch=_field(path, n, row, "max_batch", _pos_int, "an integer >= 1", 256),
            spot_tolerant=_field(path, n, row, "spot_tolerant", _bool, "true or false", False),
        )
        out.append(JobEvent(
            job,
            _field(path, n, row, "arrival_s", _nonneg_float, "seconds >= 0"),
            _field(path, n, row, "duration_s", _pos_float, "seconds > 0"),
        ))
    return out


def _pos_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise ValueError(s)
    return v


def default_nodes_path() -> Path:
    return Path(str(resources.files("conspirator.operator.simulator").joinpath(
        "data/mig_nodes_default.csv")))


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """The documented default MIG workload (docs/mig-track.md)."""

    jobs: int = 400
    horizon_s: float = 24 * 3600.0
    mean_duration_s: float = 4 * 3600.0
    median_demand_rps: float = 1000.0
    demand_sigma: float = 1.0
    dedicated_share: float = 0.1
    tenants: int = 6
    spot_tolerant_share: float = 0.3
    """Jobs that may run on spot nodes (drawn from a second seeded stream, so the other
    attributes are those of the workload without it)."""


SLO_CHOICES_MS = (10.0, 25.0, 50.0, 100.0)
MEMORY_CHOICES_GIB = (4.0, 8.0, 12.0, 16.0, 30.0)


def generate_jobs(seed: int, table: ThroughputTable, spec: WorkloadSpec | None = None
                  ) -> list[JobEvent]:
    """Poisson arrivals, exponential durations, log-normal demand; seeded."""
    spec = spec or WorkloadSpec()
    rng = random.Random(seed)
    spot_rng = random.Random(seed + 7_000_003)
    models = sorted(table.models)
    out: list[JobEvent] = []
    t = 0.0
    rate = spec.jobs / spec.horizon_s
    for i in range(spec.jobs):
        t += rng.expovariate(rate)
        job = Job(
            id=f"job-{seed}-{i:04d}",
            model=rng.choice(models),
            demand_rps=round(rng.lognormvariate(math.log(spec.median_demand_rps),
                                                spec.demand_sigma), 1),
            latency_slo_ms=rng.choice(SLO_CHOICES_MS),
            memory_gib=rng.choice(MEMORY_CHOICES_GIB),
            tenant=f"tenant-{rng.randrange(spec.tenants)}",
            dedicated_gpu=rng.random() < spec.dedicated_share,
            priority=rng.choice((0, 0, 0, 1)),
            spot_tolerant=spot_rng.random() < spec.spot_tolerant_share,
        )
        out.append(JobEvent(job, round(t, 1), round(rng.expovariate(1 / spec.mean_duration_s), 1)))
    return out
