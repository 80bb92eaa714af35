"""A light job's latency while a heavy job saturates the same DPU agent (issue 19, part 4).

One agent on the reserved core, two jobs with a worker each on the host core (the ``touch``
model: the data path, not a model, is measured):

* job ``light``: 4 KiB requests, open loop at ``--light-rate`` per second, one connection;
* job ``heavy``: 1 MiB requests, closed loop with ``--heavy-concurrency`` outstanding over
  four connections: it keeps the agent busy and its staging full.

Scenarios, each ``--seconds`` long: the light job alone; beside the heavy job whose worker
keeps up; beside the heavy job whose worker is slow (``--heavy-delay`` per request, so its
requests pile up in staging); the last two with per-job fair staging (the default) and
without (``--no-fair-staging``).  Reported: the light job's p50/p99/max latency, its
failures, and the heavy job's rate, from ``conspirator loadgen --json``.

    python benchmarks/datapath/dp_fairness.py --out benchmarks/results/datapath/fairness
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dp_common import DPU_CPU, HOST_CPU
from dp_report import machine, others
from dp_setup import conspirator, stop, wait_file

JOBS = {"bench/light": "light-token", "bench/heavy": "heavy-token"}
HEAVY_BYTES = 1 << 20
LIGHT_BYTES = 4 << 10
# name -> (heavy job present, heavy worker's delay used, fair staging)
SCENARIOS = {
    "alone": (False, False, True),
    "heavy, fair staging": (True, False, True),
    "heavy, no fair staging": (True, False, False),
    "slow heavy, fair staging": (True, True, True),
    "slow heavy, no fair staging": (True, True, False),
}


def agent(work: Path, fair: bool, budget: int) -> tuple[subprocess.Popen[bytes], int]:
    ready = work / "agent.json"
    cmd = conspirator(
        "dpu-agent", "--listen", "127.0.0.1:0", "--publish-socket", str(work / "pub.sock"),
        "--local-registry", str(work / "registry.sock"), "--cpu", str(DPU_CPU),
        "--max-payload", "1MiB", "--staging-budget", str(budget), "--window", "16",
        "--request-timeout", "60", "--ready-file", str(ready),
        "--stats-file", str(work / "stats.json"), "--log-level", "WARNING",
        *[a for job, tok in JOBS.items() for a in ("--token", f"{job}={tok}")],
        *(() if fair else ("--no-fair-staging",)))
    p = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL)
    return p, int(wait_file(ready)["tcp_port"])


def worker(work: Path, job: str, size: int, delay: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(conspirator(
        "worker", "--model", "touch", "--shape", str(size), "--dtype", "uint8", "--slots", "4",
        "--registry", str(work / "registry.sock"), "--job", job, "--replica",
        job.split("/")[1] + "-0", "--cpu", str(HOST_CPU), "--delay", str(delay),
        "--log-level", "WARNING"), cwd=work, stdin=subprocess.DEVNULL)


def loadgen(work: Path, port: int, job: str, out: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(conspirator(
        "loadgen", "--address", f"tcp://127.0.0.1:{port}", "--job", job, "--token",
        JOBS[job], "--requests", "0", "--timeout", "60", "--json", str(out), "--no-progress",
        *args), cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def wait_published(work: Path, agent_pid: int, replicas: int) -> None:
    stats = work / "stats.json"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        before = stats.stat().st_mtime_ns if stats.exists() else 0
        os.kill(agent_pid, 10)  # SIGUSR1: the agent writes its counters
        time.sleep(0.1)
        if stats.exists() and stats.stat().st_mtime_ns != before and \
                json.loads(stats.read_text()).get("replicas", 0) >= replicas:
            return
    raise TimeoutError("the workers were not published")


def scenario(root: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    heavy, slow, fair = SCENARIOS[name]
    work = root / name.replace(" ", "-").replace(",", "")
    work.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        a, port = agent(work, fair, args.staging_budget)
        procs.append(a)
        procs.append(worker(work, "bench/light", LIGHT_BYTES, 0.0))
        if heavy:
            procs.append(worker(work, "bench/heavy", HEAVY_BYTES,
                                args.heavy_delay if slow else 0.0))
        wait_published(work, a.pid, 2 if heavy else 1)
        gens = []
        if heavy:
            gens.append(loadgen(work, port, "bench/heavy", work / "heavy.json", "--mode",
                                "closed", "--concurrency", str(args.heavy_concurrency),
                                "--connections", "4", "--payload-size", str(HEAVY_BYTES),
                                "--duration", str(args.seconds + 4)))
            time.sleep(2)  # the heavy job at full speed first
        gens.append(loadgen(work, port, "bench/light", work / "light.json", "--mode", "open",
                            "--rate", str(args.light_rate), "--connections", "1",
                            "--payload-size", str(LIGHT_BYTES), "--duration",
                            str(args.seconds)))
        finished = True
        for g in gens:
            try:
                g.wait(args.seconds + 120)
            except subprocess.TimeoutExpired:  # reported, not hidden: see the results
                finished = False
                stop(g)
        if not finished or not (work / "light.json").exists():
            return {"scenario": name, "finished": False, "light_sent": 0, "light_ok": 0,
                    "light_failed": {}, "light_lost": 0, "light_p50_ms": float("nan"),
                    "light_p99_ms": float("nan"), "light_max_ms": float("nan")}
        light = json.loads((work / "light.json").read_text())
        row: dict[str, Any] = {
            "scenario": name, "finished": True, "light_sent": light["sent"],
            "light_ok": light["ok"],
            "light_failed": light["failed"], "light_lost": light["lost"],
            "light_p50_ms": light["latency_s"]["p50"] * 1e3,
            "light_p99_ms": light["latency_s"]["p99"] * 1e3,
            "light_max_ms": light["latency_s"].get("max", 0.0) * 1e3}
        if heavy:
            h = json.loads((work / "heavy.json").read_text())
            row.update(heavy_ok=h["ok"], heavy_rps=h["ok"] / max(h.get("elapsed_s", 1.0), 1e-9),
                       heavy_failed=h["failed"])
        return row
    finally:
        for p in reversed(procs):
            stop(p)


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = ["# A light job beside a saturating one, on one agent (dp_fairness.py)", "",
             f"{env['started']} - {env['finished']}; {env['machine'].get('cpu_model', '')}; "
             f"load average before {env['others_before'].get('loadavg', '')}; light job "
             f"{env['light_rate']:g} x 4 KiB requests/s, heavy job 1 MiB closed loop of "
             f"{env['heavy_concurrency']}; staging budget {env['staging_budget'] >> 20} MiB.",
             "", "| scenario | light p50 (ms) | light p99 (ms) | light max (ms) | light ok / sent "
             "| light failed | heavy requests/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        heavy = f"{r['heavy_rps']:.0f}" if "heavy_rps" in r else "-"
        lines.append(f"| {r['scenario']} | {r['light_p50_ms']:.2f} | {r['light_p99_ms']:.2f} | "
                     f"{r['light_max_ms']:.2f} | {r['light_ok']} / {r['light_sent']} | "
                     f"{sum(r['light_failed'].values()) if r['light_failed'] else 0} | {heavy} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/datapath/fairness"))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--light-rate", type=float, default=100.0)
    ap.add_argument("--heavy-concurrency", type=int, default=64)
    ap.add_argument("--heavy-delay", type=float, default=0.02,
                    help="the slow heavy worker's seconds per request")
    ap.add_argument("--staging-budget", type=int, default=32 << 20)
    ap.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 CPUs", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="dpf-", dir="/tmp"))
    env: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "others_before": others(), "light_rate": args.light_rate,
                           "heavy_concurrency": args.heavy_concurrency,
                           "heavy_delay_s": args.heavy_delay,
                           "staging_budget": args.staging_budget}
    rows = []
    try:
        for name in args.scenarios:
            rows.append(scenario(root, name, args))
            r = rows[-1]
            print(f"{name:30} light p50 {r['light_p50_ms']:7.2f} ms  p99 "
                  f"{r['light_p99_ms']:7.2f} ms  ok {r['light_ok']}/{r['light_sent']}", flush=True)
        env["others_after"] = others()
        env["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    (args.out / "fairness.json").write_text(json.dumps({"environment": env, "rows": rows},
                                                       indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows, env))
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
