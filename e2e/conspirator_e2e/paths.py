"""The local cluster's files, directories, pinned versions and feature gates."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from conspirator_e2e.constants import (
    E2E_DIR,
)

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
