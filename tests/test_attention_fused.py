"""The CPU target's fused softmax attention: the kernel (``schedules/cpu/attention_fused.py``)
against a float64 NumPy reference, and the pass (``targets/cpu_attention.py``) on exported
attention blocks against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

import accelc
from accelc.schedules.cpu.attention_fused import NEG, View, contiguous, fused_attention, row_tile
from accelc.targets import cpu
from accelc.targets.cpu_attention import fold_permutes
from accelc.tests.util import assert_matches_ort, attention_model, ort_run

HOST = cpu.host_target(num_cores=2)


def _ref(q, k, v, scale, bias=None, causal=False, dtype=np.float64):
    """softmax(scale·QKᵀ + bias [causal]) V in ``dtype``, [B, H, N, d] → [B, N, H, d]."""
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    s = dtype(scale) * (q @ k.transpose(0, 1, 3, 2))
    if bias is not None:
        s = s + bias.astype(dtype)[:, None, None, :]
    if causal:
        n = s.shape[-1]
        s = np.where(np.tril(np.ones((n, n), bool)), s, NEG)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True) @ v).transpose(0, 2, 1, 3)


def _run(func, *arrays, out_shape):
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), HOST)
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, "float32"))
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], out)
    return out.numpy()


@pytest.mark.parametrize("b, h, n, d, lanes", [
    (1, 3, 197, 64, 16),  # DeiT: ragged keys (12 vectors + 5)
    (2, 2, 40, 32, 16),  # two batches
    (1, 2, 17, 16, 16),  # one key past a vector
    (1, 4, 128, 32, 8),  # whole vectors, AVX2 width
    (1, 1, 3, 8, 8),  # fewer rows than a task's tile
])
@pytest.mark.parametrize("mask", ["none", "bias", "causal", "bias+causal"])
def test_kernel_matches_numpy(b, h, n, d, lanes, mask):
    rng = np.random.default_rng(n * 7 + d)
    q, k, v = (rng.standard_normal((b, h, n, d)).astype("float32") * 2 for _ in range(3))
    bias = None
    if "bias" in mask:
        bias = np.where(rng.random((b, n)) < 0.3, NEG, rng.standard_normal((b, n))).astype("float32")
        bias[:, 0] = 0.0  # every row keeps a key (a wholly masked row is its own test)
    causal = "causal" in mask
    func = fused_attention(b, h, n, d, 0.3, lanes, 32, contiguous(q.shape), contiguous(k.shape), contiguous(v.shape),
                           key_bias=bias is not None, causal=causal)
    args = (q, k, v) + ((bias,) if bias is not None else ())
    got = _run(func, *args, out_shape=(b, n, h, d))
    exact = _ref(q, k, v, 0.3, bias, causal)
    # as close to the exact result as float32 NumPy gets (scores reach ±40 here, so an ulp of
    # a score moves a probability by ~4e-6 relative), never further than 4× that
    floor = np.abs(_ref(q, k, v, 0.3, bias, causal, np.float32) - exact).max()
    assert np.abs(got - exact).max() <= 4 * floor + 1e-6, (np.abs(got - exact).max(), floor)


def test_operands_are_read_through_views_of_the_tensors_they_came_from():
    """DeiT-style stacked QKV [3, B, H, N, d], and GPT-2/BERT-style heads inside one projection
    output [B, N, 3·H·d]: the kernel reads both through strides, nothing is copied first."""
    b, h, n, d = 1, 3, 37, 16
    rng = np.random.default_rng(3)
    stacked = rng.standard_normal((3, b, h, n, d)).astype("float32")
    per = b * h * n * d
    views = [View(stacked.shape, i * per, (h * n * d, n * d, d, 1)) for i in range(3)]
    got = _run(fused_attention(b, h, n, d, 0.25, 16, 32, *views), stacked, stacked, stacked, out_shape=(b, n, h, d))
    np.testing.assert_allclose(got, _ref(*stacked, 0.25), rtol=2e-5, atol=2e-6)

    merged = rng.standard_normal((b, n, 3 * h * d)).astype("float32")  # [B, N, (q|k|v), H, d]
    views = [View(merged.shape, i * h * d, (n * 3 * h * d, d, 3 * h * d, 1)) for i in range(3)]
    split = merged.reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)
    got = _run(fused_attention(b, h, n, d, 0.25, 16, 32, *views), merged, merged, merged, out_shape=(b, n, h, d))
    np.testing.assert_allclose(got, _ref(*split, 0.25), rtol=2e-5, atol=2e-6)


def test_a_row_with_every_key_masked_comes_out_uniform():
    """All keys at float32's lowest (HF's padding value): the scores all round to it, so the
    reference — and the kernel, whose padding lanes are selected out — average V."""
    b, h, n, d = 1, 2, 21, 16
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((b, h, n, d)).astype("float32") for _ in range(3))
    bias = np.full((b, n), NEG, "float32")
    func = fused_attention(b, h, n, d, 0.25, 16, 32, *(contiguous(x.shape) for x in (q, k, v)), key_bias=True)
    got = _run(func, q, k, v, bias, out_shape=(b, n, h, d))
    np.testing.assert_allclose(got, np.broadcast_to(v.mean(2)[:, None], (b, n, h, d)), rtol=1e-5, atol=1e-6)


def test_row_tile():
    assert row_tile(197, 32) == 11  # 18 tasks of 11 rows: one padding row
    assert row_tile(128, 32) == 8
    assert row_tile(3, 32) == 3
    assert row_tile(100, 16) <= 14  # AVX2: 16 registers, a B vector and a broadcast beside the rows
    with pytest.raises(ValueError, match="whole vectors"):
        fused_attention(1, 1, 8, 12, 0.5, 16, 32, *(contiguous((1, 1, 8, 12)),) * 3)


def _lowered(model, fast_math=True):
    """The model after the CPU target's front passes (what the schedule rules see)."""
    from accelc.compiler.frontend import import_model

    mod = import_model(model).mod
    with HOST, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(cpu.front_passes(HOST, fast_math))(mod)


def _kernels(model, fast_math=True, lowered=None):
    lowered = lowered or _lowered(model, fast_math)
    return [gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def _feeds(model, n, d_model, masked=0, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((1, n, d_model)).astype("float32")}
    if any(i.name == "mask" for i in model.graph.input):
        m = np.ones((1, n), np.int64)
        if masked:
            m[0, -masked:] = 0
        feeds["mask"] = m
    return feeds


@pytest.mark.parametrize("mask", ["none", "key", "causal"])
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
@pytest.mark.parametrize("n, d_model, heads", [(16, 32, 2), (45, 96, 3)])
def test_exported_attention_compiles_to_the_fused_kernel_and_matches_onnxruntime(mask, scale_op, n, d_model, heads):
    model = attention_model(n=n, d_model=d_model, heads=heads, mask=mask, scale_op=scale_op, seed=n)
    names = _kernels(model)
    assert any(k.startswith("attention_fused") for k in names), names
    assert not any("softmax" in k for k in names), names  # the scores never leave the kernel
    feeds = _feeds(model, n, d_model, masked=5 if mask == "key" else 0, seed=n)
    got = accelc.compile(model, target="cpu").run(feeds)
    assert_matches_ort(got, ort_run(model, feeds), rtol=1e-5, atol=1e-5)


def test_sites_it_cannot_fuse_keep_the_three_kernels():
    """Probabilities used outside P·V (returned here), a head dim of no whole vectors, or
    exact math: unfused, and still right."""
    model = attention_model(n=20, d_model=32, heads=2, probs_output=True)
    assert not any(k.startswith("attention_fused") for k in _kernels(model))
    feeds = _feeds(model, 20, 32)
    assert_matches_ort(accelc.compile(model, target="cpu").run(feeds), ort_run(model, feeds), rtol=1e-5, atol=1e-5)
    odd = attention_model(n=20, d_model=20, heads=2)  # d = 10
    assert not any(k.startswith("attention_fused") for k in _kernels(odd))
    assert not any(k.startswith("attention_fused") for k in _kernels(attention_model(n=20), fast_math=False))


def test_zoo_attentions_are_fused_and_read_their_projections_in_place():
    """Every attention of DeiT (stacked QKV taken apart), BERT (key bias) and GPT-2 (causal) is
    one kernel whose Q, K and V operands are the projection GEMMs' own outputs."""
    from accelc import models

    for name, count in (("deit-tiny", 12), ("bert-encoder", 6), ("gpt2-like", 4)):
        lowered = _lowered(models.build(name))
        calls = [c for c in _calls(lowered["main"]) if c.startswith("attention_fused")]
        assert len(calls) == count, (name, calls)
        names = _kernels(None, lowered=lowered)
        assert not any("softmax" in k for k in names), (name, names)
        if name == "deit-tiny":  # Q, K and V are not copied out of the stacked QKV
            assert not any(k.startswith("take_const") and "matmul" not in k for k in names), names


def _calls(func):
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir":
            found.append(e.args[0].name_hint)

    relax.analysis.post_order_visit(func.body, visit)
    return found


def test_fold_permutes_cancels_the_head_merge_against_its_inverse():
    x = relax.Var("x", relax.TensorType((1, 5, 3, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))
            b = bb.emit(relax.op.permute_dims(a, [0, 2, 1, 3]))  # identity: gone
            c = bb.emit(relax.op.permute_dims(b, [0, 1, 3, 2]))
            y = bb.emit_output(relax.op.permute_dims(c, [3, 2, 1, 0]))  # composed into one
        bb.emit_func_output(y)
    mod = bb.get()
    mod["main"] = fold_permutes(mod["main"])
    func = relax.transform.DeadCodeElimination()(mod)["main"]
    perms = []
    relax.analysis.post_order_visit(func.body, lambda e: perms.append([int(a) for a in e.attrs.axes])
                                    if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.permute_dims" else None)
    assert perms == [[2, 3, 1, 0]], perms


@pytest.mark.parametrize("shape, strides, new", [
    ((1, 64, 384), (73728, 1152, 1), (1, 64, 6, 64)),  # GPT-2: heads split off a split's part
    ((1, 64, 384), (73728, 1152, 1), (1, 64 * 384)),  # merging non-contiguous rows: a copy
    ((2, 3, 4), None, (6, 4)), ((2, 3, 4), None, (2, 12)), ((6, 4), None, (2, 3, 2, 2)),
    ((4, 6), (1, 4), (2, 2, 6)), ((4, 6), (1, 4), (4, 2, 3)), ((4, 6), (1, 4), (24,)),
    ((1, 197, 3, 64), None, (1, 197, 192)),
])
def test_reshape_of_a_strided_view_has_the_strides_numpy_gives_it(shape, strides, new):
    """``trace_view`` follows a reshape of a strided view exactly when NumPy can reshape that
    view without a copy, and to the same strides (size-1 axes aside)."""
    from accelc.targets.cpu_attention import _reshaped_strides, _strides

    strides = strides or tuple(_strides(shape))
    view = np.lib.stride_tricks.as_strided(np.zeros(10**5, np.float32), shape, [4 * s for s in strides])
    try:
        reshaped = view.view()
        reshaped.shape = new  # raises where NumPy would have to copy
        want = [s // 4 for s in reshaped.strides]
    except AttributeError:
        want = None
    got = _reshaped_strides(shape, strides, new)
    assert (got is None) == (want is None), (got, want)
    if want is not None:
        assert [g for g, n in zip(got, new) if n != 1] == [w for w, n in zip(want, new) if n != 1]
