"""An in-memory API server side for daemon unit tests (the e2e tests use the real one)."""

from __future__ import annotations

from typing import Any

from conspirator.api.v1alpha1 import GPUNode, GPUNodeSpec, GPUNodeStatus
from conspirator.deviceplugin.kube import NodeAPI, PodInfo


class FakeNodeAPI(NodeAPI):
    def __init__(self, node: str = "node-1") -> None:
        self.node = GPUNode.model_validate({"metadata": {"name": node, "generation": 1}})
        self.statuses: list[GPUNodeStatus] = []
        self.events: list[tuple[str, str, str]] = []
        self.pod_list: list[PodInfo] = []
        self.capacity: dict[str, tuple[int, int]] = {}
        self.capacity_writes = 0

    def set_spec(self, gpus: list[dict[str, Any]]) -> None:
        self.node.spec = GPUNodeSpec.model_validate({"gpus": gpus})
        self.node.metadata.generation = (self.node.metadata.generation or 0) + 1

    def read(self) -> GPUNode:
        return self.node.model_copy(deep=True)

    def write_status(self, status: GPUNodeStatus) -> None:
        # What the API server stores is what it validates: round-trip through the schema.
        stored = GPUNodeStatus.model_validate(status.to_k8s())
        self.node.status = stored
        self.statuses.append(stored)

    @property
    def status(self) -> GPUNodeStatus:
        assert self.node.status is not None
        return self.node.status

    def condition(self, type_: str) -> tuple[str, str, str]:
        for c in self.status.conditions:
            if c.type == type_:
                return (c.status.value, c.reason, c.message)
        raise KeyError(type_)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def pods(self) -> list[PodInfo]:
        return list(self.pod_list)

    def annotate_pod(self, pod: PodInfo, key: str, value: str) -> None:
        for i, p in enumerate(self.pod_list):
            if p.uid == pod.uid:
                self.pod_list[i] = PodInfo(uid=p.uid, namespace=p.namespace, name=p.name,
                                           phase=p.phase, deleting=p.deleting,
                                           requests=p.requests,
                                           annotations={**p.annotations, key: value},
                                           labels=p.labels)

    def set_capacity(self, counts: dict[str, tuple[int, int]]) -> None:
        self.capacity = dict(counts)
        self.capacity_writes += 1
