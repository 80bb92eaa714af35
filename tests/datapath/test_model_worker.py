"""The real CPU model behind the data path: ``conspirator worker --model resnet18``
(ResNet-18 in ONNX Runtime with seeded random weights, conspirator/runtime/resnet.py).

The answers through the agent are the model's answers on the bytes sent (compared with a
separate ONNX Runtime session on the same input), and the model reads the worker's
registered slot itself: no copy between the bytes the agent wrote and the first
convolution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conspirator.client import Client

from .harness import node, stop_process

ort = pytest.importorskip("onnxruntime", reason="the model extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the model extra (onnx) is not installed")

from conspirator.runtime.resnet import IMAGE, ResNet18, resnet18_onnx  # noqa: E402

JOB, TOKEN = "team-a/resnet", "resnet-token"


def reference(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(resnet18_onnx(0), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"x": x})[0]
    return out


def run(m: ResNet18, x: np.ndarray) -> np.ndarray:
    out = m(x)
    assert isinstance(out, np.ndarray)
    return out


def test_the_graph_is_resnet18() -> None:
    """11.69 M parameters (torchvision's resnet18: 11,689,512), 20 convolutions (17 in the
    stem and the blocks, 3 downsampling shortcuts), one linear layer of 1000 classes."""
    import onnx

    model = onnx.load_from_string(resnet18_onnx(0))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 20 and ops.count("Gemm") == 1 and ops.count("Add") == 8
    # Every weight but the batch norms' running statistics (torchvision counts those as
    # buffers, not parameters) and the convolutions' absent biases.
    params = sum(int(np.prod(w.dims)) for w in model.graph.initializer
                 if not w.name.startswith(("mean", "var")))
    assert params == 11_689_512


def test_the_model_reads_the_slot_it_is_given_without_a_copy() -> None:
    """Bound once per slot: writing new bytes into the same array changes the answer, as
    writing into the registered buffer does; a second slot gets its own binding."""
    m = ResNet18()
    slots = np.zeros((2, 1, *IMAGE), np.float32)
    rng = np.random.default_rng(3)
    slots[0] = rng.standard_normal((1, *IMAGE))
    first = run(m, slots[0])
    np.testing.assert_allclose(first, reference(slots[0]), rtol=1e-4, atol=1e-3)
    slots[0] = rng.standard_normal((1, *IMAGE))
    second = run(m, slots[0])
    np.testing.assert_allclose(second, reference(slots[0]), rtol=1e-4, atol=1e-3)
    assert not np.allclose(first, second)
    run(m, slots[1])
    assert len(m._bound) == 2
    batch = rng.standard_normal((2, *IMAGE)).astype(np.float32)  # a slot of maxBatch 2
    logits = run(m, batch)
    assert logits.shape == (2, 1000)
    for image, row in zip(batch, logits, strict=True):
        np.testing.assert_allclose(row[None], reference(image[None]), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="float32 images"):
        m(np.zeros(100, np.float32))


def test_the_reference_worker_serves_resnet18_through_the_agent(tmp_path: Path) -> None:
    """The worker as the operator starts it (inputShape [3, 224, 224], maxBatch 1): each
    image through the agent comes back as the model's 1000 logits for that image."""
    with node({JOB: TOKEN}) as n:
        env = dict(os.environ, CONSPIRATOR_REGISTRY_SOCKET=n.registry_path,
                   CONSPIRATOR_NAMESPACE="team-a", CONSPIRATOR_JOB="resnet",
                   CONSPIRATOR_POD="resnet-worker-0", CONSPIRATOR_THROUGHPUT="10",
                   CONSPIRATOR_INPUT_SHAPE="1,3,224,224", CONSPIRATOR_DTYPE="float32")
        p = subprocess.Popen([sys.executable, "-m", "conspirator", "worker", "--model",
                              "resnet18", "--log-level", "WARNING"], env=env, cwd=tmp_path)
        try:
            n.wait_replicas(1, timeout=120)
            images = np.random.default_rng(5).standard_normal((2, 1, *IMAGE)).astype(np.float32)
            with Client(n.local, JOB, TOKEN) as c:
                got = [np.frombuffer(c.request(x).data, np.float32) for x in images]
            for x, answer in zip(images, got, strict=True):
                np.testing.assert_allclose(answer.reshape(1, 1000), reference(x), rtol=1e-4,
                                           atol=1e-3)
            assert not np.allclose(got[0], got[1])
        finally:
            stop_process(p)
        assert p.returncode == 0
