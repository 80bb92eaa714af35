"""The agent's Prometheus metrics follow its counters, its replicas and its staging pool."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conspirator.client import Client, HandshakeFailed
from conspirator.dpu_agent.metrics import COUNTERS, registry_for, serve
from conspirator.wire.frames import ErrorCode

from .harness import node, stop_process, worker_process

JOB = "team-a/resnet"
TOKEN = "metrics-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_replicas_and_staging() -> None:
    with node({JOB: TOKEN}) as n:
        reg = registry_for(n.agent, "node-1")
        before = samples(generate_latest(reg).decode())
        assert before[("conspirator_agent_requests_total", (("node", "node-1"),))] == 0
        workers = [worker_process(n.registry_path, JOB, f"replica-{i}") for i in range(2)]
        try:
            n.wait_replicas(2)
            with Client(n.tcp, JOB, TOKEN) as c:
                for i in range(20):
                    c.request(bytes([i]) * 1000)
            with pytest.raises(HandshakeFailed) as refused:  # a wrong token: counted
                Client(n.tcp, JOB, "wrong-token").close()
            assert refused.value.code is ErrorCode.AUTH_FAILED
        finally:
            after = samples(generate_latest(reg).decode())
            for w in workers:
                stop_process(w)
    node_label = (("node", "node-1"),)
    assert after[("conspirator_agent_requests_total", node_label)] == 20
    assert after[("conspirator_agent_responses_total", node_label)] == 20
    assert after[("conspirator_agent_received_bytes_total", node_label)] == 20 * 1000
    assert after[("conspirator_agent_copied_bytes_total", node_label)] == 20 * 1000
    assert after[("conspirator_agent_auth_failures_total", node_label)] == 1
    assert after[("conspirator_agent_replicas", (("job", JOB), ("node", "node-1")))] == 2
    assert after[("conspirator_agent_staging_budget_bytes", node_label)] == 64 << 20
    assert after[("conspirator_agent_copy_seconds_total", node_label)] > 0
    assert after[("conspirator_agent_idle_poll_seconds_total", node_label)] == 0  # not polling
    names = {name for name, _ in after}
    assert {f"{m}_total" for m, _ in COUNTERS.values()} <= names


def test_metrics_are_served_over_http() -> None:
    with node({JOB: TOKEN}) as n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve(n.agent, "node-2", port, "127.0.0.1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    assert 'conspirator_agent_requests_total{node="node-2"} 0.0' in text
