"""The Open Inference Protocol's client side (gRPC ``ModelInfer`` to a DPU agent), as
``conspirator loadgen --protocol oip`` uses it: the same ``send``/``close`` as the native
:class:`~conspirator.client.AsyncClient`, each request one ``ModelInfer`` call whose one
input tensor carries the payload as ``raw_input_contents``.

The model is the job (``namespace/name``); the job's token travels as the metadata
``authorization: Bearer <token>``.  At connect the client asks ``ModelMetadata`` for the
job's input (datatype, shape) and sends payloads of that size with that shape (another
size goes as a flat tensor of the datatype, which the agent refuses when it does not fit).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import grpc

from conspirator.client import Response
from conspirator.oip.v2 import grpc_predict_v2_pb2 as pb
from conspirator.oip.v2 import grpc_predict_v2_pb2_grpc as pbg

#: Bytes per element of the protocol's fixed-size datatypes.
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2,
            "BF16": 2, "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8,
            "FP64": 8}
BUFFER_PARAM = "conspirator_buffer_id"


class OipFailed(Exception):  # noqa: N818 - it is the call that failed
    """A ``ModelInfer`` (or metadata) call ended with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def target_of(address: str) -> str:
    """``grpc://host:port``, ``oip://host:port`` or ``host:port`` -> ``host:port``."""
    for scheme in ("grpc://", "oip://"):
        if address.startswith(scheme):
            return address[len(scheme):]
    if "://" in address:
        raise ValueError(f"{address!r}: the Open Inference Protocol needs grpc://host:port")
    return address


@dataclass(frozen=True)
class ModelInput:
    datatype: str
    shape: tuple[int, ...]

    def shape_for(self, nbytes: int) -> list[int]:
        """The shape a payload of ``nbytes`` is sent with."""
        item = ITEMSIZE.get(self.datatype, 1)
        if self.shape and all(d > 0 for d in self.shape) and \
                math.prod(self.shape) * item == nbytes:
            return list(self.shape)
        return [nbytes // item]


class OipClient:
    """One gRPC channel to an agent's OIP listener, for one job."""

    def __init__(self, channel: grpc.aio.Channel, job: str, token: str,
                 model: ModelInput) -> None:
        self.channel = channel
        self.stub = pbg.GRPCInferenceServiceStub(channel)
        self.job = job
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.model = model
        self._n = 0

    @classmethod
    async def connect(cls, address: str, job: str, token: str,
                      max_message: int = 256 << 20) -> OipClient:
        options = [("grpc.max_receive_message_length", max_message),
                   ("grpc.max_send_message_length", max_message)]
        channel = grpc.aio.insecure_channel(target_of(address), options=options)
        stub = pbg.GRPCInferenceServiceStub(channel)
        model = ModelInput("UINT8", ())
        try:
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=job),
                                            metadata=(("authorization", f"Bearer {token}"),),
                                            timeout=10)
            if meta.inputs:
                model = ModelInput(meta.inputs[0].datatype, tuple(meta.inputs[0].shape))
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:  # no replica yet: send flat bytes
                await channel.close()
                raise OipFailed(e.code(), e.details() or "") from e
        return cls(channel, job, token, model)

    def request(self, payload: bytes) -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="input", datatype=self.model.datatype,
            shape=self.model.shape_for(len(payload)))
        return pb.ModelInferRequest(model_name=self.job, inputs=[tensor],
                                    raw_input_contents=[payload])

    async def infer(self, payload: bytes, timeout: float | None = None) -> Response:
        self._n += 1
        n = self._n
        try:
            r = await self.stub.ModelInfer(self.request(payload), metadata=self.metadata,
                                           timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise OipFailed(e.code(), e.details() or "") from e
        data = r.raw_output_contents[0] if r.raw_output_contents else b""
        buffer_id = r.parameters[BUFFER_PARAM].int64_param if BUFFER_PARAM in r.parameters \
            else 0
        return Response(n, data, buffer_id)

    async def send(self, payload: bytes, target: int = 0) -> asyncio.Future[Response]:
        """Start one ``ModelInfer``; its answer (``target`` has no OIP spelling: the
        agent always chooses the replica)."""
        if target:
            raise ValueError("the Open Inference Protocol cannot address a buffer (--target)")
        return asyncio.ensure_future(self.infer(payload))

    async def close(self) -> None:
        await self.channel.close()
