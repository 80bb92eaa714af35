"""Per-claim CDI spec files (Container Device Interface).

The kubelet passes the CDI device ids a claim's devices map to
(``conspirator.io/mig=<claim uid>-<device>``) to the container runtime, which reads the
specs in its CDI directory (``/var/run/cdi``; containerd 2.x has CDI on by default, 1.7
with ``enable_cdi``) and applies their container edits.  One spec file per claim,
``conspirator.io-mig_<claim uid>.json``:

* spec-level ``containerEdits``: the claim's environment (what the device plugin's
  Allocate gives a container: ``NVIDIA_VISIBLE_DEVICES``, ``CONSPIRATOR_*``) and mounts,
  applied once whichever of the claim's devices a container gets;
* one CDI device per claim device, with that device's device nodes.

``cdiVersion`` is :data:`CDI_VERSION` (0.6.0: every field used here exists since 0.3.0;
containerd 2.x's CDI library reads up to 0.8.0).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conspirator.deviceplugin.backend import DeviceNode
from conspirator.deviceplugin.dra.checkpoint import write_atomic

CDI_VERSION = "0.6.0"
VENDOR = "conspirator.io"
CLASS = "mig"
KIND = f"{VENDOR}/{CLASS}"
DEFAULT_CDI_DIR = Path("/var/run/cdi")


def cdi_device_name(claim_uid: str, device: str) -> str:
    return f"{claim_uid}-{device}"


def cdi_device_id(claim_uid: str, device: str) -> str:
    """The fully qualified CDI id the kubelet hands the runtime."""
    return f"{KIND}={cdi_device_name(claim_uid, device)}"


def spec_path(cdi_dir: Path, claim_uid: str) -> Path:
    return cdi_dir / f"{VENDOR}-{CLASS}_{claim_uid}.json"


def _mount(container: str, host: str, read_only: bool) -> dict[str, Any]:
    options = ["ro" if read_only else "rw", "nosuid", "nodev", "rbind"]
    return {"hostPath": host, "containerPath": container, "options": options}


def _node(d: DeviceNode) -> dict[str, Any]:
    return {"path": d.path, "hostPath": d.path, "permissions": d.permissions}


def device_env(device: str) -> str:
    """The per-device variable naming a device's UUID: ``CONSPIRATOR_DRA_GPU_0_MIG_1G_10GB_3``
    (CDI refuses a device without edits, and a simulated device has no device nodes)."""
    return "CONSPIRATOR_DRA_" + device.upper().replace("-", "_")


def claim_spec(claim_uid: str, env: Mapping[str, str],
               mounts: Sequence[tuple[str, str, bool]],
               devices: Mapping[str, tuple[str, Sequence[DeviceNode]]]) -> dict[str, Any]:
    """The CDI spec of one claim: ``devices`` maps each claim device's DRA name to its
    UUID and device nodes; ``mounts`` are (container path, host path, read-only)."""
    edits: dict[str, Any] = {"env": [f"{k}={v}" for k, v in sorted(env.items())]}
    if mounts:
        edits["mounts"] = [_mount(c, h, ro) for c, h, ro in mounts]
    return {
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": [{"name": cdi_device_name(claim_uid, name),
                     "containerEdits": {"env": [f"{device_env(name)}={uuid}"],
                                        **({"deviceNodes": [_node(n) for n in nodes]}
                                           if nodes else {})}}
                    for name, (uuid, nodes) in devices.items()],
        "containerEdits": edits,
    }


def write_spec(cdi_dir: Path, claim_uid: str, spec: Mapping[str, Any]) -> Path:
    path = spec_path(cdi_dir, claim_uid)
    write_atomic(path, json.dumps(spec, indent=1) + "\n")
    return path


def remove_spec(path: Path) -> bool:
    """Remove a claim's spec; False when it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


__all__ = [
    "CDI_VERSION",
    "DEFAULT_CDI_DIR",
    "KIND",
    "cdi_device_id",
    "cdi_device_name",
    "claim_spec",
    "device_env",
    "remove_spec",
    "spec_path",
    "write_spec",
]
