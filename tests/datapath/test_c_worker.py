"""The e2e tests' C worker (e2e/images/dpserve) lays out its buffers exactly as
conspirator.wire.shm does: it registers with the stand-in registry and the agent serves
through it.  Keeps the C and Python sides of the layout from drifting apart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conspirator.client import Client
from conspirator.runtime.reference import expected_touch

from .harness import node, stop_process

SRC = Path(__file__).resolve().parents[2] / "e2e" / "images" / "dpserve" / "dpserve.c"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the C worker")
def test_c_worker_speaks_the_same_layout(tmp_path: Path) -> None:
    exe = tmp_path / "dpserve"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(SRC)],
                   check=True)
    job = "team-a/echo"
    with node({job: "t"}) as n:
        env = dict(os.environ, CONSPIRATOR_REGISTRY_SOCKET=n.registry_path,
                   CONSPIRATOR_NAMESPACE="team-a", CONSPIRATOR_JOB="echo",
                   CONSPIRATOR_POD="c-worker")
        p = subprocess.Popen([str(exe), "65536", "3"], env=env, stdout=subprocess.DEVNULL)
        try:
            n.wait_replicas(1)
            rep = n.lt.call(lambda: next(iter(n.agent.core.replicas.values())))
            assert (rep.name, rep.geometry.slots, rep.geometry.slot_bytes) == \
                ("c-worker", 3, 65536)
            with Client(n.local, job, "t") as c:
                rng = np.random.default_rng(5)
                payloads = [rng.bytes(int(s)) for s in (0, 1, 9, 65536, *rng.integers(
                    1, 65536, 50))]
                futs = [c.submit(pl) for pl in payloads]
                for pl, f in zip(payloads, futs, strict=True):
                    assert np.frombuffer(f.result(30).data, np.uint64).tolist() == \
                        expected_touch(pl).tolist()
        finally:
            stop_process(p)
        assert p.returncode == 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the C worker")
def test_c_worker_drains_on_sigterm_and_nothing_is_lost(tmp_path: Path) -> None:
    """The e2e worker's SIGTERM is the same graceful drain as conspirator.runtime's: under a
    stream of requests one of two C workers is terminated; every request is answered, the
    drained worker exits 0 saying so, and the agent counts the drain."""
    from .test_drain import JOB, TOKEN, Stream, config, observed

    exe = tmp_path / "dpserve"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(SRC)],
                   check=True)
    ns, name = JOB.split("/")
    with node({JOB: TOKEN}, config()) as n:
        def start(pod: str) -> subprocess.Popen[bytes]:
            env = dict(os.environ, CONSPIRATOR_REGISTRY_SOCKET=n.registry_path,
                       CONSPIRATOR_NAMESPACE=ns, CONSPIRATOR_JOB=name, CONSPIRATOR_POD=pod)
            # 1 ms per request: requests are in flight when the SIGTERM comes.
            return subprocess.Popen([str(exe), "65536", "2", "1000"], env=env,
                                    stdout=subprocess.PIPE)

        old, stays = start("old"), start("stays")
        try:
            n.wait_replicas(2)
            stream = Stream(n)
            stream.wait_answers(500, "before the drain")
            old.send_signal(signal.SIGTERM)
            out, _ = old.communicate(timeout=120)
            assert old.returncode == 0 and b"drained" in out, out
            n.wait_replicas(1)
            stream.wait_answers(500, "after the drain")
            ok, errors = stream.finish()
            assert not errors, errors[:3]
            assert len(ok) == len(stream.futs) >= 1000
            job = observed(n)
            assert job.drained_total == 1 and job.errors == 0
            assert [r.replica for r in job.replicas] == ["stays"]
        finally:
            stop_process(old)
            stop_process(stays)
