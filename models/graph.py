"""A small ONNX graph builder that writes graphs the way PyTorch's exporter does.

Node names follow the exporter's ``/scope/sub.0/Op`` style and initializer names the
``module.sub.weight`` style, so layer allow/deny patterns written for real exported models
work on the zoo too. Weights are drawn from a seeded generator: the same seed always gives
byte-identical models.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

_DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "bool": TensorProto.BOOL,
}


class GraphBuilder:
    """Accumulates nodes, initializers and graph inputs/outputs; ``build()`` returns a checked model."""

    def __init__(self, name: str, seed: int, opset: int = OPSET):
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: Counter[str] = Counter()
        self._taken: set[str] = set()
        self._const_cache: dict[tuple, str] = {}

    # -- naming ---------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``… (the exporter's suffixes) if already taken."""
        candidate, n = name, self._used[name]
        while candidate in self._taken:
            n += 1
            candidate = f"{name}_{n}"
        self._used[name] = n
        self._taken.add(candidate)
        return candidate

    # -- graph I/O ------------------------------------------------------------------------
    def input(self, name: str, dtype: str, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, _DTYPES[dtype], list(shape)))
        return name

    def output(self, value: str, name: str, dtype: str, shape: Sequence[int | str]) -> str:
        """Expose ``value`` as graph output ``name`` (through an Identity when renaming)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"/{name}/Identity"))
        self.outputs.append(helper.make_tensor_value_info(name, _DTYPES[dtype], list(shape)))
        return name

    # -- tensors --------------------------------------------------------------------------
    def param(self, name: str, array: np.ndarray) -> str:
        """Add a named initializer (a weight)."""
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const(self, value, dtype: str = "int64") -> str:
        """An anonymous constant (shape vectors, axes, scalars), shared when repeated."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            self._const_cache[key] = self.param(f"onnx::Const_{len(self._const_cache)}", arr)
        return self._const_cache[key]

    def randn(self, shape: Sequence[int], std: float = 0.02) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype("float32")

    # -- nodes ----------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str, name: str, outputs: int = 1, **attrs):
        """Append one node named ``name``; returns its output name (or a tuple of them)."""
        node_name = self._unique(name)
        outs = [f"{node_name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if outputs == 1 else tuple(outs)

    def build(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="accelc.models",
            doc_string=doc,
        )
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)

    # -- layers (PyTorch-export shaped) ---------------------------------------------------
    def linear(self, x: str, d_in: int, d_out: int, scope: str, pname: str,
               weight: np.ndarray | None = None, bias: np.ndarray | None = None,
               std: float = 0.02) -> str:
        """``x @ W + b`` as MatMul + Add (torch exports nn.Linear on 3-D inputs this way)."""
        w = self.randn((d_in, d_out), std) if weight is None else weight
        b = np.zeros(d_out, "float32") + self.randn((d_out,), 0.01) if bias is None else bias
        y = self.op("MatMul", x, self.param(f"onnx::MatMul_{pname}.weight", w), name=f"{scope}/MatMul")
        return self.op("Add", self.param(f"{pname}.bias", b), y, name=f"{scope}/Add")

    def layer_norm(self, x: str, d: int, scope: str, pname: str, eps: float = 1e-5,
                   gamma: np.ndarray | None = None, beta: np.ndarray | None = None) -> str:
        g = (1.0 + self.randn((d,), 0.05)) if gamma is None else gamma
        b = self.randn((d,), 0.02) if beta is None else beta
        return self.op("LayerNormalization", x, self.param(f"{pname}.weight", g.astype("float32")),
                       self.param(f"{pname}.bias", b.astype("float32")),
                       name=f"{scope}/LayerNormalization", axis=-1, epsilon=eps)

    def gelu(self, x: str, scope: str, approximate: str = "none") -> str:
        """GELU decomposed as the opset-17 exporter writes it (Erf form, or tanh form)."""
        if approximate == "tanh":  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            x3 = self.op("Pow", x, self.const(3.0, "float32"), name=f"{scope}/Pow")
            inner = self.op("Add", x, self.op("Mul", x3, self.const(0.044715, "float32"), name=f"{scope}/Mul"),
                            name=f"{scope}/Add")
            t = self.op("Tanh", self.op("Mul", inner, self.const(math.sqrt(2 / math.pi), "float32"),
                                        name=f"{scope}/Mul_1"), name=f"{scope}/Tanh")
            one_plus = self.op("Add", t, self.const(1.0, "float32"), name=f"{scope}/Add_1")
            half_x = self.op("Mul", x, self.const(0.5, "float32"), name=f"{scope}/Mul_2")
            return self.op("Mul", half_x, one_plus, name=f"{scope}/Mul_3")
        e = self.op("Erf", self.op("Div", x, self.const(math.sqrt(2.0), "float32"), name=f"{scope}/Div"),
                    name=f"{scope}/Erf")
        one_plus = self.op("Add", e, self.const(1.0, "float32"), name=f"{scope}/Add")
        return self.op("Mul", self.op("Mul", x, one_plus, name=f"{scope}/Mul"),
                       self.const(0.5, "float32"), name=f"{scope}/Mul_1")

    def split_heads(self, x: str, batch: int, seq: int, heads: int, scope: str,
                    transpose_last: bool = False) -> str:
        """[B, N, H·dh] → [B, H, N, dh] (or [B, H, dh, N] for keys, as HF exports Kᵀ)."""
        r = self.op("Reshape", x, self.const([batch, seq, heads, -1]), name=f"{scope}/Reshape")
        perm = [0, 2, 3, 1] if transpose_last else [0, 2, 1, 3]
        return self.op("Transpose", r, name=f"{scope}/Transpose", perm=perm)

    def merge_heads(self, x: str, batch: int, seq: int, d: int, scope: str) -> str:
        t = self.op("Transpose", x, name=f"{scope}/Transpose", perm=[0, 2, 1, 3])
        return self.op("Reshape", t, self.const([batch, seq, d]), name=f"{scope}/Reshape")

    def attention_core(self, q: str, kt: str, v: str, head_dim: int, scope: str,
                       mask_add: str | None = None, causal_where: tuple[str, str] | None = None) -> str:
        """softmax(Q·Kᵀ/√dh [+ mask]) · V on [B, H, N, dh] tensors, as HF exporters write it."""
        s = self.op("MatMul", q, kt, name=f"{scope}/MatMul")
        s = self.op("Div", s, self.const(math.sqrt(head_dim), "float32"), name=f"{scope}/Div")
        if causal_where is not None:
            keep, neg = causal_where
            s = self.op("Where", keep, s, neg, name=f"{scope}/Where")
        if mask_add is not None:
            s = self.op("Add", s, mask_add, name=f"{scope}/Add")
        p = self.op("Softmax", s, name=f"{scope}/Softmax", axis=-1)
        return self.op("MatMul", p, v, name=f"{scope}/MatMul_1")
