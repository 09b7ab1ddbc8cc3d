"""ONNX graph repairs for gaps in TVM 0.27's ONNX importer, applied before import.

Each fix names the upstream symptom it avoids; tests in ``tests/test_frontend.py`` pin them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_CONSTANT_ATTRS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def normalize_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Constant(value_float|value_floats|value_int|value_ints)`` → ``Constant(value=tensor)``.

    Upstream symptom: the importer only reads ``value`` and fails with "no value in Constant".
    """
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.op_type != "Constant":
                continue
            for attr in list(node.attribute):
                if attr.name in _CONSTANT_ATTRS:
                    arr = np.array(helper.get_attribute_value(attr), dtype=_CONSTANT_ATTRS[attr.name])
                    node.attribute.remove(attr)
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(arr)))
    return model


def static_expand_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``Expand`` a constant shape when shape inference knows its output shape.

    Upstream symptom: an ``Expand`` whose shape is a runtime tensor returns a wrongly shaped
    result without any error (e.g. (2,1,6) for (2,3,6)). With the output shape static, passing
    that shape as a constant is exactly equivalent (broadcast(input, out) == out).
    """
    g = model.graph
    consts = _constant_names(g)
    shapes = _static_shapes(model)
    for node in g.node:
        if node.op_type != "Expand" or len(node.input) < 2 or node.input[1] in consts:
            continue
        out = shapes.get(node.output[0])
        if out is None:
            continue
        name = f"{node.output[0]}__accelc_expand_shape"
        g.initializer.append(numpy_helper.from_array(np.array(out, np.int64), name))
        node.input[1] = name
        consts.add(name)
    return model


def cast_shape_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Insert ``Cast(to=INT64)`` after ``Shape`` feeding ops that cannot take a shape value.

    Upstream symptom: "Node … cannot handle ShapeExpr inputs" — the importer keeps ``Shape``
    results as Relax shapes, which only a fixed list of consumers accepts.
    """
    shape_ok = {"Reshape", "Resize", "ConstantOfShape", "Gather", "Slice", "Shape", "Expand",
                "Concat", "Equal", "Where", "Cast", "CastLike", "Squeeze"}
    g = model.graph
    shape_outs = {n.output[0] for n in g.node if n.op_type == "Shape"}
    if not shape_outs:
        return model
    new_nodes = []
    casted: dict[str, str] = {}
    for node in g.node:
        if node.op_type not in shape_ok:
            for i, name in enumerate(node.input):
                if name in shape_outs:
                    if name not in casted:
                        casted[name] = f"{name}__accelc_as_tensor"
                        new_nodes.append(helper.make_node(
                            "Cast", [name], [casted[name]], to=onnx.TensorProto.INT64,
                            name=f"{name}__accelc_cast"))
                    node.input[i] = casted[name]
        new_nodes.append(node)
    if not casted:
        return model
    del g.node[:]
    g.node.extend(_toposort(new_nodes, g))
    return model


def empty_inputs_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read zero-element graph inputs from an equal empty constant instead.

    An input with a 0 extent has no values at run time, so its content is known while
    compiling. Upstream symptom: ops that need a constant operand ("Only constant axes
    currently supported" for ``Reduce*`` with an empty ``axes`` input) reject it. The input
    stays in the graph's interface (callers still feed it); it is simply no longer read.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    swap = {}
    for vi in g.input:
        t = vi.type.tensor_type
        if vi.name in inits or not vi.type.HasField("tensor_type") or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if dims and 0 in dims and all(d >= 0 for d in dims):
            name = f"{vi.name}__accelc_empty"
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            g.initializer.append(numpy_helper.from_array(np.zeros(dims, dtype), name))
            swap[vi.name] = name
    if swap:
        for graph in _graphs(g):
            for node in graph.node:
                for i, name in enumerate(node.input):
                    if name in swap:
                        node.input[i] = swap[name]
    return model


def apply_all(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every repair, in an order where each one sees the result of the previous."""
    model = normalize_constants(model)
    model = empty_inputs_as_constants(model)
    model = static_expand_shapes(model)
    model = cast_shape_outputs(model)
    return model


# -- helpers ---------------------------------------------------------------------------------
def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _constant_names(g: onnx.GraphProto) -> set[str]:
    names = {t.name for t in g.initializer}
    names |= {n.output[0] for n in g.node if n.op_type == "Constant"}
    return names


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            if all(d >= 0 for d in dims):
                out[vi.name] = dims
    return out


def _toposort(nodes: list[onnx.NodeProto], g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before use (inserted casts move up)."""
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    produced = {o for n in nodes for o in n.output}
    pending, out = list(nodes), []
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if all(i in ready or i not in produced for i in n.input):
                out.append(n)
                ready.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:  # a cycle or an outer-scope name: keep the remaining order as is
            out.extend(rest)
            break
        pending = rest
    return out
