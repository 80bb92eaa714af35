"""Autoscaling and a re-plan migration in one run, through the chart's pods on the real node
(issue 15's bar).

An ``Auto`` InferenceJob whose worker (e2e/images/dpserve with a service time) really serves
twice what its ModelProfile says, and a Static partner job of another tenant, each on a GPU
of its own (``dedicatedGPU``) of the node's two simulated H200s, each under
``conspirator loadgen --mode open``:

* their isolation is lifted: the periodic global re-plan puts them on one GPU, moving one
  replica make-before-break (``Migrating`` / ``Migrated``);
* the operator pod scrapes the agent pod's metrics and writes ``status.observed``;
* the Auto job's rate triples: the single replica saturates, the autoscaler scales out
  (``ScaledOut`` Event with the figures) and the capacity is there within 90 s, with the
  observed p99 back under the SLO;
* the rate drops back: replicas are given back within the stabilization window + 2 min
  (``ScaledIn``), the leaving workers draining on SIGTERM;
* across the whole run, the migration, the scale-out and the scale-in, **no request fails
  or is lost** (all three load generators: lost 0, no failure, nothing left unsent).

The test prints the timeline it saw.  The second test: a Static job whose workers, kept
saturated, refine the ModelProfile to their real speed (twice the spec's), and the plan
follows with fewer replicas, nothing failing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conspirator_e2e import chart
from conspirator_e2e.chart import CHART
from conspirator_e2e.cluster import LocalCluster
from conspirator_e2e.release import Release, installed_release

pytestmark = pytest.mark.skipif(not (CHART / "Chart.yaml").exists(), reason="no chart")

JOB = "auto-e2e"
PARTNER = "auto-partner"  # another tenant's Static job: the re-plan consolidates the two
MODEL = "echo-auto"
PROFILE = chart.DEMO_PROFILE
CLAIMED_RPS = 100.0  # what the ModelProfile says one replica serves
SERVICE_US = 5000  # what the worker really takes per request: 200 requests/s
SLO_MS = 100.0
BASE, BURST = 80.0, 160.0  # the rate, then three times it (BASE + BURST)
WINDOW_S = 30  # scaleDownStabilizationSeconds
PATCH_AT = 10.0  # seconds into the load: the isolation of both jobs lifted
T_BURST, BURST_S, TAIL_S = 75.0, 90.0, 180.0
PARTNER_RPS = 40.0


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    with installed_release(cluster, tmp_path_factory.mktemp("helm-auto"),
                           gpus=({"model": "H200-141GB"}, {"model": "H200-141GB"}),
                           replan_interval=5) as rel:
        yield rel


def objects(worker_image: str) -> list[dict[str, Any]]:
    """The ModelProfile, the Auto job and the partner job (a GPU each at first)."""
    return [
        {"apiVersion": "conspirator.io/v1alpha1", "kind": "ModelProfile",
         "metadata": {"name": MODEL},
         "spec": {"model": MODEL, "entries": [
             {"gpuModel": "H200-141GB", "migProfile": PROFILE, "batchSize": 1,
              "throughput": CLAIMED_RPS, "p99LatencyMs": 10}]}},
        {"apiVersion": "conspirator.io/v1alpha1", "kind": "InferenceJob",
         "metadata": {"name": JOB},
         "spec": {"model": {"name": MODEL, "image": worker_image,
                            "args": ["65536", "2", str(SERVICE_US)]},
                  "demand": {"requestsPerSecond": 100, "p99LatencyMs": SLO_MS,
                             "gpuMemoryGiB": 4},
                  "dataPath": {"inputShape": [65536], "dtype": "uint8", "maxBatch": 1},
                  "scaling": {"mode": "Auto", "targetUtilizationPercent": 80,
                              "scaleDownStabilizationSeconds": WINDOW_S},
                  "tenant": "auto", "isolation": {"dedicatedGPU": True},
                  "migration": {"allowed": True, "disruptionBudget": 1}}},
        {"apiVersion": "conspirator.io/v1alpha1", "kind": "InferenceJob",
         "metadata": {"name": PARTNER},
         "spec": {"model": {"name": MODEL, "image": worker_image,
                            "args": ["65536", "2", str(SERVICE_US)]},
                  "demand": {"requestsPerSecond": 50, "p99LatencyMs": SLO_MS,
                             "gpuMemoryGiB": 4},
                  "dataPath": {"inputShape": [65536], "dtype": "uint8", "maxBatch": 1},
                  "tenant": "partner", "isolation": {"dedicatedGPU": True},
                  "migration": {"allowed": True, "disruptionBudget": 1}}},
    ]


def loadgen(endpoint: str, token: Path, out: Path, rate: float, seconds: float,
            job: str = JOB) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "conspirator", "loadgen", "--address", f"tcp://{endpoint}",
         "--job", f"{out.stem.split('.')[0]}/{job}", "--token-file", str(token),
         "--mode", "open", "--rate", str(rate), "--requests", "0", "--duration", str(seconds),
         "--connections", "4", "--payload-size", "4KiB", "--timeout", "60", "--json", str(out),
         "--no-progress"], cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def sample(cluster: LocalCluster, ns: str, t0: float) -> dict[str, Any]:
    st = chart.get_job(cluster, ns, JOB).get("status", {})
    partner = chart.get_job(cluster, ns, PARTNER).get("status", {})
    obs = st.get("observed") or {}
    gpus = {r["gpuUUID"] for j in (st, partner) for r in j.get("replicas", [])}
    return {"t": round(time.monotonic() - t0, 1), "phase": st.get("phase"),
            "replicas": st.get("replicaCount"), "capacity": st.get("estimatedThroughput"),
            "planned": st.get("demand"), "offered": obs.get("offeredRPS"),
            "served": obs.get("servedRPS"), "p99": obs.get("p99LatencyMs"),
            "waiting": obs.get("waiting"), "atAgent": chart.agent_replicas(f"{ns}/{JOB}"),
            "retiring": len(st.get("retiring", [])) + len(partner.get("retiring", [])),
            "partner": (partner.get("phase"), len(partner.get("replicas", [])),
                        chart.agent_replicas(f"{ns}/{PARTNER}")),
            "gpus": len(gpus)}


def events(cluster: LocalCluster, ns: str, *jobs: str) -> list[tuple[str, str, str]]:
    """(object, reason, message) of the Events about ``jobs`` (default: the Auto job)."""
    names = jobs or (JOB,)
    items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    return [(e["involvedObject"]["name"], e.get("reason", ""), e.get("message", ""))
            for e in sorted(items, key=lambda e: e.get("eventTime") or e.get("firstTimestamp")
                            or "") if e.get("involvedObject", {}).get("name") in names]


def at_agent(job: str, replicas: int) -> Callable[[], bool]:
    return lambda: chart.agent_replicas(job) == replicas


def print_logs(cluster: LocalCluster) -> None:
    """The agent's and the node daemon's lines about replicas coming and going."""
    for component in ("dpu-agent", "node-daemon"):
        log = cluster.kubectl("logs", "-n", chart.NAMESPACE, "-l",
                              f"app.kubernetes.io/component={component}", "--tail=-1",
                              check=False).stdout
        for line in log.splitlines():
            if any(w in line for w in ("drain", "withdr", "failed", "gone", "REPLICA")):
                print(f"[{component}] {line}")


def test_an_auto_job_follows_its_load_through_a_move_and_loses_nothing(
        release: Release, namespace: str, tmp_path: Path) -> None:
    cluster, ns = release.cluster, namespace
    profile, *jobs = objects(release.worker_image)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(profile))
    for job in jobs:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(job))
    timeline: list[dict[str, Any]] = []
    procs: dict[str, subprocess.Popen[str]] = {}
    marks: dict[str, float] = {}
    try:
        served = {n: chart.wait_serving(cluster, ns, n) for n in (JOB, PARTNER)}
        assert served[JOB]["status"]["replicaCount"] == 1, served[JOB]["status"]
        gpus = {n: {r["gpuUUID"] for r in j["status"]["replicas"]} for n, j in served.items()}
        assert len(gpus[JOB] | gpus[PARTNER]) == 2, gpus  # a GPU each
        for n in (JOB, PARTNER):
            chart.wait(f"{n}'s replica at the agent", at_agent(f"{ns}/{n}", 1), 120,
                       release.describe)
            # The agent learns the token from its mounted Secret within seconds: one
            # request through it before the load starts.
            chart.serve_through_agent(cluster, ns, n, tmp_path, 50)
        tokens = {}
        for n, j in served.items():
            tokens[n] = tmp_path / f"{n}.token"
            tokens[n].write_text(chart.job_token(cluster, ns, j))
        endpoint = served[JOB]["status"]["clientEndpoints"][0]["endpoint"]
        total = T_BURST + BURST_S + TAIL_S
        t0 = time.monotonic()
        procs["base"] = loadgen(endpoint, tokens[JOB], tmp_path / f"{ns}.base.json", BASE,
                                total)
        procs["partner"] = loadgen(
            served[PARTNER]["status"]["clientEndpoints"][0]["endpoint"], tokens[PARTNER],
            tmp_path / f"{ns}.partner.json", PARTNER_RPS, total, job=PARTNER)
        while time.monotonic() - t0 < total:
            now = time.monotonic() - t0
            if "patched" not in marks and now >= PATCH_AT:
                for n in (JOB, PARTNER):
                    cluster.kubectl("patch", "ij", n, "-n", ns, "--type", "merge", "-p",
                                    json.dumps({"spec": {"isolation": {"dedicatedGPU": False}}}))
                marks["patched"] = now
            if "burst" not in procs and now >= T_BURST:
                procs["burst"] = loadgen(endpoint, tokens[JOB], tmp_path / f"{ns}.burst.json",
                                         BURST, BURST_S)
            s = sample(cluster, ns, t0)
            timeline.append(s)
            if s["retiring"] and "moving" not in marks:
                marks["moving"] = now
            if "moving" in marks and "moved" not in marks and not s["retiring"] \
                    and s["gpus"] == 1:
                marks["moved"] = now
            cap, planned = s["capacity"] or 0.0, s["planned"] or 0.0
            if "burst" in procs and "capacity" not in marks and planned >= (
                    BASE + BURST) and cap >= planned * 0.99 and s["phase"] == "Running" \
                    and s["atAgent"] == s["replicas"]:
                marks["capacity"] = now
            if "capacity" in marks and "p99_ok" not in marks and now < T_BURST + BURST_S \
                    and s["p99"] is not None and s["p99"] < SLO_MS:
                marks["p99_ok"] = now
            if now > T_BURST + BURST_S and "scaled_in" not in marks and s["replicas"] == 1 \
                    and planned < BASE + BURST:
                marks["scaled_in"] = now
            time.sleep(2)
        outs = {}
        for name, p in procs.items():
            text, _ = p.communicate(timeout=180)
            assert p.returncode == 0, text
            outs[name] = json.loads((tmp_path / f"{ns}.{name}.json").read_text())
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        print("\n[timeline] t(s) phase replicas capacity planned offered served p99(ms) "
              "waiting atAgent | retiring | partner (phase, replicas, at agent) | GPUs")
        for s in timeline:
            print("[timeline]", " ".join(str(s[k]) for k in (
                "t", "phase", "replicas", "capacity", "planned", "offered", "served", "p99",
                "waiting", "atAgent")), "|", s["retiring"], "|", s["partner"], "|", s["gpus"])
        for obj, reason, message in events(cluster, ns, JOB, PARTNER):
            print(f"[event] {obj} {reason}: {message}")
        print_logs(cluster)
    print(f"[timing] marks (s from the start of the load; isolation lifted at {PATCH_AT:g}, "
          f"burst at {T_BURST:g}): {marks}")
    for name, s in outs.items():
        print(f"[load] {name}: sent {s['sent']} ok {s['ok']} lost {s['lost']} "
              f"failed {s['failed']} not sent {s.get('not_sent')}")
        assert s["lost"] == 0 and s["failed"] == {} and not s.get("not_sent"), s
        assert s["ok"] == s["sent"] > 0, s
    evs = events(cluster, ns, JOB, PARTNER)
    reasons = [r for _, r, _ in evs]
    # The re-plan's move: make-before-break, the old replica gone once the agent counted
    # the new one.
    assert "moving" in marks and "moved" in marks, (marks, timeline)
    moving = [m for _, r, m in evs if r == "Migrating"]
    assert moving and all("make-before-break" in m for m in moving), moving
    migrated = [m for _, r, m in evs if r == "Migrated"]
    assert migrated and all("registered at the DPU agents" in m for m in migrated), migrated
    assert "ScaledOut" in reasons and "ScaledIn" in reasons, reasons
    # The capacity within 90 s of the rate tripling, and p99 back under the SLO.
    assert "capacity" in marks and marks["capacity"] - T_BURST <= 90, (marks, timeline)
    assert "p99_ok" in marks, (marks, timeline)
    # Replicas given back within the window + 2 min of the rate dropping.
    assert "scaled_in" in marks and marks["scaled_in"] - (T_BURST + BURST_S) <= WINDOW_S + 120
    # What the burst taught the profile is a lower bound of the real capacity (windows
    # mixing busy and idle time only count when they beat the entry).
    mp = json.loads(cluster.kubectl("get", "modelprofile", MODEL, "-o", "json").stdout)
    for entry in (mp.get("status") or {}).get("observed") or []:
        assert CLAIMED_RPS < entry["throughput"] <= 1e6 / SERVICE_US * 1.1, entry


def test_a_worker_twice_as_fast_as_its_profile_is_planned_with_the_observed_figure(
        release: Release, namespace: str, tmp_path: Path) -> None:
    """A Static job of 120 requests/s gets two replicas from a profile of 100 each; its
    workers are built to serve 200 (5 ms a request; 160-170 measured on this busy 2-core
    host, worker overhead included).  Kept saturated by a closed loop for longer than the
    agents' window, they refine the ModelProfile to what they really serve (at least 1.2x
    the spec's figure, enough for one replica), and the plan follows: one replica is
    enough, the other is given back (drained: nothing fails)."""
    cluster, ns = release.cluster, namespace
    profile, job, _ = objects(release.worker_image)
    job["spec"]["demand"]["requestsPerSecond"] = 120
    for key in ("scaling", "isolation", "tenant"):
        del job["spec"][key]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(profile))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(job))
    served = chart.wait_serving(cluster, ns, JOB)
    assert served["status"]["replicaCount"] == 2, served["status"]
    chart.wait("both replicas at the agent", lambda: chart.agent_replicas(f"{ns}/{JOB}") == 2,
               120, release.describe)
    chart.serve_through_agent(cluster, ns, JOB, tmp_path, 50)
    endpoint = served["status"]["clientEndpoints"][0]["endpoint"]
    token = tmp_path / "token"
    token.write_text(chart.job_token(cluster, ns, served))
    out = tmp_path / f"{ns}.closed.json"
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "conspirator", "loadgen", "--address", f"tcp://{endpoint}",
         "--job", f"{ns}/{JOB}", "--token-file", str(token), "--mode", "closed",
         "--concurrency", "32", "--connections", "2", "--requests", "0", "--duration", "75",
         "--payload-size", "4KiB", "--timeout", "60", "--json", str(out), "--no-progress"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def learned() -> dict[str, Any] | None:
        mp = json.loads(cluster.kubectl("get", "modelprofile", MODEL, "-o", "json").stdout)
        obs = (mp.get("status") or {}).get("observed") or []
        # Enough for the plan to need one replica for 120 requests/s (the 1.35 line of a
        # CI run learned 126 on a busy host: more than the spec, short of the 160-170 seen
        # elsewhere).
        return obs[0] if obs and obs[0]["throughput"] >= 1.2 * CLAIMED_RPS else None

    entry = chart.wait("the profile to learn the workers' speed", learned, 70,
                       release.describe)
    print(f"[timing] load start -> profile refined: {time.monotonic() - t0:.1f}s: {entry}")
    assert entry["throughput"] <= 2.2 * CLAIMED_RPS and entry["samples"] >= 3, entry

    def one_replica() -> dict[str, Any] | None:
        st = chart.get_job(cluster, ns, JOB).get("status", {})
        return st if st.get("replicaCount") == 1 else None

    st = chart.wait("the plan to use the learned figure", one_replica, 60, release.describe)
    print(f"[timing] load start -> planned with it: {time.monotonic() - t0:.1f}s")
    assert st["estimatedThroughput"] == pytest.approx(entry["throughput"], rel=0.01), st
    text, _ = p.communicate(timeout=180)
    print_logs(cluster)
    assert p.returncode == 0, text
    s = json.loads(out.read_text())
    print(f"[load] closed loop: sent {s['sent']} ok {s['ok']} failed {s['failed']}")
    assert s["lost"] == 0 and s["failed"] == {} and s["ok"] == s["sent"] > 0, s


@pytest.fixture(autouse=True)
def _cleanup(release: Release, namespace: str) -> Iterator[None]:
    yield
    release.cluster.kubectl("delete", "ij", JOB, PARTNER, "-n", namespace, "--wait=true",
                            "--ignore-not-found", "--timeout=90s", check=False)
    release.cluster.kubectl("delete", "modelprofile", MODEL, "--ignore-not-found", check=False)
