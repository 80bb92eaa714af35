"""Loading the node and pod lists of the Alibaba GPU trace v2023 (FGD's "openb").

Node lists have the columns ``sn, cpu_milli, memory_mib, gpu, model``; pod
lists ``name, cpu_milli, memory_mib, num_gpu, gpu_milli`` and optionally
``gpu_spec`` (allowed models separated by ``|``; empty: any), further columns
being ignored.  Bad input raises :class:`TraceError` naming the file, the row
(the line of the file; the header is row 1) and the field, e.g.
``openb_pod_list_x.csv row 17, field gpu_milli: expected an integer 0..1000, got 'abc'``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path

from conspirator.operator.placement.fractional.model import (
    KNOWN_GPU_MODELS,
    MILLI,
    NodeSpec,
    PodSpec,
)

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


class TraceError(ValueError):
    """A trace file that cannot be used, with the place of the problem."""


class _Row:
    """One CSV row with its location, for error messages."""

    def __init__(self, path: Path, line: int, values: Mapping[str, str | None]) -> None:
        self.path = path
        self.line = line
        self.values = values

    def error(self, field: str, message: str) -> TraceError:
        return TraceError(f"{self.path.name} row {self.line}, field {field}: {message}")

    def text(self, field: str) -> str:
        value = self.values.get(field)
        return "" if value is None else value.strip()

    def integer(self, field: str, low: int, high: int | None = None) -> int:
        raw = self.text(field)
        expected = f"{low}..{high}" if high is not None else f">= {low}"
        try:
            value = int(raw)
        except ValueError:
            raise self.error(field, f"expected an integer {expected}, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            raise self.error(field, f"expected an integer {expected}, got {raw!r}")
        return value

    def model(self, field: str, name: str) -> str:
        if name not in KNOWN_GPU_MODELS:
            known = ", ".join(sorted(KNOWN_GPU_MODELS))
            raise self.error(field, f"unknown GPU model {name!r} (known: {known})")
        return name


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[_Row]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        if header is None:
            raise TraceError(f"{path.name}: empty file, expected a header row")
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(f"{path.name} row 1: missing column(s) {', '.join(missing)}")
        for values in reader:
            if None in values:
                raise TraceError(f"{path.name} row {reader.line_num}: more fields than columns")
            yield _Row(path, reader.line_num, values)


def load_nodes(path: Path) -> list[NodeSpec]:
    """The node list at ``path``; every node starts empty."""
    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    for row in _rows(path, NODE_COLUMNS):
        name = row.text("sn")
        if not name:
            raise row.error("sn", "empty node name")
        if name in seen:
            raise row.error("sn", f"duplicate node name {name!r}")
        seen.add(name)
        gpu = row.integer("gpu", 0)
        model_name = row.text("model")
        if gpu > 0 and not model_name:
            raise row.error("model", f"a node with {gpu} GPU(s) needs a GPU model")
        if gpu == 0 and model_name:
            raise row.error("model", f"GPU model {model_name!r} given for a node without GPUs")
        model = row.model("model", model_name) if gpu > 0 else None
        nodes.append(
            NodeSpec(name, row.integer("cpu_milli", 0), row.integer("memory_mib", 0), gpu, model)
        )
    if not nodes:
        raise TraceError(f"{path.name}: no nodes")
    return nodes


def load_pods(path: Path) -> list[PodSpec]:
    """The pod list at ``path``, in file order."""
    pods: list[PodSpec] = []
    for row in _rows(path, POD_COLUMNS):
        name = row.text("name")
        if not name:
            raise row.error("name", "empty pod name")
        cpu = row.integer("cpu_milli", 0)
        memory = row.integer("memory_mib", 0)
        num_gpu = row.integer("num_gpu", 0)
        milli = row.integer("gpu_milli", 0, MILLI)
        if num_gpu == 0 and milli != 0:
            raise row.error("gpu_milli", f"expected 0 for a pod with num_gpu 0, got {milli}")
        if num_gpu > 0 and milli == 0:
            raise row.error("gpu_milli", f"expected 1..{MILLI} for a pod with GPUs, got 0")
        if num_gpu > 1 and milli != MILLI:
            raise row.error(
                "gpu_milli",
                f"a pod with {num_gpu} GPUs must take whole GPUs ({MILLI}), got {milli}",
            )
        models = [m.strip() for m in row.text("gpu_spec").split("|") if m.strip()]
        spec = frozenset(row.model("gpu_spec", m) for m in models) if models else None
        pods.append(PodSpec(name, cpu, memory, num_gpu, milli, spec if num_gpu else None))
    if not pods:
        raise TraceError(f"{path.name}: no pods")
    return pods
