"""The CPU softmax kernel (``schedules/softmax.py``) for rows longer than one vector: whole
vectors, then (ragged rows, ViT's 197 tokens) the last ``lanes`` elements as one overlapping
vector; whole-vector rows (BERT's 128) take it too, being faster than RowReduction's schedule."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

from accelc.schedules.softmax import fast_exp, softmax_rows
from accelc.targets import cpu

HOST = cpu.host_target(num_cores=2)


def _ref(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _run(func, x):
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), HOST)
    out = tvm.runtime.tensor(np.full(x.shape, np.nan, "float32"))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lanes=st.sampled_from([4, 8, 16]), extra=st.integers(1, 40), rows=st.integers(1, 9),
       scale=st.sampled_from([0.1, 3.0, 30.0]), seed=st.integers(0, 2**16))
def test_row_softmax_matches_numpy(lanes, extra, rows, scale, seed):
    n = lanes + extra  # every row longer than one vector; ragged or whole
    x = (np.random.default_rng(seed).standard_normal((rows, n)) * scale).astype("float32")
    got = _run(softmax_rows((rows, n), lanes), x)
    np.testing.assert_allclose(got, _ref(x), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_tail_lanes_are_summed_and_scaled_once():
    """The largest value sits in the tail and in the overlap: counted once, scaled once."""
    x = np.zeros((2, 19), "float32")
    x[0, 18] = 5.0  # tail only
    x[1, 3] = 5.0  # in the overlap (elements 3..15 are both the last whole vector and the window)
    np.testing.assert_allclose(_run(softmax_rows((2, 19), 16), x), _ref(x), rtol=2e-6, atol=1e-7)


def test_four_dims_and_masked_scores():
    """Attention-shaped input with -1e9 masked keys (rows keep some finite scores)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 37, 37)).astype("float32")
    x[..., 30:] = -1e9
    got = _run(softmax_rows(x.shape, 16), x)
    np.testing.assert_allclose(got, _ref(x), rtol=2e-6, atol=1e-7)
    assert np.all(got[..., 30:] == 0)


def test_fast_exp_matches_topi():
    """The written-out polynomial is TOPI's fast_exp, bit for bit."""
    from tvm import te, topi

    x = np.linspace(-100, 100, 4001, dtype="float32")
    a = te.placeholder((x.size,), "float32", name="a")
    ours = te.compute(a.shape, lambda i: fast_exp(a[i]), name="ours")
    lib_o = tvm.tirx.build(te.create_prim_func([a, ours]).with_attr("global_symbol", "main"), HOST)
    lib_t = tvm.tirx.build(te.create_prim_func([a, topi.fast_exp(a)]).with_attr("global_symbol", "main"), HOST)
    outs = []
    for lib in (lib_o, lib_t):
        o = tvm.runtime.tensor(np.zeros_like(x))
        lib["main"](tvm.runtime.tensor(x), o)
        outs.append(o.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    inside = np.abs(x) < 80
    np.testing.assert_allclose(outs[0][inside], np.exp(x[inside].astype(np.float64)), rtol=2e-6)


def test_rejects_rows_of_one_vector_or_less():
    with pytest.raises(ValueError, match="more than 16"):
        softmax_rows((4, 16), 16)
    with pytest.raises(ValueError, match="power of two"):
        softmax_rows((4, 30), 12)
    with pytest.raises(ValueError, match="up to 16"):
        softmax_rows((4, 70), 32)


def _compiled(shape, axis):
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.softmax(x, axis=axis))
        bb.emit_func_output(y)
    mod = bb.get()
    with HOST, tvm.transform.PassContext(opt_level=3):
        lowered = tvm.transform.Sequential(cpu.front_passes(HOST))(mod)
        ex = tvm.compile(mod, HOST, relax_pipeline=cpu.pipeline(HOST))
    names = [gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    return names, relax.VirtualMachine(ex, tvm.cpu())


@pytest.mark.parametrize("shape,axis,kernel", [
    ((1, 3, 197, 197), -1, True),  # DeiT's attention rows
    ((2, 50), 1, True),  # the last axis named by its index
    ((4, 64), -1, True),  # whole vectors: the kernel too (faster than RowReduction's schedule)
    ((4, 8), -1, False),  # at most one vector per row (AVX2 or AVX-512): TOPI's softmax, RowReduction
    ((197, 5), 0, False),  # not the last axis: TOPI's softmax
])
def test_cpu_legalization_picks_the_kernel_for_rows_longer_than_a_vector(shape, axis, kernel):
    names, vm = _compiled(shape, axis)
    assert any(n.startswith("softmax_rows") for n in names) == kernel, names
    x = (np.random.default_rng(0).standard_normal(shape) * 4).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = np.moveaxis(_ref(np.moveaxis(x, axis, -1)), -1, axis)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
