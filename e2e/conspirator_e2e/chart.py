"""Install the Helm chart (charts/conspirator) into the local cluster with the real helm.

The chart's pods run on the real kubelet node: the images are the project's own, built here
without Docker (:mod:`conspirator_e2e.images`) and imported into the node's containerd.  This
cluster has no service proxy, so the components that talk to the API server use the node's
network and are pointed at the API server's loopback address (``kubernetesAPI`` in the
values); everything else is the chart as a platform team installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from conspirator_e2e.cluster import APISERVER_PORT, REPO, Cluster

CHART = REPO / "charts" / "conspirator"
RELEASE = "conspirator"
NAMESPACE = "conspirator-system"
REAL_NODE_LABEL = {"conspirator.io/real-node": "true"}
# Ports on the real node's network that no other e2e process uses.
OPERATOR_PORTS = (18080, 18081)
NODE_METRICS_PORT = 19402
AGENT_PORT = 17470


def helm_env(cluster: Cluster, home: Path) -> dict[str, str]:
    return dict(os.environ, HELM_CACHE_HOME=str(home / "cache"),
                HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"),
                KUBECONFIG=str(cluster.paths.kubeconfig))


def helm(cluster: Cluster, *args: str, home: Path | None = None, timeout: float = 300,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm binary; never raises on a non-zero exit (callers assert)."""
    home = home or cluster.paths.state / "helm"
    return subprocess.run([str(cluster.paths.binary("helm")), *args],
                          env=helm_env(cluster, home), capture_output=True, text=True,
                          timeout=timeout, check=False, input=input)


def local_values(cluster: Cluster, images: Mapping[str, str], *,
                 gpus: Sequence[Mapping[str, Any]] = ({"model": "H200-141GB"},),
                 ) -> dict[str, Any]:
    """Values that run the chart on this cluster's real node.

    ``images`` maps component (operator, node-daemon, dpu-agent) to the image refs that
    :func:`conspirator_e2e.images.build_product_images` imported; they share a registry and
    a tag, which is what the chart's ``image`` block expresses.
    """
    refs = {c: images[c] for c in ("operator", "node-daemon", "dpu-agent")}
    registries = {r.rsplit("/", 1)[0] for r in refs.values()}
    tags = {r.rsplit(":", 1)[1] for r in refs.values()}
    assert len(registries) == 1 and len(tags) == 1, refs
    host = cluster.paths.state / "chart"
    on_real_node = {"nodeSelector": dict(REAL_NODE_LABEL)}
    return {
        "image": {"registry": registries.pop(), "tag": tags.pop(), "pullPolicy": "Never"},
        "kubernetesAPI": {"host": "127.0.0.1", "port": str(APISERVER_PORT)},
        "operator": {
            **on_real_node, "hostNetwork": True,
            "livenessPort": OPERATOR_PORTS[0], "metricsPort": OPERATOR_PORTS[1],
            # Fast enough for tests; a re-plan is not what these tests look at.
            "replanInterval": 0, "peering": {"lifetime": 10},
            "image": {"name": refs["operator"].rsplit("/", 1)[1].split(":")[0]},
        },
        "nodeDaemon": {
            **on_real_node, "hostNetwork": True, "backend": "simulated",
            "simulated": {"spec": {"gpus": [dict(g) for g in gpus],
                                   "dpu": {"present": True, "model": "BlueField-3"}}},
            "runDir": str(host / "run"), "stateDir": str(host / "state"),
            "resyncSeconds": 2, "metricsPort": NODE_METRICS_PORT,
            "image": {"name": refs["node-daemon"].rsplit("/", 1)[1].split(":")[0]},
        },
        "dpuAgent": {
            **on_real_node, "port": AGENT_PORT, "requestTimeout": 20,
            "image": {"name": refs["dpu-agent"].rsplit("/", 1)[1].split(":")[0]},
        },
    }


def write_values(path: Path, values: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return path


def install(cluster: Cluster, values_file: Path, *, upgrade: bool = False,
            extra: Sequence[str] = (), timeout: str = "240s") -> subprocess.CompletedProcess[str]:
    verb = ["upgrade"] if upgrade else ["install", "--create-namespace"]
    return helm(cluster, *verb, RELEASE, str(CHART), "--namespace", NAMESPACE, "--values",
                str(values_file), "--wait", "--timeout", timeout, *extra, timeout=400)


def uninstall(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait",
                "--timeout", "120s")


def installed(cluster: Cluster) -> bool:
    proc = helm(cluster, "status", RELEASE, "--namespace", NAMESPACE, "-o", "json")
    return proc.returncode == 0 and json.loads(proc.stdout)["info"]["status"] == "deployed"


def release_objects(cluster: Cluster) -> list[str]:
    """Every object, of every listable kind, that carries the release's instance label."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    skip = {"events", "events.events.k8s.io", "componentstatuses"}
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found: list[str] = []
    proc = cluster.kubectl("get", ",".join(k for k in kinds if k not in skip), "-A",
                           "-l", selector, "-o", "name", "--ignore-not-found", check=False)
    found.extend(line for line in proc.stdout.split() if line)
    return found


def wait_gone(cluster: Cluster, what: str, probe: Any, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while True:
        left = probe()
        if not left:
            return
        if time.monotonic() > end:
            raise AssertionError(f"{what} still there after {timeout:.0f}s: {left}")
        time.sleep(1)
