"""Objects the operator writes, as plain dicts: worker Deployments and Events.  Pure.

One worker Deployment per (job, node, MIG profile): pinned to the node by its
``kubernetes.io/hostname`` label (the real scheduler binds the pods, checking the
node's capacity of the job's reserved resource ``conspirator.io/mig-<profile>-r<tag>``,
which the node daemon advertises only for the instances the plan reserved for the job),
tolerating the GPU nodes' taint, each pod asking for one instance.  Nearly always a job
has one profile per node, so this is one Deployment per (job, node).  Names are
deterministic, so a restarted operator finds what it created and never makes a second copy.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from conspirator import mig
from conspirator.api.v1alpha1 import API_VERSION, InferenceJob
from conspirator.operator.views import (
    ANNOTATION_NODE,
    ANNOTATION_PROFILE,
    ANNOTATION_REVISION,
    ANNOTATION_TEMPLATE_HASH,
    ANNOTATION_WORKER_SET,
    LABEL_JOB,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LABEL_WORKER,
    MANAGED_BY,
    JobView,
    Replica,
)

MIG_RESOURCE_PREFIX = mig.RESOURCE_PREFIX
"""Extended resource of one GPU instance: ``conspirator.io/mig-<profile>``; a whole
non-MIG GPU is ``conspirator.io/mig-whole`` (``migProfile: whole`` in the API)."""
GPU_TAINT_KEY = "conspirator.io/gpu"
HOSTNAME_LABEL = "kubernetes.io/hostname"
NAME_LIMIT = 63


def resource_name(profile: str) -> str:
    """The node daemon's resource for ``profile``: one definition for both
    (:func:`conspirator.mig.resource_name`; ``+me`` profiles become ``.me``)."""
    return mig.resource_name(profile)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _digest(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


SET_SUFFIX = ("", "-b")
"""Name suffix of a job's worker Deployments in set 0 and set 1 (rollouts alternate)."""


def worker_name(job: str, node: str, profile: str, worker_set: int = 0) -> str:
    """Deployment name of a job's workers of one profile on one node, in one worker set.

    ``<job>-<node>-<profile>`` with dots as dashes, e.g. ``resnet50-kwok-a100-0-1g-10gb``,
    and ``-b`` after it in set 1; when that exceeds 63 characters, the job and node parts
    are shortened and a hash of the full triple keeps names apart.
    """
    suffix = SET_SUFFIX[worker_set]
    full = f"{_slug(job)}-{_slug(node)}-{_slug(profile)}{suffix}"
    if len(full) <= NAME_LIMIT:
        return full
    h = _digest(job, node, profile)
    room = NAME_LIMIT - len(h) - len(_slug(profile)) - len(suffix) - 3
    j = _slug(job)[: max(1, room // 2)].strip("-")
    nd = _slug(node)[: max(1, room - len(j))].strip("-")
    return f"{j}-{nd}-{_slug(profile)}-{h}{suffix}"


WorkerGroup = tuple[str, str, int]
"""(node, profile, worker set): one Deployment."""


def worker_groups(replicas: Iterable[Replica], worker_set: int = 0,
                  retiring: Iterable[Replica] = (), retiring_set: int | None = None
                  ) -> dict[WorkerGroup, int]:
    """(node, profile, set) -> number of replicas: one Deployment each.  ``replicas`` run
    in ``worker_set``, ``retiring`` ones in ``retiring_set`` (default: the same set)."""
    out: dict[WorkerGroup, int] = {}
    old = worker_set if retiring_set is None else retiring_set
    for reps, s in ((replicas, worker_set), (retiring, old)):
        for r in reps:
            out[(r.node, r.profile, s)] = out.get((r.node, r.profile, s), 0) + 1
    return dict(sorted(out.items()))


def worker_revision(view: JobView) -> str:
    """What of the job's spec its worker pods run (model, image, args, data path): a new
    revision is a rollout.  The operator's own estimates (the throughput) are not part of
    it: a learned profile does not roll the workers."""
    spec = view.job.spec
    return _digest(json.dumps({"model": spec.model.model_dump(mode="json", by_alias=True),
                               "dataPath": spec.data_path.model_dump(mode="json",
                                                                     by_alias=True)},
                              sort_keys=True), n=16)


def label_value(text: str) -> str:
    """``text`` when it is a valid label value, else a short hash of it."""
    if len(text) <= 63 and re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", text):
        return text
    return _digest(text, n=16)


def owner_reference(view: JobView) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceJob",
        "name": view.name,
        "uid": view.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def throughput_text(rps: float) -> str:
    """``CONSPIRATOR_THROUGHPUT`` of a worker: requests/s, at most 6 significant digits, so
    that only a real change of the estimate rolls the Deployment."""
    return f"{round(max(rps, 0.0), 3):g}"


CLAIM_NAME = "mig"
"""The name of the worker pods' ResourceClaim (DRA mode), in the pod and its container."""


def claim_template(view: JobView, node: str, profile: str) -> dict[str, Any]:
    """DRA mode: the ResourceClaimTemplate of the workers of ``view`` on ``node``.

    One device of the driver's DeviceClass whose CEL selector admits only the instances of
    ``profile`` the node daemon publishes as reserved for this job
    (:func:`conspirator.mig.dra_selector`), so the scheduler can allocate a worker nothing
    else.  Named like the Deployment and owned by the job; its spec never changes for the
    job (the API server keeps templates immutable), so scaling never rolls the workers.
    """
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": worker_name(view.name, node, profile),
            "namespace": view.namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB: label_value(view.name),
                       LABEL_JOB_UID: view.uid},
            "ownerReferences": [owner_reference(view)],
        },
        "spec": {"spec": {"devices": {"requests": [{
            "name": CLAIM_NAME,
            "exactly": {
                "deviceClassName": mig.DRA_DEVICE_CLASS,
                "allocationMode": "ExactCount",
                "count": 1,
                "selectors": [{"cel": {"expression": mig.dra_selector(profile, view.key)}}],
            },
        }]}}},
    }


def deployment(view: JobView, node: str, profile: str, count: int,
               throughput: float | None = None, dra: bool = False,
               worker_set: int = 0) -> dict[str, Any]:
    """The worker Deployment of ``view``'s ``count`` replicas of ``profile`` on ``node``.

    ``throughput`` is the placement's estimate of one replica's requests/s (the mean over
    the group, which differs only on a node mixing GPU models); the worker passes it to
    the DPU agent as the dispatcher's weight (``CONSPIRATOR_THROUGHPUT``).  ``dra``: the
    node allocates through DRA, so each pod gets a ResourceClaim from
    :func:`claim_template` instead of the job's extended resource (both sets share it).
    ``worker_set``: which of the job's two sets (:data:`SET_SUFFIX`) the Deployment is in.

    A new template replaces the pods in place, at most the job's disruption budget at a
    time (``maxSurge: 0``: a new pod never needs an instance the node does not hold for
    the job).  The planner makes a rollout of a new revision make-before-break instead
    where there is room: the new replicas start in the other set.
    """
    ij: InferenceJob = view.job
    spec = ij.spec
    name = worker_name(view.name, node, profile, worker_set)
    claim = worker_name(view.name, node, profile)
    res = mig.reserved_resource_name(profile, view.key)
    labels = {
        "app.kubernetes.io/name": "conspirator-worker",
        "app.kubernetes.io/instance": label_value(view.name),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: label_value(view.name),
        LABEL_JOB_UID: view.uid,
        LABEL_WORKER: name,
    }
    env = [
        {"name": "CONSPIRATOR_JOB", "value": view.name},
        {"name": "CONSPIRATOR_NAMESPACE", "value": view.namespace},
        {"name": "CONSPIRATOR_MODEL", "value": spec.model.name},
        {"name": "CONSPIRATOR_MIG_PROFILE", "value": profile},
        {"name": "CONSPIRATOR_INPUT_SHAPE",
         "value": ",".join(str(d) for d in spec.data_path.input_shape)},
        {"name": "CONSPIRATOR_DTYPE", "value": spec.data_path.dtype.value},
        {"name": "CONSPIRATOR_MAX_BATCH", "value": str(spec.data_path.max_batch)},
        *([{"name": "CONSPIRATOR_THROUGHPUT", "value": throughput_text(throughput)}]
          if throughput is not None else []),
        {"name": "CONSPIRATOR_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "CONSPIRATOR_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    template: dict[str, Any] = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "nodeSelector": {HOSTNAME_LABEL: node},
            "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists",
                             "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "worker",
                "image": spec.model.image,
                "imagePullPolicy": "IfNotPresent",
                "args": list(spec.model.args),
                "env": env,
                "resources": {"claims": [{"name": CLAIM_NAME}]} if dra else
                {"requests": {res: "1"}, "limits": {res: "1"}},
            }],
            **({"resourceClaims": [{"name": CLAIM_NAME,
                                    "resourceClaimTemplateName": claim}]} if dra else {}),
        },
    }
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": view.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_NODE: node, ANNOTATION_PROFILE: profile,
                            ANNOTATION_WORKER_SET: str(worker_set),
                            ANNOTATION_REVISION: worker_revision(view)},
            "ownerReferences": [owner_reference(view)],
        },
        "spec": {
            "replicas": count,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": 0,
                "maxUnavailable": max(1, spec.migration.disruption_budget or 1)}},
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {LABEL_WORKER: name, LABEL_JOB_UID: view.uid}},
            "template": template,
        },
    }
    body["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH] = template_hash(body)
    return body


def template_hash(body: Mapping[str, Any]) -> str:
    """Hash of what the operator decides in a Deployment (replicas, strategy, pod
    template)."""
    spec = body["spec"]
    return _digest(json.dumps({"replicas": spec["replicas"], "strategy": spec["strategy"],
                               "template": spec["template"]}, sort_keys=True), n=16)


def event(view: JobView | None, *, kind: str, name: str, namespace: str, uid: str,
          reason: str, message: str, warning: bool = False, api_version: str = API_VERSION,
          now: datetime | None = None, component: str = "conspirator-operator"
          ) -> dict[str, Any]:
    """A ``v1`` Event about an object (``view`` only names the job it concerns, if any)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ns = namespace or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # Cut, the slug may end in '-': "<slug>-." is no DNS subdomain (the API server
            # refuses the Event), so the cut drops trailing dashes.
            "generateName": f"{_slug(name)[:40].rstrip('-') or 'object'}.",
            "namespace": ns,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        },
        "involvedObject": {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            "namespace": namespace or None,
            "uid": uid,
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def job_event(view: JobView, reason: str, message: str, warning: bool = False,
              now: datetime | None = None) -> dict[str, Any]:
    return event(view, kind="InferenceJob", name=view.name, namespace=view.namespace,
                 uid=view.uid, reason=reason, message=message, warning=warning, now=now)
