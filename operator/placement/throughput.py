"""Throughput and latency of a model per (GPU model, MIG profile, batch size).

The engine reads a :class:`ThroughputTable`: rows of measured (or derived)
throughput and p99 latency.  The operator builds it from ModelProfile objects;
the simulator and tests use :func:`default_table`, derived as documented in
``docs/throughput-model.md``:

* per-model peak throughput on a V100 (declared reference figures);
* GPU-model speed relative to the V100: from Gavel's measured matrix for P100
  and K80 (per model, so non-uniform heterogeneity is kept), declared factors
  for newer GPUs;
* batch saturation ``b / (b + b_half)``;
* MIG scaling by compute share, interpolated in log(batch) between MIGPerf's
  batch-1 and batch-256 figures for A100;
* p99 latency of a batch = 2 x its service time (batching wait + service).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from conspirator.operator.placement.gpus import WHOLE, GpuModel, MigProfile, catalog
from conspirator.operator.placement.jobs import Job

BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    model: str
    gpu_model: str
    profile: str
    batch: int
    throughput_rps: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class ReplicaOption:
    """What one replica of a job achieves on one (GPU model, profile)."""

    gpu_model: str
    profile: MigProfile
    throughput_rps: float
    batch: int
    latency_ms: float


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class ThroughputTable:
    """Index over :class:`ThroughputRow` with SLO-aware lookups."""

    def __init__(self, rows: Iterable[ThroughputRow]) -> None:
        self._rows: dict[tuple[str, str, str], list[ThroughputRow]] = {}
        for r in rows:
            if r.throughput_rps <= 0 or r.latency_ms <= 0 or r.batch < 1:
                raise ValueError(f"invalid throughput row {r}")
            self._rows.setdefault((r.model, r.gpu_model, r.profile), []).append(r)
        for lst in self._rows.values():
            lst.sort(key=lambda r: r.batch)
        self._models = frozenset(k[0] for k in self._rows)
        self._cache: dict[tuple[str, float, int, str, str], ReplicaOption | None] = {}

    @property
    def models(self) -> frozenset[str]:
        return self._models

    def __iter__(self) -> Iterator[ThroughputRow]:
        for lst in self._rows.values():
            yield from lst

    def best(self, job: Job, gpu: GpuModel, profile: MigProfile) -> ReplicaOption | None:
        """Highest throughput of one replica of ``job`` on ``profile`` of ``gpu``.

        ``None`` when the profile lacks the memory, the GPU model is not allowed,
        or no batch size meets the latency SLO.
        """
        if job.model not in self._models:
            raise UnknownModelError(
                f"model {job.model!r} has no throughput profile; known: {sorted(self._models)}"
            )
        if not job.allows(gpu.name) or profile.memory_gib < job.memory_gib:
            return None
        key = (job.model, job.latency_slo_ms, job.max_batch, gpu.name, profile.name)
        if key in self._cache:
            return self._cache[key]
        best: ReplicaOption | None = None
        for r in self._rows.get((job.model, gpu.name, profile.name), ()):
            if r.batch > job.max_batch or r.latency_ms > job.latency_slo_ms:
                continue
            if best is None or r.throughput_rps > best.throughput_rps:
                best = ReplicaOption(gpu.name, profile, r.throughput_rps, r.batch, r.latency_ms)
        self._cache[key] = best
        return best

    def options(self, job: Job, gpus: Iterable[GpuModel]) -> list[ReplicaOption]:
        """Every feasible (GPU model, profile) for one replica of ``job``."""
        out: list[ReplicaOption] = []
        for g in gpus:
            for p in g.planning_profiles:
                opt = self.best(job, g, p)
                if opt is not None:
                    out.append(opt)
        return out


# --- the default table -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReferenceModel:
    """Declared reference figures of one servable model (see docs/throughput-model.md)."""

    name: str
    v100_peak_rps: float  # throughput on a whole V100 at large batch
    b_half: float  # batch at which throughput reaches half its peak
    gavel_job: str  # Gavel job type whose P100/K80 vs V100 ratios we borrow
    small_batch_mig: bool  # True: small batches lose little on small slices (MIGPerf)
    gavel_ratios: tuple[float, float] = (1.0, 1.0)  # (P100/V100, K80/V100), from Gavel


# Gavel isolated throughputs (steps/s, scale factor 1; shared/data/gavel):
#   ResNet-50 bs64: K80 0.62, P100 2.62, V100 4.39
#   ResNet-18 bs64: K80 4.85, P100 17.77, V100 20.99  (cifar)
#   Transformer bs128: K80 0.98, P100 3.07, V100 5.45
#   Recommendation bs1024: K80 20.05, P100 30.74, V100 13.28
#   LM bs20: K80 2.19, P100 6.72, V100 8.61
REFERENCE_MODELS: tuple[ReferenceModel, ...] = (
    ReferenceModel("resnet50", 1300.0, 3.0, "ResNet-50 (batch size 64)", True,
                   (2.62 / 4.39, 0.62 / 4.39)),
    ReferenceModel("resnet18", 3600.0, 2.0, "ResNet-18 (batch size 64)", True,
                   (17.77 / 20.99, 4.85 / 20.99)),
    ReferenceModel("bert-base", 600.0, 2.0, "Transformer (batch size 128)", True,
                   (3.07 / 5.45, 0.98 / 5.45)),
    ReferenceModel("transformer", 450.0, 4.0, "Transformer (batch size 128)", True,
                   (3.07 / 5.45, 0.98 / 5.45)),
    ReferenceModel("recommendation", 20000.0, 32.0, "Recommendation (batch size 1024)", False,
                   (30.74 / 13.28, 20.05 / 13.28)),
    ReferenceModel("lm", 900.0, 4.0, "LM (batch size 20)", True, (6.72 / 8.61, 2.19 / 8.61)),
)

# Speed of each GPU model relative to a V100 for models without Gavel figures
# (declared from vendor-published inference ratios; see docs/throughput-model.md).
RELATIVE_SPEED: dict[str, float] = {
    "V100M16": 1.0,
    "V100M32": 1.0,
    "T4": 0.45,
    "A10": 0.8,
    "L4": 0.9,
    "A30-24GB": 1.15,
    "A100-40GB": 2.0,
    "A100-80GB": 2.1,
    "H100-80GB": 3.4,
    "H100-94GB": 3.6,
    "H200-141GB": 3.9,
    "G1": 1.0,
    "G2": 1.0,
    "G3": 1.0,
}

# MIGPerf (arXiv 2301.00407), A100, throughput of a slice relative to the full GPU,
# by compute slices out of 7.  4g is interpolated (4/7 of SMs at large batch).
MIG_LARGE_BATCH: dict[int, float] = {1: 0.137, 2: 0.273, 3: 0.482, 4: 0.56, 7: 1.0}
MIG_SMALL_BATCH: dict[int, float] = {1: 0.66, 2: 0.89, 3: 1.0, 4: 1.0, 7: 1.0}


def _interp_share(table: dict[int, float], share: float) -> float:
    """Value of ``table`` (keyed by compute slices of 7) at compute share ``share``."""
    xs = sorted(table)
    x = share * 7
    if x <= xs[0]:
        return table[xs[0]] * x / xs[0]
    for lo, hi in itertools.pairwise(xs):
        if lo <= x <= hi:
            t = (x - lo) / (hi - lo)
            return table[lo] + t * (table[hi] - table[lo])
    return table[xs[-1]]


def mig_factor(ref: ReferenceModel, compute_share: float, batch: int) -> float:
    """Throughput of a slice with ``compute_share`` of the SMs, relative to the full GPU."""
    large = _interp_share(MIG_LARGE_BATCH, compute_share)
    small = _interp_share(MIG_SMALL_BATCH, compute_share) if ref.small_batch_mig else large
    t = math.log(batch) / math.log(256)
    return small + min(1.0, t) * (large - small)


def _speed(ref: ReferenceModel, gpu: str) -> float:
    if gpu == "P100":
        return ref.gavel_ratios[0]
    if gpu == "K80":
        return ref.gavel_ratios[1]
    return RELATIVE_SPEED[gpu]


def _rows_for(ref: ReferenceModel, gpu: GpuModel) -> Iterator[ThroughputRow]:
    profiles: tuple[MigProfile, ...] = gpu.profiles if gpu.mig_capable else (gpu.whole,)
    for prof in profiles:
        share = prof.compute_slices / gpu.compute if gpu.mig_capable else 1.0
        for b in BATCHES:
            full = ref.v100_peak_rps * _speed(ref, gpu.name) * b / (b + ref.b_half)
            thr = full * mig_factor(ref, share, b)
            latency = 2.0 * b / thr * 1000.0
            yield ThroughputRow(ref.name, gpu.name, prof.name, b, round(thr, 3),
                                round(latency, 3))


@cache
def default_table() -> ThroughputTable:
    """The derived default table over every reference model and every known GPU model."""
    rows: list[ThroughputRow] = []
    for ref in REFERENCE_MODELS:
        for gpu in catalog().values():
            rows.extend(_rows_for(ref, gpu))
    return ThroughputTable(rows)


__all__ = [
    "BATCHES",
    "REFERENCE_MODELS",
    "WHOLE",
    "ReplicaOption",
    "ThroughputRow",
    "ThroughputTable",
    "UnknownModelError",
    "default_table",
]
