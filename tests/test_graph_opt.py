"""BatchNorm folded into the preceding conv (``accelc.targets.graph_opt.fold_batch_norm``)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

import accelc
from accelc.compiler.frontend import import_onnx
from accelc.targets.graph_opt import fold_batch_norm

from .util import make_model, ort_run


def _ops(mod) -> list[str]:
    names = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: names.append(e.op.name) if isinstance(e, relax.Call)
        and isinstance(e.op, tvm.ir.Op) else None)
    return names


def _conv_bn_model(bias: bool, c=3, f=8, hw=9, bn_inputs_as_graph_inputs=False, seed=0):
    rng = np.random.default_rng(seed)
    inits = [("w", (rng.standard_normal((f, c, 3, 3)) / 3).astype("float32"))]
    if bias:
        inits.append(("b", rng.standard_normal(f).astype("float32")))
    bn = [("g", (rng.random(f) + 0.5).astype("float32")), ("be", rng.standard_normal(f).astype("float32")),
          ("m", rng.standard_normal(f).astype("float32")), ("v", (rng.random(f) + 0.1).astype("float32"))]
    inputs = [("x", TensorProto.FLOAT, [1, c, hw, hw])]
    if bn_inputs_as_graph_inputs:
        inputs.append(("g", TensorProto.FLOAT, [f]))
        bn_values = {"g": bn[0][1]}
        inits += bn[1:]
    else:
        bn_values = {}
        inits += bn
    nodes = [helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["y"])]
    model = make_model(nodes, inputs, [("y", TensorProto.FLOAT, [1, f, hw, hw])], inits)
    feeds = {"x": rng.standard_normal((1, c, hw, hw)).astype("float32"), **bn_values}
    return model, feeds


@pytest.mark.parametrize("bias", [False, True])
def test_batch_norm_folds_into_conv_and_matches_onnxruntime(bias):
    model, feeds = _conv_bn_model(bias)
    mod = import_onnx(model).mod
    assert "relax.nn.batch_norm" in _ops(mod)
    folded = fold_batch_norm(mod)
    ops = _ops(folded)
    assert "relax.nn.batch_norm" not in ops and ops.count("relax.nn.conv2d") == 1
    assert ops.count("relax.add") == 1  # the conv's own bias went into the folded one
    got = accelc.compile(model, target="cpu").run(feeds)
    want = ort_run(model, feeds)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-5)


def test_batch_norm_with_runtime_parameters_is_left_alone():
    model, feeds = _conv_bn_model(bias=False, bn_inputs_as_graph_inputs=True)
    mod = import_onnx(model).mod
    assert "relax.nn.batch_norm" in _ops(fold_batch_norm(mod))
    got = accelc.compile(model, target="cpu").run(feeds)
    np.testing.assert_allclose(got["y"], ort_run(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_batch_norm_on_another_axis_is_left_alone():
    """A BatchNorm over the conv's H axis is not a per-output-channel scale: no fold."""
    rng = np.random.default_rng(1)
    x = relax.Var("x", relax.TensorType((1, 3, 6, 6), "float32"))
    w = relax.const(rng.standard_normal((4, 3, 3, 3)).astype("float32"))
    prm = [relax.const((rng.random(6) + 0.5).astype("float32")) for _ in range(4)]
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, padding=1))
            bn = bb.emit(relax.op.nn.batch_norm(y, *prm, axis=2))
            out = bb.emit_output(relax.TupleGetItem(bn, 0))
        bb.emit_func_output(out)
    mod = bb.get()
    assert "relax.nn.batch_norm" in _ops(fold_batch_norm(mod))


def test_resnet_convs_carry_no_batch_norm_epilogue(cpu_target):
    """The zoo ResNet's fused conv kernels end in a bias add, not subtract/divide/multiply."""
    from accelc import models
    from accelc.targets import cpu

    mod = import_onnx(models.build("resnet-small")).mod
    with cpu_target:
        fused = tvm.transform.Sequential(cpu.front_passes(cpu_target))(mod)
    convs = [gv.name_hint for gv, f in fused.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert len(convs) >= 10
    assert not [n for n in convs if "divide" in n or "subtract" in n], convs
