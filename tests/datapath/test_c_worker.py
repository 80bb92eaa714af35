"""The e2e tests' C worker (e2e/images/dpserve) lays out its buffers exactly as
conspirator.wire.shm does: it registers with the stand-in registry and the agent serves
through it.  Keeps the C and Python sides of the layout from drifting apart."""

from __future__ import annotations

import os
import shutil
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
