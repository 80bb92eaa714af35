"""Parsing API objects into the operator's views; peering decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conspirator.operator.peering import default_priority, is_active_in, own_identity
from conspirator.operator.views import JobView, newer

from .builders import job_body, node


def test_job_view_reads_what_the_operator_needs() -> None:
    status = {"phase": "Running", "replicas": [
        {"node": "a", "gpuUUID": "GPU-a-0", "gpuModel": "A100-80GB", "migProfile": "1g.10gb",
         "startSlice": 6}]}
    v = JobView.from_body(job_body("j", namespace="team", status=status, priority=5))
    assert (v.key, v.uid, v.generation, v.deleting) == ("team/j", "uid-j", 1, False)
    assert v.replicas[0].gpu_uuid == "GPU-a-0"
    assert v.order == (-5, v.created, "team/j")
    assert JobView.from_body(job_body("k", deleting=True)).deleting
    # An empty status (a fresh object) is no status.
    assert JobView.from_body(job_body("k", status={})).job.status is None


def test_node_view_and_its_inventory_key() -> None:
    a = node("a", gpus=2, instances={0: [("1g.10gb", 6)]})
    b = node("a", gpus=2, instances={0: [("1g.10gb", 5)]})
    c = node("a", gpus=2, instances={0: [("1g.10gb", 6)]}, in_use={(0, "1g.10gb", 6)})
    assert a.gpu(0) is not None and a.gpu(5) is None
    # Free instances coming and going do not change what planning depends on.
    assert a.inventory_key() == b.inventory_key() != c.inventory_key()


def test_resource_versions_compare_as_numbers() -> None:
    assert newer("10", "9") and newer("9", "9") and not newer("9", "10")
    assert newer("abc", "9")


def test_peering_one_active_replica() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    seen = (now - timedelta(seconds=5)).isoformat()
    old = (now - timedelta(seconds=120)).isoformat()
    status = {"me": {"priority": 10, "lifetime": 60, "lastseen": seen},
              "low": {"priority": 5, "lifetime": 60, "lastseen": seen},
              "dead-high": {"priority": 50, "lifetime": 60, "lastseen": old}}
    assert is_active_in(status, "me", 10, now)
    assert not is_active_in({**status, "high": {"priority": 20, "lifetime": 60,
                                                "lastseen": seen}}, "me", 10, now)
    assert not is_active_in({**status, "twin": {"priority": 10, "lifetime": 60,
                                                "lastseen": seen}}, "me", 10, now)
    assert default_priority(1000.0) > default_priority(2000.0)  # earlier start wins


def test_peer_identity_is_the_pod_name_in_a_cluster() -> None:
    assert own_identity({"POD_NAME": "conspirator-operator-7d9f-abcde"}) == \
        "conspirator-operator-7d9f-abcde"
    outside = own_identity({}, now=1700000000)
    host, rest = outside.split("@")
    assert host and rest.endswith("/1700000000") and rest.split("/")[0].isdigit()
    assert own_identity({"POD_NAME": " "}, now=1) != " "
