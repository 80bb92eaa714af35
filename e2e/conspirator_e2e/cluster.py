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
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conspirator_e2e import oci
from conspirator_e2e.certs import Certs, write_kubeconfig
from conspirator_e2e.constants import (
    APISERVER_PORT,
    BRIDGE,
    CGROUP_ROOT,
    COMPONENTS,
    CONTROLLER_MANAGER_PORT,
    DEFAULT_SPEC,
    E2E_DIR,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    GPU_TAINT_KEY,
    HELLO_IMAGE,
    KUBELET_HEALTHZ_PORT,
    KUBELET_PORT,
    KWOK_ANNOTATION,
    KWOK_NODE_IP,
    KWOK_POD_CIDR,
    KWOK_PORT,
    MIG_RESOURCE_PREFIX,
    NODE_IP,
    PAUSE_IMAGE,
    POD_SUBNET,
    REPO,
    SCHEDULER_PORT,
    SERVICE_CIDR,
    SERVICE_IP,
)
from conspirator_e2e.host import (
    ensure_cgroup_root,
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

# --------------------------------------------------------------------------------------------
# Paths and versions

# Feature gates of every Kubernetes component (API server, scheduler, controller manager,
# kubelet).  resource.k8s.io/v1 (DRA) is GA and served by default since 1.34; partitionable
# devices (ResourceSlice sharedCounters, devices' consumesCounters, MIG as DRA devices) are
# alpha and off in 1.35: an API server without the gate silently drops those fields.
FEATURE_GATES: dict[str, bool] = {"DRAPartitionableDevices": True}
# Where the node's containerd reads CDI specs (its own default order is the reverse).
CDI_SPEC_DIRS = ("/var/run/cdi", "/etc/cdi")


def feature_gates_flag() -> str:
    return "--feature-gates=" + ",".join(
        f"{k}={str(v).lower()}" for k, v in sorted(FEATURE_GATES.items()))



def read_versions(path: Path | None = None) -> dict[str, str]:
    """The pins of e2e/versions.env (or of the file $CONSPIRATOR_E2E_VERSIONS names)."""
    if path is None:
        path = Path(os.environ.get("CONSPIRATOR_E2E_VERSIONS") or E2E_DIR / "versions.env")
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    return out


@dataclass(frozen=True)
class Paths:
    """Every file and directory of one cluster."""

    state: Path
    cache: Path
    versions: dict[str, str] = field(default_factory=read_versions)

    @classmethod
    def from_env(cls) -> Paths:
        state = Path(os.environ.get("CONSPIRATOR_E2E_DIR", "/tmp/conspirator-e2e"))
        cache = Path(
            os.environ.get("CONSPIRATOR_CACHE", str(Path.home() / ".cache" / "conspirator"))
        )
        return cls(state=state.resolve(), cache=cache)

    # binaries
    def binary(self, name: str) -> Path:
        v = self.versions
        if name == "etcd":
            return self.cache / "bin" / f"etcd-{v['ETCD_VERSION']}" / "etcd"
        if name == "kwok":
            return self.cache / "bin" / f"kwok-{v['KWOK_VERSION']}" / "kwok"
        if name == "helm":
            return self.cache / "bin" / f"helm-{v['HELM_VERSION']}" / "helm"
        if name in ("containerd", "containerd-shim-runc-v2", "ctr"):
            return self.cache / "bin" / f"containerd-{v['CONTAINERD_VERSION']}" / name
        return self.cache / "bin" / f"kubernetes-{v['KUBERNETES_VERSION']}" / name

    def bin_dirs(self) -> list[Path]:
        return sorted({self.binary(n).parent for n in ("etcd", "kubectl", "kwok", "helm", "ctr")})

    # state
    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def info(self) -> Path:
        return self.state / "cluster.json"

    @property
    def containerd(self) -> Path:
        return self.state / "containerd"

    @property
    def containerd_sock(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.state / "kubelet"

    @property
    def kubelet_root(self) -> Path:
        return self.kubelet / "root"

    @property
    def device_plugins(self) -> Path:
        """Where the kubelet's device manager listens (kubelet.sock) and plugins register."""
        return self.kubelet_root / "device-plugins"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def component_kubeconfig(self, name: str) -> Path:
        return self.state / "kubeconfigs" / f"{name}.kubeconfig"


# --------------------------------------------------------------------------------------------
# The cluster


class LocalCluster:
    def __init__(self, paths: Paths | None = None, spec_path: Path | None = None,
                 kubeconfig: Path | None = None) -> None:
        self.paths = paths or Paths.from_env()
        # Another cluster's kubeconfig (kind), for the commands that only talk to the API.
        self.kubeconfig = kubeconfig or self.paths.kubeconfig
        self.spec_path = spec_path or Path(os.environ.get("CONSPIRATOR_E2E_SPEC", DEFAULT_SPEC))
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ---- process bookkeeping ------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self.paths.pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None
        # Guard against pid reuse: the process must still be the binary we started.
        cmd = proc_cmdline(pid)
        if not cmd or not pid_alive(pid):
            return None
        ok = Path(cmd[0]).name == name
        return pid if ok and str(self.paths.state) in " ".join(cmd) else None

    def running(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in COMPONENTS}

    def is_up(self) -> bool:
        return all(self.running().values()) and self._apiserver_ready()

    def _spawn(self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None
               ) -> None:
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.run.mkdir(parents=True, exist_ok=True)
        logf = self.paths.log_file(name).open("ab")
        logf.write(f"\n===== {time.strftime('%F %T')} starting {name}\n".encode())
        logf.flush()
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.paths.state,
            env=full_env,
            start_new_session=True,
        )
        logf.close()
        self._children[name] = proc
        self.paths.pid_file(name).write_text(f"{proc.pid}\n")

    def _stop(self, name: str, timeout: float = 15) -> None:
        pid = self.pid(name)
        if pid is None:
            self.paths.pid_file(name).unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            self._reap(name)
            time.sleep(0.1)
        if pid_alive(pid):
            log(f"{name} ignored SIGTERM for {timeout:.0f}s: killing")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(f"{name} to exit", lambda: not pid_alive(pid), 10, 0.1)
        self._reap(name)
        self.paths.pid_file(name).unlink(missing_ok=True)

    def _reap(self, name: str) -> None:
        child = self._children.get(name)
        if child is not None and child.poll() is not None:
            del self._children[name]

    def _expect_alive(self, name: str) -> str:
        if self.pid(name) is None:
            raise ClusterError(
                f"{name} exited; last lines of {self.paths.log_file(name)}:\n"
                + tail(self.paths.log_file(name))
            )
        return ""

    def _log_hint(self, name: str) -> str:
        return f"\nlast lines of {self.paths.log_file(name)}:\n{tail(self.paths.log_file(name))}"

    # ---- health probes ------------------------------------------------------------------

    def _https(self, url: str, *, client: bool = True, verify: bool = True) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.paths.pki / "ca.crt"))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if client:
            ctx.load_cert_chain(self.paths.pki / "admin.crt", self.paths.pki / "admin.key")
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _apiserver_ready(self) -> bool:
        try:
            code, _ = self._https(f"https://127.0.0.1:{APISERVER_PORT}/readyz")
        except (OSError, ssl.SSLError):
            return False
        return code == 200

    def _etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(json.load(resp).get("health") == "true")

    def _healthz(self, port: int) -> bool:
        code, _ = self._https(f"https://127.0.0.1:{port}/healthz", client=False, verify=False)
        return code == 200

    def _kubelet_healthy(self) -> bool:
        url = f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)

    # ---- kubectl ------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(
            [self.paths.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, check=check, timeout=timeout,
        )

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return run([self.paths.binary("ctr"), "--address", self.paths.containerd_sock,
                    "-n", "k8s.io", *args], check=check, timeout=timeout)

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

    # ---- certificates and kubeconfigs ---------------------------------------------------

    def _write_pki(self, node_name: str) -> None:
        pki = self.paths.pki
        pki.mkdir(parents=True, exist_ok=True)
        ca = Certs(pki)
        ca.make_ca()
        ca.issue(
            "apiserver", "kube-apiserver", server=True,
            sans=["IP:127.0.0.1", f"IP:{SERVICE_IP}", f"IP:{NODE_IP}", "DNS:localhost",
                  "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                  "DNS:kubernetes.default.svc.cluster.local"],
        )
        ca.issue("admin", "conspirator-e2e-admin", org="system:masters")
        ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                 org="system:masters")
        ca.issue("kube-controller-manager", "system:kube-controller-manager")
        ca.issue("kube-scheduler", "system:kube-scheduler")
        ca.issue("kubelet", f"system:node:{node_name}", org="system:nodes")
        ca.issue("kubelet-serving", node_name, server=True,
                 sans=[f"IP:{NODE_IP}", f"DNS:{node_name}", "IP:127.0.0.1"])
        ca.issue("kwok", "kwok-controller", org="system:masters")
        ca.service_account_keys()

        write_kubeconfig(self.paths.kubeconfig, pki, "admin")
        for name, cert in (("kube-controller-manager", "kube-controller-manager"),
                           ("kube-scheduler", "kube-scheduler"), ("kubelet", "kubelet"),
                           ("kwok", "kwok")):
            write_kubeconfig(self.paths.component_kubeconfig(name), pki, cert)

    # ---- control plane ------------------------------------------------------------------

    def _start_etcd(self) -> None:
        data = self.paths.state / "etcd"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._spawn("etcd", [
            self.paths.binary("etcd"),
            "--name=conspirator-e2e",
            f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-cluster=conspirator-e2e=http://127.0.0.1:{ETCD_PEER_PORT}",
            "--listen-metrics-urls=",
            # A test cluster: fewer fsyncs' worth of waiting, small snapshots.
            "--unsafe-no-fsync=true",
            "--snapshot-count=10000",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ])

    def _start_apiserver(self) -> None:
        pki = self.paths.pki
        self._spawn("kube-apiserver", [
            self.paths.binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--bind-address=127.0.0.1",
            f"--secure-port={APISERVER_PORT}",
            f"--advertise-address={NODE_IP}",
            # The kubernetes Service would point at the loopback address, which Endpoints refuse.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            feature_gates_flag(),
            "--profiling=false",
            "--v=1",
        ])

    def _start_controller_manager(self) -> None:
        kc = self.paths.component_kubeconfig("kube-controller-manager")
        pki = self.paths.pki
        self._spawn("kube-controller-manager", [
            self.paths.binary("kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={CONTROLLER_MANAGER_PORT}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            feature_gates_flag(),
            "--profiling=false",
            "--v=1",
        ])

    def _start_scheduler(self) -> None:
        kc = self.paths.component_kubeconfig("kube-scheduler")
        self._spawn("kube-scheduler", [
            self.paths.binary("kube-scheduler"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={SCHEDULER_PORT}",
            "--leader-elect=false",
            feature_gates_flag(),
            "--profiling=false",
            "--v=1",
        ])

    def _node_ready(self, name: str) -> bool:
        proc = self.kubectl("get", "node", name, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        node = json.loads(proc.stdout)
        conds = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def _default_sa(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default",
                            check=False).returncode == 0

    # ---- the real node ------------------------------------------------------------------

    def build_images(self) -> list[Path]:
        """Compile the pause and hello programs statically and pack them as OCI archives."""
        out_dir = self.paths.cache / "images"
        out_dir.mkdir(parents=True, exist_ok=True)
        images = []
        for name, ref, binary in (("pause", PAUSE_IMAGE, "/pause"),
                                  ("hello", HELLO_IMAGE, "/hello")):
            src = E2E_DIR / "images" / name / f"{name}.c"
            key = hashlib.sha256(src.read_bytes() + ref.encode() +
                                 Path(oci.__file__).read_bytes()).hexdigest()[:16]
            tar = out_dir / f"{name}-{key}.tar"
            if not tar.exists():
                exe = out_dir / f"{name}-{key}.bin"
                run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror",
                     "-o", exe, src])
                oci.write_archive(oci.ImageSpec(name=ref, entrypoint=[binary],
                                                files={binary.lstrip("/"): exe}), tar)
                exe.unlink()
                for stale in out_dir.glob(f"{name}-*.tar"):
                    if stale != tar:
                        stale.unlink()
            images.append(tar)
        return images

    def _containerd_ready(self) -> bool:
        if not self.paths.containerd_sock.exists():
            return False
        return self.ctr("version", check=False, timeout=10).returncode == 0

    def _start_containerd(self) -> None:
        c = self.paths.containerd
        for d in ("root", "state", "opt", "runc"):
            (c / d).mkdir(parents=True, exist_ok=True)
        cni_conf = self.paths.state / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-conspirator.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        # containerd watches the CDI spec dirs that exist when it starts; the first is where
        # DRA drivers write their (per-claim) specs.  Left in place by `down`: machine-wide.
        Path(CDI_SPEC_DIRS[0]).mkdir(parents=True, exist_ok=True)
        runtime = "io.containerd.cri.v1.runtime"
        config = f"""\
# Generated by e2e/cluster.py: containerd {self.paths.versions["CONTAINERD_VERSION"]} (built by
# e2e/build.sh) for the e2e cluster's real node.  Config version 3 (containerd 2.x): the CRI
# plugin is split into a runtime, an images and a server ("grpc.v1.cri") plugin.
version = 3
root = "{c / 'root'}"
state = "{c / 'state'}"
# Snapshotters the node does not use (btrfs is not even built without cgo), and tracing.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.paths.containerd_sock}"

[plugins.'io.containerd.internal.v1.opt']
  path = "{c / 'opt'}"

# NRI (on by default in 2.x) would listen on the machine-wide /var/run/nri/nri.sock.
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'{runtime}']
  # These sandboxes withhold CAP_SYS_RESOURCE even from root, so no process may lower its
  # oom_score_adj (runc fails with "can't get final child's PID from pipe").  Clamp the
  # sandbox's -998 and Guaranteed pods' -997 to containerd's own score instead.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  # CDI (DRA drivers and device plugins hand devices over as CDI names): specs in these dirs.
  enable_cdi = true
  cdi_spec_dirs = {json.dumps(list(CDI_SPEC_DIRS))}
  [plugins.'{runtime}'.containerd]
    default_runtime_name = "runc"
    [plugins.'{runtime}'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # The shim built with this containerd, not whatever containerd-shim-runc-v2 is on PATH
      # (Debian's 1.6 one may be installed).  runc itself comes from PATH (Debian's).
      runtime_path = "{self.paths.binary('containerd-shim-runc-v2')}"
      [plugins.'{runtime}'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c / 'runc'}"
  [plugins.'{runtime}'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni_conf}"
    max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"""
        (c / "config.toml").write_text(config)
        self._spawn("containerd", [self.paths.binary("containerd"), "--config", c / "config.toml"])

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "conspirator-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.paths.state / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "loopback"},
            ],
        }

    def _start_kubelet(self, node_name: str) -> None:
        k = self.paths.kubelet
        self.paths.kubelet_root.mkdir(parents=True, exist_ok=True)
        ensure_cgroup_root()
        pki = self.paths.pki
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.paths.containerd_sock}",
            # containerd 2.x tells the kubelet its cgroup driver (CRI RuntimeConfig: cgroupfs,
            # since SystemdCgroup = false); this setting is the fallback for runtimes that
            # cannot.  These hosts run cgroup v1, which kubelets since 1.35 refuse unless told.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "featureGates": dict(FEATURE_GATES),
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            "clusterDomain": "cluster.local",
            "registerNode": True,
            "maxPods": 50,
            "serializeImagePulls": False,
            # The images are imported, never pulled: never garbage-collect them, and do not
            # let a full disk on a CI machine evict the test pods.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "shutdownGracePeriod": "0s",
            "logging": {"format": "text"},
        }
        (k / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn("kubelet", [
            self.paths.binary("kubelet"),
            f"--config={k / 'config.yaml'}",
            f"--kubeconfig={self.paths.component_kubeconfig('kubelet')}",
            f"--root-dir={self.paths.kubelet_root}",
            f"--cert-dir={k / 'pki'}",
            f"--hostname-override={node_name}",
            f"--node-ip={NODE_IP}",
            "--node-labels=conspirator.io/real-node=true",
            "--v=1",
        ])

    # ---- kwok ---------------------------------------------------------------------------

    def _start_kwok(self) -> None:
        d = self.paths.state / "kwok"
        d.mkdir(parents=True, exist_ok=True)
        (d / "kwok.yaml").write_text(KWOK_STAGES)
        self._spawn("kwok", [
            self.paths.binary("kwok"),
            f"--config={d / 'kwok.yaml'}",
            f"--kubeconfig={self.paths.component_kubeconfig('kwok')}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--cidr={KWOK_POD_CIDR}",
            f"--node-ip={KWOK_NODE_IP}",
            f"--server-address=127.0.0.1:{KWOK_PORT}",
            "--node-lease-duration-seconds=40",
        ], env={"HOME": str(d)})

    def create_gpu_nodes(self, spec: ClusterSpec) -> None:
        for node in spec.gpu_nodes:
            obj = node.node_object()
            self.kubectl("apply", "-f", "-", input=json.dumps(obj))
            # Status is not part of apply; set capacity through the status subresource.
            patch = {"status": obj["status"]}
            self.kubectl("patch", "node", node.name, "--subresource=status", "--type=merge",
                         "-p", json.dumps(patch))

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

