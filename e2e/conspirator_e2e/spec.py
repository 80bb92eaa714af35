"""The cluster spec: the simulated GPU nodes kwok runs (e2e/clusters/*.yaml)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conspirator_e2e.constants import (
    GPU_TAINT_KEY,
    KWOK_ANNOTATION,
    MIG_PROFILES,
    MIG_RESOURCE_PREFIX,
)
from conspirator_e2e.procs import ClusterError

# --------------------------------------------------------------------------------------------
# Cluster spec (simulated GPU nodes)


@dataclass(frozen=True)
class GPUNodeSpec:
    name: str
    gpu_model: str
    gpus: tuple[tuple[str, ...], ...]
    cpu: str
    memory: str

    def mig_capacity(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layout in self.gpus:
            for profile in layout:
                counts[profile] = counts.get(profile, 0) + 1
        return dict(sorted(counts.items()))

    def node_object(self) -> dict[str, Any]:
        capacity: dict[str, str] = {"cpu": self.cpu, "memory": self.memory, "pods": "110"}
        for profile, n in self.mig_capacity().items():
            capacity[MIG_RESOURCE_PREFIX + profile] = str(n)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "conspirator.io/simulated": "true",
                    "conspirator.io/gpu-model": self.gpu_model,
                    "conspirator.io/gpu-count": str(len(self.gpus)),
                },
                "annotations": {
                    KWOK_ANNOTATION: "fake",
                    "conspirator.io/mig-layout": json.dumps([list(g) for g in self.gpus]),
                },
            },
            "spec": {
                "taints": [{"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            },
            "status": {"capacity": capacity, "allocatable": dict(capacity)},
        }


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    real_node: str
    gpu_nodes: tuple[GPUNodeSpec, ...]

    @classmethod
    def load(cls, path: Path) -> ClusterSpec:
        doc = yaml.safe_load(path.read_text()) or {}
        nodes: list[GPUNodeSpec] = []
        for group in doc.get("nodeGroups", []):
            model = str(group["gpuModel"])
            if model not in MIG_PROFILES:
                raise ClusterError(f"{path}: unknown gpuModel {model!r}")
            gpus = tuple(tuple(str(p) for p in layout) for layout in group.get("gpus", []))
            for i, layout in enumerate(gpus):
                _check_layout(model, layout, f"{path}: {group['namePrefix']} gpu {i}")
            for i in range(int(group.get("count", 1))):
                nodes.append(
                    GPUNodeSpec(
                        name=f"{group['namePrefix']}-{i}",
                        gpu_model=model,
                        gpus=gpus,
                        cpu=str(group.get("cpu", "32")),
                        memory=str(group.get("memory", "256Gi")),
                    )
                )
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ClusterError(f"{path}: duplicate node names")
        real = str((doc.get("realNode") or {}).get("name", "conspirator-e2e-node"))
        return cls(name=str(doc.get("name", path.stem)), real_node=real, gpu_nodes=tuple(nodes))


def _check_layout(model: str, layout: Sequence[str], where: str) -> None:
    table = MIG_PROFILES[model]
    unknown = [p for p in layout if p not in table]
    if unknown:
        raise ClusterError(f"{where}: {model} has no MIG profile {unknown}")
    mem = sum(table[p][0] for p in layout)
    sms = sum(table[p][1] for p in layout)
    if mem > 8 or sms > 7:
        raise ClusterError(
            f"{where}: layout {list(layout)} needs {mem}/8 memory and {sms}/7 compute slices"
        )
