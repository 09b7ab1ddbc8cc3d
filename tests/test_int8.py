"""The int8 rewrite: the int8 GEMM kernel bit-exact against NumPy under the CPU rule, the pass
against a NumPy model of itself, its fidelity on a conv net, and the sim target running every
int8 layer on the MAC array with outputs equal to the CPU build bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import accelc
from accelc.passes.int8 import quantize_activation, quantize_weight
from accelc.schedules.cpu.matmul import Matmul
from accelc.schedules.int8 import dequantize, int8_matmul
from accelc.targets import cpu
from accelc.targets.sim import offload
from accelc.tests.util import mlp_model

DIMS = st.integers(1, 9) | st.integers(10, 80)


def _build(func):
    """``func`` scheduled by the CPU target's default rules, as the pipeline does (the matmul
    rule takes every shape but degenerate ones like 1×1×1)."""
    from tvm.s_tir import dlight as dl

    from accelc.schedules.cpu import default_rules

    target = cpu.host_target()
    m, k, n = (int(func.attrs[f"accelc.{d}"]) for d in "mkn")
    if min(m, k, n) > 1:
        assert Matmul().apply(func, target, False) is not None, "the CPU matmul rule must take the int8 GEMM"
    with target:
        mod = dl.ApplyDefaultSchedule(*default_rules())(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    return tvm.tirx.build(mod["main"], target)


def _run(lib, args, out_shape, out_dtype):
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=DIMS, k=DIMS, n=DIMS, seed=st.integers(0, 2**16))
def test_int8_gemm_is_bit_exact(m, k, n, seed):
    rng = np.random.default_rng(seed)
    xq = rng.integers(-128, 128, (m, k), dtype=np.int8)  # -128 too: the widest products
    wq = rng.integers(-128, 128, (k, n), dtype=np.int8)
    got = _run(_build(int8_matmul(m, k, n, dequantize=False)), [xq, wq], (m, n), "int32")
    np.testing.assert_array_equal(got, xq.astype(np.int64) @ wq.astype(np.int64))


def test_int8_gemm_dequantizes_like_the_host_kernel():
    rng = np.random.default_rng(1)
    m, k, n = 19, 70, 45
    xq = rng.integers(-127, 128, (m, k), dtype=np.int8)
    wq = rng.integers(-127, 128, (k, n), dtype=np.int8)
    sx = rng.uniform(0.01, 0.1, m).astype(np.float32)
    sw = rng.uniform(0.001, 0.01, n).astype(np.float32)
    got = _run(_build(int8_matmul(m, k, n)), [xq, wq, sx, sw], (m, n), "float32")
    want = (xq.astype(np.int64) @ wq.astype(np.int64)).astype(np.float32) * sx[:, None] * sw[None, :]
    np.testing.assert_array_equal(got, want)
    # the sim target's host half: the same float ops in the same order
    acc = (xq.astype(np.int64) @ wq.astype(np.int64)).astype(np.int32)
    lib = tvm.tirx.build(dequantize(m, n, True).with_attr("global_symbol", "main"), cpu.host_target())
    np.testing.assert_array_equal(_run(lib, [acc, sx, sw], (m, n), "float32"), want)
    with pytest.raises(ValueError, match="overflow"):
        int8_matmul(2, 2**17 + 1, 2)


def test_quantizers():
    w = np.array([[0.5, 0.0, -2.0], [-1.0, 0.0, 1.0]], np.float32)
    wq, sw = quantize_weight(w)
    np.testing.assert_array_equal(wq, [[64, 0, -127], [-127, 0, 64]])
    np.testing.assert_allclose(sw, [1 / 127, 1.0, 2 / 127], rtol=1e-7)
    x = np.array([[1.0, -0.5], [0.0, 0.0]], np.float32)
    xq, sx = quantize_activation(x, "row")
    np.testing.assert_array_equal(xq, [[127, -64], [0, 0]])  # -63.5 rounds to even
    xq_t, sx_t = quantize_activation(x * 2, "tensor")
    assert (sx_t == sx_t[0]).all() and xq_t[0, 0] == 127


def _reference_mlp(model, x, act):
    """The int8-rewritten MLP in NumPy: quantize both linears, ReLU in between."""
    import onnx.numpy_helper as nh

    w = {t.name: nh.to_array(t) for t in model.graph.initializer}
    h = x
    for i, (wname, bname) in enumerate((("w1", "b1"), ("w2", "b2"))):
        wq, sw = quantize_weight(w[wname])
        xq, sx = quantize_activation(h, act)
        acc = (xq.astype(np.int64) @ wq.astype(np.int64)).astype(np.float32)
        h = acc * sx[:, None] * sw[None, :] + w[bname]
        if i == 0:
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("act", ["auto", "row", "tensor"])
def test_int8_mlp_matches_its_numpy_model(act):
    model = mlp_model(batch=8, d_in=40, d_hidden=56, d_out=12)
    x = np.random.default_rng(3).standard_normal((8, 40)).astype(np.float32)
    got = accelc.compile(model, passes=[f"int8:act={act}"]).run({"x": x})["y"]
    # auto: per row for matmuls (per token)
    want = _reference_mlp(model, x, "row" if act == "auto" else act)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _conv_model(seed=0):
    """x [1, 3, 12, 12] → 3×3 stride-2 conv (padding 1) → ReLU → 1×1 conv → 3×3 conv (no padding)."""
    from onnx import TensorProto, helper

    from accelc.tests.util import make_model

    rng = np.random.default_rng(seed)
    ws = [("w1", rng.standard_normal((8, 3, 3, 3))), ("w2", rng.standard_normal((16, 8, 1, 1))),
          ("w3", rng.standard_normal((4, 16, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Conv", ["c2", "w3"], ["y"])]
    return make_model(nodes, [("x", TensorProto.FLOAT, [1, 3, 12, 12])], [("y", TensorProto.FLOAT, [1, 4, 4, 4])],
                      [(n, (w / np.sqrt(w[0].size)).astype(np.float32)) for n, w in ws])


def _reference_convs(model, x, act):
    """The int8-rewritten conv net in NumPy, per-tensor convs quantizing their input first."""
    import onnx.numpy_helper as nh

    from accelc.passes.int8 import quantize_conv_input
    from accelc.passes.shift_add import ConvGeometry

    w = {t.name: nh.to_array(t) for t in model.graph.initializer}
    h = x
    for name, stride, pad in (("w1", 2, 1), ("w2", 1, 0), ("w3", 1, 0)):
        o, c, kh, kw = w[name].shape
        oh = (h.shape[2] + 2 * pad - kh) // stride + 1
        g = ConvGeometry(1, c, (kh, kw), (stride, stride), (pad, pad, pad, pad), (1, 1), (oh, oh))
        wq, sw = quantize_weight(w[name].reshape(o, -1).T)
        xq, sx = quantize_conv_input(h, g) if act != "row" else quantize_activation(g.patches(h), "row")
        acc = (xq.astype(np.int64) @ wq.astype(np.int64)).astype(np.float32)
        h = (acc * sx[:, None] * sw[None, :]).reshape(1, oh, oh, o).transpose(0, 3, 1, 2)
        if name == "w1":
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("act", ["auto", "row", "tensor"])
def test_int8_convs_match_their_numpy_model(act):
    """Convs quantized per tensor (auto's choice) take the scale over their input and build
    the patches from int8 codes; per row, from the float patches. Both against NumPy."""
    model = _conv_model()
    x = np.random.default_rng(4).standard_normal((1, 3, 12, 12)).astype(np.float32)
    got = accelc.compile(model, passes=[f"int8:act={act}"]).run({"x": x})["y"]
    np.testing.assert_allclose(got, _reference_convs(model, x, act), rtol=1e-5, atol=1e-5)


def test_int8_per_tensor_convs_build_int8_patches():
    """No float32 patch matrix is left in the graph: the im2col reads the int8 codes."""
    from tvm import relax

    from accelc.compiler.frontend import import_onnx
    from accelc.compiler.pipeline import apply_passes

    def im2col_inputs(passes):
        mod, _ = apply_passes(import_onnx(_conv_model()), passes, None)
        found = []
        relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e.args[1].fields[0].ty.dtype)
                                        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
                                        and e.op.name == "relax.call_tir" and "im2col" in e.args[0].name_hint
                                        else None)
        return found

    assert im2col_inputs(["int8"]) == ["int8", "int8"]  # the 1×1 conv needs none
    assert im2col_inputs(["int8:act=row"]) == ["float32", "float32"]


def test_int8_mlp_on_the_simulator_is_bit_exact_and_really_offloaded(capsys):
    model = mlp_model(batch=8, d_in=64, d_hidden=96, d_out=32)
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)}
    cpu_y = accelc.compile(model, passes=["int8"]).run(feeds)["y"]
    sim_model = accelc.compile(model, target="sim", passes=["int8"])
    offload.reset_log()
    np.testing.assert_array_equal(sim_model.run(feeds)["y"], cpu_y)
    assert [(r["op"], r["m"], r["k"], r["n"], r["macs"]) for r in offload.RUN_LOG] == \
        [("gemm", 8, 64, 96, 8 * 64 * 96), ("gemm", 8, 96, 32, 8 * 96 * 32)]
    # a shift-add-only machine has no MAC PEs: the int8 layers stay on the host, with a notice
    offload.reset_log()
    accelc.compile(model, target="sim", passes=["int8"], target_options={"sim_config": _shift_only_cfg()})
    assert "2 int8_matmul layer(s) need 'mac' PEs" in capsys.readouterr().err


def _shift_only_cfg():
    import tempfile

    path = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    path.write('[array]\npe_type = "shift-add"\n')
    path.close()
    return path.name


def _reshapes(model, passes):
    """(input shape, output shape) of every reshape of a layer's data in ``main`` after
    ``passes`` (not the row scales' [rows, 1] → [rows], a view)."""
    from tvm import relax

    from accelc.compiler.frontend import import_onnx
    from accelc.compiler.pipeline import apply_passes
    from accelc.passes import static_shape

    mod, _ = apply_passes(import_onnx(model), passes, None)
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(
        (static_shape(e.args[0]), static_shape(e))) if isinstance(e, relax.Call)
        and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.reshape" else None)
    return [r for r in found if r[0][-1] != 1]


def test_int8_layers_on_matrices_add_no_reshape():
    """A layer whose input already is the [rows, K] matrix gets no reshape around its GEMM: a
    same-shape reshape of a function parameter stays a 4 MB copy at 1024² (RewriteDataflowReshape
    makes views only of the others); 3-D inputs still get theirs."""
    assert _reshapes(mlp_model(batch=8), ["int8"]) == []
    from accelc.tests.util import make_model
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", TensorProto.FLOAT, [2, 5, 16])],
                       [("y", TensorProto.FLOAT, [2, 5, 8])], [("w", w)])
    assert sorted(_reshapes(model, ["int8"])) == [([2, 5, 16], [10, 16]), ([10, 8], [2, 5, 8])]
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    got = accelc.compile(model, passes=["int8"]).run({"x": x})["y"]
    xq, sx = quantize_activation(x.reshape(10, 16))
    wq, sw = quantize_weight(w)
    want = (xq.astype(np.int64) @ wq.astype(np.int64)).astype(np.float32) * sx[:, None] * sw[None, :]
    np.testing.assert_allclose(got, want.reshape(2, 5, 8), rtol=1e-6, atol=1e-6)
