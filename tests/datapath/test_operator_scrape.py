"""The operator's scrape of a real DPU agent (operator/scrape.py): one real agent with a
real worker behind its real /metrics endpoint, read over HTTP with aiohttp and turned into
the report the autoscaler and the profile refiner use; a target that does not answer and
one that is not an agent drop out of the round, counted."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest

from conspirator.client import Client
from conspirator.dpu_agent.metrics import serve
from conspirator.operator.scrape import Target, parse, scrape, targets

from ..operator.builders import node as node_view
from .harness import NODE, gather_futures, node, stop_process, wait_for, worker_process
from .test_agent_observe import config, free_port

JOB = "team-a/resnet"
TOKEN = "observe-token"


class NotAnAgent(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE up gauge\nup 1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_targets_come_from_the_nodes_agent_endpoints() -> None:
    nodes = [node_view("b", agent="10.0.0.2:7470"), node_view("a", agent="[fd00::1]:7470"),
             node_view("c")]
    assert targets(nodes, 9403) == [Target("a", "http://[fd00::1]:9403/metrics"),
                                    Target("b", "http://10.0.0.2:9403/metrics")]


def test_scrape_of_a_real_agent() -> None:
    other = ThreadingHTTPServer(("127.0.0.1", 0), NotAnAgent)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    with node({JOB: TOKEN}, config()) as n:
        port = free_port()
        serve(n.agent, NODE, port, "127.0.0.1")
        w = worker_process(n.registry_path, JOB, "replica-0", delay=0.002)
        try:
            n.wait_replicas(1)
            with Client(n.tcp, JOB, TOKEN) as c:
                ok, errors = gather_futures([c.submit(b"x" * 100) for _ in range(200)], 120)
            assert len(ok) == 200 and not errors
            wait_for(lambda: n.stats().responses == 200, 10, "the responses to be counted")

            async def go() -> None:
                ts = [Target(NODE, f"http://127.0.0.1:{port}/metrics"),
                      Target("gone", f"http://127.0.0.1:{free_port()}/metrics"),
                      Target("web", f"http://127.0.0.1:{other.server_port}/metrics")]
                async with aiohttp.ClientSession() as s:
                    reports, stats = await scrape(s, ts, parse, timeout_s=10)
                assert (stats.ok, stats.failed) == (1, 2)
                (r,) = reports
                assert r.node == NODE and set(r.jobs) == {JOB}
                load = r.jobs[JOB]
                # 200 requests inside the window: rate x window is the count.
                assert round(load.offered_rps * load.window_s) == 200
                assert round(load.served_rps * load.window_s) == 200
                assert load.p99_ms is not None and load.p50_ms is not None
                assert load.p99_ms >= load.p50_ms > 0 and load.waiting == 0
                (rep,) = r.replicas
                assert rep.job == JOB and rep.replica == "replica-0"
                # The replica's rate is over the job's window (one instant for both): the
                # 200 sent, within a request or two of rounding.
                assert rep.throughput_rps * load.window_s == pytest.approx(200, abs=2)

            asyncio.run(go())
        finally:
            stop_process(w)
            other.shutdown()
