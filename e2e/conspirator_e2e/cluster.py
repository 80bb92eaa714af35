"""A real local Kubernetes cluster for the end-to-end tests (DESIGN section 7).

    e2e/cluster.sh up [--spec e2e/clusters/default.yaml]   build if needed, start all
    e2e/cluster.sh down [--purge]                          stop all, leave nothing behind
    e2e/cluster.sh status                                  processes, health, nodes
    e2e/cluster.sh logs [COMPONENT] [-n LINES]             component logs, one place
    e2e/cluster.sh env                                     shell exports (KUBECONFIG, PATH)

What runs (all as background processes of this machine, root required):

- control plane on loopback: etcd, kube-apiserver (https://127.0.0.1:6443), kube-controller-manager,
  kube-scheduler, with a generated CA, serving and client certificates, a service-account key
  pair and kubeconfigs; every Kubernetes component (and the kubelet) gets FEATURE_GATES;
- one real node: containerd 2.x (built by e2e/build.sh; own config/state under the state dir,
  CRI plugin with CDI, sandbox image = the project's own pause), Debian's runc and bridge CNI
  plugin, and the kubelet (cgroupfs driver, cgroup v1 allowed); the images are built here as OCI
  archives (e2e/oci.py) and imported with ``ctr``;
- simulated GPU nodes: Node objects from the cluster spec, managed by kwok, whose capacity
  advertises ``conspirator.io/mig-<profile>`` resources.

Everything lives in ONE state directory, ``$CONSPIRATOR_E2E_DIR`` (default /tmp/conspirator-e2e):
pki/, kubeconfig (admin), logs/<component>.log, run/<component>.pid, cluster.json (what is up,
timings).  Binaries come from e2e/build.sh's cache (``$CONSPIRATOR_CACHE``).
One cluster per machine: the kubelet, the ports and the cgroups are machine-wide.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conspirator_e2e.constants import (
    APISERVER_PORT,
    COMPONENTS,
    CONTROLLER_MANAGER_PORT,
    E2E_DIR,
    GPU_TAINT_KEY,
    HELLO_IMAGE,
    MIG_RESOURCE_PREFIX,
    NODE_IP,
    PAUSE_IMAGE,
    POD_SUBNET,
    REPO,
    SCHEDULER_PORT,
)
from conspirator_e2e.controlplane import ControlPlane
from conspirator_e2e.host import (
    ensure_node_packages,
    kill_cgroup_processes,
    read_sysctls,
    remove_cgroup_root,
    remove_empty_dirs,
    restore_sysctls,
    rss_kib,
    setup_bridge,
    teardown_bridge,
    unmount_under,
)
from conspirator_e2e.kwokstages import KWOK_STAGES
from conspirator_e2e.noderuntime import NodeRuntime
from conspirator_e2e.paths import (
    CDI_SPEC_DIRS,
    FEATURE_GATES,
    Paths,
)
from conspirator_e2e.procs import (
    ClusterError,
    all_pids,
    log,
    pid_alive,
    proc_cmdline,
    run,
    tail,
    wait_for,
)
from conspirator_e2e.spec import ClusterSpec, GPUNodeSpec

# What the tests and tools import from here (the parts live in their own modules).
__all__ = [
    "APISERVER_PORT", "CDI_SPEC_DIRS", "E2E_DIR", "FEATURE_GATES", "GPU_TAINT_KEY", "HELLO_IMAGE",
    "MIG_RESOURCE_PREFIX", "POD_SUBNET", "REPO", "ClusterError", "ClusterSpec", "GPUNodeSpec",
    "LocalCluster", "Paths", "main", "run",
]

# --------------------------------------------------------------------------------------------
# The cluster


class LocalCluster(ControlPlane, NodeRuntime):
    """The whole cluster: up, down, status (e2e/cluster.sh)."""

    # ---- up -----------------------------------------------------------------------------

    def up(self, build: bool = True) -> dict[str, Any]:
        if os.geteuid() != 0:
            raise ClusterError("the local cluster needs root (kubelet, containerd, mounts)")
        if self.is_up():
            log(f"cluster already up in {self.paths.state}")
            return self.read_info()
        spec = ClusterSpec.load(self.spec_path)
        timings: dict[str, float] = {}
        t_all = time.monotonic()

        def step(name: str, t0: float) -> None:
            timings[name] = round(time.monotonic() - t0, 2)
            log(f"{name}: {timings[name]:.1f}s")

        t0 = time.monotonic()
        if build:
            run(["bash", E2E_DIR / "build.sh"], capture=False, timeout=3 * 3600)
        missing = [n for n in (*COMPONENTS, "kubectl", "containerd-shim-runc-v2", "ctr")
                   if not self.paths.binary(n).exists()]
        if missing:
            raise ClusterError(f"missing binaries {missing}: run e2e/build.sh")
        step("binaries", t0)

        t0 = time.monotonic()
        ensure_node_packages()
        step("packages", t0)

        # A crashed or killed earlier run may have left anything (processes, mounts, cgroups,
        # the bridge, even without its state dir): clean it all before starting afresh.
        self.down(purge=True, quiet=True)
        for d in (self.paths.state, self.paths.logs, self.paths.run):
            d.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {
            "state": str(self.paths.state),
            "kubeconfig": str(self.paths.kubeconfig),
            "versions": self.paths.versions,
            "spec": str(self.spec_path),
            "realNode": spec.real_node,
            "nodeIP": NODE_IP,
            "gpuNodes": [n.name for n in spec.gpu_nodes],
            "devicePluginDir": str(self.paths.device_plugins),
            "containerdSocket": str(self.paths.containerd_sock),
            "images": {"pause": PAUSE_IMAGE, "hello": HELLO_IMAGE},
            "timings": timings,
            "sysctlBefore": read_sysctls(),
        }
        self._write_info(info)

        try:
            t0 = time.monotonic()
            self._write_pki(spec.real_node)
            step("pki", t0)

            t0 = time.monotonic()
            setup_bridge()
            self._start_etcd()
            wait_for("etcd", self._etcd_healthy, 60, on_timeout=self._log_hint("etcd"))
            self._start_apiserver()
            wait_for("kube-apiserver /readyz", self._apiserver_ready, 120,
                     on_timeout=self._log_hint("kube-apiserver"))
            self._start_controller_manager()
            self._start_scheduler()
            step("control plane", t0)

            t0 = time.monotonic()
            images = self.build_images()
            self._start_containerd()
            wait_for("containerd", self._containerd_ready, 60,
                     on_timeout=self._log_hint("containerd"))
            for tar in images:
                self.ctr("images", "import", str(tar))
            step("containerd + images", t0)

            t0 = time.monotonic()
            self._start_kubelet(spec.real_node)
            wait_for("kubelet /healthz", self._kubelet_healthy, 120,
                     on_timeout=self._log_hint("kubelet"))
            wait_for(f"node {spec.real_node} Ready", lambda: self._node_ready(spec.real_node),
                     120, on_timeout=self._log_hint("kubelet"))
            step("real node", t0)

            t0 = time.monotonic()
            self._start_kwok()
            self.create_gpu_nodes(spec)
            wait_for("kwok nodes Ready",
                     lambda: all(self._node_ready(n.name) for n in spec.gpu_nodes), 120,
                     on_timeout=self._log_hint("kwok"))
            step("kwok nodes", t0)

            t0 = time.monotonic()
            wait_for("kube-controller-manager", lambda: self._healthz(CONTROLLER_MANAGER_PORT),
                     60, on_timeout=self._log_hint("kube-controller-manager"))
            wait_for("kube-scheduler", lambda: self._healthz(SCHEDULER_PORT), 60,
                     on_timeout=self._log_hint("kube-scheduler"))
            wait_for("default service account", self._default_sa, 60,
                     on_timeout=self._log_hint("kube-controller-manager"))
            step("controllers ready", t0)
        except BaseException:
            log(f"start failed; logs are in {self.paths.logs}; stopping what started")
            self.down(purge=False, quiet=True)
            raise
        timings["total"] = round(time.monotonic() - t_all, 2)
        timings["start (without build)"] = round(timings["total"] - timings["binaries"], 2)
        info["timings"] = timings
        info["rssMiB"] = self.rss_mib()
        self._write_info(info)
        log(f"cluster up in {timings['total']:.1f}s; export KUBECONFIG={self.paths.kubeconfig}")
        return info

    def _write_info(self, info: dict[str, Any]) -> None:
        self.paths.info.write_text(json.dumps(info, indent=2) + "\n")

    def read_info(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.paths.info.read_text()))
        except (OSError, ValueError):
            return {}

    # ---- down ---------------------------------------------------------------------------

    def down(self, purge: bool = False, quiet: bool = False) -> None:
        info = self.read_info()
        existed = self.paths.state.exists()
        if not quiet:
            log(f"stopping the cluster in {self.paths.state}")
        real_node = info.get("realNode")
        if real_node and self.pid("kubelet") and self._apiserver_ready():
            self._drain_real_node(str(real_node))
        for name in ("kwok", "kubelet"):
            self._stop(name)
        if self.paths.containerd_sock.exists() and self.pid("containerd"):
            self._remove_containers()
        kill_cgroup_processes()
        self._kill_strays(exclude=set(COMPONENTS))  # shims and runc left by a crash
        self._stop("containerd")
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop(name)
        self._kill_strays(exclude=set())  # anything of ours a crashed run left behind
        unmount_under(self.paths.state)
        remove_empty_dirs(Path("/run/containerd"))  # shim sockets and fifos of ours are gone
        remove_cgroup_root()
        teardown_bridge()
        restore_sysctls(info.get("sysctlBefore") or {})
        if purge and self.paths.state.exists():
            shutil.rmtree(self.paths.state)
        if not quiet:
            kept = f"; logs kept in {self.paths.logs}" if existed else ""
            log("cluster stopped" + (" and its state removed" if purge else kept))

    def _drain_real_node(self, node: str) -> None:
        """Delete the real node's pods so the kubelet tears their sandboxes down (CNI DEL)."""
        proc = self.kubectl("delete", "pods", "--all-namespaces",
                            f"--field-selector=spec.nodeName={node}", "--grace-period=1",
                            "--wait=false", check=False)
        if proc.returncode != 0:
            return
        with contextlib.suppress(ClusterError):
            wait_for("the real node's pods to be gone", lambda: not self.kubectl_json(
                "get", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={node}"
            )["items"], 60)

    def _remove_containers(self) -> None:
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
            for t in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", t, check=False, timeout=15)
            for t in tasks:
                for _ in range(20):
                    if self.ctr("tasks", "rm", "-f", t, check=False,
                                timeout=15).returncode == 0:
                        break
                    time.sleep(0.2)
            for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("containers", "rm", cid, check=False, timeout=15)

    def _kill_strays(self, exclude: set[str]) -> None:
        """Kill our binaries (components, containerd shims, runc) whose command line names
        the state dir: what a crashed run or a killed containerd left behind."""
        state = str(self.paths.state)
        ours = set(COMPONENTS) | {"containerd-shim-runc-v2", "containerd-shim", "runc"}
        victims = []
        for pid in all_pids():
            cmd = proc_cmdline(pid)
            name = Path(cmd[0]).name if cmd else ""
            if name in ours and name not in exclude and any(state in a for a in cmd):
                victims.append(pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ClusterError):
                wait_for(f"pid {pid} to exit", lambda p=pid: not pid_alive(p), 10, 0.1)

    # ---- status -------------------------------------------------------------------------

    def rss_mib(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.running().items():
            if pid is None:
                continue
            out[name] = round(rss_kib(pid) / 1024, 1)
        shims = [p for p in all_pids()
                 if any(str(self.paths.containerd_sock) in a for a in proc_cmdline(p))
                 and "containerd-shim" in " ".join(proc_cmdline(p)[:1])]
        if shims:
            out["containerd-shims"] = round(sum(rss_kib(p) for p in shims) / 1024, 1)
        out["total"] = round(sum(out.values()), 1)
        return out

    def status(self) -> int:
        procs = self.running()
        print(f"state dir: {self.paths.state}")
        for name, pid in procs.items():
            print(f"  {name:<24} {'pid ' + str(pid) if pid else 'not running'}")
        if not any(procs.values()):
            print("cluster is down")
            return 1
        if self._apiserver_ready():
            print(f"\nexport KUBECONFIG={self.paths.kubeconfig}\n")
            print(self.kubectl("get", "nodes", "-o", "wide", check=False).stdout)
            print("memory (RSS MiB):", json.dumps(self.rss_mib()))
        else:
            print("kube-apiserver is not ready")
        return 0 if all(procs.values()) else 1


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e2e/cluster.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="build what is missing and start everything")
    p_up.add_argument("--spec", type=Path, default=None, help="cluster spec (GPU nodes)")
    p_up.add_argument("--no-build", action="store_true", help="do not run e2e/build.sh")
    p_down = sub.add_parser("down", help="stop everything; leave no process, mount or device")
    p_down.add_argument("--purge", action="store_true", help="also delete the state directory")
    sub.add_parser("status", help="processes, health, nodes, memory")
    p_logs = sub.add_parser("logs", help="component logs")
    p_logs.add_argument("component", nargs="?", choices=COMPONENTS)
    p_logs.add_argument("-n", "--lines", type=int, default=40)
    sub.add_parser("env", help="print shell exports for KUBECONFIG and PATH")
    sub.add_parser("images", help="build the OCI image archives; print their paths")
    sub.add_parser("kwok-config", help="print the kwok stages of the simulated GPU nodes")
    p_sim = sub.add_parser("sim-nodes", help="create the spec's GPU nodes in another cluster")
    p_sim.add_argument("--kubeconfig", type=Path, required=True)
    p_sim.add_argument("--spec", type=Path, default=None)
    args = parser.parse_args(argv)

    cluster = LocalCluster(spec_path=getattr(args, "spec", None),
                      kubeconfig=getattr(args, "kubeconfig", None))
    try:
        if args.cmd == "up":
            info = cluster.up(build=not args.no_build)
            print(json.dumps({"timings": info.get("timings"), "rssMiB": info.get("rssMiB")},
                             indent=2))
            return 0
        if args.cmd == "down":
            cluster.down(purge=args.purge)
            return 0
        if args.cmd == "status":
            return cluster.status()
        if args.cmd == "logs":
            names = [args.component] if args.component else list(COMPONENTS)
            for name in names:
                print(f"===== {name} ({cluster.paths.log_file(name)})")
                print(tail(cluster.paths.log_file(name), args.lines))
            return 0
        if args.cmd == "env":
            path = ":".join(str(d) for d in cluster.paths.bin_dirs())
            print(f"export KUBECONFIG={cluster.paths.kubeconfig}")
            print(f'export PATH="{path}:$PATH"')
            return 0
        if args.cmd == "images":
            for tar in cluster.build_images():
                print(tar)
            return 0
        if args.cmd == "kwok-config":
            print(KWOK_STAGES, end="")
            return 0
        if args.cmd == "sim-nodes":
            cluster.create_gpu_nodes(ClusterSpec.load(cluster.spec_path))
            return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2


# Names other modules import from here (the module was split; these stay importable).
__all__ = [
    "APISERVER_PORT",
    "E2E_DIR",
    "GPU_TAINT_KEY",
    "HELLO_IMAGE",
    "MIG_RESOURCE_PREFIX",
    "NODE_IP",
    "POD_SUBNET",
    "REPO",
    "ClusterError",
    "ClusterSpec",
    "GPUNodeSpec",
    "LocalCluster",
    "Paths",
    "main",
    "run",
    "wait_for",
]


if __name__ == "__main__":
    sys.exit(main())

