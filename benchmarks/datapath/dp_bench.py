"""The data-path benchmark: the paper's four architectures side by side in one run.

(1) ``worker-tcp``: the worker receives over TCP itself (dp_worker_tcp.py), on a host core;
(2) ``direct``: direct write into the worker's fixed registered buffer, no scheduling: the
    client writes the bytes into the worker's memfd slot itself and rings its doorbell,
    i.e. one-sided RDMA WRITE into host memory emulated by the client process (the NIC);
(3) ``agent-host``: the DPU agent, pinned to the host core;
(4) ``agent-dpu``: the DPU agent, pinned to the core reserved for the "DPU".

The agents are measured with both client transports: ``tcp`` (payload in the frames,
received into staging by the agent; the same transport as (1)) and ``one-sided`` (the
client writes into agent staging over shared memory, the model of RDMA into DPU memory;
the same kind of transport as (2)).  Each configuration runs at 0% and 80% background load
on the host core, for 4 KiB to 4 MiB payloads: a latency run (one request at a time) and a
throughput run (4 outstanding).  The ceiling is one core's memcpy bandwidth at each size
(memcpy_bw.c, compiled here).

CPU mapping on this 2-core machine: core 0 = the host core (workers, background load,
(1)'s receiver, (3)'s agent); core 1 = the reserved "DPU" core ((4)'s agent) and the
client, which stands for the remote machine and its NIC.  The client therefore competes
with the agent in (4) only, which penalises (4).

The pieces: dp_common.py (constants, ``Arch``, ``Row``), dp_setup.py (one architecture's
processes and the measured connection, the C client), dp_report.py (context, targets,
figure, table); this module runs the measurements and writes the results.

    python benchmarks/datapath/dp_bench.py --out benchmarks/results/datapath
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dp_common import (
    ARCHS,
    BUSY_POLL_US,
    CLIENT_CPU,
    DEPTH,
    DPU_CPU,
    HERE,
    HOST_CPU,
    LOADS,
    SIZES,
    Arch,
    Row,
)
from dp_report import machine, markdown, others, plot, summarize
from dp_setup import CClient, Setup, cpu_ns, stop

# ---------------------------------------------------------------------- measuring


@contextmanager
def background_load(name: str) -> Iterator[None]:
    percent, kind = LOADS[name]
    p = None
    if percent:
        p = subprocess.Popen([sys.executable, str(HERE / "dp_load.py"), "--cpu", str(HOST_CPU),
                              "--percent", str(percent), "--kind", kind])
        time.sleep(0.5)
    try:
        yield
    finally:
        if p is not None:
            stop(p)


def measure(setup: Setup, c: CClient, arch: Arch, load: str, size: int, mode: str,
            seconds: float, depth_out: int = DEPTH) -> Row:
    depth = 1 if mode == "latency" else depth_out
    payload = np.frombuffer(np.random.default_rng(size).bytes(size), np.uint8).copy()
    if setup.drive(c, payload, size, depth, 20, 5.0) != 20:  # warm-up
        raise RuntimeError(f"{arch.key}: warm-up failed")
    me = os.getpid()
    stats0 = setup.agent_stats()
    pids = {pid for pid in {*setup.host_pids, setup.agent_pid, me} if pid}
    c0 = {pid: cpu_ns(pid) for pid in pids}
    t0 = time.perf_counter()
    done = setup.drive(c, payload, size, depth, len(c.lat), seconds)
    elapsed = time.perf_counter() - t0
    c1 = {pid: cpu_ns(pid) for pid in pids}
    stats1 = setup.agent_stats()
    if done <= 0:
        raise RuntimeError(f"{arch.key} {size}: the client loop failed")
    lat = c.lat[:done].astype(np.float64) / 1e3
    d = {pid: (c1[pid] - c0[pid]) / 1e3 / done for pid in pids}  # us per request
    errors = int(c.errors.value)
    row = Row(arch.name, arch.transport, load, size, mode, done, done - errors, errors, 0,
              elapsed, done / elapsed, done * size / elapsed / 1e9,
              float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
              host_cpu_us=sum(d[pid] for pid in setup.host_pids),
              agent_cpu_us=d.get(setup.agent_pid, 0.0), client_cpu_us=d[me])
    if setup.agent_pid and row.agent_cpu_us > 0:
        idle_ns = stats1.get("idle_poll_ns", 0) - stats0.get("idle_poll_ns", 0)
        row.agent_idle_poll_us = idle_ns / 1e3 / done
        row.agent_move_gbps = size / ((row.agent_cpu_us - row.agent_idle_poll_us) * 1e3)
        copy_ns = stats1.get("copy_ns", 0) - stats0.get("copy_ns", 0)
        copy_bytes = stats1.get("copy_bytes", 0) - stats0.get("copy_bytes", 0)
        row.agent_copy_gbps = copy_bytes / copy_ns if copy_ns else 0.0
    return row


# ---------------------------------------------------------------------- ceiling


def memcpy_ceiling(build: Path) -> list[dict[str, Any]]:
    exe = build / "memcpy_bw"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "memcpy_bw.c")], check=True)
    out = []
    for cpu in (DPU_CPU, HOST_CPU):
        for size in SIZES:
            r = subprocess.run(["taskset", "-c", str(cpu), str(exe), str(size), "8", "0.4"],
                               check=True, capture_output=True, text=True)
            d = json.loads(r.stdout)
            d["cpu"] = cpu
            out.append(d)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/datapath"))
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement run")
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--depth", type=int, default=DEPTH,
                    help="outstanding requests in the throughput runs")
    ap.add_argument("--archs", nargs="*", help="subset of arch keys (name/transport)")
    ap.add_argument("--loads", nargs="*", choices=list(LOADS), default=list(LOADS))
    ap.add_argument("--busy-poll-us", type=int, default=BUSY_POLL_US,
                    help="polling window of the agent on the reserved core (4); the agent on "
                         "the host core (3) never polls (default %(default)s)")
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 CPUs (a host core and a reserved core)", file=sys.stderr)
        return 2
    seconds = 0.2 if args.quick else args.seconds
    os.sched_setaffinity(0, {CLIENT_CPU})
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dpb-", dir="/tmp"))
    env: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "others_before": others(),
                           "mapping": {"host_core": HOST_CPU, "dpu_core": DPU_CPU,
                                       "client_core": CLIENT_CPU}}
    rows: list[Row] = []
    try:
        memcpy = memcpy_ceiling(work)
        cclient = CClient(work)
        archs = [a for a in ARCHS if not args.archs or a.key in args.archs]
        for load in args.loads:
            with background_load(load):
                for a in archs:
                    d = work / f"{a.name}-{a.transport}-{load}"
                    d.mkdir()
                    setup = Setup(a, d, args.busy_poll_us)
                    try:
                        setup.start()
                        setup.open()
                        for size in SIZES:
                            for mode in ("latency", "throughput"):
                                row = measure(setup, cclient, a, load, size, mode, seconds,
                                              args.depth)
                                rows.append(row)
                                print(f"{a.key:22} {load:8} {size >> 10:5} KiB {mode:10} "
                                      f"p50 {row.p50_us:8.0f} us  {row.gbps:7.2f} GB/s  "
                                      f"host {row.host_cpu_us:6.1f} us/req  "
                                      f"agent {row.agent_cpu_us:6.1f} us/req  "
                                      f"lost {row.lost} failed {row.failed}", flush=True)
                    finally:
                        setup.close()
        env["others_after"] = others()
        env["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(rows, memcpy)
    with (args.out / "datapath.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        for r in rows:
            w.writerow({k: round(v, 3) if isinstance(v, float) else v
                        for k, v in asdict(r).items()})
    (args.out / "summary.json").write_text(json.dumps(
        {"environment": env, "memcpy": memcpy, "targets": summary}, indent=2) + "\n")
    env["depth"] = args.depth
    (args.out / "results.md").write_text(markdown(rows, summary, env, args.depth))
    plot(rows, memcpy, args.out / "datapath.png", args.depth)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
