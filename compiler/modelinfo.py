"""``accelc inspect``: what a model is made of — ops, I/O, parameters, MACs, unsupported ops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import AccelcError
from . import frontend


@dataclass
class ModelInfo:
    name: str
    opset: int
    inputs: list[tuple[str, str, str]]  # name, dtype, shape text (dims may be symbolic)
    outputs: list[tuple[str, str, str]]
    op_counts: Counter
    params: int
    param_bytes: int
    macs_by_op: Counter
    macs_unknown: list[str] = field(default_factory=list)  # nodes whose MACs could not be counted
    unsupported: list[tuple[str, str, int]] = field(default_factory=list)
    static: bool = True

    @property
    def macs(self) -> int:
        return int(sum(self.macs_by_op.values()))

    def to_json(self) -> dict:
        return {
            "name": self.name, "opset": self.opset,
            "inputs": [dict(zip(("name", "dtype", "shape"), i)) for i in self.inputs],
            "outputs": [dict(zip(("name", "dtype", "shape"), o)) for o in self.outputs],
            "op_counts": dict(self.op_counts), "params": self.params, "param_bytes": self.param_bytes,
            "macs": self.macs, "macs_by_op": dict(self.macs_by_op), "macs_unknown": self.macs_unknown,
            "unsupported": [dict(zip(("op", "node", "opset"), u)) for u in self.unsupported],
            "static": self.static,
        }


def inspect_onnx(source, input_shapes=None) -> ModelInfo:
    """Statistics of an ONNX model; shapes are bound (and MACs counted) where they can be."""
    model, label, _ = frontend.load_onnx(source)
    frontend.check_model(model, label)
    unsupported = frontend.find_unsupported(model)
    static = True
    try:
        frontend.bind_input_shapes(model, input_shapes, label)
    except AccelcError:
        static = False  # report what is known; MACs of shape-dependent nodes stay unknown
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inspect must work on models inference rejects
        inferred = model
    shapes = _shapes(inferred)
    inits = {t.name: t for t in inferred.graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in inits.values())
    param_bytes = sum(_tensor_bytes(t) for t in inits.values())
    macs, unknown = Counter(), []
    for node in inferred.graph.node:
        n = node_macs(node, shapes)
        if n is None:
            if node.op_type in _MAC_OPS:
                unknown.append(node.name or node.op_type)
        elif n:
            macs[node.op_type] += n
    return ModelInfo(
        name=inferred.graph.name or label, opset=frontend.default_opset(inferred),
        inputs=[_io(v) for v in frontend.graph_inputs(inferred)],
        outputs=[_io(v) for v in inferred.graph.output],
        op_counts=Counter(n.op_type for n in inferred.graph.node), params=params,
        param_bytes=param_bytes, macs_by_op=macs, macs_unknown=unknown, unsupported=unsupported,
        static=static,
    )


_MAC_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "MatMulInteger", "ConvInteger",
            "QLinearMatMul", "QLinearConv"}


def node_macs(node: onnx.NodeProto, shapes: dict[str, list]) -> int | None:
    """Multiply-accumulates of one node (None when its shapes are unknown)."""
    op = node.op_type

    def shape(i):
        s = shapes.get(node.input[i]) if i < len(node.input) else None
        return s if s is not None and all(isinstance(d, int) for d in s) else None

    out = shapes.get(node.output[0]) if node.output else None
    out = out if out is not None and all(isinstance(d, int) for d in out) else None
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape(0 if op != "QLinearMatMul" else 0)
        if a is None or out is None:
            return None
        return int(np.prod(out)) * int(a[-1])
    if op == "Gemm":
        a = shape(0)
        if a is None or out is None:
            return None
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        return int(np.prod(out)) * int(a[0] if trans_a else a[-1])
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(1 if op != "QLinearConv" else 3)
        if w is None or out is None:
            return None
        return int(np.prod(out)) * int(np.prod(w[1:]))  # Cin/group · kernel window per output
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None:
            return None
        return int(np.prod(x)) * int(np.prod(w[1:]))
    if op == "Einsum":
        eq = next((x.s.decode() for x in node.attribute if x.name == "equation"), "")
        lhs = eq.replace(" ", "").split("->")[0].split(",")
        sizes = {}
        for i, term in enumerate(lhs):
            s = shape(i)
            if s is None or "." in term or len(term) != len(s):
                return None
            sizes.update(zip(term, s))
        return int(np.prod(list(sizes.values()))) if len(lhs) > 1 else 0
    return 0


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    out = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                            for d in vi.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _io(vi: onnx.ValueInfoProto) -> tuple[str, str, str]:
    t = vi.type.tensor_type
    dtype = frontend._ONNX_DTYPES.get(t.elem_type, onnx.TensorProto.DataType.Name(t.elem_type).lower())
    if not t.HasField("shape"):
        return vi.name, dtype, "?"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return vi.name, dtype, "[" + ",".join(dims) + "]"


def _tensor_bytes(t: onnx.TensorProto) -> int:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # noqa: BLE001
        itemsize = 4
    return int(np.prod(t.dims)) * itemsize


def format_info(info: ModelInfo) -> str:
    """The human-readable table ``accelc inspect`` prints."""
    lines = [f"model    {info.name}   (opset {info.opset})"]
    for title, rows in (("inputs", info.inputs), ("outputs", info.outputs)):
        for i, (n, d, s) in enumerate(rows):
            lines.append(f"{title if i == 0 else '':8} {n}: {d}{s}")
    lines.append(f"params   {info.params:,} ({info.param_bytes / 2**20:.2f} MiB)")
    macs = f"{info.macs:,} ({info.macs / 1e9:.3f} GMAC)"
    if info.macs_unknown:
        macs += f" + {len(info.macs_unknown)} node(s) with unknown shapes (bind with --input-shape)"
    lines.append(f"MACs     {macs}")
    for op, n in info.macs_by_op.most_common():
        lines.append(f"         {op:<14} {n:>16,}  {100 * n / max(info.macs, 1):5.1f}%")
    lines.append(f"nodes    {sum(info.op_counts.values())} in {len(info.op_counts)} op types")
    for op, n in sorted(info.op_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"         {op:<24} {n:>5}")
    if info.unsupported:
        lines.append(f"UNSUPPORTED ({len(info.unsupported)} node(s)):")
        for op, node, opset in info.unsupported:
            lines.append(f"         {op} (node '{node}', opset {opset})")
    else:
        lines.append("supported: every operator imports")
    return "\n".join(lines)
