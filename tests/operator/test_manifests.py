"""Worker Deployments and Events the operator writes."""

from __future__ import annotations

import hashlib

from conspirator.mig import is_reserved_resource, profile_of_resource, reserved_resource_name
from conspirator.operator.manifests import (
    deployment,
    job_event,
    resource_name,
    template_hash,
    throughput_text,
    worker_groups,
    worker_name,
    worker_revision,
)
from conspirator.operator.views import Replica, WorkerView

from .builders import job


def test_worker_names_are_deterministic_readable_and_short() -> None:
    assert worker_name("resnet50", "kwok-a100-0", "1g.10gb") == "resnet50-kwok-a100-0-1g-10gb"
    long = worker_name("j" * 200, "node." * 40, "3g.40gb")
    assert len(long) <= 63 and long == worker_name("j" * 200, "node." * 40, "3g.40gb")
    assert long != worker_name("j" * 199, "node." * 40, "3g.40gb")
    assert worker_name("A_B", "n", "whole") == "a-b-n-whole"


def test_one_group_per_node_and_profile() -> None:
    reps = [Replica("n1", 0, "u", "A100-80GB", "1g.10gb", s, 1.0) for s in (5, 6)] + [
        Replica("n1", 1, "u2", "A100-80GB", "3g.40gb", 0, 1.0),
        Replica("n2", 0, "u3", "A100-80GB", "1g.10gb", 6, 1.0)]
    assert worker_groups(reps) == {("n1", "1g.10gb", 0): 2, ("n1", "3g.40gb", 0): 1,
                                   ("n2", "1g.10gb", 0): 1}
    # A rollout: the reserved replicas in set 1, the old ones (retiring) in set 0.
    assert worker_groups(reps[:2], 1, reps[2:], 0) == {
        ("n1", "1g.10gb", 1): 2, ("n1", "3g.40gb", 0): 1, ("n2", "1g.10gb", 0): 1}


def test_the_two_worker_sets_have_names_of_their_own() -> None:
    assert worker_name("j", "n", "1g.10gb", 1) == "j-n-1g-10gb-b"
    long0 = worker_name("j" * 200, "node." * 40, "3g.40gb")
    long1 = worker_name("j" * 200, "node." * 40, "3g.40gb", 1)
    assert len(long1) <= 63 and long1.endswith("-b") and long1 != long0


def test_deployment_is_pinned_to_the_node_and_asks_for_the_instances() -> None:
    v = job("resnet50", 1000, namespace="team")
    d = deployment(v, "kwok-a100-0", "1g.10gb", 3)
    meta, spec = d["metadata"], d["spec"]
    assert (meta["name"], meta["namespace"]) == ("resnet50-kwok-a100-0-1g-10gb", "team")
    assert meta["ownerReferences"] == [{
        "apiVersion": "conspirator.io/v1alpha1", "kind": "InferenceJob", "name": "resnet50",
        "uid": "uid-resnet50", "controller": True, "blockOwnerDeletion": True}]
    # A new template replaces pods in place, never needing an instance more than the node
    # holds for the job, at most the disruption budget (default 1) at a time.
    assert spec["replicas"] == 3 and spec["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    meta = d["metadata"]["annotations"]
    assert meta["conspirator.io/worker-set"] == "0"
    assert meta["conspirator.io/worker-revision"] == worker_revision(v)
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "kwok-a100-0"}
    assert {"key": "conspirator.io/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    (c,) = pod["containers"]
    # The job's own resource: only the instances reserved for team/resnet50 carry it.
    res = "conspirator.io/mig-1g.10gb-r" + hashlib.sha256(b"team/resnet50").hexdigest()[:10]
    assert c["resources"] == {"requests": {res: "1"}, "limits": {res: "1"}}
    assert profile_of_resource(res) == "1g.10gb" and is_reserved_resource(res)
    assert not is_reserved_resource(resource_name("1g.10gb"))
    assert profile_of_resource(reserved_resource_name("1g.10gb+me", "a/b")) == "1g.10gb+me"
    assert c["image"] == "conspirator/worker:0.1.0" and c["args"] == ["--x"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["CONSPIRATOR_INPUT_SHAPE"] == "3,224,224" and env["CONSPIRATOR_DTYPE"] == "float16"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert resource_name("whole") == "conspirator.io/mig-whole"
    # Kubernetes resource names allow no "+": the node daemon advertises ".me".
    assert resource_name("1g.10gb+me") == "conspirator.io/mig-1g.10gb.me"
    # The view the operator reads back knows what it wrote.
    w = WorkerView.from_body({**d, "status": {"observedGeneration": 1, "readyReplicas": 3,
                                              "updatedReplicas": 3}})
    assert (w.node, w.profile, w.replicas, w.job_uid) == ("kwok-a100-0", "1g.10gb", 3,
                                                          "uid-resnet50")
    assert w.template_hash == template_hash(d)


def test_template_hash_changes_with_what_the_operator_decides() -> None:
    v = job("j")
    base = template_hash(deployment(v, "n", "1g.10gb", 1))
    assert base == template_hash(deployment(v, "n", "1g.10gb", 1))
    assert base != template_hash(deployment(v, "n", "1g.10gb", 2))
    other = job("j", model="bert-base")
    assert base != template_hash(deployment(other, "n", "1g.10gb", 1))


def test_readiness_counts_only_rolled_out_replicas() -> None:
    d = deployment(job("j"), "n", "1g.10gb", 2)
    d["metadata"]["generation"] = 2
    stale = WorkerView.from_body({**d, "status": {"observedGeneration": 1, "readyReplicas": 2,
                                                  "updatedReplicas": 2}})
    assert stale.ready_replicas == 0 and not stale.ready
    half = WorkerView.from_body({**d, "status": {"observedGeneration": 2, "readyReplicas": 2,
                                                 "updatedReplicas": 1}})
    assert half.ready_replicas == 1 and not half.ready


def test_events_name_the_job() -> None:
    e = job_event(job("j", namespace="team"), "Unplaceable", "cannot be placed: x", True)
    assert e["involvedObject"]["kind"] == "InferenceJob"
    assert (e["metadata"]["namespace"], e["type"], e["reason"]) == ("team", "Warning",
                                                                    "Unplaceable")


def test_workers_get_their_throughput_and_only_a_real_change_rolls_them() -> None:
    v = job("j", namespace="team")
    d = deployment(v, "n", "1g.10gb", 2, throughput=912.345678)
    env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    # What conspirator.runtime's Identity.from_env reads: the job as name + namespace.
    assert env["CONSPIRATOR_THROUGHPUT"] == "912.346"
    assert (env["CONSPIRATOR_JOB"], env["CONSPIRATOR_NAMESPACE"]) == ("j", "team")
    same = template_hash(deployment(v, "n", "1g.10gb", 2, throughput=912.3459999))
    assert template_hash(d) == same
    assert template_hash(deployment(v, "n", "1g.10gb", 2, throughput=1000.0)) != same
    assert throughput_text(1600.0) == "1600" and throughput_text(0.5) == "0.5"
