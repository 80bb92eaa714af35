"""The agent's Open Inference Protocol listener (KServe / Triton v2, gRPC), end to end: a
real agent, real workers on real shared memory, gRPC calls from this process's client.

A ``ModelInfer`` goes through the same dispatcher and copy engine as a native request and
returns the worker's answer; every failure is a gRPC status (UNAUTHENTICATED, NOT_FOUND,
INVALID_ARGUMENT, UNAVAILABLE), never a dropped call.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from conspirator.client import Client
from conspirator.loadgen import LoadConfig, run
from conspirator.oip.client import OipClient, OipFailed
from conspirator.oip.v2 import grpc_predict_v2_pb2 as pb
from conspirator.oip.v2 import grpc_predict_v2_pb2_grpc as pbg
from conspirator.runtime.reference import expected_touch, touch

from .harness import (
    Node,
    conspirator,
    node,
    spread_problems,
    stop_process,
    wait_for,
    worker_process,
)
from .test_agent import small_config

A, B, F = "team-a/resnet", "team-b/bert", "team-f/floats"
TOKENS = {A: "token-a", B: "token-b", F: "token-f"}
Tensor = pb.ModelInferRequest.InferInputTensor


def auth(job: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[job]}"),)


def raw(job: str, payload: bytes, shape: list[int], datatype: str = "UINT8",
        **kw: Any) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=job, inputs=[Tensor(name="x", datatype=datatype,
                                                                shape=shape)],
                                raw_input_contents=[payload], **kw)


def doubled(x: Any) -> Any:
    return (np.asarray(x) * 2).astype(np.float32)


@pytest.fixture
def agent() -> Iterator[Node]:
    with node(TOKENS, small_config(), oip=True) as n:
        n.worker(A, "a-0", touch, shape=(4096,), slots=4)
        n.worker(F, "f-0", doubled, shape=(2, 4), dtype="float32")
        n.wait_replicas(2)
        yield n


@pytest.fixture
def stub(agent: Node) -> Iterator[pbg.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(agent.oip) as ch:
        yield pbg.GRPCInferenceServiceStub(ch)


def status_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    code: grpc.StatusCode = e.value.code()
    return code


def test_model_infer_returns_the_workers_answer(agent: Node,
                                                stub: pbg.GRPCInferenceServiceStub) -> None:
    payload = np.random.default_rng(1).bytes(4096)
    before = agent.stats().responses
    r = stub.ModelInfer(raw(A, payload, [1, 4096], id="req-7"), metadata=auth(A), timeout=10)
    want = expected_touch(payload).tobytes()
    assert list(r.raw_output_contents) == [want]
    assert r.id == "req-7" and r.model_name == A
    (out,) = r.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("output", "UINT8", [len(want)])
    # Served by the replica's buffer, through the core (its counters moved).
    buffers = agent.lt.call(lambda: set(agent.agent.core.replicas))
    assert r.parameters["conspirator_buffer_id"].int64_param in buffers
    assert agent.stats().responses == before + 1


def test_typed_and_raw_contents_reach_a_float_worker(agent: Node,
                                                     stub: pbg.GRPCInferenceServiceStub) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    typed = pb.ModelInferRequest(model_name=F, inputs=[Tensor(
        name="x", datatype="FP32", shape=[2, 4],
        contents=pb.InferTensorContents(fp32_contents=x.reshape(-1).tolist()))])
    r = stub.ModelInfer(typed, metadata=auth(F), timeout=10)
    assert r.raw_output_contents[0] == (x * 2).astype(np.float32).tobytes()
    r = stub.ModelInfer(raw(F, x.tobytes(), [8], "FP32"), metadata=auth(F), timeout=10)
    assert r.raw_output_contents[0] == (x * 2).astype(np.float32).tobytes()


def test_many_concurrent_calls_each_get_their_own_answer(
        agent: Node, stub: pbg.GRPCInferenceServiceStub) -> None:
    rng = np.random.default_rng(2)
    payloads = [rng.bytes(4096) for _ in range(40)]
    futs = [stub.ModelInfer.future(raw(A, p, [4096]), metadata=auth(A), timeout=20)
            for p in payloads]
    for p, f in zip(payloads, futs, strict=True):
        assert f.result().raw_output_contents[0] == expected_touch(p).tobytes()


def test_wrong_or_missing_token_is_unauthenticated(agent: Node,
                                                   stub: pbg.GRPCInferenceServiceStub) -> None:
    req = raw(A, bytes(4096), [4096])
    failures = agent.stats().auth_failures
    assert status_of(lambda: stub.ModelInfer(req, metadata=auth(B), timeout=10)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: stub.ModelInfer(req, timeout=10)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name=A), metadata=auth(B),
                                             timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    assert agent.stats().auth_failures == failures + 3
    # The bare token (no "Bearer ") is accepted too, and so is the dotted model name.
    r = stub.ModelInfer(raw("team-a.resnet", bytes(4096), [4096]),
                        metadata=(("authorization", TOKENS[A]),), timeout=10)
    assert r.raw_output_contents[0] == expected_touch(bytes(4096)).tobytes()


def test_unknown_model_is_not_found(stub: pbg.GRPCInferenceServiceStub) -> None:
    for name in ("team-z/nothing", "not a job", ""):
        assert status_of(lambda n=name: stub.ModelInfer(raw(n, bytes(4096), [4096]),
                                                        metadata=auth(A), timeout=10)) == \
            grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="team-z/nothing"),
                                             metadata=auth(A), timeout=10)) == \
        grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("case", ["short", "long", "shape", "dtype", "two-inputs",
                                  "two-raw", "typed-count", "bytes-type"])
def test_tensors_that_do_not_fit_the_job_are_invalid_argument(
        case: str, stub: pbg.GRPCInferenceServiceStub) -> None:
    req = {
        "short": raw(A, bytes(4095), [4096]),
        "long": raw(A, bytes(4097), [4096]),
        "shape": raw(A, bytes(4095), [4095]),
        "dtype": raw(A, bytes(4096), [1024], "FP32"),
        "two-inputs": pb.ModelInferRequest(model_name=A, inputs=[
            Tensor(name="x", datatype="UINT8", shape=[4096]),
            Tensor(name="y", datatype="UINT8", shape=[4096])],
            raw_input_contents=[bytes(4096), bytes(4096)]),
        "two-raw": pb.ModelInferRequest(model_name=A, inputs=[
            Tensor(name="x", datatype="UINT8", shape=[4096])],
            raw_input_contents=[bytes(2048), bytes(2048)]),
        "typed-count": pb.ModelInferRequest(model_name=F, inputs=[Tensor(
            name="x", datatype="FP32", shape=[2, 4],
            contents=pb.InferTensorContents(fp32_contents=[1.0] * 7))]),
        "bytes-type": raw(A, bytes(4096), [4096], "BYTES"),
    }[case]
    md = auth(F if req.model_name == F else A)
    assert status_of(lambda: stub.ModelInfer(req, metadata=md, timeout=10)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_typed_values_must_fit_the_datatype() -> None:
    with node(TOKENS, small_config(), oip=True) as n:
        n.worker(B, "b-0", touch, shape=(3,), dtype="int8")
        n.wait_replicas(1)
        with grpc.insecure_channel(n.oip) as ch:
            s = pbg.GRPCInferenceServiceStub(ch)

            def typed(values: list[int]) -> pb.ModelInferRequest:
                return pb.ModelInferRequest(model_name=B, inputs=[Tensor(
                    name="x", datatype="INT8", shape=[3],
                    contents=pb.InferTensorContents(int_contents=values))])

            r = s.ModelInfer(typed([-1, 2, 127]), metadata=auth(B), timeout=10)
            want = expected_touch(np.array([-1, 2, 127], np.int8).tobytes()).tobytes()
            assert r.raw_output_contents[0] == want
            assert status_of(lambda: s.ModelInfer(typed([1, 2, 300]), metadata=auth(B),
                                                  timeout=10)) == \
                grpc.StatusCode.INVALID_ARGUMENT


def test_model_ready_follows_the_replicas(agent: Node,
                                          stub: pbg.GRPCInferenceServiceStub) -> None:
    def ready(job: str) -> bool:
        r: pb.ModelReadyResponse = stub.ModelReady(pb.ModelReadyRequest(name=job),
                                                   metadata=auth(job), timeout=10)
        return r.ready

    assert ready(A) and ready(F)
    assert not ready(B)  # a job with a token and no replica here
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=F), metadata=auth(F), timeout=10)
    assert [(t.datatype, list(t.shape)) for t in meta.inputs] == [("FP32", [2, 4])]
    rep = next(r for r, _ in agent.workers if r.identity.job == F)
    rep.drain()  # its replica takes no new request: the model is no longer ready
    wait_for(lambda: not ready(F), 10, "the job without its replica to be not ready")
    assert ready(A)


def test_no_replica_is_unavailable(stub: pbg.GRPCInferenceServiceStub) -> None:
    # B has a token but no replica: queued like a native request, then NO_REPLICA after
    # the no-replica timeout (1 s in small_config).
    assert status_of(lambda: stub.ModelInfer(raw(B, bytes(16), [16]), metadata=auth(B),
                                             timeout=20)) == grpc.StatusCode.UNAVAILABLE


def test_native_and_oip_clients_share_the_job(agent: Node,
                                              stub: pbg.GRPCInferenceServiceStub) -> None:
    payload = np.random.default_rng(3).bytes(4096)
    with Client(agent.tcp, A, TOKENS[A]) as c:
        native = c.request(payload)
    r = stub.ModelInfer(raw(A, payload, [4096]), metadata=auth(A), timeout=10)
    assert native.data == r.raw_output_contents[0] == expected_touch(payload).tobytes()
    assert native.buffer_id == r.parameters["conspirator_buffer_id"].int64_param


def test_loadgen_over_oip(agent: Node) -> None:
    cfg = LoadConfig(address=f"grpc://{agent.oip}", job=A, token=TOKENS[A], protocol="oip",
                     requests=60, concurrency=6, payload_size=4096)
    res = asyncio.run(run(cfg))
    assert (res.ok, res.failed, res.lost) == (60, {}, 0)
    assert sum(res.by_buffer.values()) == 60
    bad = LoadConfig(address=agent.oip, job=A, token="wrong", protocol="oip", requests=5)
    with pytest.raises(OipFailed) as e:
        asyncio.run(run(bad))
    assert e.value.code is grpc.StatusCode.UNAUTHENTICATED
    # A size the job does not take: every request counted as failed, none lost.
    odd = LoadConfig(address=agent.oip, job=A, token=TOKENS[A], protocol="oip", requests=5,
                     payload_size=100)
    res = asyncio.run(run(odd))
    assert (res.ok, res.failed, res.lost) == (0, {"INVALID_ARGUMENT": 5}, 0)


def test_oip_client_shapes_payloads_by_the_models_metadata(agent: Node) -> None:
    async def go() -> tuple[str, tuple[int, ...], bytes]:
        c = await OipClient.connect(agent.oip, F, TOKENS[F])
        try:
            x = np.ones((2, 4), np.float32)
            r = await c.infer(x.tobytes(), timeout=10)
            return c.model.datatype, c.model.shape, r.data
        finally:
            await c.close()

    datatype, shape, data = asyncio.run(go())
    assert (datatype, shape) == ("FP32", (2, 4))
    assert data == np.full((2, 4), 2, np.float32).tobytes()


def test_agent_shutdown_answers_oip_calls(agent: Node,
                                          stub: pbg.GRPCInferenceServiceStub) -> None:
    # B has no replica: the call waits in the job's queue until the agent closes.
    fut = stub.ModelInfer.future(raw(B, bytes(16), [16]), metadata=auth(B), timeout=20)
    wait_for(lambda: agent.lt.call(lambda: bool(agent.agent.core.jobs.get(B)
                                                and agent.agent.core.jobs[B].queue)),
             10, "the call to be queued")
    agent.lt.run(agent.agent.close())
    with pytest.raises(grpc.RpcError) as e:
        fut.result()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_two_worker_processes_serve_loadgen_over_oip(tmp_path: Path, loop: str) -> None:
    """``conspirator loadgen --protocol oip`` as a process, two worker processes, the
    agent's gRPC listener on either event loop: all answered, both replicas, none lost."""
    with node(TOKENS, loop=loop, oip=True) as n:
        workers = [worker_process(n.registry_path, A, f"replica-{i}", size=4096, slots=2)
                   for i in range(2)]
        try:
            n.wait_replicas(2)
            out = tmp_path / "load.json"
            r = subprocess.run(conspirator(
                "loadgen", "--protocol", "oip", "--address", f"grpc://{n.oip}", "--job", A,
                "--token", TOKENS[A], "--requests", "400", "--concurrency", "8",
                "--payload-size", "4KiB", "--json", str(out), "--no-progress"),
                check=False, capture_output=True, text=True, timeout=180, cwd=tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
            s = json.loads(out.read_text())
            assert (s["sent"], s["ok"], s["lost"], s["failed"]) == (400, 400, 0, {})
            spread = {int(k): v for k, v in s["by_buffer"].items()}
            assert not spread_problems(spread, 2, 400), spread
        finally:
            for w in workers:
                stop_process(w)


def test_the_agent_command_serves_oip(tmp_path: Path) -> None:
    """``conspirator dpu-agent --oip-listen`` (its own stand-in registry): the ready file
    names the port, a worker registers, ModelReady turns true and ModelInfer answers."""
    from .harness import short_dir

    d = short_dir()
    ready = d / "ready.json"
    agent = subprocess.Popen(conspirator(
        "dpu-agent", "--no-tcp", "--oip-listen", "127.0.0.1:0", "--publish-socket",
        str(d / "publish.sock"), "--local-registry", str(d / "registry.sock"), "--token",
        f"{A}={TOKENS[A]}", "--ready-file", str(ready), "--log-level", "WARNING"), cwd=d)
    worker = None
    try:
        wait_for(ready.exists, 30, "the agent to listen")
        port = int(json.loads(ready.read_text())["oip_port"])
        assert port > 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            s = pbg.GRPCInferenceServiceStub(ch)

            def ready_() -> bool:
                r: pb.ModelReadyResponse = s.ModelReady(pb.ModelReadyRequest(name=A),
                                                        metadata=auth(A), timeout=10)
                return r.ready

            assert not ready_()
            worker = worker_process(str(d / "registry.sock"), A, "w", size=4096)
            wait_for(ready_, 20, "the model to be ready")
            payload = np.random.default_rng(4).bytes(4096)
            r = s.ModelInfer(raw(A, payload, [4096]), metadata=auth(A), timeout=10)
            assert r.raw_output_contents[0] == expected_touch(payload).tobytes()
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(agent)
        shutil.rmtree(d, ignore_errors=True)
    assert agent.returncode == 0
