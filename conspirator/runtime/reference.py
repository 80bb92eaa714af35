"""Reference models for the demo, the tests and the benchmarks.

* ``mlp``: a small numpy MLP (784 -> 128 -> 10, ReLU, fixed seeded weights): the demo
  worker of an MNIST-sized job; input ``(batch, 784)`` float32, output the logits.
* ``touch``: constant-time, for measuring the data path and not the model: answers the
  payload length and its first and last 8 bytes (so a test can check the bytes landed).
* ``checksum``: the length and the CRC-32 of the whole input (tests of integrity).
* ``echo``: the input itself (capped by the result area).
* ``resnet18``: a real CPU model, ResNet-18 in ONNX Runtime with seeded random weights, over
  the buffer without a copy (:mod:`conspirator.runtime.resnet`; the ``model`` extra); input
  ``(batch, 3, 224, 224)`` float32, output the 1000 logits per image.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from conspirator.runtime.replica import Result


class Mlp:
    def __init__(self, inputs: int = 784, hidden: int = 128, outputs: int = 10,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = (rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)).astype(np.float32)
        self.b1 = np.zeros(hidden, np.float32)
        self.w2 = (rng.standard_normal((hidden, outputs)) / np.sqrt(hidden)).astype(np.float32)
        self.b2 = np.zeros(outputs, np.float32)

    def __call__(self, x: Any) -> Result:
        a = np.asarray(x, np.float32).reshape(-1, self.w1.shape[0])
        h = np.maximum(a @ self.w1 + self.b1, 0.0)
        out: np.ndarray[Any, Any] = h @ self.w2 + self.b2
        return out


def touch(x: Any) -> Result:
    b = np.asarray(x).reshape(-1).view(np.uint8)
    n = b.size
    first = int.from_bytes(b[:8].tobytes().ljust(8, b"\0"), "little")
    last = int.from_bytes(b[max(n - 8, 0):].tobytes().ljust(8, b"\0"), "little")
    return np.array([n, first, last], np.uint64)


def checksum(x: Any) -> Result:
    b = np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)
    return np.array([b.size, zlib.crc32(b.data)], np.uint64)


def echo(x: Any) -> Result:
    return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)


def expected_touch(payload: bytes) -> np.ndarray[Any, Any]:
    n = len(payload)
    return np.array([n, int.from_bytes(payload[:8].ljust(8, b"\0"), "little"),
                     int.from_bytes(payload[max(n - 8, 0):].ljust(8, b"\0"), "little")],
                    np.uint64)


def resnet18() -> Callable[[Any], Result]:
    from conspirator.runtime.resnet import ResNet18

    return ResNet18()


MODELS: dict[str, Callable[[], Callable[[Any], Result]]] = {
    "mlp": Mlp,
    "touch": lambda: touch,
    "checksum": lambda: checksum,
    "echo": lambda: echo,
    "resnet18": resnet18,
}
