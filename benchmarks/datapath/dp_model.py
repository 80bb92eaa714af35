"""The paper's four architectures with a real model's compute in the loop.

The same processes as dp_bench.py (dp_setup.py), but the worker runs ResNet-18 in ONNX
Runtime on one 224x224 float32 image per request (``conspirator worker --model resnet18``,
602,112 bytes of input, 1000 logits back; dp_worker_tcp.py runs the same model for (1)),
on the host core, one thread.  For each architecture and background load: a warm-up, then
one request at a time for ``--seconds``; the end-to-end completion time (client-side, the
request's first byte sent to its answer received), its p50/p99, and the host core's CPU per
request.  Beside it, the model alone on the host core under the same load (the compute
share of the completion time).

This is the paper's end-to-end claim (15% lower completion time than the RDMA-to-host
alternative) measured on this machine's cores: (4) agent on the reserved core against (3)
the agent on the host core with the same transport, and against (2) the direct write.

    python benchmarks/datapath/dp_model.py --out benchmarks/results/datapath/model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dp_bench import background_load
from dp_common import ARCHS, CLIENT_CPU, HOST_CPU, LOADS
from dp_report import machine, others
from dp_setup import CClient, Setup, WorkerModel, cpu_ns

MODEL = WorkerModel("resnet18", (1, 3, 224, 224), "float32")
WARMUP = 3

COMPUTE = """
import json, os, sys, time
import numpy as np
from conspirator.runtime.resnet import ResNet18
os.sched_setaffinity(0, {%d})
m = ResNet18()
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
m(x)
ts, end = [], time.monotonic() + %f
while time.monotonic() < end or len(ts) < 5:
    t = time.perf_counter(); m(x); ts.append(time.perf_counter() - t)
print(json.dumps([t * 1e6 for t in ts]))
"""


def compute_alone(seconds: float) -> dict[str, float]:
    """The model's own time per image on the host core (us), in a fresh process."""
    r = subprocess.run([sys.executable, "-c", COMPUTE % (HOST_CPU, seconds)], check=True,
                       capture_output=True, text=True)
    ts = np.array(json.loads(r.stdout))
    return {"n": int(ts.size), "p50_us": float(np.percentile(ts, 50)),
            "p99_us": float(np.percentile(ts, 99))}


def run_one(setup: Setup, c: CClient, payload: np.ndarray[Any, Any], seconds: float
            ) -> dict[str, Any]:
    size = payload.nbytes
    if setup.drive(c, payload, size, 1, WARMUP, 60.0) != WARMUP:
        raise RuntimeError(f"{setup.arch.key}: warm-up failed")
    pids = {pid for pid in {*setup.host_pids, setup.agent_pid} if pid}
    c0 = {pid: cpu_ns(pid) for pid in pids}
    t0 = time.perf_counter()
    done = setup.drive(c, payload, size, 1, len(c.lat), seconds)
    elapsed = time.perf_counter() - t0
    c1 = {pid: cpu_ns(pid) for pid in pids}
    if done <= 0:
        raise RuntimeError(f"{setup.arch.key}: the client loop failed")
    lat = c.lat[:done].astype(np.float64) / 1e3
    return {"arch": setup.arch.name, "transport": setup.arch.transport, "requests": done,
            "failed": int(c.errors.value), "seconds": elapsed,
            "p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99)),
            "mean_us": float(lat.mean()),
            "host_cpu_us": sum(c1[p] - c0[p] for p in setup.host_pids) / 1e3 / done,
            "agent_cpu_us": (c1[setup.agent_pid] - c0[setup.agent_pid]) / 1e3 / done
            if setup.agent_pid else 0.0}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(4)'s p50 completion time over (3)'s (same transport) and over (2)'s, per load."""
    out = []
    by = {(r["load"], r["arch"], r["transport"]): r for r in rows}
    for load in sorted({r["load"] for r in rows}):
        for transport in ("tcp", "one-sided"):
            dpu = by.get((load, "agent-dpu", transport))
            if dpu is None:
                continue
            for base in (("agent-host", transport), ("direct", "one-sided"),
                         ("worker-tcp", "tcp")):
                b = by.get((load, *base))
                if b is not None:
                    out.append({"load": load, "dpu": f"agent-dpu/{transport}",
                                "vs": "/".join(base),
                                "p50_ratio": dpu["p50_us"] / b["p50_us"],
                                "p99_ratio": dpu["p99_us"] / b["p99_us"]})
    return out


def markdown(rows: list[dict[str, Any]], rat: list[dict[str, Any]],
             compute: dict[str, dict[str, float]], env: dict[str, Any]) -> str:
    lines = ["# The four architectures with ResNet-18 in the loop (dp_model.py)", "",
             f"{env['started']} - {env['finished']}; {env['machine'].get('cpu_model', '')}; "
             f"load average before {env['others_before'].get('loadavg', '')}.", "",
             "| load | architecture | requests | p50 completion (ms) | p99 (ms) | "
             "host-core CPU per request (ms) | agent CPU (ms) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['arch']}/{r['transport']} | {r['requests']} | "
                     f"{r['p50_us'] / 1e3:.2f} | {r['p99_us'] / 1e3:.2f} | "
                     f"{r['host_cpu_us'] / 1e3:.2f} | {r['agent_cpu_us'] / 1e3:.3f} |")
    lines += ["", "The model alone on the host core (ms per image, p50 / p99):", ""]
    lines += [f"- {load}: {c['p50_us'] / 1e3:.2f} / {c['p99_us'] / 1e3:.2f} ({c['n']} images)"
              for load, c in compute.items()]
    lines += ["", "| load | (4) | against | p50 ratio | p99 ratio |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['load']} | {r['dpu']} | {r['vs']} | {r['p50_ratio']:.3f} | "
              f"{r['p99_ratio']:.3f} |" for r in rat]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/datapath/model"))
    ap.add_argument("--seconds", type=float, default=10.0, help="per measured run")
    ap.add_argument("--loads", nargs="*", choices=list(LOADS), default=["none", "memory80"])
    ap.add_argument("--archs", nargs="*", help="subset of arch keys (name/transport)")
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 CPUs (a host core and a reserved core)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {CLIENT_CPU})
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dpm-", dir="/tmp"))
    env: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "others_before": others(), "model": "resnet18 (onnxruntime, 1 thread)",
                           "input_bytes": MODEL.nbytes}
    payload = np.frombuffer(np.random.default_rng(7).standard_normal(
        MODEL.shape).astype(np.float32).tobytes(), np.uint8).copy()
    rows: list[dict[str, Any]] = []
    compute: dict[str, dict[str, float]] = {}
    try:
        c = CClient(work)
        archs = [a for a in ARCHS if not args.archs or a.key in args.archs]
        for load in args.loads:
            with background_load(load):
                compute[load] = compute_alone(min(args.seconds, 5.0))
                for a in archs:
                    d = work / f"{a.name}-{a.transport}-{load}"
                    d.mkdir()
                    setup = Setup(a, d, 0, MODEL)
                    try:
                        setup.start()
                        setup.open()
                        row = {"load": load, **run_one(setup, c, payload, args.seconds)}
                    finally:
                        setup.close()
                    rows.append(row)
                    print(f"{a.key:22} {load:8} p50 {row['p50_us'] / 1e3:7.2f} ms  p99 "
                          f"{row['p99_us'] / 1e3:7.2f} ms  host {row['host_cpu_us'] / 1e3:6.2f}"
                          f" ms/req  failed {row['failed']}", flush=True)
        env["others_after"] = others()
        env["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rat = ratios(rows)
    (args.out / "model.json").write_text(json.dumps(
        {"environment": env, "compute_alone": compute, "rows": rows, "ratios": rat},
        indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows, rat, compute, env))
    print(markdown(rows, rat, compute, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
