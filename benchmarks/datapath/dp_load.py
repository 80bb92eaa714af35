"""Background load for the data-path benchmark: keep a core busy for a share of the time.

Two kinds, both ``--percent`` of one core on average:

* ``spin``: one process spins (pure CPU, L1-resident) for ``percent`` of every 10 ms.  The
  scheduler lets a waking data-path process preempt it almost at once, and a busy core
  never sleeps deeply, so this is the mildest load there is.
* ``memory``: ``--procs`` processes, each copying 4 MiB blocks through 32 MiB of memory in
  short bursts and sleeping in between (like other tenants' data loaders): they compete
  with the data path on equal terms at every wake-up, and they evict its caches and use
  memory bandwidth.

    python dp_load.py --cpu 0 --percent 80 --kind memory --procs 4
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np


def spin(until: float) -> None:
    while time.perf_counter() < until:
        pass


def run(kind: str, duty: float, burst: float) -> None:
    period = burst / duty
    src = np.ones(32 << 20, np.uint8)
    dst = np.empty_like(src)
    block = 4 << 20
    k = 0
    start = time.perf_counter()
    while True:
        t0 = start + k * period
        now = time.perf_counter()
        if now < t0:
            time.sleep(t0 - now)
        elif now > t0 + period:  # preempted for a whole period: re-anchor, no burst catch-up
            start, k = now, 0
            t0 = now
        if kind == "spin":
            spin(t0 + burst)
        else:
            # a burst is CPU time, not wall time: preempted bursts still do their work
            cpu_until = time.thread_time() + burst
            off = 0
            while time.thread_time() < cpu_until:
                np.copyto(dst[off:off + block], src[off:off + block])
                off = (off + block) % len(src)
        k += 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--percent", type=float, default=80.0)
    p.add_argument("--kind", choices=("spin", "memory"), default="spin")
    p.add_argument("--procs", type=int, default=4, help="memory kind: processes")
    p.add_argument("--burst-ms", type=float, default=2.0, help="memory kind: burst length")
    a = p.parse_args()
    os.sched_setaffinity(0, {a.cpu})
    if a.kind == "spin":
        run("spin", a.percent / 100, 0.010 * a.percent / 100)
        return
    children = []
    for _ in range(a.procs):
        pid = os.fork()
        if pid == 0:
            run("memory", a.percent / 100 / a.procs, a.burst_ms / 1000)
            os._exit(0)
        children.append(pid)

    def stop(*_: object) -> None:
        for c in children:
            os.kill(c, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for c in children:
        os.waitpid(c, 0)


if __name__ == "__main__":
    main()
