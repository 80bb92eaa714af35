"""Host setup and teardown of the real node: packages, bridge, cgroups, mounts, sysctls."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conspirator_e2e.constants import BRIDGE, CGROUP_ROOT, NODE_IP
from conspirator_e2e.procs import ClusterError, log, run

# --------------------------------------------------------------------------------------------
# Host setup and teardown: packages, bridge, cgroups, mounts, sysctls

# containerd itself is built by e2e/build.sh (2.x, for CDI); runc and the CNI plugins are Debian's.
NODE_PACKAGES = {"runc": "runc", "/usr/lib/cni/bridge": "containernetworking-plugins"}

# What the kubelet sets at start (protectKernelDefaults: false); restored by `down`.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes", "net/ipv4/ip_forward")


def ensure_node_packages() -> None:
    missing = sorted({pkg for what, pkg in NODE_PACKAGES.items()
                      if not (Path(what).exists() if what.startswith("/") else shutil.which(what))})
    for tool in ("gcc", "openssl", "ip", "umount"):
        if not shutil.which(tool):
            raise ClusterError(f"{tool} is required")
    if not missing:
        return
    log(f"installing Debian packages {missing}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed: {proc.stderr[-2000:]}")


def read_sysctls() -> dict[str, str]:
    out = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            out[key] = Path("/proc/sys", key).read_text().strip()
    return out


def restore_sysctls(before: dict[str, str]) -> None:
    for key, value in before.items():
        p = Path("/proc/sys", key)
        with contextlib.suppress(OSError):
            if p.read_text().strip() != value:
                p.write_text(value + "\n")


def setup_bridge() -> None:
    if run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f" {NODE_IP}/" not in addrs:
        run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def teardown_bridge() -> None:
    """Delete the bridge and any veth still attached to it (deleting one end deletes both)."""
    if run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        return
    ports = run(["ip", "-o", "link", "show", "master", BRIDGE], check=False).stdout
    for line in ports.splitlines():
        dev = line.split(":", 2)[1].strip().split("@", 1)[0]
        run(["ip", "link", "del", dev], check=False)
    run(["ip", "link", "del", BRIDGE], check=False)


def cgroup_hierarchies() -> list[Path]:
    """Mount points of the cgroup v1 hierarchies (and the v2 one where present)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(left.split()[4]))
    return out


def ensure_cgroup_root() -> None:
    for h in cgroup_hierarchies():
        d = h / CGROUP_ROOT
        d.mkdir(exist_ok=True)
        # A new cpuset cgroup starts empty, and nothing can join it until it has cpus and mems.
        for f in ("cpuset.cpus", "cpuset.mems"):
            if (d / f).exists() and not (d / f).read_text().strip():
                (d / f).write_text((h / f).read_text())


def _cgroup_dirs_deepest_first() -> list[Path]:
    dirs: list[Path] = []
    for h in cgroup_hierarchies():
        root = h / CGROUP_ROOT
        if root.is_dir():
            dirs.extend(Path(p) for p, _, _ in os.walk(root))
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def kill_cgroup_processes() -> None:
    """SIGKILL every process in the kubelet's cgroup tree (containers that outlived their pod)."""
    for _ in range(50):
        pids: set[int] = set()
        for d in _cgroup_dirs_deepest_first():
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroup_root() -> None:
    for d in _cgroup_dirs_deepest_first():
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
        else:
            log(f"could not remove cgroup {d}")


def remove_empty_dirs(root: Path) -> None:
    """Remove ``root`` and its subdirectories, bottom-up, as far as they are empty."""
    if not root.is_dir():
        return
    for d, _, _ in sorted(os.walk(root), key=lambda w: len(Path(w[0]).parts), reverse=True):
        with contextlib.suppress(OSError):
            Path(d).rmdir()


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == str(root) or mp.startswith(prefix):
            out.append(mp)
    return out


def unmount_under(root: Path) -> None:
    """Unmount everything below ``root``: overlay rootfs, sandbox shm, netns, pod volumes."""
    for _ in range(5):
        mps = mounts_under(root)
        if not mps:
            return
        for mp in sorted(mps, key=lambda m: m.count("/"), reverse=True):
            if run(["umount", mp], check=False).returncode != 0:
                run(["umount", "-l", mp], check=False)
    left = mounts_under(root)
    if left:
        log(f"mounts left under {root}: {left}")


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
