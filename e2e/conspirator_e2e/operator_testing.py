"""Helpers of the operator's e2e tests and scale benchmark: run it, watch it, check it.

* :class:`OperatorProcess`: ``conspirator operator`` as a child process (so it can be
  killed at any point), with its log, liveness and metrics endpoints;
* :func:`check_invariants`: what must hold whatever happened: no GPU slice reserved by
  two replicas, one worker Deployment per (job, node, profile) and none left over, pods
  on the nodes the plan chose and never more of them than the node holds instances,
  GPUNode specs equal to the reservations;
* small readers: jobs, phases, events.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from kubernetes import client

from conspirator.mig import profile_of_resource
from conspirator.operator.placement.gpus import gpu_model

GROUP, VERSION = "conspirator.io", "v1alpha1"
MANAGED = "app.kubernetes.io/managed-by=conspirator-operator"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """``python -m conspirator operator`` against the local cluster."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log
        self.args = list(args)
        # The agents' token Secret goes to a namespace that exists (the chart sets the
        # operator's own; conspirator-system does not exist here).
        self.env = {"CONSPIRATOR_NAMESPACE": "default", **(env or {})}
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        argv = [sys.executable, "-m", "conspirator", "operator",
                "--kubeconfig", str(self.kubeconfig),
                "--liveness-port", str(self.liveness_port),
                "--metrics-port", str(self.metrics_port),
                "--bind-address", "127.0.0.1", *self.args]
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts}: {' '.join(argv)}\n".encode())
        log.flush()
        # Not from the repository root: its operator/ directory shadows the stdlib module.
        self.proc = subprocess.Popen(argv, cwd="/", stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye to the API server (a crash)."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def get(self, path: str, port: int | None = None, timeout: float = 5) -> tuple[int, str]:
        url = f"http://127.0.0.1:{port or self.liveness_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()

    def healthy(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return self.get("/metrics", self.metrics_port)[1]

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"operator exited; log: {self.log_path}\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.3)
        raise AssertionError(f"operator not healthy after {timeout}s\n{self.tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _status_kib(self, key: str) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def peak_rss_mib(self) -> float:
        """VmHWM of the operator process (peak resident memory)."""
        return self._status_kib("VmHWM")

    def rss_mib(self) -> float:
        """VmRSS of the operator process (resident memory now)."""
        return self._status_kib("VmRSS")


def inference_job(name: str, rps: float, *, model: str = "resnet50", p99: float = 50,
                  memory: float = 4, max_batch: int = 8, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model, "image": "conspirator/worker:0.1.0"},
            "demand": {"requestsPerSecond": rps, "p99LatencyMs": p99, "gpuMemoryGiB": memory},
            "dataPath": {"inputShape": [3, 224, 224], "dtype": "float16",
                         "maxBatch": max_batch},
            **spec,
        },
    }


def create(api: client.ApiClient, ns: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns,
                                                                  "inferencejobs", body)


def get(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, ns, "inferencejobs", name))


# --- readers ----------------------------------------------------------------------------

def jobs(api: client.ApiClient, namespaces: Iterable[str] | None = None) -> list[dict[str, Any]]:
    co = client.CustomObjectsApi(api)
    if namespaces is None:
        return list(cast(dict[str, Any], co.list_cluster_custom_object(
            GROUP, VERSION, "inferencejobs"))["items"])
    out: list[dict[str, Any]] = []
    for ns in namespaces:
        out += cast(dict[str, Any], co.list_namespaced_custom_object(
            GROUP, VERSION, ns, "inferencejobs"))["items"]
    return out


def phases(items: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(str((i.get("status") or {}).get("phase") or "-") for i in items)


def raw(call: Any) -> list[dict[str, Any]]:
    """Items of a list call made with ``_preload_content=False``."""
    return list(json.loads(call.data)["items"])


def events_for(api: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    core = client.CoreV1Api(api)
    evs = raw(core.list_namespaced_event(namespace, _preload_content=False))
    return [e for e in evs if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("kind") == "InferenceJob"]


def delete_all_jobs(api: client.ApiClient, namespaces: Iterable[str] | None = None,
                    timeout: float = 120) -> None:
    """Delete InferenceJobs and wait until they are gone (the operator must be running)."""
    co = client.CustomObjectsApi(api)
    for j in jobs(api, namespaces):
        meta = j["metadata"]
        try:
            co.delete_namespaced_custom_object(GROUP, VERSION, meta["namespace"],
                                               "inferencejobs", meta["name"])
        except client.ApiException as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + timeout
    while jobs(api, namespaces):
        if time.monotonic() > deadline:
            left = [f"{j['metadata']['namespace']}/{j['metadata']['name']}"
                    for j in jobs(api, namespaces)]
            raise AssertionError(f"InferenceJobs not released after {timeout}s: {left}")
        time.sleep(0.5)


# --- invariants -------------------------------------------------------------------------

def _mask(model: str, profile: str, start: int) -> int:
    m = gpu_model(model)
    if not m.mig_capable:
        return 1
    return m.profile(profile).mask(start)


def held(status: dict[str, Any]) -> list[dict[str, Any]]:
    """A job's instances: its replicas and a migration's retiring ones."""
    return [*(status.get("replicas") or []), *(status.get("retiring") or [])]


def check_invariants(api: client.ApiClient, namespaces: Sequence[str],
                     require_running: bool = True) -> list[str]:
    """Everything that must hold once the operator has converged; returns the problems."""
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    co = client.CustomObjectsApi(api)
    problems: list[str] = []
    items = jobs(api, namespaces)
    by_uid = {j["metadata"]["uid"]: j for j in items}

    # 1. No slice reserved twice: per GPU, the replicas' memory-slice masks are disjoint.
    used: dict[tuple[str, str], int] = {}
    reserved: dict[tuple[str, str], set[tuple[str, int]]] = {}
    for j in items:
        key = f"{j['metadata']['namespace']}/{j['metadata']['name']}"
        st = j.get("status") or {}
        if require_running and st.get("phase") != "Running":
            problems.append(f"{key} is {st.get('phase')}: {st.get('message')}")
        for r in held(st):  # a migration's retiring replicas keep their slices
            gpu = (r["node"], r.get("gpuUUID", ""))
            m = _mask(r["gpuModel"], r["migProfile"], int(r.get("startSlice", 0)))
            if used.get(gpu, 0) & m:
                problems.append(f"{key}: {r['migProfile']}@{r.get('startSlice')} on {gpu} "
                                f"overlaps another replica")
            used[gpu] = used.get(gpu, 0) | m
            reserved.setdefault(gpu, set()).add((r["migProfile"], int(r.get("startSlice", 0))))
        if st.get("replicas") is not None and st.get("replicaCount") != len(st["replicas"]):
            problems.append(f"{key}: replicaCount {st.get('replicaCount')} != "
                            f"{len(st['replicas'])} replicas")

    # 2. GPUNode specs hold exactly the reservations of all jobs (on the GPUs reported).
    nodes = cast(dict[str, Any], co.list_cluster_custom_object(GROUP, VERSION,
                                                               "gpunodes"))["items"]
    instances: dict[str, Counter[str]] = {}
    all_reserved: dict[tuple[str, str], set[tuple[str, int]]] = {}
    for j in jobs(api):  # every job in the cluster shares the GPUs
        for r in held(j.get("status") or {}):
            all_reserved.setdefault((r["node"], r.get("gpuUUID", "")), set()).add(
                (r["migProfile"], int(r.get("startSlice", 0))))
    for gn in nodes:
        name = gn["metadata"]["name"]
        status = gn.get("status") or {}
        inst_count: Counter[str] = Counter()
        for g in status.get("gpus") or []:
            for i in g.get("instances") or []:
                inst_count[i["profile"]] += 1
        instances[name] = inst_count
        if not status.get("gpus"):
            continue
        uuids = {g["index"]: g["uuid"] for g in status["gpus"]}
        for g in (gn.get("spec") or {}).get("gpus") or []:
            uuid = uuids.get(g["index"])
            if uuid is None:
                continue
            spec_set = {(i["profile"], int(i["start"])) for i in g.get("instances") or []}
            want = all_reserved.get((name, uuid), set())
            if spec_set != want:
                problems.append(f"GPUNode {name} GPU {g['index']}: spec {sorted(spec_set)}, "
                                f"reservations {sorted(want)}")

    # 3. One Deployment per (job, node, profile), matching the reservation; none left over.
    deps = raw(apps.list_deployment_for_all_namespaces(label_selector=MANAGED,
                                                       _preload_content=False))
    seen: Counter[tuple[str, str, str]] = Counter()
    for d in deps:
        if d["metadata"]["namespace"] not in namespaces or d["metadata"].get(
                "deletionTimestamp"):
            continue
        uid = d["metadata"]["labels"].get("conspirator.io/job-uid", "")
        node = d["metadata"]["annotations"].get("conspirator.io/node", "")
        prof = d["metadata"]["annotations"].get("conspirator.io/profile", "")
        seen[(uid, node, prof)] += 1
        owner = by_uid.get(uid)
        if owner is None:
            problems.append(f"Deployment {d['metadata']['name']} belongs to no job")
            continue
        count = sum(1 for r in held(owner.get("status") or {})
                    if r["node"] == node and r["migProfile"] == prof)
        if count == 0:
            problems.append(f"Deployment {d['metadata']['name']}: job has no {prof} on {node}")
        elif d["spec"]["replicas"] != count:
            problems.append(f"Deployment {d['metadata']['name']}: {d['spec']['replicas']} "
                            f"replicas, the job has {count} there")
    problems += [f"{n} Deployments for job {uid} on {node} ({prof})"
                 for (uid, node, prof), n in seen.items() if n > 1]
    if require_running:
        for j in items:
            groups = {(r["node"], r["migProfile"]) for r in
                      (j.get("status") or {}).get("replicas") or []}
            for node, prof in groups:
                if (j["metadata"]["uid"], node, prof) not in seen:
                    problems.append(f"{j['metadata']['name']}: no Deployment for {prof} on {node}")

    # 4. Pods where the plan put them, never more than the node's instances of a profile.
    pods = raw(core.list_pod_for_all_namespaces(label_selector=MANAGED, _preload_content=False))
    per_node: dict[str, Counter[str]] = {}
    for p in pods:
        if p["metadata"].get("deletionTimestamp") or p["status"].get("phase") in (
                "Succeeded", "Failed"):
            continue
        uid = p["metadata"]["labels"].get("conspirator.io/job-uid", "")
        node = p["spec"].get("nodeName")
        if node is None:
            continue
        lim = p["spec"]["containers"][0]["resources"]["limits"]
        prof = profile_of_resource(next(k for k in lim if k.startswith("conspirator.io/mig-")))
        per_node.setdefault(node, Counter())[prof] += 1
        holder = by_uid.get(uid)
        where = {(r["node"], r["migProfile"])
                 for r in held((holder or {}).get("status") or {})}
        if holder is not None and (node, prof) not in where:
            problems.append(f"pod {p['metadata']['name']} runs on {node}, not where its job's "
                            f"{prof} replicas are")
    for node, counts in per_node.items():
        for prof, n in counts.items():
            have = instances.get(node, Counter())[prof]
            if n > have:
                problems.append(f"{node}: {n} pods hold {prof}, the node has {have} instances")
    return problems
