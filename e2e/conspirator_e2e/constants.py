"""Ports, addresses, images and names of the local cluster, shared by its modules."""

from __future__ import annotations

from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent.parent
REPO = E2E_DIR.parent
DEFAULT_SPEC = E2E_DIR / "clusters" / "default.yaml"

# Ports, all on loopback except the kubelet's, which must listen on the node IP.
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KWOK_PORT = 10247

# The real node's network: a bridge of our own carries the node IP (the kubelet refuses a
# loopback node IP) and is the CNI bridge whose gateway the pods use.
BRIDGE = "cnspr0"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
# Addresses kwok hands out to its simulated nodes and pods: never routed, never contacted.
KWOK_POD_CIDR = "10.245.0.0/16"
KWOK_NODE_IP = "10.246.0.1"
# The kubelet's cgroup root in every cgroup v1 hierarchy (cgroupfs driver).
CGROUP_ROOT = "conspirator-e2e"

PAUSE_IMAGE = "conspirator.local/e2e/pause:v1"
HELLO_IMAGE = "conspirator.local/e2e/hello:v1"

GPU_TAINT_KEY = "conspirator.io/gpu"
MIG_RESOURCE_PREFIX = "conspirator.io/mig-"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"

# (memory slices, compute slices) per MIG profile, for the GPU models in cluster specs
# (DESIGN section 5's table).  Used only to refuse impossible layouts in a spec.
MIG_PROFILES: dict[str, dict[str, tuple[int, int]]] = {
    "A100-40GB": {
        "1g.5gb": (1, 1), "1g.10gb": (2, 1), "2g.10gb": (2, 2), "3g.20gb": (4, 3),
        "4g.20gb": (4, 4), "7g.40gb": (8, 7),
    },
    "A100-80GB": {
        "1g.10gb": (1, 1), "1g.20gb": (2, 1), "2g.20gb": (2, 2), "3g.40gb": (4, 3),
        "4g.40gb": (4, 4), "7g.80gb": (8, 7),
    },
    "H200-141GB": {
        "1g.18gb": (1, 1), "1g.35gb": (2, 1), "2g.35gb": (2, 2), "3g.71gb": (4, 3),
        "4g.71gb": (4, 4), "7g.141gb": (8, 7),
    },
}
MIG_PROFILES["H100-80GB"] = MIG_PROFILES["A100-80GB"]

COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kwok",
)
