"""What the two demos (e2e/demo.py, e2e/demo_operator.py) share: the command line, root
check and the local cluster's lock, and how they talk to the user."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path

from conspirator_e2e.cluster import LocalCluster


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def show(cluster: LocalCluster, *args: str) -> None:
    """Print a kubectl command and what it answers."""
    print(f"$ kubectl {' '.join(args)}", flush=True)
    proc = cluster.kubectl(*args, check=False)
    print(proc.stdout.rstrip() or proc.stderr.rstrip(), flush=True)


def main(doc: str | None, up: Callable[[LocalCluster, bool], int],
         down: Callable[[LocalCluster], None]) -> int:
    """``[--keep | --down]``: run ``up`` (or ``down``) holding the local cluster's lock."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave everything running")
    ap.add_argument("--down", action="store_true", help="remove what --keep left running")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the local cluster needs root (kubelet, containerd, mounts, cgroups)",
              file=sys.stderr)
        return 2
    cluster = LocalCluster()
    lock_path = Path(str(cluster.paths.state) + ".lock")
    with lock_path.open("a") as lock:  # one user of the local cluster at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if args.down:
            down(cluster)
            return 0
        return up(cluster, args.keep)
