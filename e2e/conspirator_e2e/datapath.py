"""The data path on the e2e cluster's real node: the DPU agent as a process, the node
daemon publishing to it, and the ``dpserve`` worker image (images/dpserve: the worker side
of conspirator.wire in static C, so that worker pods need no Python).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, cast

from kubernetes import client

from conspirator_e2e import oci
from conspirator_e2e.cluster import E2E_DIR, LocalCluster, run
from conspirator_e2e.nodedaemon import conspirator_command

DPSERVE_IMAGE = "conspirator.local/e2e/dpserve:v1"
GROUP, VERSION, PLURAL = "conspirator.io", "v1alpha1", "gpunodes"


def build_dpserve_image(cluster: LocalCluster) -> str:
    """Compile ``images/dpserve/dpserve.c`` statically, pack it, import it; the image ref."""
    src = E2E_DIR / "images" / "dpserve" / "dpserve.c"
    out_dir = cluster.paths.cache / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(src.read_bytes() + DPSERVE_IMAGE.encode()
                         + Path(oci.__file__).read_bytes()).hexdigest()[:16]
    tar = out_dir / f"dpserve-{key}.tar"
    if not tar.exists():
        exe = out_dir / f"dpserve-{key}.bin"
        run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", exe, src])
        oci.write_archive(oci.ImageSpec(name=DPSERVE_IMAGE, entrypoint=["/dpserve"],
                                        files={"dpserve": exe}), tar)
        exe.unlink()
    cluster.ctr("images", "import", str(tar))
    return DPSERVE_IMAGE


def pod_resources_socket(cluster: LocalCluster) -> Path:
    """The real kubelet's PodResources API socket (under its --root-dir)."""
    return cluster.paths.kubelet_root / "pod-resources" / "kubelet.sock"


def kubelet_plugin_dir(info: dict[str, Any]) -> Path:
    """The directory holding the kubelet's ``kubelet.sock`` (see the node daemon's e2e)."""
    for d in (Path(str(info["devicePluginDir"])), Path("/var/lib/kubelet/device-plugins")):
        if (d / "kubelet.sock").is_socket():
            return d
    raise AssertionError(f"no kubelet.sock in {info['devicePluginDir']} or /var/lib/kubelet")


class AgentProcess:
    """``conspirator dpu-agent`` on the host, standing in for the one on the node's DPU."""

    def __init__(self, workdir: Path, node: str, node_token_file: Path,
                 tokens_dir: Path) -> None:
        self.dir = workdir
        self.publish = workdir / "agent" / "publish.sock"
        self.ready = workdir / "agent.json"
        self.stats = workdir / "agent-stats.json"
        self.log_file = workdir / "agent.log"
        self.args = [str(conspirator_command()), "dpu-agent", "--listen", "127.0.0.1:0",
                     "--publish-socket", str(self.publish), "--node", node,
                     "--node-token-file", str(node_token_file), "--tokens-dir",
                     str(tokens_dir), "--ready-file", str(self.ready), "--stats-file",
                     str(self.stats), "--request-timeout", "20"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 30) -> AgentProcess:
        self.publish.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=str(self.dir), start_new_session=True)
        end = time.monotonic() + timeout
        while not self.ready.exists():
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"the agent did not start:\n{self.tail()}")
            time.sleep(0.05)
        self.port = int(json.loads(self.ready.read_text())["tcp_port"])
        return self

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def counters(self) -> dict[str, Any]:
        """The agent's counters (it writes them on SIGUSR1)."""
        assert self.proc is not None
        before = self.stats.stat().st_mtime_ns if self.stats.exists() else 0
        os.kill(self.proc.pid, signal.SIGUSR1)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if self.stats.exists() and self.stats.stat().st_mtime_ns != before:
                return cast(dict[str, Any], json.loads(self.stats.read_text()))
            time.sleep(0.01)
        raise TimeoutError("the agent wrote no counters")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def gpunode(api: client.ApiClient, name: str) -> dict[str, Any] | None:
    try:
        obj = client.CustomObjectsApi(api).get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return cast(dict[str, Any], obj)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def set_layout(api: client.ApiClient, name: str, instances: list[tuple[str, int]]) -> int:
    obj: Any = client.CustomObjectsApi(api).patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name,
        {"spec": {"gpus": [{"index": 0, "instances": [{"profile": p, "start": s}
                                                      for p, s in instances]}]}})
    return int(obj["metadata"]["generation"])


def applied(api: client.ApiClient, name: str, generation: int) -> dict[str, Any] | None:
    obj = gpunode(api, name)
    c = condition(obj, "LayoutApplied")
    if obj and (obj.get("status") or {}).get("observedGeneration") == generation and \
            c.get("status") == "True":
        return obj
    return None


def worker_pod(name: str, ns: str, job: str, node: str, resource: str) -> client.V1Pod:
    """A worker of ``job`` as the operator would run it: the job's label and variables, a
    MIG device, and the dpserve image."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"conspirator.io/job": job}),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=5,
            restart_policy="Never",
            node_selector={"kubernetes.io/hostname": node},
            containers=[client.V1Container(
                name="worker", image=DPSERVE_IMAGE, image_pull_policy="Never",
                args=["65536", "2"],
                env=[client.V1EnvVar(name="CONSPIRATOR_JOB", value=job),
                     client.V1EnvVar(name="CONSPIRATOR_NAMESPACE", value=ns),
                     client.V1EnvVar(name="CONSPIRATOR_POD", value_from=client.V1EnvVarSource(
                         field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")))],
                resources=client.V1ResourceRequirements(limits={resource: "1"},
                                                        requests={resource: "1"}),
            )],
        ),
    )
