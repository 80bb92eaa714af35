"""The real node daemon (``conspirator node-daemon``) on the e2e cluster.

* :class:`DaemonProcess`: one daemon as a separate process (the installed ``conspirator``
  command), its log in a file, stopped with SIGTERM or killed with SIGKILL.
* :class:`NodeDaemons`: one daemon per kwok GPU node, in kwok mode on the simulated backend
  (a node spec file per node with the node's GPU model, GPU count and initial layout), with
  the same ``install``/``start``/``stop``/``uninstall`` shape as the operator tests'
  stand-in (:mod:`.fakenode`), which it replaces.
* :func:`build_dpworker_image`: the tiny static worker of ``images/dpworker`` as an OCI image
  imported into the real node's containerd.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from conspirator_e2e import oci
from conspirator_e2e.cluster import (
    E2E_DIR,
    MIG_RESOURCE_PREFIX,
    REPO,
    GPUNodeSpec,
    LocalCluster,
    run,
)

DPWORKER_IMAGE = "conspirator.local/e2e/dpworker:v1"
GROUP, VERSION, PLURAL = "conspirator.io", "v1alpha1", "gpunodes"


def conspirator_command() -> Path:
    """The ``conspirator`` command of the environment running the tests."""
    exe = Path(sys.executable).parent / "conspirator"
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: install the package into this environment")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def apply_crds(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/gpunodes.conspirator.io")


def build_dpworker_image(cluster: LocalCluster) -> str:
    """Compile ``images/dpworker/dpworker.c`` statically, pack it, import it; the image ref."""
    src = E2E_DIR / "images" / "dpworker" / "dpworker.c"
    out_dir = cluster.paths.cache / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(src.read_bytes() + DPWORKER_IMAGE.encode()
                         + Path(oci.__file__).read_bytes()).hexdigest()[:16]
    tar = out_dir / f"dpworker-{key}.tar"
    if not tar.exists():
        exe = out_dir / f"dpworker-{key}.bin"
        run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", exe, src])
        oci.write_archive(oci.ImageSpec(name=DPWORKER_IMAGE, entrypoint=["/dpworker"],
                                        files={"dpworker": exe}), tar)
        exe.unlink()
    cluster.ctr("images", "import", str(tar))
    return DPWORKER_IMAGE


class DaemonProcess:
    """``conspirator node-daemon`` running as its own process."""

    def __init__(self, name: str, args: Sequence[str], log_file: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = [str(conspirator_command()), "node-daemon", *args]
        self.log_file = log_file
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> DaemonProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        log.write(f"---- start {self.starts + 1}: {' '.join(self.args)}\n".encode())
        log.flush()
        # Its own directory as cwd: the repository root would shadow the stdlib `operator`.
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=str(self.log_file.parent),
                                     start_new_session=True)
        log.close()
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the daemon dies between two operations, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def initial_layout(model: str, profiles: Sequence[str]) -> list[dict[str, Any]]:
    """Place ``profiles`` (a GPU of the cluster spec) at the first start slice each fits."""
    from conspirator.mig import Placement, gpu_model, is_valid_layout

    m = gpu_model(model)
    chosen: list[Placement] = []
    for name in sorted(profiles, key=lambda p: -m.profile(p).memory_slices):
        prof = m.profile(name)
        for start in prof.starts:
            if is_valid_layout(m, [*chosen, Placement(prof, start)]):
                chosen.append(Placement(prof, start))
                break
        else:
            raise ValueError(f"{profiles} does not fit a {model}")
    return [{"profile": p.profile.name, "start": p.start}
            for p in sorted(chosen, key=lambda p: p.start)]


def node_spec_file(node: GPUNodeSpec, path: Path, op_delay: float = 0.0) -> Path:
    doc = {
        "node": node.name,
        "gpus": [{"model": node.gpu_model, "instances": initial_layout(node.gpu_model, g)}
                 for g in node.gpus],
        "opDelaySeconds": op_delay,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class NodeDaemons:
    """One real node daemon per kwok GPU node (simulated backend, kwok mode)."""

    def __init__(self, cluster: LocalCluster, nodes: Iterable[GPUNodeSpec], workdir: Path,
                 op_delay: float = 0.0, resync: float = 2.0) -> None:
        self.cluster = cluster
        self.nodes = {n.name: n for n in nodes}
        self.workdir = workdir
        self.daemons: dict[str, DaemonProcess] = {}
        for name, n in self.nodes.items():
            d = workdir / name
            spec = node_spec_file(n, d / "node.yaml", op_delay)
            self.daemons[name] = DaemonProcess(name, [
                "--node-name", name, "--backend", "simulated", "--spec-file", str(spec),
                "--state-file", str(d / "gpus.json"), "--kwok",
                "--kubeconfig", str(cluster.paths.kubeconfig),
                "--resync-seconds", str(resync), "--metrics-port", "0",
                "--log-level", "INFO",
            ], d / "daemon.log")

    def state_file(self, name: str) -> Path:
        return self.workdir / name / "gpus.json"

    def install(self) -> None:
        apply_crds(self.cluster)

    def start(self) -> None:
        for d in self.daemons.values():
            if not d.alive:
                d.start()

    def stop(self) -> None:
        for d in self.daemons.values():
            d.stop()

    def uninstall(self) -> None:
        """Stop the daemons, delete their GPUNodes, give the Nodes their spec capacity back."""
        self.stop()
        for name, n in self.nodes.items():
            self.cluster.kubectl("delete", "gpunode", name, "--ignore-not-found", check=False)
            cap: dict[str, str | None] = {
                k: None for k in self._capacity(name) if k.startswith(MIG_RESOURCE_PREFIX)}
            cap.update({MIG_RESOURCE_PREFIX + p: str(c) for p, c in n.mig_capacity().items()})
            self.cluster.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                                 "-p", json.dumps({"status": {"capacity": cap,
                                                              "allocatable": cap}}),
                                 check=False)

    def _capacity(self, name: str) -> dict[str, str]:
        try:
            node = self.cluster.kubectl_json("get", "node", name)
        except subprocess.CalledProcessError:
            return {}
        return dict(node.get("status", {}).get("capacity") or {})

    def logs(self) -> str:
        return "\n".join(f"==== {n}\n{d.tail()}" for n, d in self.daemons.items())


def wait_for(what: str, probe: Any, timeout: float = 90, interval: float = 0.3,
             on_timeout: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    hint = on_timeout() if on_timeout is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                         f"(last: {last!r})\n{hint}")


__all__ = [
    "DPWORKER_IMAGE",
    "DaemonProcess",
    "NodeDaemons",
    "apply_crds",
    "build_dpworker_image",
    "conspirator_command",
    "free_port",
    "initial_layout",
    "node_spec_file",
    "wait_for",
]
