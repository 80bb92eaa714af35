"""The Open Inference Protocol's tensors as the agent sees them: which model name is which
job, and the one input tensor of a ``ModelInferRequest`` checked against the job's input
(what its replicas published: shape, dtype, slot size) and turned into the bytes that go
into a replica's slot.

A job has one input tensor, a row-major block of ``shape`` x ``dtype`` (the worker's own
view of its slot).  A request's input is accepted when its datatype is the job's dtype and
it holds the same number of elements (so ``[1, 3, 224, 224]``, ``[3, 224, 224]`` and a
flattened ``[150528]`` all reach a ``[3, 224, 224]`` job); its bytes come from
``raw_input_contents`` (as they are: no copy here) or from the typed ``contents`` field of
its datatype.  Anything else is a :class:`TensorError` (``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conspirator.oip.v2 import grpc_predict_v2_pb2 as pb
from conspirator.wire.frames import valid_job

#: The protocol's datatypes and the numpy dtypes of the workers' buffers (BF16 and BYTES
#: have no fixed-size numpy twin: refused).
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
OIP_NAMES: dict[str, str] = {v: k for k, v in DATATYPES.items()}

#: Which typed ``contents`` field carries each datatype (FP16 travels only as raw bytes).
_CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}

#: The name of the one output tensor (unless the request names its own).
OUTPUT = "output"


class TensorError(ValueError):
    """A request's tensors do not fit the job (``INVALID_ARGUMENT``)."""


@dataclass(frozen=True, slots=True)
class JobInput:
    """A job's input as its replicas published it (``shape`` empty: not given)."""

    shape: tuple[int, ...]
    dtype: str
    slot_bytes: int

    @property
    def datatype(self) -> str:
        return OIP_NAMES.get(self.dtype, self.dtype.upper())

    @property
    def elements(self) -> int | None:
        return math.prod(self.shape) if self.shape else None


def job_of(model_name: str) -> str | None:
    """The job a model name addresses: ``namespace/name``, or ``namespace.name`` (the
    token files' spelling, for clients whose model names cannot hold a slash; a namespace
    has no dots, so the first one splits)."""
    name = model_name
    if "/" not in name and "." in name:
        ns, _, job = name.partition(".")
        name = f"{ns}/{job}"
    return name if valid_job(name) else None


def input_bytes(req: pb.ModelInferRequest, job: JobInput | None) -> bytes:
    """The request's one input tensor as the bytes of a slot, checked against ``job``
    (None: no replica has published the job's input yet; only the request's own
    consistency is checked)."""
    if len(req.inputs) != 1:
        raise TensorError(f"the model takes one input tensor, the request has "
                          f"{len(req.inputs)}")
    t = req.inputs[0]
    dtype = DATATYPES.get(t.datatype)
    if dtype is None:
        raise TensorError(f"input {t.name!r}: datatype {t.datatype!r} is not supported "
                          f"(one of {', '.join(DATATYPES)})")
    if job is not None and dtype != job.dtype:
        raise TensorError(f"input {t.name!r} is {t.datatype}, the model takes {job.datatype}")
    shape = list(t.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"input {t.name!r}: shape {shape} has a negative dimension")
    count = math.prod(shape)
    if job is not None and job.elements is not None and count != job.elements:
        raise TensorError(f"input {t.name!r} of shape {shape} has {count} elements, the "
                          f"model takes {list(job.shape)} ({job.elements})")
    want = count * np.dtype(dtype).itemsize
    if req.raw_input_contents:
        if len(req.raw_input_contents) != 1:
            raise TensorError(f"{len(req.raw_input_contents)} raw_input_contents for one "
                              "input tensor")
        if t.HasField("contents"):
            raise TensorError(f"input {t.name!r} has both raw and typed contents")
        data = req.raw_input_contents[0]
    else:
        data = _typed(t, dtype, count)
    if len(data) != want:
        raise TensorError(f"input {t.name!r} holds {len(data)} bytes, its shape {shape} of "
                          f"{t.datatype} needs {want}")
    if job is not None and len(data) > job.slot_bytes:
        raise TensorError(f"input {t.name!r} of {len(data)} bytes exceeds the model's "
                          f"input buffer of {job.slot_bytes} bytes")
    return data


def _typed(t: pb.ModelInferRequest.InferInputTensor, dtype: str, count: int) -> bytes:
    field = _CONTENTS.get(t.datatype)
    if field is None:
        raise TensorError(f"input {t.name!r}: {t.datatype} travels only as "
                          "raw_input_contents")
    values: Sequence[bool | int | float] = getattr(t.contents, field)
    if len(values) != count:
        raise TensorError(f"input {t.name!r} has {len(values)} values in {field}, its "
                          f"shape needs {count}")
    arr = np.asarray(values, dtype=np.dtype(field_dtype(field)))
    out = arr.astype(dtype)
    # INT8 and INT16 travel as int32, UINT8 and UINT16 as uint32: a value must fit.
    if out.dtype.kind in "iu" and not np.array_equal(out.astype(arr.dtype), arr):
        raise TensorError(f"input {t.name!r}: a value does not fit {t.datatype}")
    return out.tobytes()


def field_dtype(field: str) -> str:
    """The numpy dtype a typed contents field's values arrive as."""
    return {"bool_contents": "bool", "int_contents": "int32", "int64_contents": "int64",
            "uint_contents": "uint32", "uint64_contents": "uint64",
            "fp32_contents": "float32", "fp64_contents": "float64"}[field]


def output_name(req: pb.ModelInferRequest) -> str:
    """The output tensor's name: the one the request asked for, else ``output``."""
    if len(req.outputs) > 1:
        raise TensorError(f"the model has one output tensor, the request asks for "
                          f"{len(req.outputs)}")
    return req.outputs[0].name if req.outputs else OUTPUT
