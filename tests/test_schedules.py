"""Default CPU schedule rules: each kernel against a NumPy reference, and proof the rule applied."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax
from tvm.s_tir import dlight as dl

from accelc.schedules.cpu import (
    Conv2dNHWC, CpuShape, Matmul, RowReduction, WindowReduction, cpu_shape, default_rules,
)
from accelc.schedules.cpu.matmul import micro_kernel, row_chunks
from accelc.targets import cpu


def _build(fn, params, target):
    """Relax function from a BlockBuilder callback → (front-lowered module, compiled VM)."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(fn(bb, *params))
        bb.emit_func_output(out)
    mod = bb.get()
    with target:
        fused = tvm.transform.Sequential(cpu.front_passes(target))(mod)
    ex = tvm.compile(mod, target, relax_pipeline=cpu.pipeline(target))
    return fused, relax.VirtualMachine(ex, tvm.cpu())


def _scheduled_by(rule, fused, target, name_part: str) -> str:
    """Apply ``rule`` alone to the PrimFunc whose name contains ``name_part``; return its TIR."""
    funcs = [(gv, f) for gv, f in fused.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and name_part in gv.name_hint]
    assert funcs, [gv.name_hint for gv in fused.get_global_vars()]
    sch = rule.apply(funcs[0][1], target, False)
    assert sch is not None, f"{type(rule).__name__} did not apply to {funcs[0][0].name_hint}"
    return sch.mod["main"].script()


def _matmul_case(target, batch, m, k, n, const_b=True, trans_b=False, epilogue=True, seed=0):
    rng = np.random.default_rng(seed)
    a_shape = (*batch, m, k)
    b_shape = (*batch, n, k) if trans_b else (*batch, k, n)
    a_np = rng.standard_normal(a_shape).astype("float32")
    b_np = rng.standard_normal(b_shape).astype("float32")
    bias = rng.standard_normal(n).astype("float32")
    x = relax.Var("x", relax.TensorType(a_shape, "float32"))
    params = [x]
    if not const_b:
        params.append(relax.Var("w", relax.TensorType(b_shape, "float32")))

    def fn(bb, x, w=None):
        w = relax.const(b_np) if w is None else w
        if trans_b:
            w = bb.emit(relax.op.permute_dims(w, [*range(len(batch)), len(batch) + 1, len(batch)]))
        y = bb.emit(relax.op.matmul(x, w))
        if epilogue:
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, relax.const(bias))))
        return y

    fused, vm = _build(fn, params, target)
    args = [tvm.runtime.tensor(a_np)] + ([] if const_b else [tvm.runtime.tensor(b_np)])
    got = vm["main"](*args).numpy()
    b_eff = np.swapaxes(b_np, -1, -2) if trans_b else b_np
    want = a_np.astype(np.float64) @ b_eff.astype(np.float64)
    if epilogue:
        want = np.maximum(want + bias, 0)
    return fused, got, want


@pytest.mark.parametrize(
    "batch,m,k,n,const_b,trans_b",
    [
        ((), 128, 384, 1536, True, False),  # BERT FFN
        ((1,), 197, 192, 576, True, False),  # DeiT QKV: M prime, N not a panel multiple
        ((), 1, 256, 1000, True, False),  # GEMV (classifier head)
        ((), 7, 13, 5, True, False),  # everything ragged and tiny
        ((1, 3), 197, 64, 197, False, True),  # attention Q·Kᵀ: runtime B, transposed
        ((12,), 128, 128, 32, False, False),  # attention P·V
    ],
)
def test_matmul_rule_matches_numpy(cpu_target, batch, m, k, n, const_b, trans_b):
    fused, got, want = _matmul_case(cpu_target, batch, m, k, n, const_b, trans_b)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tir = _scheduled_by(Matmul(), fused, cpu_target, "matmul")
    assert "T.parallel" in tir and "T.vectorized" in tir and 'scope="local"' in tir
    if const_b:  # weights are packed by a block the pipeline folds at compile time
        assert "meta_schedule.layout_rewrite_preproc" in tir


def test_row_chunks_split_evenly_or_not_at_all():
    assert [row_chunks(b, 2) for b in (1, 3, 4, 5, 16, 33)] == [1, 1, 2, 1, 2, 2]
    assert row_chunks(33, 4) == 4  # 9 + 8 + 8 + 8: the longest 9% over the mean
    assert row_chunks(9, 4) == 1  # 3 + 2 + 2 + 2: 33% over
    assert row_chunks(100, 1) == 1


@pytest.mark.parametrize("cores,m", [(2, 197), (4, 197), (2, 5), (3, 64)])
def test_an_unbatched_gemm_gives_each_core_a_chunk_of_rows(cores, m):
    """With even chunks the GEMM's only parallel loop has one iteration per core, and what it
    computes is unchanged; otherwise the column-block × row-block tasks remain."""
    target = cpu.host_target(num_cores=cores)
    fused, got, want = _matmul_case(target, (), m, 96, 200)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tir = _scheduled_by(Matmul(), fused, target, "matmul")
    shape = cpu_shape(target)
    mr, nj = micro_kernel(m, 200, shape.lanes("float32"), shape.vector_registers, shape.loads_per_fma)
    chunks = row_chunks(-(-m // mr), cores)
    extents = [int(e) for e in re.findall(r"in T\.parallel\((?:T\.int64\()?(\d+)", tir)]
    assert extents, tir
    if chunks > 1:
        assert extents[-1] == cores, extents
    else:
        assert extents[-1] % -(-m // mr) == 0 and extents[-1] >= -(-m // mr), extents
    assert (chunks > 1) == (m >= 64), (m, mr, chunks)


def test_attention_matmuls_read_their_operands_in_place(cpu_target):
    """P·V with 197 rows: the rows that pad M to the register tile read A's last row (no padded
    copy of P), and V, one panel wide, is read where it is (no packed copy)."""
    fused, got, want = _matmul_case(cpu_target, (1, 3), 197, 197, 64, False, epilogue=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tir = _scheduled_by(Matmul(), fused, cpu_target, "matmul")
    assert "T.min(" in tir and "if_then_else" not in tir  # the guard became a clamped row
    blocks = set(re.findall(r'T\.sblock\("(\w+)"\)', tir))
    assert blocks == {"root", "matmul_init", "matmul_update", "matmul_reindex_pad"}, blocks  # no copies
    # Q·Kᵀ: B's columns are padded to whole panels, so B is still packed; A is read in place
    fused, got, want = _matmul_case(cpu_target, (1, 3), 197, 64, 197, False, True, epilogue=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tir = _scheduled_by(Matmul(), fused, cpu_target, "matmul")
    assert "T.min(" in tir and "reindex_pad" in tir


@pytest.mark.parametrize("const_b,trans_b", [(False, True), (True, False)])
def test_ragged_columns_overlap_the_last_panel(cpu_target, const_b, trans_b):
    """197 columns (Q·Kᵀ's keys, or a weight's): the last panel computes the last nr real
    columns, so B's packing reads no guard and the write-back stores whole vectors with no
    column predicate (which scalarized it); the results equal the padded schedule's bit for bit
    (the shared columns are the same products in the same order)."""
    from accelc.schedules.cpu.matmul import replayable_only

    fused, got, want = _matmul_case(cpu_target, (1,), 37, 64, 197, const_b, trans_b)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tir = re.sub(r"T\.int64\((\d+)\)", r"\1", _scheduled_by(Matmul(), fused, cpu_target, "matmul"))
    (nr, last), = set(re.findall(r"T\.min\(v\w+ // (\d+) \* \1, (\d+)\)", tir)) or {(0, 0)}
    assert int(nr) > 0 and int(last) == 197 - int(nr), tir
    assert "if_then_else" not in tir
    assert not [w for w in re.findall(r"T\.where\((.*)\)", tir) if "< 197" in w], "a column predicate survived"
    with replayable_only():  # the padded, guarded schedule (what a tuning record replays)
        _, padded, _ = _matmul_case(cpu_target, (1,), 37, 64, 197, const_b, trans_b)
        assert "if_then_else" in _scheduled_by(Matmul(), fused, cpu_target, "matmul")
    assert np.array_equal(got, padded)


def test_ragged_columns_with_a_reshaping_write_back(cpu_target):
    """197 weight columns and a reshape fused into the write-back (it stores out[i·197 + j]: the
    column inside an index expression): the overlapping last panel is stored through it too —
    computed and stored at the same real columns, never one without the other."""
    rng = np.random.default_rng(5)
    x_np, w_np = rng.standard_normal((1, 37, 64)).astype("float32"), rng.standard_normal((64, 197)).astype("float32")
    x = relax.Var("x", relax.TensorType(x_np.shape, "float32"))

    def fn(bb, x):
        y = bb.emit(relax.op.matmul(x, relax.const(w_np)))
        return bb.emit(relax.op.reshape(y, (37 * 197,)))

    fused, vm = _build(fn, [x], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    np.testing.assert_allclose(got, (x_np @ w_np).reshape(-1), rtol=1e-4, atol=1e-4)
    (name, func), = [(gv.name_hint, f) for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert "reshape" in name, name
    tir = re.sub(r"T\.int64\((\d+)\)", r"\1", Matmul().apply(func, cpu_target, False).mod["main"].script())
    (nr, last), = set(re.findall(r"T\.min\(v\w+ // (\d+) \* \1, (\d+)\)", tir)) or {(0, 0)}
    assert int(nr) > 0 and int(last) == 197 - int(nr), tir


def test_only_the_row_guard_is_clamped():
    """``clamp_padded_rows`` rewrites ``if_then_else(i < m, A[i, k], 0)`` (padding rows, never
    written back) and leaves a guard on k alone (padding k adds zeros that count)."""
    from tvm.script import tirx as T

    from accelc.schedules.cpu.matmul import clamp_padded_rows

    @T.prim_func(s_tir=True)
    def gemm(x: T.Buffer((37, 24), "float32"), y: T.Buffer((40, 20), "float32"), b: T.Buffer((24, 16), "float32"),
             c: T.Buffer((40, 16), "float32")):
        for s, i, j, k in T.grid(1, 40, 16, 24):
            with T.sblock("mm_update"):
                vs, vi, vj, vk = T.axis.remap("SSSR", [s, i, j, k])
                c[vi, vj] = c[vi, vj] + (T.if_then_else(vi < 37, x[vi, vk], T.float32(0))
                                         + T.if_then_else(vk < 20, y[vi, vk], T.float32(0))) * b[vk, vj]

    text = clamp_padded_rows(gemm, "mm_update").script()
    assert "T.if_then_else(vk < 20, y[vi, vk]" in text  # the k guard stays
    assert "T.if_then_else(vi < 37" not in text and "x[T.min(vi, 36), vk]" in text
    assert clamp_padded_rows(gemm, "other_block").script() == gemm.script()  # only the named block


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 70), const_b=st.booleans())
def test_matmul_rule_property(cpu_target, m, k, n, const_b):
    _, got, want = _matmul_case(cpu_target, (), m, k, n, const_b, epilogue=False, seed=m * 7 + n)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,n,lanes,regs", [(197, 768, 8, 16), (1, 1000, 16, 32), (128, 64, 8, 16),
                                             (3, 5, 16, 32)])
def test_micro_kernel_fits_registers(m, n, lanes, regs):
    mr, nj = micro_kernel(m, n, lanes, regs)
    assert mr >= 1 and nj >= 1
    assert mr * nj + nj + 1 <= regs  # accumulators + B vectors + one broadcast


def test_micro_kernel_roofline_trades_intensity_for_padding_once_fma_bound():
    """With the core's load:FMA ratio known (Zen 4: 2), a tile past the FMA roofline gains
    nothing from more intensity, so less padding wins: DeiT's 197 × 197 QKᵀ takes 11 × 1
    (208 columns) instead of 9 × 3 (240), BERT's 128 × 384 takes 8 × 3 (128 rows) instead of
    6 × 4 (132); where padding is equal the most intense tile stays (1024³: 6 × 4). Without
    the ratio the earlier model is unchanged."""
    assert micro_kernel(197, 197, 16, 32) == (9, 3) and micro_kernel(128, 384, 16, 32) == (6, 4)
    assert micro_kernel(197, 197, 16, 32, 2.0) == (11, 1)
    assert micro_kernel(128, 384, 16, 32, 2.0) == (8, 3)
    assert micro_kernel(1024, 1024, 16, 32, 2.0) == (6, 4)
    assert micro_kernel(197, 768, 16, 32, 2.0) == (6, 4)
    for m, n in ((197, 197), (128, 384), (1, 1000), (3, 5), (49, 256)):
        for ratio in (1.0, 2.0):
            mr, nj = micro_kernel(m, n, 16, 32, ratio)
            assert mr * nj + nj + 1 <= 32


def test_cpu_shape_knows_zen4_half_rate_fma():
    zen4 = cpu_shape(tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2}))
    skx = cpu_shape(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}))
    assert zen4.vector_bits == 512 and zen4.loads_per_fma == 2.0
    assert skx.loads_per_fma is None


@pytest.mark.parametrize("mcpu", ["znver4", "skylake-avx512"])
@pytest.mark.parametrize("heads,m,k,n", [(3, 197, 64, 197), (12, 128, 32, 128), (2, 5, 48, 33), (1, 40, 16, 24)])
def test_transposed_runtime_b_is_packed_in_blocks(mcpu, heads, m, k, n):
    """Q·Kᵀ with K a runtime tensor: the panel pack reads K along its contiguous axis in
    16 × 16 blocks (an unrolled K loop around a vectorized column loop) and the product
    matches NumPy, for both micro-kernel models."""
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    rng = np.random.default_rng(heads * m + n)
    q_np = rng.standard_normal((1, heads, m, k)).astype("float32")
    k_np = rng.standard_normal((1, heads, n, k)).astype("float32")
    q = relax.Var("q", relax.TensorType(q_np.shape, "float32"))
    kk = relax.Var("k", relax.TensorType(k_np.shape, "float32"))

    def fn(bb, q, kk):
        return bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(kk, [0, 1, 3, 2]))))

    fused, vm = _build(fn, [q, kk], target)
    got = vm["main"](tvm.runtime.tensor(q_np), tvm.runtime.tensor(k_np)).numpy()
    want = q_np.astype(np.float64) @ np.swapaxes(k_np, -1, -2).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tir = _scheduled_by(Matmul(), fused, target, "matmul")
    pack = tir[:tir.index('T.sblock("matmul_init")')]
    blocked = k % 16 == 0  # the padded column count is a panel multiple, hence of 16
    assert ("T.unroll(T.int64(16))" in pack and "T.vectorized(T.int64(16))" in pack) == blocked, pack


def test_cpu_shape_reads_target_features():
    avx2 = cpu_shape(tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "num-cores": 2}))
    avx512 = cpu_shape(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 4}))
    assert avx2 == CpuShape(vector_bits=256, vector_registers=16, cores=2)
    assert (avx512.vector_bits, avx512.vector_registers, avx512.cores) == (512, 32, 4)
    assert avx512.lanes("float32") == 16 and avx2.lanes("float32") == 8


def _conv_ref(x, w, stride, pad):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    return out


@pytest.mark.parametrize("c,f,hw,k,stride", [(3, 32, 32, 7, 2), (16, 32, 14, 3, 1), (32, 64, 14, 3, 2),
                                             (16, 24, 9, 1, 1), (64, 128, 7, 3, 1), (32, 64, 14, 1, 2)])
def test_conv2d_rule_matches_numpy(cpu_target, c, f, hw, k, stride):
    rng = np.random.default_rng(c + f)
    x_np = rng.standard_normal((1, c, hw, hw)).astype("float32")
    w_np = (rng.standard_normal((f, c, k, k)) / np.sqrt(c * k * k)).astype("float32")
    x = relax.Var("x", relax.TensorType(x_np.shape, "float32"))

    def fn(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w_np), strides=stride, padding=k // 2))
        return bb.emit(relax.op.nn.relu(y))

    fused, vm = _build(fn, [x], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    want = np.maximum(_conv_ref(x_np, w_np, stride, k // 2), 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tir = _scheduled_by(Conv2dNHWC(), fused, cpu_target, "conv2d")
    assert "T.parallel" in tir and "meta_schedule.layout_rewrite_preproc" in tir
    # whichever operand is larger stays in cache: weight tiles outermost when the weights
    # outweigh the input (ResNet's last stage), pixel rows outermost otherwise
    conv_loops = [v for v in re.findall(r"for (\w+) in T\.parallel", tir) if "yy" in v]
    weight_stationary = f * c * k * k > c * (hw + k // 2 * 2) ** 2  # the input as padded
    assert len(conv_loops) == 1 and ("_ff_0_yy" in conv_loops[0]) == weight_stationary, conv_loops
    # a 1×1 conv pads nothing: it reads its input in place, no copy
    assert ("pad_temp" in tir) == (k > 1)


def test_every_primfunc_gets_scheduled(cpu_target):
    """No kernel of a real model is left with TVM's naive loops."""
    from accelc import models
    from accelc.compiler.frontend import import_onnx

    mod = import_onnx(models.build("gpt2-like")).mod
    with cpu_target:
        fused = tvm.transform.Sequential(cpu.front_passes(cpu_target))(mod)
        scheduled = dl.ApplyDefaultSchedule(*default_rules())(fused)
    for gv, f in scheduled.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc):
            assert f.attrs and "tirx.is_scheduled" in f.attrs, gv.name_hint


def _softmax_ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name,shape,fn,ref,rule", [
    # rows of at most one vector (AVX2 or AVX-512): TOPI's softmax and RowReduction (longer rows: schedules/softmax.py)
    ("softmax", (2, 3, 40, 8), lambda bb, x: bb.emit(relax.op.nn.softmax(x, axis=-1)), _softmax_ref, RowReduction),
    ("row_max_ragged", (3, 197), lambda bb, x: bb.emit(relax.op.max(x, axis=[-1])),
     lambda x: x.max(-1), RowReduction),  # (ragged softmax rows: schedules/softmax.py, test_softmax.py)
    # the int8 quantizer's row abs-max over a 7×7×3 stem's patches: vector part + tail, abs inlined
    ("row_absmax_ragged", (40, 147), lambda bb, x: bb.emit(relax.op.max(relax.op.abs(x), axis=[1], keepdims=True)),
     lambda x: np.abs(x).max(-1, keepdims=True), RowReduction),
    ("row_sum_ragged", (6, 100), lambda bb, x: bb.emit(relax.op.sum(x, axis=[-1])),
     lambda x: x.sum(-1), RowReduction),
    ("layernorm", (1, 50, 384),
     lambda bb, x: bb.emit(relax.op.nn.layer_norm(x, relax.const(np.full(384, 1.5, "float32")),
                                                  relax.const(np.full(384, 0.25, "float32")), [-1], 1e-5)),
     lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * 1.5 + 0.25, RowReduction),
    ("row_sum_keepdims", (37, 64), lambda bb, x: bb.emit(relax.op.sum(x, axis=[-1], keepdims=True)),
     lambda x: x.sum(-1, keepdims=True), RowReduction),  # one value per row: the row loop stays parallel
    ("maxpool_nhwc", (1, 28, 28, 32), lambda bb, x: bb.emit(relax.op.nn.max_pool2d(x, 3, 2, 1, layout="NHWC")),
     lambda x: np.max([np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
                       [:, i:i + 28:2, j:j + 28:2] for i in range(3) for j in range(3)], axis=0), WindowReduction),
    ("mean_hw_nhwc", (1, 7, 7, 64), lambda bb, x: bb.emit(relax.op.mean(x, axis=[1, 2], keepdims=True)),
     lambda x: x.mean(axis=(1, 2), keepdims=True), WindowReduction),
])
def test_reduction_rules_match_numpy(cpu_target, name, shape, fn, ref, rule):
    x_np = np.random.default_rng(len(name)).standard_normal(shape).astype("float32")
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    fused, vm = _build(fn, [x], cpu_target)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x_np)).numpy(), ref(x_np.astype(np.float64)),
                               rtol=1e-4, atol=1e-5)
    funcs = [f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    tir = next(s for s in (rule().apply(f, cpu_target, False) for f in funcs) if s is not None).mod["main"].script()
    assert "T.parallel" in tir
    if shape[-1] % 8 == 0 or (shape[-1] >= 32 and "row" in name):  # short ragged rows stay scalar
        assert "T.vectorized" in tir
    if "ragged" in name:  # whole vectors in an rfactor-ed reduction, the tail apart
        assert "row_tail" in tir and "_rf_update" in tir
        assert "sblock_alloc_buffer((T.int64(40), T.int64(147)))" not in tir  # abs: no buffer


@pytest.mark.parametrize("mcpu,lanes", [("znver4", 16), ("skylake-avx512", 16), ("znver3", 8)])
def test_row_reduction_folds_its_partials_pairwise(mcpu, lanes):
    """Layer norm over 192-wide rows: each row reduction's ``lanes`` vector partials are folded
    by halving vector adds (lanes/2, …, 2 wide), not by one scalar loop over the lanes (a
    dependent chain of 16 adds a row: DeiT's layer norm 6.1 → 4.9 µs, Zen 4, 2 threads);
    the result still matches NumPy."""
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    x_np = np.random.default_rng(7).standard_normal((1, 197, 192)).astype("float32")
    x = relax.Var("x", relax.TensorType(x_np.shape, "float32"))
    gamma, beta = np.linspace(0.5, 1.5, 192, dtype="float32"), np.linspace(-1, 1, 192, dtype="float32")

    def fn(bb, x):
        return bb.emit(relax.op.nn.layer_norm(x, relax.const(gamma), relax.const(beta), [-1], 1e-5))

    fused, vm = _build(fn, [x], target)
    x64 = x_np.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * gamma + beta
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x_np)).numpy(), want, rtol=1e-4, atol=1e-5)
    tir = _scheduled_by(RowReduction(), fused, target, "layer_norm")
    widths = [lanes >> i for i in range(1, lanes.bit_length() - 1)]  # 8, 4, 2 (or 4, 2)
    for w in widths:
        assert f"T.vectorized(T.int64({w}))" in tir, (w, tir)
    assert f"in range(T.int64({lanes})):" not in tir, tir  # no scalar loop over the partials


@pytest.mark.parametrize("index,axis", [(1, 0), (-1, 0), (2, 2), (0, -1)])
def test_take_of_a_constant_index_is_a_static_slice_fused_with_its_transpose(cpu_target, index, axis):
    """``take(x, const i, axis)`` (ONNX Gather of a fixed index: ``qkv[1]``) legalizes to a
    static slice, which FuseOps fuses with the transpose after it; TVM's own legalization reads
    the index at run time, an opaque gather that fuses with nothing."""
    x_np = np.random.default_rng(0).standard_normal((3, 2, 4, 5)).astype("float32")
    x = relax.Var("x", relax.TensorType(x_np.shape, "float32"))

    def fn(bb, x):
        t = bb.emit(relax.op.take(x, relax.const(index, "int64"), axis=axis))
        return bb.emit(relax.op.permute_dims(t, list(reversed(range(3)))))

    fused, vm = _build(fn, [x], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    want = np.transpose(np.take(x_np, index, axis=axis), (2, 1, 0))
    np.testing.assert_array_equal(got, want)
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(names) == 1 and "take_const" in names[0] and "transpose" in names[0], names


@pytest.mark.parametrize("divisor,dtype", [(5.656854152679443, "float32"), (np.sqrt(2.0), "float32"),
                                           (8.0, "float32"), (-3.0, "float64")])
def test_division_by_a_constant_is_a_multiplication_by_its_reciprocal(cpu_target, divisor, dtype):
    """``x / c`` with a one-element constant ``c`` (attention's ``/ sqrt(d)``, GELU's
    ``/ sqrt(2)``) computes ``x * (1 / c)``, bit for bit; LLVM would keep a vector division."""
    x_np = np.random.default_rng(0).standard_normal((3, 37)).astype(dtype) * 10
    x = relax.Var("x", relax.TensorType(x_np.shape, dtype))
    c = np.array(divisor, dtype).reshape((1, 1))  # a size-1 constant of x's rank broadcasts
    fused, vm = _build(lambda bb, x: bb.emit(relax.op.divide(x, relax.const(c, dtype))), [x], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    np.testing.assert_array_equal(got, x_np * (np.ones((), dtype) / c.reshape(())))
    np.testing.assert_allclose(got, x_np / c, rtol=2 * np.finfo(dtype).eps, atol=0)
    tir = "".join(f.script() for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert " / " not in tir and " * " in tir


@pytest.mark.parametrize("case", ["tensor", "two-element", "more-dims"])
def test_other_divisions_keep_their_division(cpu_target, case):
    """A divisor that is a tensor, a constant of several elements or of more dims than ``x``
    (the result broadcasts) keeps TVM's division. (A zero constant is declined too; TVM's own
    constant folding then refuses it.)"""
    x_np = (np.random.default_rng(1).standard_normal((2, 8)) * 10).astype("float32")
    x = relax.Var("x", relax.TensorType(x_np.shape, "float32"))
    y_np = np.full((2, 8), 3, "float32")
    y = relax.Var("y", relax.TensorType(y_np.shape, "float32"))
    c = {"tensor": y_np, "two-element": np.array([3.0, -7.0] * 4, "float32"),
         "more-dims": np.full((1, 1, 1), 3, "float32")}[case]
    divisor = (lambda y: y) if case == "tensor" else (lambda y: relax.const(c))
    fused, vm = _build(lambda bb, x, y: bb.emit(relax.op.divide(x, divisor(y))), [x, y], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np), tvm.runtime.tensor(y_np)).numpy()
    np.testing.assert_array_equal(got, x_np / c)
    tir = "".join(f.script() for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert " / " in tir


def test_layout_ops_fuse_into_the_gemms_around_them(cpu_target):
    """Attention's head split and merge (reshape + transpose) around matmuls: FuseOps keeps
    them as kernels of their own (an injective op fuses only into an injective consumer).
    ``fuse_layout_into_matmul`` puts a layout op that is a GEMM's only use into that GEMM's
    write-back (Q's projection, P·V) when the write-back still stores whole vectors (not Kᵀ's
    [seq, d] → [d, seq]), and a layout op feeding a GEMM's A, or a B the rule packs anyway, into
    its operand reads (Kᵀ's split into Q·Kᵀ); a B the rule reads in place (one register panel:
    V in P·V) keeps its producer."""
    rng = np.random.default_rng(0)
    x_np, k_np, v_np = (rng.standard_normal((1, 40, 64)).astype("float32") for _ in range(3))
    wq_np, w_np = rng.standard_normal((64, 64)).astype("float32"), rng.standard_normal((64, 24)).astype("float32")
    wk_np = rng.standard_normal((64, 64)).astype("float32")
    params = [relax.Var(n, relax.TensorType((1, 40, 64), "float32")) for n in "xkv"]

    def heads(bb, t):  # [1, 40, 64] → [1, 4, 40, 16]
        return bb.emit(relax.op.permute_dims(relax.op.reshape(t, (1, 40, 4, 16)), [0, 2, 1, 3]))

    def fn(bb, x, k, v):
        q = bb.emit(relax.op.matmul(x, relax.const(wq_np)))
        k = bb.emit(relax.op.matmul(k, relax.const(wk_np)))
        s = bb.emit(relax.op.matmul(heads(bb, q), relax.op.permute_dims(heads(bb, k), [0, 1, 3, 2])))
        o = bb.emit(relax.op.matmul(s, heads(bb, v)))
        merged = bb.emit(relax.op.reshape(relax.op.permute_dims(o, [0, 2, 1, 3]), (1, 40, 64)))
        return bb.emit(relax.op.matmul(merged, relax.const(w_np)))

    fused, vm = _build(fn, params, cpu_target)
    got = vm["main"](*[tvm.runtime.tensor(a) for a in (x_np, k_np, v_np)]).numpy()
    split = lambda t: t.reshape(1, 40, 4, 16).transpose(0, 2, 1, 3).astype(np.float64)  # noqa: E731
    o = (split(x_np @ wq_np) @ split(k_np @ wk_np).transpose(0, 1, 3, 2)) @ split(v_np)
    np.testing.assert_allclose(got, o.transpose(0, 2, 1, 3).reshape(1, 40, 64) @ w_np, rtol=1e-4, atol=1e-3)
    names = sorted(gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert names == ["fused_reshape_transpose1",  # V's split, read by P·V
                     "fused_reshape_transpose_transpose1_matmul11",  # Kᵀ's split read through by Q·Kᵀ
                     "matmul1",  # K's projection: its write-back would scatter through Kᵀ's split
                     "matmul2_fused_transpose2_reshape11",  # the head merge in P·V's write-back
                     "matmul31", "matmul_fused_reshape_transpose1"], names  # Q's split in its projection


@pytest.mark.parametrize("n,c,hw,k,stride,pad", [(1, 3, 17, 7, 2, 3), (2, 5, 9, 3, 1, 1), (1, 4, 8, 3, 2, 0)])
def test_im2col_loops_follow_the_patch_geometry(cpu_target, n, c, hw, k, stride, pad):
    """The shift-add/int8 patch matrix: the Injective rule splits its row loop into (n, oh, ow)
    and its column loop into (c, kh, kw) (no flat divisions left: 7× faster on ResNet's stem),
    parallel over (n, oh); the result equals NumPy's im2col exactly."""
    from tvm import te
    from tvm.s_tir.dlight.analysis import get_root_block

    from accelc.passes.shift_add import ConvGeometry
    from accelc.schedules import shift_add as kernels
    from accelc.schedules.cpu.injective import Injective

    o = (hw + 2 * pad - k) // stride + 1
    x = te.placeholder((n, c, hw, hw), "float32", name="x")
    y = kernels.im2col(x, (k, k), (stride, stride), (pad, pad, pad, pad), (1, 1), (o, o))
    func = te.create_prim_func([x, y])
    sch = Injective().apply(func, cpu_target, False)
    (blk,) = sch.get_child_blocks(get_root_block(sch))
    loops = sch.get_loops(blk)
    assert [int(sch.get(lp).extent) for lp in loops] == [n * o, o, c, k, k]
    assert sch.get(loops[0]).kind == tvm.tirx.ForKind.PARALLEL
    lib = tvm.compile(sch.mod, target=cpu_target)
    xv = np.random.default_rng(0).standard_normal((n, c, hw, hw)).astype("float32")
    out = tvm.runtime.tensor(np.zeros((n * o * o, c * k * k), "float32"))
    lib["main"](tvm.runtime.tensor(xv), out)
    geo = ConvGeometry(n, c, (k, k), (stride, stride), (pad, pad, pad, pad), (1, 1), (o, o))
    np.testing.assert_array_equal(out.numpy(), geo.patches(xv))


@pytest.mark.parametrize("exponent,dtype", [(3.0, "float32"), (2.0, "float32"), (4.0, "float64")])
def test_small_integer_power_is_a_product(cpu_target, exponent, dtype):
    """``x ** c`` with a constant 2, 3 or 4 (GELU-tanh's ``x³``) is computed by multiplying,
    bit for bit as NumPy's products, within 1 ulp of the power; no ``pow`` call is left."""
    x_np = np.random.default_rng(2).standard_normal((3, 37)).astype(dtype) * 4
    x = relax.Var("x", relax.TensorType(x_np.shape, dtype))
    c = relax.const(np.array(exponent, dtype).reshape((1,)), dtype)
    fused, vm = _build(lambda bb, x: bb.emit(relax.op.power(x, c)), [x], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    want = {2.0: x_np * x_np, 3.0: x_np * x_np * x_np, 4.0: (x_np * x_np) * (x_np * x_np)}[exponent]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, np.power(x_np.astype(np.float64), exponent), rtol=2 * np.finfo(dtype).eps, atol=0)
    tir = "".join(f.script() for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.pow(" not in tir and " * " in tir


@pytest.mark.parametrize("case", ["2.5", "tensor"])
def test_other_powers_keep_pow(cpu_target, case):
    """A non-integer or a tensor exponent keeps TVM's ``pow``."""
    dtype = "float32"
    x_np = (np.abs(np.random.default_rng(3).standard_normal((2, 8))) * 3).astype(dtype)
    x = relax.Var("x", relax.TensorType(x_np.shape, dtype))
    y_np = np.full((2, 8), 3, dtype)
    y = relax.Var("y", relax.TensorType(y_np.shape, dtype))
    exponent = (lambda y: y) if case == "tensor" else (
        lambda y: relax.const(np.array([2.5 if case == "2.5" else 3], dtype)))
    fused, vm = _build(lambda bb, x, y: bb.emit(relax.op.power(x, exponent(y))), [x, y], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np), tvm.runtime.tensor(y_np)).numpy()
    np.testing.assert_allclose(got, np.power(x_np, 2.5 if case == "2.5" else 3).astype(dtype), rtol=1e-6)
    tir = "".join(f.script() for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.pow(" in tir


@pytest.mark.parametrize("shape,keepdims", [((1, 32, 56, 56), False), ((196, 147), True)])
def test_reduction_over_every_axis_runs_row_by_row(cpu_target, shape, keepdims):
    """``max(abs(x))`` over every axis (a per-tensor int8 scale): no rule takes a reduction
    without a spatial axis, so the CPU legalizer reduces each row along the last axis first
    (ragged rows as whole vectors plus a tail), in a kernel RowReduction vectorizes."""
    x_np = np.random.default_rng(7).standard_normal(shape).astype("float32")
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    fused, vm = _build(lambda bb, x: bb.emit(relax.op.max(relax.op.abs(x), keepdims=keepdims)), [x], cpu_target)
    got = vm["main"](tvm.runtime.tensor(x_np)).numpy()
    np.testing.assert_array_equal(got, np.abs(x_np).max(keepdims=keepdims))
    funcs = {gv.name_hint: f for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert len(funcs) == 2  # the rows (abs fused in), then the row results
    per_row = next(f for name, f in funcs.items() if "max_rows" in name)
    assert "T.vectorized" in RowReduction().apply(per_row, cpu_target, False).mod["main"].script()
