"""A real CPU model for the worker: ResNet-18 in ONNX Runtime, over the shared buffer.

The graph is torchvision's ResNet-18 (He et al., 2016: a 7x7/2 stem, max pool, four stages of
two basic blocks with 64/128/256/512 channels, global average pool, a 1000-way linear layer)
written with ``onnx.helper``, with seeded random weights: no pretrained weights can be
downloaded here, and the compute (1.8 GFLOPs per 224x224 image) is what matters to the data
path, not the labels.  Batch normalisation is in the graph as inference-mode
``BatchNormalization`` nodes (ONNX Runtime folds them into the convolutions, as it does for a
model exported from torchvision).

Zero copy: each input slot of the worker's registered buffer is bound once to ONNX Runtime as
an ``OrtValue`` over the same memory (``OrtValue.ortvalue_from_numpy`` shares a CPU array's
memory), so the bytes the agent wrote are the bytes the first convolution reads.

Needs the ``model`` extra (``pip install 'conspirator[model]'``: onnx, onnxruntime).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conspirator.runtime.replica import Result

IMAGE = (3, 224, 224)
CLASSES = 1000
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # channels, stride of the first block


def _require() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - exercised where the extra is absent
        raise ImportError("the resnet18 model needs onnx and onnxruntime: "
                          "pip install 'conspirator[model]'") from exc
    return onnx, onnxruntime


class _Graph:
    """Accumulates the nodes and the weights (initializers) of the graph."""

    def __init__(self, onnx: Any, seed: int) -> None:
        self.onnx = onnx
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.weights: list[Any] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def weight(self, prefix: str, value: np.ndarray[Any, Any]) -> str:
        name = self.name(prefix)
        self.weights.append(self.onnx.numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        # He initialisation: activations keep their scale through the 18 layers.
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        y = self.node("Conv", [x, self.weight("w", w)], kernel_shape=[k, k],
                      strides=[stride, stride], pads=[k // 2] * 4)
        bn = [self.weight("gamma", np.ones(cout)), self.weight("beta", np.zeros(cout)),
              self.weight("mean", np.zeros(cout)), self.weight("var", np.ones(cout))]
        y = self.node("BatchNormalization", [y, *bn], epsilon=1e-5)
        return self.node("Relu", [y]) if relu else y

    def block(self, x: str, cin: int, cout: int, stride: int) -> str:
        y = self.conv_bn(x, cin, cout, 3, stride, relu=True)
        y = self.conv_bn(y, cout, cout, 3, 1, relu=False)
        short = x if stride == 1 and cin == cout else self.conv_bn(x, cin, cout, 1, stride,
                                                                   relu=False)
        return self.node("Relu", [self.node("Add", [y, short])])


def resnet18_onnx(seed: int = 0) -> bytes:
    """The serialized ONNX model: input ``x`` (N, 3, 224, 224) float32, output ``logits``
    (N, 1000)."""
    onnx, _ = _require()
    g = _Graph(onnx, seed)
    y = g.conv_bn("x", IMAGE[0], 64, 7, 2, relu=True)
    y = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in STAGES:
        y = g.block(y, cin, cout, stride)
        y = g.block(y, cout, cout, 1)
        cin = cout
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    fc = g.rng.standard_normal((CLASSES, cin)) / np.sqrt(cin)
    g.nodes.append(onnx.helper.make_node(
        "Gemm", [y, g.weight("fc", fc), g.weight("fcb", np.zeros(CLASSES))], ["logits"],
        transB=1))
    f32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, "resnet18",
        [onnx.helper.make_tensor_value_info("x", f32, ["N", *IMAGE])],
        [onnx.helper.make_tensor_value_info("logits", f32, ["N", CLASSES])], g.weights)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


class ResNet18:
    """The worker's model: ResNet-18 on the whole slot (its batch is the slot's size over
    one image: a job's ``inputShape`` [3, 224, 224] with ``maxBatch`` N)."""

    def __init__(self, seed: int = 0, threads: int = 1) -> None:
        _, ort = _require()
        self._ort = ort
        opts = ort.SessionOptions()
        # One thread: the worker owns the cores it is pinned to, not the node's.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(resnet18_onnx(seed), opts,
                                            providers=["CPUExecutionProvider"])
        self._bound: dict[int, tuple[Any, Any]] = {}

    def binding(self, x: np.ndarray[Any, Any]) -> Any:
        """The I/O binding of the slot ``x`` (made once per slot, over its memory)."""
        images = x.reshape(-1, *IMAGE)
        address = int(images.__array_interface__["data"][0])
        got = self._bound.get(address)
        if got is None or got[0].shape() != list(images.shape):
            value = self._ort.OrtValue.ortvalue_from_numpy(images, "cpu", 0)
            io = self.session.io_binding()
            io.bind_ortvalue_input("x", value)
            io.bind_output("logits", "cpu")
            got = (value, io)
            self._bound[address] = got
        return got[1]

    def __call__(self, x: Any) -> Result:
        a = np.asarray(x)
        if a.dtype != np.float32 or a.size % int(np.prod(IMAGE)):
            raise ValueError(f"resnet18 wants float32 images of {IMAGE}, got {a.dtype} "
                             f"x {a.size}")
        io = self.binding(a)
        self.session.run_with_iobinding(io)
        out: np.ndarray[Any, Any] = io.copy_outputs_to_cpu()[0]
        return out
