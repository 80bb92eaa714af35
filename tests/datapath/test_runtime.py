"""The worker runtime (input_tensor/serve), the reference worker, both native
implementations on the whole path, and the hardware paths (CUDA, RDMA) where present."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conspirator import runtime
from conspirator.client import AsyncClient, Client, RequestFailed
from conspirator.dpu_agent.localregistry import LocalRegistry
from conspirator.runtime import Identity, RegistrationError, Replica, UnixRegistrar
from conspirator.runtime.reference import Mlp, expected_touch, touch
from conspirator.wire import cuda, native, verbs
from conspirator.wire.frames import ErrorCode
from conspirator.wire.native import Impl

from .harness import NODE, NODE_TOKEN, node, stop_process, wait_for

JOB, TOKEN = "team-a/mnist", "mnist-token"


def test_reference_worker_from_the_operators_environment(tmp_path: Path) -> None:
    """``conspirator worker`` with nothing but the variables the operator's Deployment and
    the device plugin set: it registers a (1, 784) float32 input and serves the MLP."""
    with node({JOB: TOKEN}) as n:
        env = dict(os.environ, CONSPIRATOR_REGISTRY_SOCKET=n.registry_path,
                   CONSPIRATOR_NAMESPACE="team-a", CONSPIRATOR_JOB="mnist",
                   CONSPIRATOR_POD="mnist-worker-abc", CONSPIRATOR_THROUGHPUT="250",
                   CONSPIRATOR_INPUT_SHAPE="1,784", CONSPIRATOR_DTYPE="float32")
        p = subprocess.Popen([sys.executable, "-m", "conspirator", "worker",
                              "--log-level", "WARNING"], env=env, cwd=tmp_path)
        try:
            n.wait_replicas(1)
            info = n.lt.call(lambda: next(iter(n.agent.core.replicas.values())))
            assert (info.name, info.weight, info.geometry.slot_bytes) == \
                ("mnist-worker-abc", 250.0, 784 * 4)
            x = np.random.default_rng(1).standard_normal((1, 784)).astype(np.float32)
            with Client(n.local, JOB, TOKEN) as c:
                got = np.frombuffer(c.request(x).data, np.float32)
            np.testing.assert_allclose(got, np.asarray(Mlp()(x)).ravel(), rtol=1e-5)
        finally:
            stop_process(p)
        assert p.returncode == 0


def test_input_tensor_and_serve_in_process() -> None:
    with node({JOB: TOKEN}) as n:
        x = runtime.input_tensor((4, 8), "float32", slots=2, registry=n.registry_path,
                                 job=JOB, replica="inproc", framework="numpy")
        try:
            assert isinstance(x, np.ndarray) and x.shape == (4, 8) and x.dtype == np.float32
            with pytest.raises(RuntimeError, match="already"):
                runtime.input_tensor((1,), registry=n.registry_path, job=JOB)
            seen: list[bool] = []

            def model(t: np.ndarray) -> np.ndarray:
                seen.append(any(np.shares_memory(t, a) for a in runtime.current().slot_arrays))
                out: np.ndarray = t.sum(axis=1)
                return out

            import threading

            stop = threading.Event()
            t = threading.Thread(target=runtime.serve, args=(model,),
                                 kwargs={"stop": stop, "handle_signals": False})
            t.start()
            n.wait_replicas(1)
            with Client(n.tcp, JOB, TOKEN) as c:
                for k in range(5):
                    a = np.full((4, 8), k, np.float32)
                    out = np.frombuffer(c.request(a).data, np.float32)
                    assert out.tolist() == [8.0 * k] * 4
            assert seen and all(seen)  # the model ran on the registered memory itself
            stop.set()
            t.join(10)
            assert not t.is_alive()
            n.wait_replicas(0)  # serve() returning withdraws the buffer
        finally:
            if runtime._STATE.replica is not None:
                runtime._STATE.replica.close()
                runtime._STATE.replica = None


def test_registration_failures_are_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSPIRATOR_REGISTRY_SOCKET", raising=False)
    with pytest.raises(RegistrationError, match="no buffer registry"):
        runtime.input_tensor((8,), job=JOB)
    assert runtime._STATE.replica is None
    with pytest.raises(RegistrationError, match="cannot reach"):
        runtime.input_tensor((8,), job=JOB, registry="/nonexistent/registry.sock")
    assert runtime._STATE.replica is None

    with node({JOB: TOKEN}) as n:
        assert n.registry is not None
        n.registry.check = lambda pid, spec: f"pid {pid} runs no worker of {spec.job}"
        rep = Replica((8,), "uint8", identity=Identity(JOB, "r"))
        with pytest.raises(RegistrationError, match=r"REGISTRATION_REFUSED.*runs no worker"):
            rep.register(UnixRegistrar(n.registry_path))
        rep.close()


def test_the_runtime_registers_again_when_the_registry_restarts() -> None:
    with node({JOB: TOKEN}) as n:
        assert n.registry is not None
        import threading

        rep = Replica((16,), "uint8", identity=Identity(JOB, "survivor"))
        rep.register(UnixRegistrar(n.registry_path))
        stop = threading.Event()
        t = threading.Thread(target=runtime.serve, args=(touch,),
                             kwargs={"replica": rep, "stop": stop, "handle_signals": False})
        t.start()
        try:
            n.wait_replicas(1)
            first = rep.buffer_id
            n.lt.run(n.registry.close())  # the node daemon goes away...
            n.wait_replicas(0)
            n.registry = LocalRegistry(n.registry_path, n.publish_path, NODE, NODE_TOKEN)
            n.lt.run(n.registry.start())  # ...and comes back
            n.wait_replicas(1)
            reg = n.registry
            wait_for(lambda: [e.spec.replica for e in reg.entries.values()] == ["survivor"],
                     10, "the replica registered with the new registry")
            assert first
            with Client(n.tcp, JOB, TOKEN) as c:
                assert c.request(b"back").buffer_id == rep.buffer_id
        finally:
            stop.set()
            t.join(10)


@pytest.mark.parametrize("nat", native.implementations(), ids=lambda m: m.IMPLEMENTATION)
def test_whole_path_on_each_native_implementation(nat: Impl) -> None:
    """Agent and workers both on the C module, then both on the pure-Python fallback."""
    with node({JOB: TOKEN}, native=nat) as n:
        assert n.agent.core.native is nat
        reps = [n.worker(JOB, f"r{i}", touch, shape=(1 << 16,), slots=2) for i in range(2)]
        assert all(r.native is nat for r in reps)
        n.wait_replicas(2)
        rng = np.random.default_rng(3)
        import asyncio

        async def go() -> set[int]:
            c = await AsyncClient.connect(n.local, JOB, TOKEN)
            payloads = [rng.bytes(int(s)) for s in rng.integers(1, 1 << 16, 200)]
            rs = await asyncio.gather(*(c.request(p) for p in payloads))
            for p, r in zip(payloads, rs, strict=True):
                assert np.frombuffer(r.data, np.uint64).tolist() == \
                    expected_touch(p).tolist()
            await c.close()
            return {r.buffer_id for r in rs}

        assert len(asyncio.run(go())) == 2


def test_fallback_is_chosen_by_environment() -> None:
    code = textwrap.dedent("""
        from conspirator.wire import native
        print(native.impl.IMPLEMENTATION)
    """)
    for value, want in (("0", "python"), ("1", "c"), ("", "c")):
        out = subprocess.run([sys.executable, "-c", code], check=True, text=True,
                             capture_output=True, env=dict(os.environ, CONSPIRATOR_NATIVE=value))
        assert out.stdout.strip() == want


# ---------------------------------------------------------------- hardware paths


@pytest.mark.skipif(not cuda.available(), reason=f"CUDA target needs a GPU: "
                    f"{cuda.why_unavailable() if not cuda.available() else ''}")
def test_cuda_target_end_to_end() -> None:  # pragma: no cover - needs a GPU
    from conspirator.runtime.cuda_replica import CudaReplica

    with node({JOB: TOKEN}) as n:
        rep = CudaReplica((1024,), "float32", slots=2, identity=Identity(JOB, "gpu"))
        rep.register(UnixRegistrar(n.registry_path))
        import threading

        def model(x: object) -> np.ndarray:
            host = np.empty(1024, np.float32)
            cuda.memcpy_dtoh(cuda.buffer_address(host), int(
                x.__cuda_array_interface__["data"][0]), host.nbytes)  # type: ignore[attr-defined]
            return np.array([host.sum()], np.float32)

        t = threading.Thread(target=rep.serve, args=(model,), daemon=True)
        t.start()
        n.wait_replicas(1)
        with Client(n.tcp, JOB, TOKEN) as c:
            out = c.request(np.arange(1024, dtype=np.float32))
        assert np.frombuffer(out.data, np.float32)[0] == float(np.arange(1024).sum())
        rep.stop()
        t.join(5)
        rep.close()


@pytest.mark.skipif(verbs.why_unavailable() is not None,
                    reason=f"RDMA transport needs an RDMA device: {verbs.why_unavailable()}")
def test_rdma_transport_end_to_end() -> None:  # pragma: no cover - needs /dev/infiniband
    with node({JOB: TOKEN}) as n:
        n.agent.rdma_device = ""
        n.worker(JOB, "r", touch, shape=(4096,))
        n.wait_replicas(1)
        with Client(f"rdma://127.0.0.1:{n.agent.tcp_port}", JOB, TOKEN) as c:
            r = c.request(b"over rdma")
        assert np.frombuffer(r.data, np.uint64).tolist() == \
            expected_touch(b"over rdma").tolist()


def test_hardware_paths_say_why_they_are_off() -> None:
    if not cuda.available():
        assert cuda.why_unavailable()
        with pytest.raises(cuda.CudaError):
            from conspirator.runtime.cuda_replica import CudaReplica

            CudaReplica((4,), identity=Identity(JOB, "x"))
    if verbs.why_unavailable() is not None:
        with node({JOB: TOKEN}) as n:
            n.agent.rdma_device = ""  # enabled, but there is no device
            with pytest.raises(RequestFailed) as e:
                Client(f"rdma://127.0.0.1:{n.agent.tcp_port}", JOB, TOKEN)
            assert e.value.code is ErrorCode.BAD_FRAME and "RDMA" in e.value.message


def test_loadgen_reports_refusals_without_losing_requests(tmp_path: Path) -> None:
    with node({JOB: TOKEN}) as n:
        n.worker(JOB, "r", touch, shape=(4096,))
        n.wait_replicas(1)
        base = [sys.executable, "-m", "conspirator", "loadgen", "--address", n.tcp,
                "--job", JOB, "--requests", "50", "--no-progress"]

        def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*base, *args], check=False, capture_output=True,
                                  text=True, cwd=tmp_path)

        bad = loadgen("--token", "nope")
        assert bad.returncode == 1 and "AUTH_FAILED" in bad.stderr
        big = loadgen("--token", TOKEN, "--payload-size", "8KiB")
        assert big.returncode == 0, big.stderr
        assert "failed PAYLOAD_TOO_LARGE: 50" in big.stdout and "lost 0" in big.stdout
        strict = loadgen("--token", TOKEN, "--payload-size", "8KiB", "--strict")
        assert strict.returncode == 1
        t0 = time.monotonic()
        ok = loadgen("--token", TOKEN, "--mode", "open", "--rate", "500", "--requests", "0",
                     "--duration", "1")
        assert ok.returncode == 0 and "lost 0" in ok.stdout
        assert time.monotonic() - t0 < 30
