"""``make demo``: Conspirator installed from its Helm chart on the local cluster, end to end.

1. starts the local cluster (e2e/cluster.sh) if it is down;
2. builds the three images here without Docker and imports them into the real node's
   containerd (e2e/cluster.sh images);
3. ``helm install conspirator charts/conspirator`` (namespace conspirator-system): the
   operator, the node daemon (a simulated H200 with a BlueField DPU) and the DPU agent run as
   the chart's pods on the real kubelet node;
4. applies an InferenceJob (namespace ``demo``); the operator places two replicas on MIG
   slices, the node daemon partitions the GPU and the kubelet gives each worker container
   its slice; the workers register their input buffers;
5. reads the job's token from the Secret the operator made and sends 5,000 requests through
   the agent with ``conspirator loadgen``; shows ``kubectl get ij``, the GPUNode and the
   latency percentiles.

Then it cleans up (job deleted, ``helm uninstall``, cluster stopped if it started it).
``--keep`` (``make demo DEMO_KEEP=1``) leaves it running; ``--down`` (``make demo-down``)
removes it later.  ``make demo-operator`` is the multi-node variant (operator and node
daemons as processes over the kwok GPU nodes).

    python e2e/demo.py [--keep | --down]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

E2E = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E))

from conspirator_e2e import chart, demo  # noqa: E402
from conspirator_e2e.cluster import LocalCluster  # noqa: E402
from conspirator_e2e.datapath import build_dpserve_image  # noqa: E402
from conspirator_e2e.demo import say, show  # noqa: E402
from conspirator_e2e.images import build_product_images  # noqa: E402

NAMESPACE = "demo"
JOB = "echo"



def work_dir(cluster: LocalCluster) -> Path:
    d = cluster.paths.state / "demo-chart"
    d.mkdir(parents=True, exist_ok=True)
    return d


def down(cluster: LocalCluster, started_cluster: bool | None = None) -> None:
    d = work_dir(cluster)
    state = d / "state.json"
    saved = json.loads(state.read_text()) if state.exists() else {}
    if cluster.is_up():
        if chart.get_job(cluster, NAMESPACE, JOB):
            say("deleting the demo's InferenceJob (the operator releases its slices)")
            cluster.kubectl("delete", "ij", JOB, "-n", NAMESPACE, "--wait=true",
                            "--timeout=90s", check=False)
        cluster.kubectl("delete", "modelprofile", chart.DEMO_MODEL, "--ignore-not-found",
                        check=False)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found",
                        "--wait=false", check=False)
        if chart.installed(cluster):
            say(f"helm uninstall {chart.RELEASE} -n {chart.NAMESPACE}")
            proc = chart.uninstall(cluster)
            print(proc.stdout.strip() or proc.stderr.strip())
        cluster.kubectl("delete", "gpunode", str(cluster.read_info()["realNode"]),
                        "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", chart.NAMESPACE, "--ignore-not-found",
                        "--wait=false", check=False)
    state.unlink(missing_ok=True)
    if started_cluster if started_cluster is not None else saved.get("started_cluster"):
        say("stopping the local cluster (the demo started it)")
        cluster.down()


def up(cluster: LocalCluster, keep: bool) -> int:
    started = not cluster.is_up()
    if started:
        say("starting the local cluster (e2e/cluster.sh up)")
        cluster.up(build=False)
    d = work_dir(cluster)
    (d / "state.json").write_text(json.dumps({"started_cluster": started}))
    ok = False
    try:
        say("building the operator, node-daemon and dpu-agent images and importing them "
            "into the node's containerd (e2e/cluster.sh images)")
        t0 = time.monotonic()
        images = build_product_images(cluster)
        worker = build_dpserve_image(cluster)
        for ref in [*images.values(), worker]:
            print(f"   {ref}")
        print(f"   ({time.monotonic() - t0:.0f}s)")
        values = chart.write_values(d / "values-local.yaml", chart.local_values(cluster, images))
        say(f"helm install {chart.RELEASE} charts/conspirator --namespace {chart.NAMESPACE} "
            f"--create-namespace --values {values} --wait")
        if chart.installed(cluster):
            chart.uninstall(cluster)
        t0 = time.monotonic()
        proc = chart.install(cluster, values)
        print(proc.stdout.strip(), proc.stderr.strip(), sep="\n")
        if proc.returncode != 0:
            raise RuntimeError("helm install failed")
        chart.wait("the chart's pods to be ready", lambda: chart.components_ready(cluster), 180,
                   lambda: chart.component_logs(cluster))
        print(f"   ({time.monotonic() - t0:.0f}s)")
        show(cluster, "get", "pods", "-n", chart.NAMESPACE, "-o", "wide")
        say(f"applying an InferenceJob into namespace {NAMESPACE} (150 requests/s of a model "
            f"served at 100/s on an H200 {chart.DEMO_PROFILE} slice)")
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        profile, job = chart.demo_objects(JOB, worker)
        print(yaml.safe_dump(job, sort_keys=False).rstrip())
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(profile))
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(job))
        t0 = time.monotonic()
        say("sending 5,000 requests through the DPU agent (conspirator loadgen, with the "
            "token from the job's Secret)")
        _, summary, text = chart.serve_through_agent(cluster, NAMESPACE, JOB, d, 5000)
        print(text.rstrip())
        print(f"   (job created -> served: {time.monotonic() - t0:.0f}s)")
        show(cluster, "get", "ij", "-n", NAMESPACE, "-o", "wide")
        show(cluster, "get", "gpunodes")
        show(cluster, "get", "pods", "-n", NAMESPACE, "-o", "wide")
        ok = summary["ok"] == summary["sent"] == 5000
    finally:
        if keep and ok:
            say("left running: eval \"$(e2e/cluster.sh env)\"; kubectl get ij -n demo; "
                "helm -n conspirator-system status conspirator; stop it with: make demo-down")
        else:
            say("cleaning up (make demo DEMO_KEEP=1 leaves it running)")
            down(cluster, started_cluster=started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(demo.main(__doc__, up, down))
