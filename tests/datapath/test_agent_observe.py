"""The load the agent observes per job and per replica (issue 15), through its real
Prometheus endpoint and the shared parser the operator reads it with.

Counts are asserted exactly; rates only through what they are made of (rate x window =
count); latencies only from below (a request cannot be answered before its model ran).
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from conspirator.client import Client, RequestFailed
from conspirator.dpu_agent.core import AgentConfig
from conspirator.dpu_agent.load import BOUNDS, JobLoad, bucket_of, percentile
from conspirator.dpu_agent.metrics import registry_for, serve
from conspirator.observe import MalformedMetricsError, parse_agent_metrics
from conspirator.runtime import Identity, Replica, UnixRegistrar
from conspirator.runtime.reference import touch
from conspirator.wire.frames import ErrorCode
from conspirator.wire.publishing import AgentPublisher
from conspirator.wire.registration import BufferSpec
from conspirator.wire.workerregistry import Caller, WorkerRegistry

from .harness import NODE, NODE_TOKEN, gather_futures, node, stop_process, wait_for, worker_process

JOB = "team-a/resnet"
TOKEN = "observe-token"


def config(**kw: Any) -> AgentConfig:
    # A window far longer than any test: every request of the test is inside it.
    base: dict[str, Any] = {"window": 8, "staging_budget": 64 << 20, "max_payload": 4 << 20,
                            "local_slot_bytes": 1 << 20, "no_replica_timeout": 2.0,
                            "observe_window": 3600.0, "observe_slice": 1.0}
    base.update(kw)
    return AgentConfig(**base)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_counts_rates_latency_and_replicas_through_the_real_endpoint() -> None:
    with node({JOB: TOKEN}, config()) as n:
        port = free_port()
        serve(n.agent, NODE, port, "127.0.0.1")
        workers = [worker_process(n.registry_path, JOB, f"replica-{i}", delay=0.01)
                   for i in range(2)]
        try:
            n.wait_replicas(2)
            with Client(n.tcp, JOB, TOKEN) as c:
                futs = [c.submit(bytes([i % 251]) * 1000) for i in range(300)]
                ok, errors = gather_futures(futs, 120)
                assert len(ok) == 300 and not errors
                with pytest.raises(RequestFailed) as refused:  # larger than every slot
                    c.request(b"x" * 5000, timeout=30)
                assert refused.value.code is ErrorCode.PAYLOAD_TOO_LARGE
            wait_for(lambda: n.stats().errors == 1, 10, "the refusal to be counted")
            text = scrape(port)
        finally:
            for w in workers:
                stop_process(w)
    obs = parse_agent_metrics(text, node=NODE)
    assert obs.node == NODE and set(obs.jobs) == {JOB}
    job = obs.jobs[JOB]
    assert (job.requests, job.responses, job.errors, job.dropped) == (301, 300, 1, 0)
    assert (job.outstanding, job.waiting, job.draining) == (0, 0, 0)
    assert job.window_s > 0
    assert round(job.offered_rps * job.window_s) == 301
    assert round(job.served_rps * job.window_s) == 300
    assert round(job.error_rps * job.window_s) == 1
    # The model sleeps 10 ms: no response is faster (less the histogram's resolution).
    assert job.p50_ms is not None and job.p99_ms is not None
    assert job.p99_ms >= job.p50_ms >= 10 / 2 ** 0.25
    assert sorted(r.replica for r in job.replicas) == ["replica-0", "replica-1"]
    assert sum(r.completions for r in job.replicas) == 300
    assert sum(r.responses for r in job.replicas) == 300
    for r in job.replicas:
        assert r.job == JOB and r.buffer_id > 0 and r.state == "ready"
        assert r.outstanding == 0 and r.outstanding_bytes == 0 and r.weight == 1.0
        assert r.window_s > 0 and round(r.throughput_rps * r.window_s) == r.completions
        assert r.pod == "" and r.devices == ()  # the stand-in registry identifies no pod
    # The text the collector makes in-process is what the endpoint served.
    assert "conspirator_agent_job_latency_seconds_bucket" in text


def test_outstanding_and_waiting_while_a_replica_is_busy() -> None:
    release = threading.Event()

    def held(x: Any) -> Any:
        release.wait(60)
        return touch(x)

    with node({JOB: TOKEN}, config()) as n:
        n.worker(JOB, "held", held, slots=2)
        n.wait_replicas(1)
        reg = registry_for(n.agent, NODE)
        with Client(n.tcp, JOB, TOKEN) as c:
            futs = [c.submit(b"q" * 100) for _ in range(5)]  # 2 in the slots, 3 queued

            def state() -> tuple[int, int]:
                j = parse_agent_metrics(generate_latest(reg).decode()).jobs[JOB]
                return j.outstanding, j.waiting

            wait_for(lambda: state() == (2, 3), 20, "2 in flight and 3 waiting")
            j = parse_agent_metrics(generate_latest(reg).decode()).jobs[JOB]
            (r,) = j.replicas
            assert (r.outstanding, r.outstanding_bytes) == (2, 200)
            assert j.p50_ms is None and j.p99_ms is None  # no response yet
            release.set()
            ok, errors = gather_futures(futs, 60)
            assert len(ok) == 5 and not errors
        j = parse_agent_metrics(generate_latest(reg).decode()).jobs[JOB]
        assert (j.requests, j.responses, j.outstanding, j.waiting) == (5, 5, 0, 0)


class PodPolicy:
    """An identity policy that, like the node daemon's, names the caller's pod and its
    devices (the node daemon finds them from the PID's cgroup and the PodResources API)."""

    def identify(self, pid: int, spec: BufferSpec) -> Caller:
        return Caller(pid, pod_uid="uid-7", name="pod team-a/resnet-abc",
                      extra={"pod": "team-a/resnet-abc", "devices": "MIG-1,MIG-2",
                             "peer_pid": str(pid)})


def test_the_replica_is_named_by_its_pod_and_devices() -> None:
    with node({JOB: TOKEN}, config(), with_registry=False) as n:
        path = Path(n.dir / "pods.sock")
        publisher = AgentPublisher(NODE, Path(n.publish_path), NODE_TOKEN, retry=0.1)
        registry = WorkerRegistry(NODE, path, PodPolicy(), publisher)
        registry.start()
        rep = Replica((64,), "uint8", slots=2, result_bytes=64,
                      identity=Identity(JOB, "claimed-name", 2.5))
        try:
            rep.register(UnixRegistrar(path))
            n.wait_replicas(1)
            text = generate_latest(registry_for(n.agent, NODE)).decode()
        finally:
            rep.close()
            registry.close()
    (r,) = parse_agent_metrics(text).jobs[JOB].replicas
    assert (r.replica, r.pod, r.pod_uid, r.devices, r.weight) == (
        "resnet-abc", "team-a/resnet-abc", "uid-7", ("MIG-1", "MIG-2"), 2.5)


# ------------------------------------------------------------------ the window, pure


def test_the_window_is_the_counters_less_the_oldest_snapshot_inside_it() -> None:
    load = JobLoad(0.0, window_s=60.0, slice_s=5.0)
    load.requests, load.responses = 10, 8
    for _ in range(8):
        load.record(0.002)
    w = load.window(3.0)
    assert (w.span_s, w.requests, w.responses) == (3.0, 10, 8)
    for t in range(5, 70, 5):  # a snapshot every slice; 10 more requests per slice
        load.tick(float(t), {})
        load.requests += 10
    # At 72 s the snapshot of 15 s is the oldest inside the window (12 slices since).
    w = load.window(72.0)
    assert w.base.t == 15.0 and w.span_s == 57.0
    assert w.requests == load.requests - 30  # counted by the snapshot of 15 s
    assert w.responses == 0 and sum(w.hist) == 0  # the 8 responses were before 15 s
    assert len(load.ring) <= 14
    load.tick(68.0, {})  # not a slice since the last one (65 s): no snapshot
    assert load.ring[-1].t == 65.0


def test_percentiles_come_from_the_buckets() -> None:
    hist = [0] * (len(BOUNDS) + 1)
    assert percentile(hist, 0.5) is None
    for ms in [1.0] * 90 + [100.0] * 10:
        hist[bucket_of(ms / 1000)] += 1
    p50, p99 = percentile(hist, 0.5), percentile(hist, 0.99)
    assert p50 is not None and p99 is not None
    assert 1e-3 / 2 ** 0.25 <= p50 <= 1e-3 * 2 ** 0.25
    assert 0.1 / 2 ** 0.25 <= p99 <= 0.1 * 2 ** 0.25
    hist[-1] = 10**6  # beyond the last bound
    assert percentile(hist, 0.99) == BOUNDS[-1]
    with pytest.raises(ValueError, match="slice"):
        JobLoad(0.0, window_s=5.0, slice_s=10.0)


# ------------------------------------------------------------------ the parser's refusals

GOOD = """# TYPE conspirator_agent_requests_total counter
conspirator_agent_requests_total{node="n1"} 3.0
# TYPE conspirator_agent_job_requests_total counter
conspirator_agent_job_requests_total{job="a/b",node="n1"} 3.0
"""


def test_a_minimal_text_parses() -> None:
    obs = parse_agent_metrics(GOOD)
    assert obs.node == "n1" and obs.jobs["a/b"].requests == 3
    assert obs.jobs["a/b"].namespace == "a" and obs.jobs["a/b"].name == "b"


@pytest.mark.parametrize(("text", "why"), [
    ("this is not { prometheus", "not Prometheus text"),
    ('conspirator_agent_job_requests_total{job="a/b"} 1\n', "not a DPU agent"),
    (GOOD.replace('job="a/b"', 'job="ab"'), "not namespace/name"),
    (GOOD.replace('{job="a/b",node="n1"} 3.0', '{node="n1"} 3.0'), "no job label"),
    (GOOD.replace('node="n1"} 3.0\n#', 'node="n2"} 3.0\n#'), "several nodes"),
    (GOOD.replace('job="a/b",node="n1"} 3.0', 'job="a/b",node="n1"} -3.0'), "non-negative"),
    (GOOD.replace('job="a/b",node="n1"} 3.0', 'job="a/b",node="n1"} 2.5'), "whole"),
    (GOOD + 'conspirator_agent_job_requests_total{job="a/b",node="n1"} 3.0\n', "duplicate"),
    (GOOD + '# TYPE conspirator_agent_replica_weight gauge\n'
     'conspirator_agent_replica_weight{job="a/b",node="n1",replica="r"} 1.0\n', "buffer"),
    (GOOD + '# TYPE conspirator_agent_replica_state gauge\n'
     'conspirator_agent_replica_state{job="a/b",node="n1",replica="r",buffer="1",'
     'state="sleeping"} 1.0\n', "unknown state"),
])
def test_malformed_text_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(MalformedMetricsError, match=why):
        parse_agent_metrics(text)


def test_the_scraped_node_must_be_the_texts() -> None:
    with pytest.raises(MalformedMetricsError, match="scraped node 'n2'"):
        parse_agent_metrics(GOOD, node="n2")
    with pytest.raises(MalformedMetricsError, match="as text"):
        parse_agent_metrics(b"bytes")  # type: ignore[arg-type]


def test_a_dead_worker_counts_as_errors_and_the_rest_as_served() -> None:
    with node({JOB: TOKEN}, config()) as n:
        dies = worker_process(n.registry_path, JOB, "dies", delay=0.3, slots=2)
        try:
            n.wait_replicas(1)
            reg = registry_for(n.agent, NODE)
            with Client(n.tcp, JOB, TOKEN) as c:
                futs = [c.submit(b"w" * 64) for _ in range(6)]
                wait_for(lambda: parse_agent_metrics(generate_latest(reg).decode())
                         .jobs[JOB].outstanding == 2, 20, "two requests in flight")
                dies.kill()
                ok, errors = gather_futures(futs, 60)
            assert len(ok) + len(errors) == 6 and len(errors) >= 2
            j = parse_agent_metrics(generate_latest(reg).decode()).jobs[JOB]
            assert (j.requests, j.responses, j.errors) == (6, len(ok), len(errors))
        finally:
            stop_process(dies)
