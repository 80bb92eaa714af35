"""API objects <-> placement engine: tables, jobs, cluster, restored reservations, layouts."""

from __future__ import annotations

from conspirator.api.v1alpha1 import GPUNodeSpec, ReplicaStatus
from conspirator.operator.placement.conspirator import ConspiratorPolicy
from conspirator.operator.placement.throughput import default_table
from conspirator.operator.translate import (
    BLOCKED_PREFIX,
    DEFAULTS_SOURCE,
    block_in_use,
    build_cluster,
    build_table,
    desired_spec,
    device_id,
    engine_job,
    layout_applied,
    layout_diff,
    place,
    restore,
    spec_key,
    unknown_model_message,
)
from conspirator.operator.views import Replica

from .builders import RESNET, job, node, profile

TABLE = build_table([RESNET]).table


def rs(n: str, i: int, p: str, s: int, model: str = "A100-80GB") -> ReplicaStatus:
    return ReplicaStatus(node=n, gpuUUID=f"GPU-{n}-{i}", gpu_model=model, mig_profile=p,
                         start_slice=s)


# --- throughput ------------------------------------------------------------------------

def test_a_model_profile_replaces_the_defaults_of_its_model_only() -> None:
    info = build_table([RESNET])
    assert info.sources["resnet50"] == "ModelProfile/resnet50"
    assert info.sources["bert-base"] == DEFAULTS_SOURCE
    rows = [r for r in info.table if r.model == "resnet50"]
    assert len(rows) == len(RESNET.profile.spec.entries)
    assert {r.model for r in info.table} >= {"resnet50", "bert-base", "resnet18"}


def test_observed_entries_override_the_spec_and_defaults_can_be_off() -> None:
    prof = profile("m", "my-model", [("A100-80GB", "1g.10gb", 8, 100.0, 5.0)],
                   observed=[("A100-80GB", "1g.10gb", 8, 250.0, 4.0)])
    info = build_table([prof], use_defaults=False)
    assert set(info.sources) == {"my-model"}
    (row,) = list(info.table)
    assert (row.throughput_rps, row.latency_ms) == (250.0, 4.0)
    assert not info.knows("resnet50")
    assert "my-model" in unknown_model_message("resnet50", info)


def test_a_second_profile_of_the_same_model_is_ignored_and_reported() -> None:
    other = profile("zz-resnet", "resnet50", [("T4", "whole", 1, 1.0, 1.0)])
    info = build_table([other, RESNET])
    assert info.sources["resnet50"] == "ModelProfile/resnet50"
    assert len(info.conflicts) == 1 and "zz-resnet" in info.conflicts[0]


# --- jobs and cluster ------------------------------------------------------------------

def test_engine_job_maps_the_spec_and_defaults_the_tenant_to_the_namespace() -> None:
    j = engine_job(job("a", 1200, namespace="team-x", p99=20, memory=8, max_batch=16,
                       allowedAccelerators=["A100-80GB", "H100-80GB"],
                       isolation={"dedicatedGPU": True}, priority=3))
    assert (j.id, j.model, j.demand_rps, j.latency_slo_ms, j.memory_gib) == (
        "team-x/a", "resnet50", 1200, 20, 8)
    assert (j.tenant, j.dedicated_gpu, j.priority, j.max_batch) == ("team-x", True, 3, 16)
    assert j.allowed_gpus == frozenset({"A100-80GB", "H100-80GB"})
    assert engine_job(job("b", tenant="acme")).tenant == "acme"
    assert engine_job(job("c")).allowed_gpus is None


def test_cluster_is_ordered_and_leaves_out_unknown_or_duplicate_gpus() -> None:
    bad = node("b", model="B200", gpus=1)
    c = build_cluster([node("z", gpus=1), bad, node("a", gpus=2), node("z", gpus=1)])
    assert [(g.node, g.index) for g in c.state.gpus] == [("a", 0), ("a", 1), ("z", 0)]
    assert len(c.skipped) == 2
    assert any("B200" in s for s in c.skipped) and any("already reported" in s for s in c.skipped)
    assert c.by_uuid["GPU-a-1"] == ("a", 1)


# --- restoring reservations -------------------------------------------------------------

def test_restore_keeps_valid_replicas_and_refuses_double_booking() -> None:
    c = build_cluster([node("a", gpus=1)])
    first, second = job("first", 800), job("second", 800)
    out = restore(c, [(engine_job(first), [rs("a", 0, "3g.40gb", 0)]),
                      (engine_job(second), [rs("a", 0, "1g.10gb", 2), rs("a", 0, "1g.10gb", 6)])],
                  TABLE)
    assert [r.slot for r in out.kept["ns/first"]] == [("a", 0, "3g.40gb", 0)]
    # 1g@2 lies inside 3g@0..3: the later job loses it, keeps 1g@6.
    assert [r.slot for r in out.kept["ns/second"]] == [("a", 0, "1g.10gb", 6)]
    assert len(out.dropped["ns/second"]) == 1 and "conflicts" in out.dropped["ns/second"][0]


def test_restore_drops_replicas_the_cluster_or_the_spec_no_longer_allows() -> None:
    c = build_cluster([node("a", gpus=1)])
    j = job("j", 3000, allowedAccelerators=["H100-80GB"])
    gone = ReplicaStatus(node="a", gpuUUID="GPU-vanished", gpu_model="A100-80GB",
                         mig_profile="1g.10gb", start_slice=0)
    out = restore(c, [(engine_job(j), [rs("a", 0, "1g.10gb", 6), gone])], TABLE)
    assert "ns/j" not in out.kept
    whys = " ".join(out.dropped["ns/j"])
    assert "allowed GPUs" in whys and "no longer in the node's inventory" in whys
    assert not c.state.gpus[0].instances


def test_restore_gives_back_replicas_a_smaller_demand_does_not_need() -> None:
    c = build_cluster([node("a", gpus=1)])
    j = job("j", 1000)  # 900 rps per 1g.10gb: two are needed, the third is surplus
    out = restore(c, [(engine_job(j), [rs("a", 0, "1g.10gb", s) for s in (4, 5, 6)])], TABLE)
    assert len(out.kept["ns/j"]) == 2 and out.trimmed["ns/j"] == 1


def test_instances_in_use_outside_reservations_are_not_planned_over() -> None:
    n = node("a", gpus=1, instances={0: [("7g.80gb", 0)]}, in_use={(0, "7g.80gb", 0)})
    c = build_cluster([n])
    assert block_in_use(c) == ["a GPU 0: 7g.80gb@0"]
    assert c.state.gpus[0].instances[0].job_id.startswith(BLOCKED_PREFIX)
    res = place(ConspiratorPolicy(), c, engine_job(job("j", 500)), TABLE)
    assert not res.ok and not res.replicas


# --- placing and layouts ----------------------------------------------------------------

def test_place_returns_replicas_with_the_inventory_uuids() -> None:
    nodes = [node("a", gpus=2), node("h", model="H100-80GB", gpus=1)]
    c = build_cluster(nodes)
    res = place(ConspiratorPolicy(), c, engine_job(job("j", 2000)), TABLE)
    assert res.ok and sum(r.throughput_rps for r in res.replicas) >= 2000
    assert all(r.gpu_uuid == f"GPU-{r.node}-{r.gpu_index}" for r in res.replicas)
    again = place(ConspiratorPolicy(), c, engine_job(job("k", 10**6)), TABLE)
    assert not again.ok and "insufficient capacity" in (again.reason or "")


def test_desired_spec_lists_every_mig_gpu_with_its_reserved_instances() -> None:
    n = node("a", gpus=2, spec={"gpus": [{"index": 9, "instances": [
        {"profile": "7g.80gb", "start": 0}]}]})
    reps = {"ns/x": [Replica("a", 1, "GPU-a-1", "A100-80GB", "1g.10gb", 6, 900.0),
                     Replica("b", 0, "GPU-b-0", "A100-80GB", "1g.10gb", 6, 900.0)],
            "ns/y": [Replica("a", 1, "GPU-a-1", "A100-80GB", "3g.40gb", 0, 1600.0)]}
    spec = desired_spec(n, reps)
    assert spec.to_k8s() == {"gpus": [
        {"index": 0, "uuid": "GPU-a-0", "migEnabled": True, "instances": []},
        {"index": 1, "uuid": "GPU-a-1", "migEnabled": True, "instances": [
            {"profile": "3g.40gb", "start": 0, "reservedFor": "ns/y"},
            {"profile": "1g.10gb", "start": 6, "reservedFor": "ns/x"}]},
        # GPU 9 is not in the inventory: its entry is someone else's and stays.
        {"index": 9, "migEnabled": True, "instances": [{"profile": "7g.80gb", "start": 0}]},
    ]}
    assert desired_spec(node("t", model="T4", gpus=2, memory=16), {}).gpus == []
    assert spec_key(spec) == spec_key(GPUNodeSpec.model_validate(spec.to_k8s()))
    # The same instances reserved for another job are another spec.
    swapped = desired_spec(n, {"ns/x": reps["ns/y"], "ns/y": reps["ns/x"]})
    assert spec_key(swapped) != spec_key(spec)


def test_desired_spec_reserves_a_whole_gpu_for_its_job() -> None:
    t4 = node("t", model="T4", gpus=2, memory=16)
    rep = Replica("t", 1, "GPU-t-1", "T4", "whole", 0, 300.0)
    spec = desired_spec(t4, {"ns/w": [rep]})
    assert spec.to_k8s() == {"gpus": [
        {"index": 1, "uuid": "GPU-t-1", "migEnabled": False, "instances": [],
         "reservedFor": "ns/w"}]}


def test_layout_diff_and_applied() -> None:
    n = node("a", gpus=1, instances={0: [("1g.10gb", s) for s in range(7)]})
    r = Replica("a", 0, "GPU-a-0", "A100-80GB", "3g.40gb", 0, 1600.0)
    spec = desired_spec(n, {"ns/j": [r]})
    (change,) = layout_diff(n, spec)
    assert change.create == (("3g.40gb", 0),)
    assert change.destroy == tuple(("1g.10gb", s) for s in range(7))
    assert "+3g.40gb@0" in change.describe()
    assert not layout_applied(n, [r]) and device_id(n, r) is None
    done = node("a", gpus=1, instances={0: [("3g.40gb", 0)]})
    assert layout_applied(done, [r]) and device_id(done, r) == "MIG-a-0-0"
    assert layout_diff(done, spec) == []
    assert not layout_applied(None, [r])
    assert layout_applied(done, [])


def test_default_table_models_are_known_without_profiles() -> None:
    info = build_table([])
    assert set(info.sources) == default_table().models


def test_a_placement_is_stable_under_restore() -> None:
    """What place() decides, restore() keeps as it is (a restart changes nothing)."""
    nodes = [node("a", gpus=2), node("h", model="H100-80GB", gpus=2)]
    c = build_cluster(nodes)
    pol = ConspiratorPolicy()
    placed = {}
    for i, rps in enumerate([1500, 400, 2500, 900, 1000, 3100, 150]):
        j = engine_job(job(f"j{i}", rps))
        placed[j.id] = (j, place(pol, c, j, TABLE).replicas)
    again = build_cluster(nodes)
    out = restore(again, [(j, [r.to_status() for r in reps]) for j, reps in placed.values()],
                  TABLE)
    assert not out.dropped and not out.trimmed
    assert {k: [r.slot for r in v] for k, v in out.kept.items()} == {
        k: [r.slot for r in reps] for k, (_, reps) in placed.items() if reps}
