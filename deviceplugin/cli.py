"""``conspirator node-daemon``: the node daemon's command line.

Every flag has an environment variable, so that a DaemonSet sets them from its pod spec
(``NODE_NAME`` from the downward API, typically).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from conspirator.cli import UsageError

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_SOCKET_DIR = "/run/conspirator"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "node-daemon",
        help="run the node daemon: MIG layouts, device plugin, buffer registry",
        description=(
            "Apply GPUNode.spec to this node's GPUs, publish GPUNode.status, advertise the MIG "
            "devices to the kubelet (device plugin API v1beta1) or, in kwok mode, on the Node "
            "object, and run the input-buffer registry."
        ),
    )
    p.add_argument("--node-name", default=_env("NODE_NAME"),
                   help="this node's name (env NODE_NAME; required)")
    p.add_argument("--backend", choices=("nvml", "simulated"),
                   default=_env("CONSPIRATOR_BACKEND", "nvml"),
                   help="GPU backend (env CONSPIRATOR_BACKEND; default %(default)s)")
    p.add_argument("--spec-file", default=_env("CONSPIRATOR_NODE_SPEC"),
                   help="node spec file of the simulated backend (env CONSPIRATOR_NODE_SPEC)")
    p.add_argument("--state-file", default=_env("CONSPIRATOR_NODE_STATE"),
                   help="where the simulated GPUs keep their state (env CONSPIRATOR_NODE_STATE; "
                        "default: <spec>.state.json)")
    p.add_argument("--kwok", action="store_true", default=_flag("CONSPIRATOR_KWOK"),
                   help="no kubelet: advertise the MIG resources by patching the Node's capacity "
                        "(env CONSPIRATOR_KWOK=1)")
    p.add_argument("--kubelet-socket-dir", default=_env("CONSPIRATOR_KUBELET_DIR",
                                                        DEFAULT_PLUGIN_DIR),
                   help="the kubelet's device-plugin directory (env CONSPIRATOR_KUBELET_DIR; "
                        "default %(default)s)")
    p.add_argument("--pod-resources-socket",
                   default=_env("CONSPIRATOR_POD_RESOURCES_SOCKET",
                                "/var/lib/kubelet/pod-resources/kubelet.sock"),
                   help="the kubelet's PodResources API socket, which says which pod holds "
                        "which device; '' reads the device manager's checkpoint instead "
                        "(env CONSPIRATOR_POD_RESOURCES_SOCKET; default %(default)s)")
    p.add_argument("--registry-socket",
                   default=_env("CONSPIRATOR_REGISTRY_SOCKET",
                                f"{DEFAULT_SOCKET_DIR}/registry/registry.sock"),
                   help="buffer-registration socket (env CONSPIRATOR_REGISTRY_SOCKET; "
                        "default %(default)s); its directory is mounted into workers, so "
                        "keep nothing else there")
    p.add_argument("--container-socket-dir", default=_env("CONSPIRATOR_CONTAINER_SOCKET_DIR",
                                                          DEFAULT_SOCKET_DIR),
                   help="where workers find the registry socket's directory "
                        "(default %(default)s)")
    p.add_argument("--agent-socket",
                   default=_env("CONSPIRATOR_AGENT_SOCKET",
                                f"{DEFAULT_SOCKET_DIR}/agent/publish.sock"),
                   help="the DPU agent's publish socket, where the registry publishes buffers "
                        "(env CONSPIRATOR_AGENT_SOCKET; default %(default)s)")
    p.add_argument("--agent-token-file", default=_env("CONSPIRATOR_AGENT_TOKEN_FILE"),
                   help="the node token proving the registry to the agent (env "
                        "CONSPIRATOR_AGENT_TOKEN_FILE; without it nothing is published)")
    p.add_argument("--dpu-agent-endpoint", default=_env("CONSPIRATOR_DPU_AGENT_ENDPOINT"),
                   help="host:port clients use to reach the DPU agent (published in status)")
    p.add_argument("--kubeconfig", default=_env("KUBECONFIG"),
                   help="kubeconfig (env KUBECONFIG; default: in-cluster config)")
    p.add_argument("--resync-seconds", type=float,
                   default=float(_env("CONSPIRATOR_RESYNC_SECONDS", "10") or 10),
                   help="reconcile at least this often (default %(default)s)")
    p.add_argument("--metrics-port", type=int,
                   default=int(_env("CONSPIRATOR_METRICS_PORT", "9402") or 0),
                   help="Prometheus metrics port, 0 for none (default %(default)s)")
    p.add_argument("--metrics-address", default=_env("CONSPIRATOR_METRICS_ADDRESS", "0.0.0.0"),
                   help="address the metrics server binds (default %(default)s)")
    p.add_argument("--log-level", default=_env("CONSPIRATOR_LOG_LEVEL", "INFO"),
                   help="logging level (default %(default)s)")
    p.add_argument("--allocation", choices=("auto", "dra", "devicePlugin"),
                   default=_env("CONSPIRATOR_ALLOCATION", "devicePlugin"),
                   help="how pods get devices: a kubelet device plugin, the DRA driver "
                        "conspirator.io, or auto (DRA when the API server serves "
                        "resource.k8s.io/v1 and the kubelet has a plugin-registration "
                        "directory it registers the driver from; default %(default)s)")
    p.add_argument("--dra-plugin-dir", default=_env("CONSPIRATOR_DRA_PLUGIN_DIR",
                                                    "/var/lib/kubelet/plugins/conspirator.io"),
                   help="DRA mode: the driver's socket and checkpoint (default %(default)s)")
    p.add_argument("--plugins-registry-dir",
                   default=_env("CONSPIRATOR_PLUGINS_REGISTRY_DIR",
                                "/var/lib/kubelet/plugins_registry"),
                   help="DRA mode: the kubelet's plugin-registration directory "
                        "(default %(default)s)")
    p.add_argument("--cdi-dir", default=_env("CONSPIRATOR_CDI_DIR", "/var/run/cdi"),
                   help="DRA mode: where the claims' CDI specs go (default %(default)s)")
    p.add_argument("--dra-registration-timeout", type=float,
                   default=float(_env("CONSPIRATOR_DRA_REGISTRATION_TIMEOUT", "60") or 60),
                   help="--allocation auto: seconds to wait for the kubelet to register the "
                        "DRA driver before serving device plugins instead (default "
                        "%(default)s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.node_name:
        raise UsageError("--node-name (or NODE_NAME) is required")
    if args.backend == "simulated" and not args.spec_file:
        raise UsageError("--backend simulated needs --spec-file (or CONSPIRATOR_NODE_SPEC)")
    from conspirator.deviceplugin.daemon import run_from_args

    return run_from_args(args)
