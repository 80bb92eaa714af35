"""The agent's Open Inference Protocol listener (KServe / Triton v2 over gRPC).

An existing Triton or KServe client reaches a Conspirator job unchanged: ``ModelInfer``'s
``model_name`` is the job (``namespace/name``, or ``namespace.name``), the job's token
travels as gRPC metadata (``authorization: Bearer <token>``), and the one input tensor's
bytes (``raw_input_contents``, or the typed contents) go through the same dispatcher and
copy engine as a native request (:meth:`AgentCore.submit`: least outstanding work, the
replica's slot, its doorbell); the worker's result comes back as the one output tensor's
``raw_output_contents`` (``UINT8``, ``[n]``; the ``conspirator_buffer_id`` parameter names
the replica that served it).  ``ModelReady`` is true while the job has a replica taking
requests; ``ServerLive``, ``ServerReady``, ``ServerMetadata`` and ``ModelMetadata`` (the
published shape and dtype) answer as the protocol says.

Every call ends in an answer or a status: ``UNAUTHENTICATED`` (no or a wrong token),
``NOT_FOUND`` (a model name that is no job this agent holds a token for),
``INVALID_ARGUMENT`` (tensors that do not fit the job: :mod:`.oiptensor`), ``UNAVAILABLE``
(no replica within the no-replica timeout, a replica gone, the agent shutting down),
``DEADLINE_EXCEEDED`` (the request timeout), ``INTERNAL`` (a worker error).

All of a job's OIP calls share one core :class:`Session`; at most ``oip_window`` of them
are in the core at once (the others wait here, their bytes held by gRPC, whose message size
is bounded by ``max_payload``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from conspirator.dpu_agent.core import AgentCore
from conspirator.dpu_agent.oiptensor import JobInput, TensorError, input_bytes, job_of, output_name
from conspirator.dpu_agent.state import Pending, Session
from conspirator.dpu_agent.tokens import TokenStore
from conspirator.oip.v2 import grpc_predict_v2_pb2 as pb
from conspirator.oip.v2 import grpc_predict_v2_pb2_grpc as pbg
from conspirator.wire.frames import ErrorCode, Mode

log = logging.getLogger("conspirator.dpu_agent")

#: The metadata key of the job's token (``Bearer <token>``, or the bare token).
AUTH_KEY = "authorization"
#: The response parameter naming the replica buffer that served a request.
BUFFER_PARAM = "conspirator_buffer_id"
SERVER_NAME = "conspirator"

STATUS_OF: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.NO_REPLICA: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.REPLICA_FAILED: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.PAYLOAD_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.BAD_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.RESULT_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.WORKER_ERROR: grpc.StatusCode.INTERNAL,
}


@dataclass(frozen=True, slots=True)
class Failure:
    """How the core ended a request that got no result."""

    code: ErrorCode
    message: str


#: A call's answer: (the replica buffer that served it, its result), or a failure.
Answer = tuple[int, bytes] | Failure


class OipSession(Session):
    """A job's OIP calls as the core sees them: answers resolve the calls' futures."""

    def __init__(self, job: str, window: int) -> None:
        super().__init__(job, window)
        self.waiting: dict[int, asyncio.Future[Answer]] = {}
        self.gate = asyncio.Semaphore(window)
        self.next_id = 0

    def send_response(self, request_id: int, buffer_id: int, data: bytes | memoryview) -> None:
        fut = self.waiting.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.set_result((buffer_id, bytes(data)))  # the slot's result area is reused

    def send_error(self, request_id: int, code: ErrorCode, message: str) -> None:
        fut = self.waiting.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(Failure(code, message))


class Servicer(pbg.GRPCInferenceServiceServicer):
    def __init__(self, core: AgentCore, tokens: TokenStore, window: int) -> None:
        self.core = core
        self.tokens = tokens
        self.window = window
        self.sessions: dict[str, OipSession] = {}

    # -- addressing and auth

    async def _job(self, model_name: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        job = job_of(model_name)
        token = self.tokens.token_for(Mode.INLINE, job) if job is not None else None
        if job is None or token is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"no model {model_name[:200]!r} here (a job's namespace/name)")
        given = ""
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_KEY:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                given = text.removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            self.core.stats.auth_failures += 1
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"metadata {AUTH_KEY!r} must carry job {job}'s token "
                         "('Bearer <token>')" if not given else f"wrong token for job {job}")
        return job

    def _input(self, job: str) -> JobInput | None:
        """The job's input, from a replica taking requests (else any published one)."""
        j = self.core.jobs.get(job)
        if j is None:
            return None
        for rep in (*j.replicas.values(), *j.draining.values()):
            return JobInput(tuple(rep.shape), rep.dtype, rep.geometry.slot_bytes)
        return None

    def _session(self, job: str) -> OipSession:
        s = self.sessions.get(job)
        if s is None:
            s = self.sessions[job] = OipSession(job, self.window)
        return s

    # -- the protocol

    async def ServerLive(self, request: pb.ServerLiveRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.core.shutting_down)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> pb.ServerMetadataResponse:
        from importlib.metadata import version

        return pb.ServerMetadataResponse(name=SERVER_NAME, version=version("conspirator"))

    async def ModelReady(self, request: pb.ModelReadyRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelReadyResponse:
        job = await self._job(request.name, context)
        j = self.core.jobs.get(job)
        return pb.ModelReadyResponse(
            ready=bool(j is not None and j.replicas and not self.core.shutting_down))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> pb.ModelMetadataResponse:
        job = await self._job(request.name, context)
        spec = self._input(job)
        if spec is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE,
                         f"job {job} has no replica here: its input is not known yet")
        tensor = pb.ModelMetadataResponse.TensorMetadata
        shape = list(spec.shape) or [-1]
        return pb.ModelMetadataResponse(
            name=request.name, versions=["1"], platform=SERVER_NAME,
            inputs=[tensor(name="input", datatype=spec.datatype, shape=shape)],
            outputs=[tensor(name="output", datatype="UINT8", shape=[-1])])

    async def ModelInfer(self, request: pb.ModelInferRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelInferResponse:
        job = await self._job(request.model_name, context)
        try:
            data = input_bytes(request, self._input(job))
            out_name = output_name(request)
        except TensorError as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        s = self._session(job)
        async with s.gate:
            answer = await self._submit(s, data)
        if isinstance(answer, Failure):
            await _abort(context, STATUS_OF.get(answer.code, grpc.StatusCode.INTERNAL),
                         f"{answer.code.name}: {answer.message}")
        buffer_id, result = answer
        out = pb.ModelInferResponse.InferOutputTensor(name=out_name, datatype="UINT8",
                                                      shape=[len(result)])
        resp = pb.ModelInferResponse(model_name=request.model_name,
                                     model_version=request.model_version, id=request.id,
                                     outputs=[out], raw_output_contents=[result])
        resp.parameters[BUFFER_PARAM].int64_param = buffer_id
        return resp

    async def _submit(self, s: OipSession, data: bytes) -> Answer:
        """Through the core as a native request: checked, admitted, dispatched or queued;
        the answer the core gives it (a result, or an error code and message)."""
        core = self.core
        s.next_id += 1
        rid = s.next_id
        refusal = core.check(s, rid, 0, len(data))
        if refusal is not None:
            core.refused(s)
            return Failure(*refusal)
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        s.waiting[rid] = fut
        p = Pending(s, rid, 0, len(data), src=data)
        core.submit(p, admit=True)
        try:
            return await fut
        except asyncio.CancelledError:  # the client went (cancelled, or its deadline)
            s.waiting.pop(rid, None)
            self._forget(s, p)
            raise

    def _forget(self, s: OipSession, p: Pending) -> None:
        """A cancelled call's request: out of the queue if it waits there (one in a slot
        ends when its worker answers, into nothing)."""
        if p.done or p.replica is not None:
            return
        job = self.core.jobs.get(s.job)
        if job is not None and p in job.queue:
            job.queue.remove(p)
        p.free_source()
        p.done = True
        s.inflight.pop(p.request_id, None)
        self.core.stats.dropped_no_session += 1


async def _abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode,
                 message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class OipServer:
    """The gRPC server of the listener (``--oip-listen``), on the agent's event loop."""

    def __init__(self, core: AgentCore, tokens: TokenStore, address: tuple[str, int],
                 window: int) -> None:
        self.servicer = Servicer(core, tokens, window)
        self.address = address
        cfg = core.config
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", cfg.max_payload + (1 << 20)),
            ("grpc.max_send_message_length", cfg.max_result + (1 << 20)),
        ])
        pbg.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        self.port = 0

    async def start(self) -> int:
        host, port = self.address
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot listen for the Open Inference Protocol on {host}:{port}")
        await self.server.start()
        log.info("Open Inference Protocol (gRPC) on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        await self.server.stop(grace)
