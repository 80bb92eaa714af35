"""``make demo-operator``: the operator over the kwok GPU nodes, end to end.

Starts the local cluster (e2e/cluster.sh) if it is down, installs the CRDs, starts one real
node daemon per kwok GPU node (``conspirator node-daemon --kwok``, simulated GPUs), runs the
operator (``conspirator operator``), applies the examples (the resnet50 ModelProfile and the
two InferenceJobs) into the namespace ``demo``, waits until they run and shows their status
(``kubectl get ij``), the GPUNodes' layouts and the worker pods.

Then it cleans up after itself (jobs released through the operator, daemons and operator
stopped, GPUNodes and the ModelProfile deleted, the cluster stopped if it started it), so
``make test`` finds the cluster as before.  ``--keep`` (``make demo-operator DEMO_KEEP=1``) leaves
everything running to explore; ``--down`` (``python e2e/demo_operator.py --down``)
stops it later.

    python e2e/demo_operator.py [--keep | --down]
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

E2E = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E))

from conspirator_e2e import demo  # noqa: E402
from conspirator_e2e.cluster import REPO, ClusterSpec, LocalCluster  # noqa: E402
from conspirator_e2e.demo import say  # noqa: E402
from conspirator_e2e.nodedaemon import NodeDaemons  # noqa: E402
from conspirator_e2e.operator_testing import (  # noqa: E402
    EXAMPLES,
    OperatorProcess,
    delete_all_jobs,
    jobs,
    phases,
)
from kubernetes import client, config  # noqa: E402

NAMESPACE = "demo"
JOB_FILES = sorted(EXAMPLES.glob("inferencejob-*.yaml"))
PROFILE_FILE = EXAMPLES / "modelprofile-resnet50.yaml"



def state_dir(cluster: LocalCluster) -> Path:
    d = cluster.paths.state / "demo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def show(cluster: LocalCluster) -> None:
    for args in (("get", "ij", "-n", NAMESPACE, "-o", "wide"), ("get", "gpunodes"),
                 ("get", "deployments,pods", "-n", NAMESPACE, "-o", "wide")):
        say("kubectl " + " ".join(args))
        print(cluster.kubectl(*args).stdout, end="", flush=True)
    say("where the replicas are (status.replicas)")
    for j in jobs(_api(cluster), [NAMESPACE]):
        st = j.get("status") or {}
        print(f"{j['metadata']['name']}: {st.get('phase')} - {st.get('message')}")
        for r in st.get("replicas") or []:
            print(f"  {r['node']} GPU {r['gpuUUID']} {r['gpuModel']} {r['migProfile']}"
                  f"@{r.get('startSlice')} device {r.get('deviceID')}")
    say(f"events of the jobs (kubectl get events -n {NAMESPACE})")
    out = cluster.kubectl("get", "events", "-n", NAMESPACE, "--field-selector",
                          "involvedObject.kind=InferenceJob",
                          "-o", "custom-columns=JOB:.involvedObject.name,REASON:.reason,"
                          "MESSAGE:.message").stdout
    print(out, end="", flush=True)


def _api(cluster: LocalCluster) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.paths.kubeconfig))
    return api


def down(cluster: LocalCluster, started_cluster: bool | None = None) -> None:
    """Release the demo's jobs, stop its processes, delete what it created."""
    d = state_dir(cluster)
    pids_file = d / "pids.json"
    saved = json.loads(pids_file.read_text()) if pids_file.exists() else {}
    if not cluster.is_up():
        for pid in saved.get("pids", []):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        pids_file.unlink(missing_ok=True)
        return
    api = _api(cluster)
    if jobs(api, [NAMESPACE]):
        say("deleting the demo's InferenceJobs (the operator releases their GPU instances)")
        op = None
        if not _alive(saved.get("operator")):  # the finalizers need an operator
            op = OperatorProcess(cluster.paths.kubeconfig, d / "operator.log", "--standalone",
                                 "--replan-interval", "0").start()
        delete_all_jobs(api, [NAMESPACE], timeout=120)
        if op is not None:
            op.stop()
    for pid in saved.get("pids", []):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    daemons = NodeDaemons(cluster, ClusterSpec.load(cluster.spec_path).gpu_nodes, d / "daemons")
    daemons.uninstall()
    if not saved.get("had_profile", False):
        cluster.kubectl("delete", "-f", str(PROFILE_FILE), "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false",
                    check=False)
    pids_file.unlink(missing_ok=True)
    if started_cluster if started_cluster is not None else saved.get("started_cluster"):
        say("stopping the local cluster (the demo started it)")
        cluster.down()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def save(cluster: LocalCluster, **values: object) -> None:
    """Remember what the demo started (for the clean-up, also from another process)."""
    f = state_dir(cluster) / "pids.json"
    saved = json.loads(f.read_text()) if f.exists() else {}
    new_pids = cast(list[int], values.pop("pids", []))
    pids = set(saved.get("pids", [])) | set(new_pids)
    saved.update(values, pids=sorted(pids))
    f.write_text(json.dumps(saved))


def up(cluster: LocalCluster, keep: bool) -> int:
    started = not cluster.is_up()
    if started:
        say("starting the local cluster (e2e/cluster.sh up)")
        cluster.up(build=False)
    d = state_dir(cluster)
    (d / "pids.json").unlink(missing_ok=True)
    had_profile = cluster.kubectl("get", "modelprofile", "resnet50", check=False).returncode == 0
    save(cluster, started_cluster=started, had_profile=had_profile)
    ok = False
    try:
        say("installing the CRDs (crds/, operator/deploy/peering.yaml)")
        for f in [*sorted((REPO / "crds").glob("*.yaml")), REPO / "operator/deploy/peering.yaml"]:
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/inferencejobs.conspirator.io", "crd/gpunodes.conspirator.io")
        nodes = ClusterSpec.load(cluster.spec_path).gpu_nodes
        say(f"starting {len(nodes)} node daemons (conspirator node-daemon --kwok, "
            "simulated GPUs), one per kwok GPU node")
        daemons = NodeDaemons(cluster, nodes, d / "daemons")
        daemons.install()
        daemons.start()
        save(cluster, pids=[p.proc.pid for p in daemons.daemons.values() if p.proc])
        api = _api(cluster)
        custom = client.CustomObjectsApi(api)
        deadline = time.monotonic() + 90
        while True:
            items = cast(dict[str, Any], custom.list_cluster_custom_object(
                "conspirator.io", "v1alpha1", "gpunodes"))["items"]
            reported = {i["metadata"]["name"] for i in items
                        if (i.get("status") or {}).get("gpuCount")}
            if set(daemons.nodes) <= reported:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node daemons did not report:\n{daemons.logs()}")
            time.sleep(0.5)
        say("starting the operator (conspirator operator; log: "
            f"{d / 'operator.log'})")
        op = OperatorProcess(cluster.paths.kubeconfig, d / "operator.log", "--replan-interval",
                             "120")
        op.start()
        save(cluster, pids=[op.pid], operator=op.pid)
        op.wait_healthy(120)
        say(f"applying the examples into namespace {NAMESPACE}: "
            + ", ".join(p.name for p in [PROFILE_FILE, *JOB_FILES]))
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(PROFILE_FILE),
                        *[a for f in JOB_FILES for a in ("-f", str(f))])
        deadline = time.monotonic() + 180
        while True:
            ph = phases(jobs(api, [NAMESPACE]))
            print(f"   phases: {dict(ph)}", flush=True)
            if ph.get("Running") == len(JOB_FILES):
                break
            if time.monotonic() > deadline or not op.alive():
                raise RuntimeError(f"the examples did not reach Running:\n{op.tail()}")
            time.sleep(2)
        show(cluster)
        ok = True
    finally:
        if keep and ok:
            say("left running: eval \"$(e2e/cluster.sh env)\"; kubectl get ij -n demo; "
                "stop it with: .venv/bin/python e2e/demo_operator.py --down")
        else:
            say("cleaning up (make demo-operator DEMO_KEEP=1 leaves it running)")
            down(cluster, started_cluster=started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(demo.main(__doc__, up, down))
