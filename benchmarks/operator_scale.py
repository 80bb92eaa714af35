"""Scale benchmark of the operator on the real local cluster (not a test).

100 simulated GPU nodes (kwok; 8 GPUs each, A100-80GB and H100-80GB alternating) get
GPUNodes from the node daemon's stand-in (e2e/conspirator_e2e/fakenode.py); 1,000
InferenceJobs (seeded mix of resnet50, resnet18 and bert-base, 100-1,500 requests/s) arrive
as fast as the API server takes them; the operator (a child process, standalone) places them.

Measured, from the first job created:
* time until every job is placed (its status has replicas),
* until every node reported the layouts (phase Starting or Running),
* until every job is ``Running`` (worker pods bound by the real scheduler and run by kwok),
* the operator's peak resident memory (VmHWM),
then, after a ``kill -9`` and a restart with the global re-plan on: the time until the
restarted operator has rebuilt its plan and the duration of one global re-plan at this
scale; the invariants of the e2e tests are checked after each phase.

    python benchmarks/operator_scale.py [--nodes 100] [--jobs 1000] [--out DIR]

Writes ``DIR/operator_scale.json`` and ``DIR/operator_scale.md``.  Takes the local
cluster's lock (one user at a time); starts the cluster if it is down (and stops it after).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "e2e"))

from conspirator_e2e.cluster import GPUNodeSpec, LocalCluster  # noqa: E402
from conspirator_e2e.fakenode import FakeNodeDaemon  # noqa: E402
from conspirator_e2e.operator_testing import (  # noqa: E402
    EXAMPLES,
    GROUP,
    VERSION,
    OperatorProcess,
    check_invariants,
    delete_all_jobs,
    inference_job,
    jobs,
    phases,
    raw,
)
from kubernetes import client, config  # noqa: E402

NAMESPACE = "operator-scale"
MODELS = ("A100-80GB", "H100-80GB")


def node_specs(n: int, gpus: int) -> list[GPUNodeSpec]:
    return [GPUNodeSpec(name=f"scale-{MODELS[i % 2].split('-')[0].lower()}-{i:03d}",
                        gpu_model=MODELS[i % 2], gpus=tuple(("7g.80gb",) for _ in range(gpus)),
                        cpu="128", memory="1Ti") for i in range(n)]


def workload(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model = rng.choice(["resnet50", "resnet18", "bert-base"])
        out.append(inference_job(
            f"job-{i:04d}", float(rng.choice([100, 200, 400, 700, 1000, 1500])), model=model,
            p99=float(rng.choice([25, 50, 100])), memory=float(rng.choice([2, 4, 8])),
            max_batch=rng.choice([4, 8, 16]),
            **({"tenant": f"tenant-{rng.randrange(8)}"} if rng.random() < 0.5 else {})))
    return out


def create_nodes(cluster: LocalCluster, core: client.CoreV1Api, specs: list[GPUNodeSpec]) -> None:
    for s in specs:
        obj = s.node_object()
        status = obj.pop("status")
        try:
            core.create_node(obj)  # type: ignore[arg-type]  # the client sends a dict as is
        except client.ApiException as e:
            if e.status != 409:
                raise
        core.patch_node_status(s.name, {"status": status})


def delete_nodes(core: client.CoreV1Api, specs: list[GPUNodeSpec]) -> None:
    for s in specs:
        try:
            core.delete_node(s.name)
        except client.ApiException as e:
            if e.status != 404:
                raise


def poll(api: client.ApiClient, op: OperatorProcess, t0: float, want: int, timeout: float,
         marks: dict[str, float]) -> float:
    """Wait until all jobs run; fill ``marks`` with the seconds each milestone took."""
    peak = 0.0
    last = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not op.alive():
            raise RuntimeError(f"operator died:\n{op.tail()}")
        peak = max(peak, op.peak_rss_mib())
        ph = phases(jobs(api, [NAMESPACE]))
        total = sum(ph.values())
        placed = sum(n for p, n in ph.items() if p in ("Partitioning", "Starting", "Running"))
        applied = sum(n for p, n in ph.items() if p in ("Starting", "Running"))
        el = time.monotonic() - t0
        if total == want:
            if placed == want:
                marks.setdefault("all_placed_s", el)
            if applied == want:
                marks.setdefault("all_partitioned_s", el)
            if ph.get("Running") == want:
                marks["all_running_s"] = el
                return float(peak)
        line = f"{el:7.1f}s {dict(sorted(ph.items()))} rss {op.rss_mib():.0f} MiB"
        state = line.split(" ", 1)[1].split(" rss ", maxsplit=1)[0]
        if state != last:
            print(line, flush=True)
            last = state
        time.sleep(2.0)
    raise RuntimeError(f"not converged after {timeout}s: {dict(phases(jobs(api, [NAMESPACE])))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of the operator process (repeatable)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "operator")
    args = ap.parse_args()

    cluster = LocalCluster()
    lock_path = Path(str(cluster.paths.state) + ".lock")
    with lock_path.open("a") as lock:
        print(f"waiting for the cluster lock {lock_path} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = not cluster.is_up()
        if started:
            cluster.up(build=os.environ.get("CONSPIRATOR_E2E_BUILD", "1") != "0")
        try:
            result = run(cluster, args)
        finally:
            if started and os.environ.get("CONSPIRATOR_E2E_KEEP") != "1":
                cluster.down()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "operator_scale.md").write_text(report(result))
    print(report(result))
    return 0


def run(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    api = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.paths.kubeconfig))
    core = client.CoreV1Api(api)
    co = client.CustomObjectsApi(api)
    had_profile = cluster.kubectl("get", "modelprofile", "resnet50", check=False).returncode == 0
    for f in [*sorted((REPO / "crds").glob("*.yaml")), EXAMPLES / "modelprofile-resnet50.yaml"]:
        cluster.kubectl("apply", "--server-side", "--force-conflicts",
                        "--field-manager=operator-scale", "-f", str(f))
    specs = node_specs(args.nodes, args.gpus_per_node)
    bodies = workload(args.jobs, args.seed)
    log_dir = Path("/tmp/conspirator-operator-scale")
    log_dir.mkdir(exist_ok=True)
    (log_dir / "operator.log").unlink(missing_ok=True)
    result: dict[str, Any] = {
        "nodes": args.nodes, "gpus": args.nodes * args.gpus_per_node, "jobs": args.jobs,
        "seed": args.seed, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    create_nodes(cluster, core, specs)
    daemon = FakeNodeDaemon(api, specs, interval=1.0)
    daemon.install()
    daemon.start()
    deadline = time.monotonic() + 300
    while True:  # a previous run's namespace may still be going away
        try:
            core.create_namespace(client.V1Namespace(
                metadata=client.V1ObjectMeta(name=NAMESPACE)))
            break
        except client.ApiException as e:
            if e.status != 409:
                raise
            ns = core.read_namespace(NAMESPACE)
            if ns.status is None or ns.status.phase != "Terminating":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace {NAMESPACE} still terminating") from e
            time.sleep(2)
    op = OperatorProcess(cluster.paths.kubeconfig, log_dir / "operator.log", "--standalone",
                         "--replan-interval", "0", "--log-level", "INFO",
                         env=dict(e.split("=", 1) for e in args.env))
    try:
        op.start()
        op.wait_healthy(120)
        # Phase 1: the burst.
        t0 = time.monotonic()

        def make(b: dict[str, Any]) -> None:
            co.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "inferencejobs", b)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make, bodies))
        result["create_s"] = round(time.monotonic() - t0, 1)
        marks: dict[str, float] = {}
        peak = poll(api, op, t0, args.jobs, args.timeout, marks)
        result.update({k: round(v, 1) for k, v in marks.items()})
        result["operator_peak_rss_mib"] = round(max(peak, op.peak_rss_mib()), 1)
        items = jobs(api, [NAMESPACE])
        result["replicas"] = sum(len(j["status"]["replicas"]) for j in items)
        result["gpus_in_use"] = len({r["gpuUUID"] for j in items for r in j["status"]["replicas"]})
        problems = check_invariants(api, [NAMESPACE])
        result["invariant_problems"] = problems[:20]
        print(f"phase 1 done: {marks}, problems: {len(problems)}", flush=True)

        # Phase 2: kill -9, restart with the global re-plan on; time the rebuild and a re-plan.
        before = {j["metadata"]["name"]: j["status"]["replicas"] for j in items}
        op.kill()
        op.args = ["--standalone", "--replan-interval", "20", "--log-level", "INFO"]
        t1 = time.monotonic()
        op.start()
        op.wait_healthy(120)
        text = ""
        while "synced:" not in text.split("===== start 1", 1)[-1]:
            time.sleep(0.5)
            text = op.log_text()
        result["restart_to_synced_s"] = round(time.monotonic() - t1, 1)
        m = None
        deadline = time.monotonic() + 600
        while m is None and time.monotonic() < deadline:
            time.sleep(2)
            m = re.search(r"global re-plan \(([0-9.]+) s\): (.*)",
                          op.log_text().split("===== start 1", 1)[-1])
        if m:
            result["replan_s"] = float(m.group(1))
            result["replan_outcome"] = m.group(2)
        result["operator_peak_rss_mib_after_restart"] = round(op.peak_rss_mib(), 1)
        after = jobs(api, [NAMESPACE])

        def where(reps: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
            return sorted((r["node"], r["gpuUUID"], r["migProfile"], r["startSlice"])
                          for r in reps)

        changed = {j["metadata"]["name"]: {
            "before": where(before.get(j["metadata"]["name"], [])),
            "after": where(j["status"]["replicas"])} for j in after
            if where(j["status"]["replicas"]) != where(before.get(j["metadata"]["name"], []))}
        result["jobs_moved_by_restart_and_replan"] = len(changed)
        result["moved_examples"] = dict(list(changed.items())[:3])
        evs = [e for e in raw(core.list_namespaced_event(NAMESPACE, _preload_content=False))
               if e["involvedObject"].get("kind") == "InferenceJob"
               and e["reason"] in ("ReplicasReleased", "Migrating")]
        result["release_or_migrate_events"] = [
            f"{e['involvedObject']['name']}: {e['reason']}: {e['message']}" for e in evs[:5]]
        time.sleep(5)
        problems2 = check_invariants(api, [NAMESPACE], require_running=False)
        result["invariant_problems_after_restart"] = problems2[:20]
        result["log"] = str(op.log_path)
        # Cleanup: the jobs' finalizer needs the operator.
        t2 = time.monotonic()
        delete_all_jobs(api, [NAMESPACE], timeout=1200)
        result["delete_all_s"] = round(time.monotonic() - t2, 1)
    finally:
        op.stop()
        daemon.uninstall()
        delete_nodes(core, specs)
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(NAMESPACE)
        if not had_profile:  # leave the cluster as found (the profile is cluster-scoped)
            cluster.kubectl("delete", "modelprofile", "resnet50", "--ignore-not-found",
                            check=False)
    return result


def report(r: dict[str, Any]) -> str:
    rows = [
        ("simulated GPU nodes / GPUs", f"{r['nodes']} / {r['gpus']}"),
        ("InferenceJobs (replicas placed, GPUs in use)",
         f"{r['jobs']} ({r.get('replicas')}, {r.get('gpus_in_use')})"),
        ("creating the jobs (8 clients)", f"{r.get('create_s')} s"),
        ("all placed (status has replicas)", f"{r.get('all_placed_s')} s"),
        ("all layouts applied (Starting or Running)", f"{r.get('all_partitioned_s')} s"),
        ("**all Running** (pods bound by the scheduler, run by kwok)",
         f"**{r.get('all_running_s')} s**"),
        ("**operator peak memory (VmHWM)**", f"**{r.get('operator_peak_rss_mib')} MiB**"),
        ("restart (kill -9) until the plan is rebuilt", f"{r.get('restart_to_synced_s')} s"),
        ("one global re-plan (MILP + greedy)", f"{r.get('replan_s')} s: {r.get('replan_outcome')}"),
        ("peak memory of the restarted operator",
         f"{r.get('operator_peak_rss_mib_after_restart')} MiB"),
        ("deleting all jobs (finalizers released)", f"{r.get('delete_all_s')} s"),
        ("invariant problems (after burst / after restart)",
         f"{len(r.get('invariant_problems', []))} / "
         f"{len(r.get('invariant_problems_after_restart', []))}"),
    ]
    lines = ["# Operator scale benchmark", "",
             f"`python benchmarks/operator_scale.py` (seed {r['seed']}; {r['machine']}); "
             "times from the first job created.", "",
             "| what | measured |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
