"""The pydantic models: defaults, wire names, strictness, and the examples."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from conspirator.api import API_VERSION, GPUNode, InferenceJob, ModelProfile, load
from conspirator.api.v1alpha1 import (
    ClientEndpoint,
    Condition,
    ConditionStatus,
    DType,
    GPUModel,
    InferenceJobStatus,
    JobPhase,
    ReplicaStatus,
    profile_summary,
    set_condition,
)

from .helpers import EXAMPLES, load_yaml

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def _job(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "resnet50", "image": "conspirator/worker:0.1.0"},
        "demand": {"requestsPerSecond": 100, "p99LatencyMs": 50, "gpuMemoryGiB": 4},
        "dataPath": {"inputShape": [3, 224, 224]},
    }
    base.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceJob",
        "metadata": {"name": "j"},
        "spec": base,
    }


def test_examples_exist() -> None:
    kinds = {load_yaml(p)["kind"] for p in EXAMPLE_FILES}
    assert kinds == {"InferenceJob", "GPUNode", "ModelProfile"}
    assert len(EXAMPLE_FILES) >= 4


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_parses(path: Path) -> None:
    obj = load(load_yaml(path))
    again = type(obj).model_validate(obj.to_k8s())
    assert again == obj, "to_k8s() must round-trip"


def test_resnet_example() -> None:
    job = load(load_yaml(EXAMPLES / "inferencejob-resnet50.yaml"))
    assert isinstance(job, InferenceJob)
    assert job.spec.model.name == "resnet50"
    assert job.spec.demand.requests_per_second == 2000
    assert job.spec.data_path.dtype is DType.FLOAT16


def test_dedicated_example() -> None:
    job = load(load_yaml(EXAMPLES / "inferencejob-bert-dedicated.yaml"))
    assert isinstance(job, InferenceJob)
    assert job.spec.isolation.dedicated_gpu is True
    assert job.spec.allowed_accelerators == [GPUModel.A100_80GB, GPUModel.H100_80GB]
    assert job.tenant == "team-a"
    assert job.spec.migration.disruption_budget == 2


def test_defaults() -> None:
    job = InferenceJob.model_validate(_job())
    spec = job.spec
    assert spec.tenant is None
    assert spec.priority == 0
    assert spec.isolation.dedicated_gpu is False
    assert spec.migration.allowed is True and spec.migration.disruption_budget is None
    assert spec.allowed_accelerators is None
    assert spec.data_path.dtype is DType.FLOAT32 and spec.data_path.max_batch == 32
    assert spec.model.args == []
    assert job.status is None


def test_tenant_defaults_to_namespace() -> None:
    obj = _job()
    assert InferenceJob.model_validate(obj).tenant == "default"
    obj["metadata"]["namespace"] = "team-b"
    assert InferenceJob.model_validate(obj).tenant == "team-b"
    obj["spec"]["tenant"] = "team-c"
    assert InferenceJob.model_validate(obj).tenant == "team-c"


def test_wire_names_are_camel_case() -> None:
    job = InferenceJob.model_validate(_job(isolation={"dedicatedGPU": True}))
    wire = job.to_k8s()
    assert wire["apiVersion"] == API_VERSION
    assert wire["spec"]["demand"] == {
        "requestsPerSecond": 100.0,
        "p99LatencyMs": 50.0,
        "gpuMemoryGiB": 4.0,
    }
    assert wire["spec"]["isolation"] == {"dedicatedGPU": True}
    assert "tenant" not in wire["spec"], "unset optional fields are absent, not null"
    assert wire["spec"]["dataPath"]["maxBatch"] == 32


def test_python_names_are_accepted_too() -> None:
    job = InferenceJob(
        spec={  # type: ignore[arg-type]
            "model": {"name": "m", "image": "i"},
            "demand": {"requests_per_second": 1, "p99_latency_ms": 2, "gpu_memory_gib": 3},
            "data_path": {"input_shape": [1]},
        }
    )
    assert job.spec.demand.gpu_memory_gib == 3


def test_status_round_trip() -> None:
    status = InferenceJobStatus(
        phase=JobPhase.RUNNING,
        replicas=[
            ReplicaStatus(
                node="n0",
                gpuUUID="GPU-1",
                gpu_model="A100-80GB",
                mig_profile="3g.40gb",
                start_slice=4,
                deviceID="MIG-1",
            )
        ],
        replica_count=1,
        profiles="1x3g.40gb",
        estimated_throughput=1600.0,
        demand=1500.0,
        conditions=[
            Condition(
                type="Placed",
                status=ConditionStatus.TRUE,
                reason="Placed",
                message="",
                last_transition_time="2025-01-01T00:00:00Z",  # type: ignore[arg-type]
            )
        ],
        observed_generation=3,
        client_endpoint="192.0.2.1:7400",
    )
    wire = status.to_k8s()
    assert wire["replicas"][0] == {
        "node": "n0",
        "gpuUUID": "GPU-1",
        "gpuModel": "A100-80GB",
        "migProfile": "3g.40gb",
        "startSlice": 4,
        "deviceID": "MIG-1",
    }
    assert wire["conditions"][0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert wire["phase"] == "Running"
    assert InferenceJobStatus.model_validate(wire) == status


def test_data_path_status_fields() -> None:
    status = InferenceJobStatus(
        client_endpoint="10.0.0.2:7470",
        client_endpoints=[
            ClientEndpoint(node="n1", endpoint="10.0.0.2:7470", replicas=2, throughput=1800.0,
                           connected=True),
            ClientEndpoint(node="n0", endpoint="10.0.0.1:7470", replicas=1),
        ],
        token_secret="resnet50-conspirator-token",
    )
    wire = status.to_k8s()
    assert wire["tokenSecret"] == "resnet50-conspirator-token"
    assert wire["clientEndpoints"][0] == {"node": "n1", "endpoint": "10.0.0.2:7470",
                                          "replicas": 2, "throughput": 1800.0,
                                          "connected": True}
    assert wire["clientEndpoints"][1] == {"node": "n0", "endpoint": "10.0.0.1:7470",
                                          "replicas": 1, "connected": False}
    assert InferenceJobStatus.model_validate(wire) == status
    assert InferenceJobStatus().to_k8s().get("clientEndpoints") == []
    with pytest.raises(ValidationError):
        ClientEndpoint.model_validate({"node": "n0", "endpoint": "", "replicas": 1})
    with pytest.raises(ValidationError):
        ClientEndpoint.model_validate({"node": "n0", "endpoint": "a:1", "replicas": -1})


@pytest.mark.parametrize(
    "patch",
    [
        {"priority": "5"},
        {"priority": 1.5},
        {"priority": True},
        {"isolation": {"dedicatedGPU": 1}},
        {"isolation": {"dedicatedGPU": "true"}},
        {"demand": {"requestsPerSecond": "100", "p99LatencyMs": 50, "gpuMemoryGiB": 4}},
        {"model": {"name": "resnet50", "image": 7}},
        {"unknownField": 1},
    ],
)
def test_types_are_strict(patch: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InferenceJob.model_validate(_job(**patch))


def test_load_refuses_other_kinds_and_versions() -> None:
    obj = _job()
    with pytest.raises(ValueError, match="apiVersion"):
        load({**obj, "apiVersion": "conspirator.io/v1"})
    with pytest.raises(ValueError, match="unknown kind"):
        load({**obj, "kind": "Pod"})


def test_gpunode_and_modelprofile_types() -> None:
    node = load(load_yaml(EXAMPLES / "gpunode.yaml"))
    assert isinstance(node, GPUNode)
    assert node.status is not None and node.status.dpu is not None
    assert [g.index for g in node.spec.gpus] == [0, 1]
    assert node.status.gpus[0].instances[0].in_use is True
    profile = load(load_yaml(EXAMPLES / "modelprofile-resnet50.yaml"))
    assert isinstance(profile, ModelProfile)
    assert profile.spec.model == "resnet50"
    assert len({e.key for e in profile.spec.entries}) == len(profile.spec.entries)


def test_gpunode_spec_defaults_to_empty() -> None:
    node = GPUNode.model_validate(
        {"apiVersion": API_VERSION, "kind": "GPUNode", "metadata": {"name": "n"}}
    )
    assert node.spec.gpus == []


def test_profile_summary() -> None:
    def rep(profile: str) -> ReplicaStatus:
        return ReplicaStatus(node="n", gpu_model="A100-80GB", mig_profile=profile)

    assert profile_summary([]) == ""
    reps = [rep("1g.10gb"), rep("3g.40gb"), rep("3g.40gb")]
    assert profile_summary(reps) == "2x3g.40gb,1x1g.10gb"


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=5)
    conds: list[Condition] = []
    assert set_condition(conds, "Placed", ConditionStatus.FALSE, "NoCapacity", now=t0)
    assert not set_condition(conds, "Placed", ConditionStatus.FALSE, "NoCapacity", now=t1)
    assert set_condition(conds, "Placed", ConditionStatus.FALSE, "Waiting", "msg", now=t1)
    assert conds[0].last_transition_time == t0 and conds[0].reason == "Waiting"
    assert set_condition(conds, "Placed", ConditionStatus.TRUE, "Placed", now=t1)
    assert conds[0].last_transition_time == t1
    assert set_condition(conds, "Ready", ConditionStatus.UNKNOWN, "Starting", now=t1)
    assert [c.type for c in conds] == ["Placed", "Ready"]


def test_api_imports_no_component() -> None:
    code = (
        "import sys, conspirator.api, conspirator.api.crdgen, conspirator.api.docgen\n"
        "bad = [m for m in sys.modules if m.startswith(('conspirator.operator',"
        " 'conspirator.deviceplugin', 'conspirator.dpu_agent'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=EXAMPLES.parent)


def test_input_buffer_bound_is_the_largest_gpus_memory() -> None:
    """Exactly 141 GiB of input buffer is accepted; twice that (maxBatch 2) is refused."""
    from conspirator.api.v1alpha1.inferencejob import (
        MAX_INPUT_BUFFER_BYTES,
        DataPath,
        input_buffer_bytes,
    )

    shape = [1 << 20, 141 << 10]
    ok = DataPath.model_validate({"inputShape": shape, "dtype": "uint8", "maxBatch": 1})
    assert input_buffer_bytes(ok.input_shape, ok.dtype, ok.max_batch) == MAX_INPUT_BUFFER_BYTES
    with pytest.raises(ValidationError, match="exceeds 141 GiB"):
        DataPath.model_validate({"inputShape": shape, "dtype": "uint8", "maxBatch": 2})
    with pytest.raises(ValidationError, match="exceeds 141 GiB"):  # the default dtype: float32
        DataPath.model_validate({"inputShape": shape})


@pytest.mark.parametrize("layout", [
    [("3g.40gb", 0), ("2g.20gb", 2)],
    [("3g.40gb", 4), ("1g.10gb", 6)],
    [("2g.20gb", 0), ("1g.10gb", 1)],
    [("4g.40gb", 0), ("2g.20gb", 2)],
])
def test_overlapping_instances_are_refused(layout: list[tuple[str, int]]) -> None:
    gpu = {"index": 0, "instances": [{"profile": p, "start": s} for p, s in layout]}
    with pytest.raises(ValidationError, match="two instances overlap"):
        GPUNode.model_validate({"spec": {"gpus": [gpu]}})


def test_adjacent_instances_are_accepted() -> None:
    layout = [("4g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)]
    gpu = {"index": 0, "instances": [{"profile": p, "start": s} for p, s in layout]}
    GPUNode.model_validate({"spec": {"gpus": [gpu]}})
