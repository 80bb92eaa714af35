"""The data path end to end on the real node (issue 6, section 5).

Two worker pods of one job run as real containers on the real kubelet node; each gets a
MIG device (the node daemon's device plugin, simulated H200 backend) and, from Allocate,
the buffer-registry socket, through which it registers its input buffer with the node
daemon.  The daemon checks the caller's pod and publishes the buffer to the DPU agent
(``conspirator dpu-agent`` on the host here).  ``conspirator loadgen`` then sends requests
through the agent: every request is answered, the load spreads over both replicas, and
when one pod is deleted mid-load its requests fail explicitly (REPLICA_FAILED) while the
other replica serves the rest; none is lost.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conspirator_e2e.cluster import LocalCluster
from conspirator_e2e.datapath import (
    AgentProcess,
    applied,
    build_dpserve_image,
    condition,
    gpunode,
    kubelet_plugin_dir,
    pod_resources_socket,
    set_layout,
    worker_pod,
)
from conspirator_e2e.nodedaemon import DaemonProcess, apply_crds, free_port, wait_for
from conspirator_e2e.testing import as_dict
from kubernetes import client

from conspirator.client import Client

PROFILE = "1g.35gb"  # an H200 profile no other real-node test uses
RESOURCE = f"conspirator.io/mig-{PROFILE}"
JOB = "resnet"


@dataclass
class DataPathNode:
    node: str
    dir: Path
    agent: AgentProcess
    daemon: DaemonProcess
    tokens: Path

    def hint(self) -> str:
        return f"daemon:\n{self.daemon.tail()}\nagent:\n{self.agent.tail()}"


@pytest.fixture(scope="module")
def datapath(cluster: LocalCluster, cluster_info: dict[str, Any]) -> Iterator[DataPathNode]:
    apply_crds(cluster)
    build_dpserve_image(cluster)
    node = str(cluster_info["realNode"])
    d = Path(tempfile.mkdtemp(prefix="cdpn-", dir="/tmp"))  # short socket paths
    (d / "node-token").write_text(secrets.token_urlsafe(24) + "\n")
    tokens = d / "tokens"
    tokens.mkdir()
    agent = AgentProcess(d, node, d / "node-token", tokens)
    spec = d / "node.yaml"
    spec.write_text("gpus:\n  - model: H200-141GB\ndpu: {present: true, model: BlueField-3}\n")
    daemon = DaemonProcess(node, [
        "--node-name", node, "--backend", "simulated", "--spec-file", str(spec),
        "--state-file", str(d / "gpus.json"),
        "--kubelet-socket-dir", str(kubelet_plugin_dir(cluster_info)),
        "--pod-resources-socket", str(pod_resources_socket(cluster)),
        "--registry-socket", str(d / "registry" / "registry.sock"),
        "--agent-socket", str(agent.publish), "--agent-token-file", str(d / "node-token"),
        "--dpu-agent-endpoint", "10.244.0.1:7470",
        "--kubeconfig", str(cluster.paths.kubeconfig), "--resync-seconds", "2",
        "--metrics-port", str(free_port()), "--metrics-address", "127.0.0.1",
    ], d / "daemon.log")
    agent.start()
    daemon.start()
    dp = DataPathNode(node, d, agent, daemon, tokens)
    try:
        yield dp
    finally:
        daemon.stop()
        agent.stop()
        cluster.kubectl("delete", "gpunode", node, "--ignore-not-found", check=False)
        shutil.rmtree(d, ignore_errors=True)


def running_and_serving(core: client.CoreV1Api, ns: str, name: str) -> bool:
    pod = as_dict(core.read_namespaced_pod(name, ns))
    if pod["status"]["phase"] != "Running":
        return False
    return "serving" in (core.read_namespaced_pod_log(name, ns) or "")


def buffers(dp: DataPathNode, job: str, token: str) -> set[int]:
    try:
        with Client(dp.agent.address, job, token) as c:
            return {b.buffer_id for b in c.welcome.buffers}
    except OSError:
        return set()


def loadgen(dp: DataPathNode, job: str, token_file: Path, out: Path,
            requests: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "conspirator", "loadgen", "--address", dp.agent.address,
         "--job", job, "--token-file", str(token_file), "--requests", str(requests),
         "--concurrency", "8", "--connections", "2", "--payload-size", "4KiB",
         "--json", str(out), "--no-progress"],
        cwd=dp.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_worker_pods_serve_requests_through_the_agent(
        datapath: DataPathNode, api: client.ApiClient, core: client.CoreV1Api,
        namespace: str) -> None:
    dp = datapath
    hint = dp.hint
    wait_for("the daemon's GPUNode", lambda: condition(gpunode(api, dp.node), "Ready").get(
        "status") == "True", 60, on_timeout=hint)
    # The operator's part: two instances of the profile on GPU 0.
    gen = set_layout(api, dp.node, [(PROFILE, 0), (PROFILE, 2)])
    wait_for("the layout to be applied", lambda: applied(api, dp.node, gen), 60,
             on_timeout=hint)
    wait_for("the kubelet to advertise the devices", lambda: as_dict(core.read_node(
        dp.node))["status"]["allocatable"].get(RESOURCE) == "2", 60, on_timeout=hint)
    wait_for("the registry to reach the agent", lambda: condition(gpunode(
        api, dp.node), "DPUReady").get("status") == "True", 30, on_timeout=hint)

    # The job's token, as the agent's DaemonSet would see it projected from the Secret.
    job = f"{namespace}/{JOB}"
    token = secrets.token_urlsafe(24)
    (dp.tokens / f"{namespace}.{JOB}").write_text(token)
    token_file = dp.dir / "job-token"
    token_file.write_text(token)

    t0 = time.monotonic()
    for name in ("w0", "w1"):
        core.create_namespaced_pod(namespace, worker_pod(name, namespace, JOB, dp.node,
                                                         RESOURCE))
    for name in ("w0", "w1"):
        wait_for(f"{name} to run and register", lambda n=name: running_and_serving(
            core, namespace, n), 120, on_timeout=hint)
    def both() -> set[int] | None:
        found = buffers(dp, job, token)
        return found if len(found) == 2 else None

    bids = wait_for("both buffers at the agent", both, 60, on_timeout=hint)
    print(f"[timing] pods created -> both buffers published to the agent: "
          f"{time.monotonic() - t0:.1f}s")

    # Load through the agent: every request answered, both replicas used.
    out = dp.dir / "load.json"
    p = loadgen(dp, job, token_file, out, 2000)
    stdout, _ = p.communicate(timeout=300)
    assert p.returncode == 0, stdout
    s = json.loads(out.read_text())
    assert (s["sent"], s["ok"], s["lost"], s["failed"]) == (2000, 2000, 0, {}), stdout
    spread = {int(k): v for k, v in s["by_buffer"].items()}
    # The dispatcher's promise (both serve), not a share: a busy host sets the share.
    assert set(spread) == bids and min(spread.values()) >= 1, spread
    assert sum(spread.values()) == 2000, spread
    print(stdout)

    # A worker pod goes away mid-load: its in-flight requests fail explicitly, the other
    # replica serves the rest, nothing is lost.
    out2 = dp.dir / "load2.json"
    p = loadgen(dp, job, token_file, out2, 4000)
    time.sleep(1.0)
    core.delete_namespaced_pod("w1", namespace, grace_period_seconds=0)
    stdout, _ = p.communicate(timeout=300)
    assert p.returncode == 0, stdout
    s = json.loads(out2.read_text())
    assert s["lost"] == 0 and s["sent"] == 4000, stdout
    assert s["ok"] + sum(s["failed"].values()) == 4000
    assert set(s["failed"]) <= {"REPLICA_FAILED"}, s["failed"]
    wait_for("the agent to drop the gone replica", lambda: len(buffers(dp, job, token)) == 1,
             60, on_timeout=hint)
    with Client(dp.agent.address, job, token) as c:
        assert c.request(b"still served").buffer_id in bids
    counters = dp.agent.counters()
    assert counters["replicas"] == 1 and counters["responses"] >= 6000 - sum(
        s["failed"].values()), counters
