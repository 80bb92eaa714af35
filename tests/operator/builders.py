"""API objects for the operator's unit tests, as the API server would send them."""

from __future__ import annotations

from typing import Any

from conspirator.operator.views import JobView, NodeView, ProfileView

API = "conspirator.io/v1alpha1"


def job_body(name: str, rps: float = 1000, *, namespace: str = "ns", model: str = "resnet50",
             p99: float = 50, memory: float = 4, max_batch: int = 8, uid: str | None = None,
             generation: int = 1, created: str = "2026-01-01T00:00:00Z",
             status: dict[str, Any] | None = None, deleting: bool = False,
             **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}",
                            "generation": generation, "creationTimestamp": created,
                            "resourceVersion": "1"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    body: dict[str, Any] = {
        "apiVersion": API, "kind": "InferenceJob", "metadata": meta,
        "spec": {
            "model": {"name": model, "image": "conspirator/worker:0.1.0", "args": ["--x"]},
            "demand": {"requestsPerSecond": rps, "p99LatencyMs": p99, "gpuMemoryGiB": memory},
            "dataPath": {"inputShape": [3, 224, 224], "dtype": "float16", "maxBatch": max_batch},
            "isolation": {"dedicatedGPU": False}, "priority": 0,
            "migration": {"allowed": True},
            **spec,
        },
    }
    if status is not None:
        body["status"] = status
    return body


def job(name: str, rps: float = 1000, **kw: Any) -> JobView:
    return JobView.from_body(job_body(name, rps, **kw))


def node(name: str, model: str = "A100-80GB", gpus: int = 2,
         instances: dict[int, list[tuple[str, int]]] | None = None,
         in_use: set[tuple[int, str, int]] | None = None,
         spec: dict[str, Any] | None = None, memory: float = 80,
         agent: str | None = None, dpu_ready: bool | None = None,
         dpu_reason: str | None = None) -> NodeView:
    """A GPUNode; ``agent`` (host:port) and ``dpu_ready`` (the DPUReady condition) play
    what the node daemon reports of the node's DPU agent."""
    mig = model not in ("T4", "A10", "L4", "V100M16", "V100M32", "P100")
    body: dict[str, Any] = {
        "apiVersion": API, "kind": "GPUNode",
        "metadata": {"name": name, "generation": 1, "resourceVersion": "1"},
        "spec": spec or {},
        "status": {"gpus": [
            {"index": i, "uuid": f"GPU-{name}-{i}", "model": model, "memoryGiB": memory,
             "migCapable": mig, "migEnabled": mig,
             "instances": [{"profile": p, "start": s, "uuid": f"MIG-{name}-{i}-{s}",
                            "inUse": (i, p, s) in (in_use or set())}
                           for p, s in (instances or {}).get(i, [])]}
            for i in range(gpus)]},
    }
    if agent is not None:
        body["status"]["dpu"] = {"present": True, "model": "BlueField-2", "agentEndpoint": agent}
    if dpu_ready is not None:
        body["status"]["conditions"] = [{
            "type": "DPUReady", "status": "True" if dpu_ready else "False",
            "reason": dpu_reason or ("AgentConnected" if dpu_ready else "AgentNotConnected"),
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    return NodeView.from_body(body)


def profile(name: str, model: str, entries: list[tuple[str, str, int, float, float]],
            observed: list[tuple[str, str, int, float, float]] | None = None) -> ProfileView:
    body: dict[str, Any] = {
        "apiVersion": API, "kind": "ModelProfile",
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {"model": model, "entries": [
            {"gpuModel": g, "migProfile": p, "batchSize": b, "throughput": t, "p99LatencyMs": lat}
            for g, p, b, t, lat in entries]},
    }
    if observed:
        body["status"] = {"observed": [
            {"gpuModel": g, "migProfile": p, "batchSize": b, "throughput": t, "p99LatencyMs": lat}
            for g, p, b, t, lat in observed]}
    return ProfileView.from_body(body)


RESNET = profile("resnet50", "resnet50", [
    ("A100-80GB", "1g.10gb", 8, 900.0, 17.0),
    ("A100-80GB", "3g.40gb", 8, 1600.0, 10.0),
    ("A100-80GB", "7g.80gb", 8, 2000.0, 8.0),
    ("H100-80GB", "1g.10gb", 8, 1500.0, 11.0),
    ("T4", "whole", 8, 425.0, 37.6),
])
