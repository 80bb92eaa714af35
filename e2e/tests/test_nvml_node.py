"""The node daemon with the NVML backend on the real node (issue 18).

The chart's DaemonSet runs ``conspirator node-daemon --backend nvml`` on the real kubelet
node; the real ``nvidia-ml-py`` in its image loads the fake libnvidia-ml of native/fakenvml
from a host directory the pod mounts (where NVIDIA's container toolkit would inject the
driver's), and the fake keeps its driver state (MIG mode, GPU and compute instances) in a file
on the host, as a GPU keeps it in the driver when the daemon dies.  Each MIG call takes
0.4 s, as MIG changes take real time.

- The operator's job reaches Running through it: the instances its plan reserved are made by
  NVML calls, the real kubelet advertises them, the workers run on them and serve requests
  through the DPU agent.
- The daemon killed (SIGKILL, by the process's pid) in the middle of an apply: the container
  restarts, finds the half-done layout in the driver and converges; no half-made instance is
  left, and the second job runs too.

What this proves is the NVML code path (calls, struct versions, errors, recovery) on a real
node, not anything about a GPU: docs/nvml.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conspirator_e2e import chart
from conspirator_e2e.chart import CHART, NAMESPACE, FakeNvmlHost
from conspirator_e2e.cluster import REPO, LocalCluster
from conspirator_e2e.release import Release, installed_release

pytestmark = pytest.mark.skipif(not (CHART / "Chart.yaml").exists(), reason="no chart")

LIBRARY = REPO / "build" / "fakenvml" / "libnvidia-ml.so.1"
OP_DELAY_MS = 400


@pytest.fixture(scope="module")
def fake(cluster: LocalCluster) -> FakeNvmlHost:
    subprocess.run(["make", "-s", "fakenvml"], cwd=REPO, check=True)
    host = FakeNvmlHost(cluster.paths.state / "fakenvml", op_delay_ms=OP_DELAY_MS)
    return host.prepare(LIBRARY, [{"model": "H200-141GB"}])


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, fake: FakeNvmlHost,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    with installed_release(cluster, tmp_path_factory.mktemp("helm-nvml"), nvml=fake) as rel:
        yield rel


def driver(fake: FakeNvmlHost) -> dict[str, Any]:
    """The fake driver's state file (persist.c): what NVML would report."""
    try:
        doc: dict[str, Any] = json.loads(fake.state_file.read_text())
    except (OSError, ValueError):
        return {"mutations": 0, "gpus": []}
    return doc


def driver_layout(fake: FakeNvmlHost) -> list[tuple[int, bool]]:
    """(start, has its compute instance) of every GPU instance on GPU 0."""
    gpus = driver(fake)["gpus"]
    return sorted((gi["start"], bool(gi["ci"])) for gi in gpus[0]["gi"]) if gpus else []


def daemon_pids(fake: FakeNvmlHost) -> list[int]:
    """The processes whose environment names this fake's state file: the node daemon."""
    want = f"FAKENVML_STATE={FakeNvmlHost.MOUNT}/state/driver.json".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if want in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def gpunode(cluster: LocalCluster) -> dict[str, Any]:
    node = str(cluster.read_info()["realNode"])
    proc = cluster.kubectl("get", "gpunode", node, "-o", "json", check=False)
    return dict(json.loads(proc.stdout)) if proc.returncode == 0 else {}


def converged(cluster: LocalCluster) -> dict[str, Any] | None:
    obj = gpunode(cluster)
    st = obj.get("status") or {}
    ok = st.get("observedGeneration") == obj.get("metadata", {}).get("generation") and \
        chart.condition(obj, "LayoutApplied").get("status") == "True"
    return obj if ok else None


def job_objects(worker_image: str, name: str, rps: float) -> list[dict[str, Any]]:
    profile, job = chart.demo_objects(name, worker_image)
    job["spec"]["demand"]["requestsPerSecond"] = rps
    return [profile, job]


def daemon_restarts(cluster: LocalCluster) -> int:
    pod = chart.component_pods(cluster)["node-daemon"]
    return sum(int(c.get("restartCount", 0)) for c in pod["status"]["containerStatuses"])


def test_a_job_runs_through_the_nvml_backend_and_a_killed_daemon_converges(
        release: Release, fake: FakeNvmlHost, namespace: str, tmp_path: Path) -> None:
    cluster, ns = release.cluster, namespace
    hint = release.describe
    logs = cluster.kubectl("logs", "-n", NAMESPACE, "-l",
                           "app.kubernetes.io/component=node-daemon", "--tail=200").stdout
    assert "backend nvml" in logs, logs

    # 1. The operator's job (150/s of 100/s replicas: two 1g.18gb instances) reaches Running
    # on instances made by NVML calls, and serves through the agent.
    for obj in job_objects(release.worker_image, "nvml-a", 150):
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))
    job, summary, out = chart.serve_through_agent(cluster, ns, "nvml-a", tmp_path, 200)
    assert (summary["sent"], summary["ok"], summary["lost"], summary["failed"]) == (
        200, 200, 0, {}), out
    replicas = job["status"]["replicas"]
    assert len(replicas) == 2
    obj = chart.wait("the GPUNode to converge", lambda: converged(cluster), 60, hint)
    spec = sorted(i["start"] for g in obj["spec"]["gpus"] for i in g["instances"])
    assert driver_layout(fake) == [(s, True) for s in spec]  # the driver has what the spec says
    made = {i["uuid"] for g in obj["status"]["gpus"] for i in g["instances"]}
    assert {r["deviceID"] for r in replicas} <= made, (replicas, made)
    assert all(u.startswith("MIG-") for u in made)  # NVML's MIG UUIDs, from the fake's driver

    # 2. A second job needs four more instances (eight MIG calls of 0.4 s): the daemon is
    # killed once the apply is under way.
    before = driver(fake)["mutations"]
    restarts = daemon_restarts(cluster)
    for obj in job_objects(release.worker_image, "nvml-b", 350)[1:]:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))
    chart.wait("the apply to be under way", lambda: driver(fake)["mutations"] >= before + 3,
               120, hint)
    pids = daemon_pids(fake)
    assert pids, "no node daemon process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    mid = driver_layout(fake)
    t0 = time.monotonic()
    print(f"[nvml] killed the daemon after {driver(fake)['mutations'] - before} MIG calls: "
          f"driver has {mid}")
    assert not (len(mid) == 6 and all(ci for _, ci in mid)), "killed too late: it had finished"

    chart.wait("the daemon's container to restart",
               lambda: daemon_restarts(cluster) > restarts, 120, hint)
    _, summary_b, out_b = chart.serve_through_agent(cluster, ns, "nvml-b", tmp_path, 200)
    assert (summary_b["ok"], summary_b["lost"], summary_b["failed"]) == (200, 0, {}), out_b
    obj = chart.wait("the GPUNode to converge", lambda: converged(cluster), 90, hint)
    print(f"[timing] kill -> converged and the second job serving: {time.monotonic() - t0:.1f}s")
    spec = sorted(i["start"] for g in obj["spec"]["gpus"] for i in g["instances"])
    assert len(spec) == 6
    assert driver_layout(fake) == [(s, True) for s in spec], "a half-made instance was left"
    uuids = [i["uuid"] for g in obj["status"]["gpus"] for i in g["instances"]]
    assert len(set(uuids)) == 6 and all(uuids)
    # The first job's instances survived the kill: the same devices, still serving.
    assert {r["deviceID"] for r in replicas} <= set(uuids)
    _, again, out_a = chart.serve_through_agent(cluster, ns, "nvml-a", tmp_path, 100)
    assert (again["ok"], again["lost"], again["failed"]) == (100, 0, {}), out_a
