"""The data path end to end as plain processes (issue 6, section 5).

Two worker processes of one job register their input buffers with the node's buffer
registry (here the stand-in registry: same protocol, the node daemon's is checked on the
real node by the e2e tests); ``conspirator loadgen`` sends requests through the agent; every
request is answered, the load spreads over both replicas, nothing is lost.
"""

from __future__ import annotations

import json
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from conspirator.client import Client

from .harness import conspirator, node, spread_problems, stop_process, worker_process

JOB, TOKEN = "team-a/echo", "job-token"


@pytest.mark.parametrize(("transport", "mode", "loop"),
                         [("tcp", "closed", "uvloop"), ("local", "open", "uvloop"),
                          ("tcp", "open", "asyncio"), ("local", "closed", "asyncio")])
def test_two_worker_processes_serve_loadgen(tmp_path: Path, transport: str, mode: str,
                                            loop: str) -> None:
    # The agent's default loop is uvloop; the standard asyncio loop (--event-loop asyncio,
    # or where uvloop is missing) serves the same flow.
    with node({JOB: TOKEN}, loop=loop) as n:
        workers = [worker_process(n.registry_path, JOB, f"replica-{i}", size=8192, slots=2,
                                  delay=0.0005) for i in range(2)]
        try:
            n.wait_replicas(2)
            out = tmp_path / "load.json"
            args = ["loadgen", "--address", n.tcp if transport == "tcp" else n.local,
                    "--job", JOB, "--token", TOKEN, "--requests", "1500",
                    "--payload-size", "4KiB", "--json", str(out), "--no-progress",
                    "--connections", "2"]
            args += (["--concurrency", "8"] if mode == "closed"
                     else ["--mode", "open", "--rate", "1500"])
            r = subprocess.run(conspirator(*args), check=False, capture_output=True, text=True,
                               timeout=180, cwd=tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
            s = json.loads(out.read_text())
            assert (s["sent"], s["ok"], s["lost"], s["failed"]) == (1500, 1500, 0, {})
            spread = {int(k): v for k, v in s["by_buffer"].items()}
            # What the dispatcher promises (both serve), not a share a busy host may upset.
            assert not spread_problems(spread, 2, 1500), spread
            assert "latency: p50" in r.stdout and "replicas: buffer" in r.stdout
            stats = n.stats()
            assert stats.requests == stats.responses >= 1500
        finally:
            for w in workers:
                stop_process(w)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_bytes_arrive_intact_in_both_replicas(loop: str) -> None:
    """Random payloads of every size up to the slot reach a worker unchanged (CRC-32
    computed by the worker over its input tensor), over both transports (the large ones
    through the `rep movsb` copy where the CPU has it)."""
    with node({JOB: TOKEN}, loop=loop) as n:
        workers = [worker_process(n.registry_path, JOB, f"replica-{i}", model="checksum",
                                  size=1 << 20, slots=2) for i in range(2)]
        try:
            n.wait_replicas(2)
            rng = np.random.default_rng(7)
            for address in (n.tcp, n.local):
                with Client(address, JOB, TOKEN) as c:
                    sizes = [0, 1, 7, 4096, 65537, 1 << 20] + \
                        [int(x) for x in rng.integers(1, 1 << 20, 30)]
                    payloads = [rng.bytes(s) for s in sizes]
                    futs = [c.submit(p) for p in payloads]
                    served = set()
                    for p, f in zip(payloads, futs, strict=True):
                        r = f.result(60)
                        assert np.frombuffer(r.data, np.uint64).tolist() == \
                            [len(p), zlib.crc32(p)]
                        served.add(r.buffer_id)
                    assert len(served) == 2
        finally:
            for w in workers:
                stop_process(w)
