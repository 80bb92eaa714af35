"""Install the Helm chart (charts/conspirator) into the local cluster with the real helm.

The chart's pods run on the real kubelet node: the images are the project's own, built here
without Docker (:mod:`conspirator_e2e.images`) and imported into the node's containerd.  This
cluster has no service proxy, so the components that talk to the API server use the node's
network and are pointed at the API server's loopback address (``kubernetesAPI`` in the
values); everything else is the chart as a platform team installs it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conspirator_e2e.cluster import APISERVER_PORT, CDI_SPEC_DIRS, REPO, LocalCluster

CHART = REPO / "charts" / "conspirator"
RELEASE = "conspirator"
NAMESPACE = "conspirator-system"
REAL_NODE_LABEL = {"conspirator.io/real-node": "true"}
# Ports on the real node's network that no other e2e process uses.
OPERATOR_PORTS = (18080, 18081)
NODE_METRICS_PORT = 19402
AGENT_PORT = 17470
AGENT_METRICS_PORT = 19403


def helm_env(cluster: LocalCluster, home: Path) -> dict[str, str]:
    return dict(os.environ, HELM_CACHE_HOME=str(home / "cache"),
                HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"),
                KUBECONFIG=str(cluster.paths.kubeconfig))


def helm(cluster: LocalCluster, *args: str, home: Path | None = None, timeout: float = 300,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm binary; never raises on a non-zero exit (callers assert)."""
    home = home or cluster.paths.state / "helm"
    return subprocess.run([str(cluster.paths.binary("helm")), *args],
                          env=helm_env(cluster, home), capture_output=True, text=True,
                          timeout=timeout, check=False, input=input)


def local_values(cluster: LocalCluster, images: Mapping[str, str], *,
                 gpus: Sequence[Mapping[str, Any]] = ({"model": "H200-141GB"},),
                 allocation: str = "devicePlugin", observe_interval: float = 3.0,
                 observe_window: float = 15.0, replan_interval: float = 0,
                 nvml: FakeNvmlHost | None = None) -> dict[str, Any]:
    """Values that run the chart on this cluster's real node.

    ``images`` maps component (operator, node-daemon, dpu-agent) to the image refs that
    :func:`conspirator_e2e.images.build_product_images` imported; they share a registry and
    a tag, which is what the chart's ``image`` block expresses.  With ``nvml`` the node
    daemon runs the NVML backend on the fake libnvidia-ml of that host directory (``gpus``
    is then unused: the fake's device file says what the GPUs are).
    """
    refs = {c: images[c] for c in ("operator", "node-daemon", "dpu-agent")}
    registries = {r.rsplit("/", 1)[0] for r in refs.values()}
    tags = {r.rsplit(":", 1)[1] for r in refs.values()}
    assert len(registries) == 1 and len(tags) == 1, refs
    host = cluster.paths.state / "chart"
    on_real_node = {"nodeSelector": dict(REAL_NODE_LABEL)}
    # Helm merges maps with the defaults: null removes a default key.
    gpu_node: dict[str, Any] = {"nvidia.com/gpu.present": None, **REAL_NODE_LABEL}
    dpu_node: dict[str, Any] = {"conspirator.io/dpu": None, **REAL_NODE_LABEL}
    return {
        "image": {"registry": registries.pop(), "tag": tags.pop(), "pullPolicy": "Never"},
        "kubernetesAPI": {"host": "127.0.0.1", "port": str(APISERVER_PORT)},
        "operator": {
            **on_real_node, "hostNetwork": True,
            "livenessPort": OPERATOR_PORTS[0], "metricsPort": OPERATOR_PORTS[1],
            # No periodic re-plan unless a test looks at it.
            "replanInterval": replan_interval, "peering": {"lifetime": 10},
            # The observed load: scraped often, over a short window, so that autoscaling
            # reacts within a test's time.
            "observeInterval": observe_interval,
            "image": {"name": refs["operator"].rsplit("/", 1)[1].split(":")[0]},
        },
        # Device-plugin mode unless asked: `auto` would wait for a registration from
        # /var/lib/kubelet/plugins_registry, which is not this kubelet's (its root is
        # elsewhere); DRA mode gets the kubelet's own directories below.
        "allocation": allocation,
        "nodeDaemon": {
            "nodeSelector": gpu_node, "hostNetwork": True, "backend": "simulated",
            "simulated": {"spec": {"gpus": [dict(g) for g in gpus],
                                   "dpu": {"present": True, "model": "BlueField-3"}}},
            "runDir": str(host / "run"), "stateDir": str(host / "state"),
            "podResourcesDir": str(cluster.paths.kubelet_root / "pod-resources"),
            "kubeletPluginsDir": str(cluster.paths.kubelet_root / "plugins"),
            "kubeletRegistryDir": str(cluster.paths.kubelet_root / "plugins_registry"),
            "cdiDir": CDI_SPEC_DIRS[0],
            "resyncSeconds": 2, "metricsPort": NODE_METRICS_PORT,
            "image": {"name": refs["node-daemon"].rsplit("/", 1)[1].split(":")[0]},
            **(nvml.values() if nvml is not None else {}),
        },
        "dpuAgent": {
            "nodeSelector": dpu_node, "port": AGENT_PORT, "metricsPort": AGENT_METRICS_PORT,
            "requestTimeout": 20,
            "observeWindowSeconds": observe_window, "observeSliceSeconds": 1,
            "image": {"name": refs["dpu-agent"].rsplit("/", 1)[1].split(":")[0]},
        },
    }


@dataclass(frozen=True)
class FakeNvmlHost:
    """A host directory with the fake libnvidia-ml (native/fakenvml, NOT a GPU: docs/nvml.md),
    its device file and the file its driver state lives in, mounted into the node daemon's
    pod where NVIDIA's container toolkit would inject the real driver's libraries."""

    directory: Path
    op_delay_ms: int = 0
    MOUNT = "/opt/conspirator-fakenvml"

    @property
    def state_file(self) -> Path:
        return self.directory / "state" / "driver.json"

    def prepare(self, library: Path, gpus: Sequence[Mapping[str, Any]]) -> FakeNvmlHost:
        """Copy the built library in, write a device file with ``gpus`` (the fake's models),
        and start from a GPU without instances (no state file)."""
        doc = json.loads((REPO / "native" / "fakenvml" / "devices.json").read_text())
        doc["gpus"] = [dict(g) for g in gpus]
        (self.directory / "state").mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, self.directory / library.name)
        (self.directory / "devices.json").write_text(json.dumps(doc))
        self.state_file.unlink(missing_ok=True)
        return self

    def values(self) -> dict[str, Any]:
        env = {"LD_LIBRARY_PATH": self.MOUNT, "FAKENVML_CONFIG": f"{self.MOUNT}/devices.json",
               "FAKENVML_STATE": f"{self.MOUNT}/state/driver.json",
               "FAKENVML_OP_DELAY_MS": str(self.op_delay_ms)}
        return {"backend": "nvml",
                "extraEnv": [{"name": k, "value": v} for k, v in env.items()],
                "extraVolumes": [{"name": "fakenvml", "hostPath": {
                    "path": str(self.directory), "type": "Directory"}}],
                "extraVolumeMounts": [{"name": "fakenvml", "mountPath": self.MOUNT}]}


def write_values(path: Path, values: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return path


def install(cluster: LocalCluster, values_file: Path, *, upgrade: bool = False,
            extra: Sequence[str] = (), timeout: str = "240s") -> subprocess.CompletedProcess[str]:
    verb = ["upgrade"] if upgrade else ["install", "--create-namespace"]
    return helm(cluster, *verb, RELEASE, str(CHART), "--namespace", NAMESPACE, "--values",
                str(values_file), "--wait", "--timeout", timeout, *extra, timeout=400)


def uninstall(cluster: LocalCluster) -> subprocess.CompletedProcess[str]:
    return helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait",
                "--timeout", "120s")


def installed(cluster: LocalCluster) -> bool:
    """Whether the release exists, in any state (deployed, failed, pending)."""
    proc = helm(cluster, "status", RELEASE, "--namespace", NAMESPACE, "-o", "json")
    return proc.returncode == 0 and bool(json.loads(proc.stdout).get("info"))


def release_objects(cluster: LocalCluster) -> list[str]:
    """Every object, of every listable kind, that carries the release's instance label."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    skip = {"events", "events.events.k8s.io", "componentstatuses"}
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found: list[str] = []
    proc = cluster.kubectl("get", ",".join(k for k in kinds if k not in skip), "-A",
                           "-l", selector, "-o", "name", "--ignore-not-found", check=False)
    found.extend(line for line in proc.stdout.split() if line)
    return found


def wait_gone(cluster: LocalCluster, what: str, probe: Any, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while True:
        left = probe()
        if not left:
            return
        if time.monotonic() > end:
            raise AssertionError(f"{what} still there after {timeout:.0f}s: {left}")
        time.sleep(1)


# ---- a job through the chart's components (the e2e test and `make demo`) ---------------

DEMO_MODEL = "echo-h200"
DEMO_PROFILE = "1g.18gb"  # an H200 slice; two replicas fit on the one simulated GPU


def demo_objects(job: str, worker_image: str) -> list[dict[str, Any]]:
    """A ModelProfile whose only entry is a 1g slice of the H200 at 100 requests/s, and an
    InferenceJob asking 150/s of it, so the operator places two replicas.  The worker image
    is e2e/images/dpserve (registers a shared-memory input buffer, answers each request)."""
    return [
        {"apiVersion": "conspirator.io/v1alpha1", "kind": "ModelProfile",
         "metadata": {"name": DEMO_MODEL},
         "spec": {"model": DEMO_MODEL, "entries": [
             {"gpuModel": "H200-141GB", "migProfile": DEMO_PROFILE, "batchSize": 1,
              "throughput": 100, "p99LatencyMs": 5}]}},
        {"apiVersion": "conspirator.io/v1alpha1", "kind": "InferenceJob",
         "metadata": {"name": job},
         "spec": {"model": {"name": DEMO_MODEL, "image": worker_image,
                            "args": ["65536", "2"]},
                  "demand": {"requestsPerSecond": 150, "p99LatencyMs": 50, "gpuMemoryGiB": 4},
                  "dataPath": {"inputShape": [65536], "dtype": "uint8", "maxBatch": 1}}},
    ]


def component_pods(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    """Component -> its one live pod (one of each on the real node), as the API's JSON."""
    out: dict[str, dict[str, Any]] = {}
    listed = json.loads(cluster.kubectl(
        "get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
        "-o", "json").stdout)
    for d in listed["items"]:
        if not d["metadata"].get("deletionTimestamp"):
            out[d["metadata"]["labels"]["app.kubernetes.io/component"]] = d
    return out


def components_ready(cluster: LocalCluster) -> bool:
    """The operator, node daemon and agent pods all run and are ready.  (helm --wait can
    see a DaemonSet before its controller counted the nodes: 0 of 0 ready.)"""
    pods = component_pods(cluster)
    return set(pods) == {"operator", "node-daemon", "dpu-agent"} and all(
        p["status"].get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])
        for p in pods.values())


def wait(what: str, probe: Any, timeout: float, hint: Any = None) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                                 + (f"\n{hint()}" if hint else ""))
        time.sleep(1)


def component_logs(cluster: LocalCluster, tail: int = 40) -> str:
    out = []
    for component in ("operator", "node-daemon", "dpu-agent"):
        proc = cluster.kubectl("logs", "-n", NAMESPACE, f"--tail={tail}", "-l",
                               f"app.kubernetes.io/component={component}", check=False)
        out.append(f"---- {component}\n{proc.stdout}{proc.stderr}")
    return "\n".join(out)


def get_job(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    proc = cluster.kubectl("get", "ij", name, "-n", ns, "-o", "json", check=False)
    return dict(json.loads(proc.stdout)) if proc.returncode == 0 else {}


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def wait_serving(cluster: LocalCluster, ns: str, name: str, timeout: float = 240) -> dict[str, Any]:
    """The job once it is Running with DataPathReady."""
    def ready() -> dict[str, Any] | None:
        j = get_job(cluster, ns, name)
        ok = (j.get("status", {}).get("phase") == "Running"
              and condition(j, "DataPathReady").get("status") == "True")
        return j if ok else None
    return dict(wait(f"{ns}/{name} to run with its data path ready", ready, timeout,
                     lambda: component_logs(cluster)))


def job_token(cluster: LocalCluster, ns: str, job: Mapping[str, Any]) -> str:
    """The job's token, from the Secret its status names (what a client does)."""
    secret = json.loads(cluster.kubectl("get", "secret", job["status"]["tokenSecret"], "-n",
                                        ns, "-o", "json").stdout)
    return base64.b64decode(secret["data"]["token"]).decode()


def loadgen_argv(endpoint: str, job: str, token_file: Path, out: Path,
                 requests: int) -> list[str]:
    return [sys.executable, "-m", "conspirator", "loadgen", "--address",
            f"tcp://{endpoint}", "--job", job, "--token-file", str(token_file), "--requests",
            str(requests), "--concurrency", "8", "--connections", "2", "--payload-size",
            "4KiB", "--json", str(out), "--no-progress"]


def loadgen(endpoint: str, job: str, token_file: Path, out: Path, requests: int,
            ) -> tuple[dict[str, Any] | None, str]:
    """``conspirator loadgen`` against an agent; (its JSON summary or None, its output)."""
    proc = subprocess.run(loadgen_argv(endpoint, job, token_file, out, requests),
                          cwd=out.parent, capture_output=True, text=True, timeout=300,
                          check=False)
    if proc.returncode != 0:
        return None, proc.stdout + proc.stderr
    return dict(json.loads(out.read_text())), proc.stdout


def agent_metrics(port: int = AGENT_METRICS_PORT) -> dict[str, float]:
    """The chart's agent's metrics (it listens on the node's network), sample -> value."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def agent_replicas(job: str) -> int:
    """Replicas the chart's agent dispatches to for ``job`` (``namespace/name``)."""
    try:
        metrics = agent_metrics()
    except OSError:
        return 0
    return int(sum(v for k, v in metrics.items()
                   if k.startswith("conspirator_agent_replicas{") and f'job="{job}"' in k))


def serve_through_agent(cluster: LocalCluster, ns: str, name: str, work: Path, requests: int,
                        timeout: float = 120) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Wait for the job, then send ``requests`` through its first client endpoint with its
    token; retried until the agent knows the token (the kubelet syncs the mounted Secret
    within seconds).  Returns (job, loadgen summary, loadgen output)."""
    job = wait_serving(cluster, ns, name)
    endpoints = [e["endpoint"] for e in job["status"].get("clientEndpoints") or []]
    assert endpoints, job["status"]
    token_file = work / f"{ns}.{name}.token"
    token_file.write_text(job_token(cluster, ns, job))
    out = work / f"{ns}.{name}.load.json"
    result: list[tuple[dict[str, Any], str]] = []

    def served() -> bool:
        summary, text = loadgen(endpoints[0], f"{ns}/{name}", token_file, out, requests)
        if summary is not None:
            result.append((summary, text))
        return summary is not None

    wait("the agent to accept the job's token and serve", served, timeout,
         lambda: component_logs(cluster))
    return job, result[-1][0], result[-1][1]
