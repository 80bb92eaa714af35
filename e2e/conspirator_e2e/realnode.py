"""The node daemon on the local cluster's real node (a process beside the kubelet, the
simulated GPU backend) and the GPUNode/Node reads its tests share."""

from __future__ import annotations

import secrets
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from conspirator.deviceplugin.testing import TestAgent
from conspirator_e2e.cluster import CDI_SPEC_DIRS, LocalCluster
from conspirator_e2e.datapath import condition, gpunode, kubelet_plugin_dir
from conspirator_e2e.nodedaemon import DaemonProcess, free_port
from conspirator_e2e.testing import as_dict

GROUP, VERSION, PLURAL = "conspirator.io", "v1alpha1", "gpunodes"


class RealNodeDaemon:
    """The node daemon as its own process on the real node, with the simulated GPUs of
    ``gpus_yaml`` (a node spec's ``gpus:`` list), publishing to a test DPU agent;
    ``extra_args`` for the mode (``--allocation dra ...``: :func:`dra_args`)."""

    def __init__(self, cluster: LocalCluster, info: dict[str, Any], gpus_yaml: str,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.node = str(info["realNode"])
        self.dir = Path(tempfile.mkdtemp(prefix="cdp-", dir="/tmp"))  # short socket paths
        token = secrets.token_urlsafe(24)
        (self.dir / "token").write_text(token + "\n")
        self.agent = TestAgent(self.dir / "agent" / "publish.sock", token, node=self.node)
        spec = self.dir / "node.yaml"
        spec.write_text(gpus_yaml + "dpu: {present: true, model: BlueField-2}\n")
        self.registry = self.dir / "registry" / "registry.sock"
        self.metrics_port = free_port()
        self.process = DaemonProcess(self.node, [
            "--node-name", self.node, "--backend", "simulated", "--spec-file", str(spec),
            "--state-file", str(self.dir / "gpus.json"),
            "--kubelet-socket-dir", str(kubelet_plugin_dir(info)),
            "--pod-resources-socket",
            str(cluster.paths.kubelet_root / "pod-resources" / "kubelet.sock"),
            "--registry-socket", str(self.registry),
            "--agent-socket", str(self.agent.socket_path),
            "--agent-token-file", str(self.dir / "token"),
            "--dpu-agent-endpoint", "10.244.0.1:7100",
            "--kubeconfig", str(cluster.paths.kubeconfig),
            "--resync-seconds", "2", "--metrics-port", str(self.metrics_port),
            "--metrics-address", "127.0.0.1", *extra_args,
        ], self.dir / "daemon.log")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            text: str = r.read().decode()
            return text


def dra_args(cluster: LocalCluster, state: Path) -> tuple[str, ...]:
    """The daemon as the DRA driver of the real node's kubelet (its plugin registry under
    the kubelet's root), its socket and checkpoint under ``state``, CDI specs where the
    node's containerd reads them."""
    return ("--allocation", "dra", "--dra-plugin-dir", str(state / "dra"),
            "--plugins-registry-dir", str(cluster.paths.kubelet_root / "plugins_registry"),
            "--cdi-dir", CDI_SPEC_DIRS[0])


def applied(api: client.ApiClient, name: str, generation: int,
            status: str = "True") -> dict[str, Any] | None:
    obj = gpunode(api, name)
    c = condition(obj, "LayoutApplied")
    if obj and (obj.get("status") or {}).get("observedGeneration") == generation and \
            c.get("status") == status:
        return obj
    return None


def capacity(core: client.CoreV1Api, node: str) -> tuple[dict[str, str], dict[str, str]]:
    st = as_dict(core.read_node(node))["status"]
    return dict(st["capacity"] or {}), dict(st["allocatable"] or {})
