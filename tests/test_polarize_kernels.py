"""ViTCoD sparsity polarization: the NumPy pattern builder's properties, the two-engine NumPy
reference against dense masked softmax attention, and the TIR kernel (scheduled by the CPU
rule) against the same reference."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelc.passes import polarize_math as pm
from accelc.schedules.attention_sparse import polarized_attention
from accelc.schedules.cpu.attention_sparse import PolarizedAttentionKernels

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KERNEL_SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _maps(rng, heads, n, causal=False, peaky=2.0):
    """Random average attention maps: softmax of random logits (causal: lower triangle)."""
    logits = rng.normal(size=(heads, n, n)) * peaky
    logits[:, :, rng.integers(0, n)] += 2.0  # a likely global column
    if causal:
        logits = np.where(np.tril(np.ones((n, n), bool))[None], logits, -np.inf)
    a = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return a / a.sum(axis=-1, keepdims=True)


def _qkv(rng, b, heads, n, d):
    return [rng.normal(size=(b, heads, n, d)).astype(np.float32) for _ in range(3)]


def _rel_err(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _csr_mask(p: pm.PolarPattern) -> np.ndarray:
    """The effective mask rebuilt from the kernel's arguments (perm, gcount, CSR)."""
    h, n = p.perm.shape
    out = np.zeros((h, n, n), bool)
    for hh in range(h):
        out[hh][:, p.perm[hh, :p.gcount[hh]]] = True
        for i in range(n):
            pos = p.indices[p.indptr[hh, i]:p.indptr[hh, i + 1]]
            out[hh, i, p.perm[hh, pos]] = True
    if p.causal:
        out &= np.tril(np.ones((n, n), bool))[None]
    return out


# ----------------------------------------------------------------------------------------------
# pattern builder


@SETTINGS
@given(heads=st.integers(1, 3), n=st.integers(2, 24), sparsity=st.floats(0.0, 0.95),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_sparsity_keeps_top_entries_per_row(heads, n, sparsity, causal, seed):
    rng = np.random.default_rng(seed)
    a = _maps(rng, heads, n, causal)
    kept = pm.select_mask(a, sparsity=sparsity, keep_cls=False, causal=causal)
    lengths = np.arange(1, n + 1) if causal else np.full(n, n)
    want = np.maximum(1, np.round((1 - sparsity) * lengths))
    counts = kept.sum(axis=-1)  # [H, N]
    assert np.all(counts >= want[None]) and np.all(counts <= want[None] + 1)  # + the diagonal
    # kept entries are the row's largest (ties aside): every kept non-diagonal value beats every
    # pruned allowed one
    allowed = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    off = kept & ~np.eye(n, dtype=bool)[None]
    lo = np.where(off, a, np.inf).min(axis=-1)
    hi = np.where(~kept & allowed[None], a, -np.inf).max(axis=-1)
    assert np.all(lo >= hi)


@SETTINGS
@given(heads=st.integers(1, 3), n=st.integers(2, 24), info_cut=st.floats(0.05, 1.0),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_info_cut_keeps_smallest_prefix(heads, n, info_cut, causal, seed):
    rng = np.random.default_rng(seed)
    a = _maps(rng, heads, n, causal)
    kept = pm.select_mask(a, info_cut=info_cut, keep_cls=False, causal=causal)
    srt = -np.sort(-a, axis=-1)
    need = np.minimum((np.cumsum(srt, axis=-1) < info_cut * (1 - 1e-12)).sum(axis=-1) + 1, n)
    counts = kept.sum(axis=-1)
    assert np.all(counts >= need) and np.all(counts <= need + 1)
    assert np.all((a * kept).sum(axis=-1) >= info_cut - 1e-9)


@SETTINGS
@given(heads=st.integers(1, 3), n=st.integers(1, 24), sparsity=st.floats(0.0, 0.95),
       causal=st.booleans(), tau=st.none() | st.floats(0, 10), seed=st.integers(0, 2**16))
def test_pattern_invariants(heads, n, sparsity, causal, tau, seed):
    rng = np.random.default_rng(seed)
    a = _maps(rng, heads, n, causal)
    p = pm.pattern_from_maps(a, sparsity=sparsity, tau=tau, causal=causal)
    eye = np.eye(n, dtype=bool)
    tril = np.tril(np.ones((n, n), bool))
    assert p.perm.dtype == p.gcount.dtype == p.indptr.dtype == p.indices.dtype == np.int32
    for mask in (p.kept, p.mask):
        assert np.all(mask[:, eye]) and np.all(mask[:, :, 0])  # diagonal, CLS column
        assert np.all(mask[:, 0, :] | ~tril[0][None]) or not causal
        if causal:
            assert not np.any(mask & ~tril[None])
    if not causal:
        assert np.all(p.mask[:, 0, :])  # CLS row
    assert np.all(p.kept <= p.mask)
    for hh in range(heads):
        assert sorted(p.perm[hh].tolist()) == list(range(n))
        g = p.gcount[hh]
        assert np.all(np.diff(p.perm[hh, :g]) > 0) and np.all(np.diff(p.perm[hh, g:]) > 0)
        deg = p.kept[hh].sum(axis=0)
        assert set(p.perm[hh, :g].tolist()) == set(np.flatnonzero(deg > p.tau).tolist())
        seg = p.indices[p.indptr[hh, 0]:p.indptr[hh, -1]]
        assert np.all(seg >= g) and np.all(seg < n)
        for i in range(n):
            row = p.indices[p.indptr[hh, i]:p.indptr[hh, i + 1]]
            assert np.all(np.diff(row) > 0)
    assert p.indptr[0, 0] == 0 and p.indptr[-1, -1] == p.nnz
    assert np.all(p.indptr[1:, 0] == p.indptr[:-1, -1])
    np.testing.assert_array_equal(_csr_mask(p), p.mask)
    allowed = tril.sum() if causal else n * n
    np.testing.assert_allclose(p.sparsity, 1 - p.mask.reshape(heads, -1).sum(1) / allowed)
    assert np.all(p.retained_mass <= 1 + 1e-9)
    np.testing.assert_allclose(p.retained_mass, (a * p.mask).reshape(heads, -1).sum(1) / n)
    np.testing.assert_allclose(p.dense_ratio, p.gcount * n / np.maximum(p.gcount * n + p.nnz_sparse, 1))
    assert pm.polarized_macs(p, 8, 2) == 2 * 8 * 2 * int((p.gcount.astype(int) * n + p.nnz_sparse).sum())
    assert pm.dense_attention_macs(n, 8, heads, 2) == 2 * 2 * heads * n * n * 8


@SETTINGS
@given(heads=st.integers(1, 3), n=st.integers(2, 24), cuts=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_retained_mass_grows_with_info_cut(heads, n, cuts, causal, seed):
    a = _maps(np.random.default_rng(seed), heads, n, causal)
    masses = [pm.pattern_from_maps(a, info_cut=c, causal=causal).retained_mass for c in sorted(cuts)]
    for lo, hi in zip(masses, masses[1:]):
        assert np.all(lo <= hi + 1e-12)
    assert np.all(masses[-1] <= 1 + 1e-9)
    full = pm.pattern_from_maps(a, info_cut=1.0, causal=causal)
    np.testing.assert_allclose(full.retained_mass, 1.0)


def test_default_tau_is_vitcod_quarter():
    a = _maps(np.random.default_rng(0), 2, 40)
    p = pm.pattern_from_maps(a, sparsity=0.8)
    assert p.tau == 10.0
    # every token global: the whole map is the dense part
    dense = pm.polarize(np.ones((1, 8, 8), bool))
    assert dense.gcount[0] == 8 and dense.nnz == 0 and dense.dense_ratio[0] == 1.0


@pytest.mark.parametrize("kwargs, word", [
    (dict(info_cut=0.5, sparsity=0.5), "info_cut"),
    (dict(), "info_cut"),
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity=True), "sparsity"),
    (dict(info_cut=0.0), "info_cut"),
    (dict(info_cut=1.5), "info_cut"),
    (dict(sparsity=0.5, tau=-1), "tau"),
    (dict(sparsity=0.5, tau=float("nan")), "tau"),
])
def test_bad_pattern_arguments(kwargs, word):
    a = _maps(np.random.default_rng(0), 1, 6)
    with pytest.raises(ValueError, match=word):
        pm.pattern_from_maps(a, **kwargs)


def test_bad_arrays():
    with pytest.raises(ValueError, match="avg_maps"):
        pm.pattern_from_maps(np.ones((2, 3, 4)), sparsity=0.5)
    with pytest.raises(ValueError, match="avg_maps"):
        pm.pattern_from_maps(np.full((1, 3, 3), np.nan), sparsity=0.5)
    with pytest.raises(ValueError, match="mask"):
        pm.polarize(np.ones((1, 3, 3), np.int8))
    q, k, v = _qkv(np.random.default_rng(0), 1, 1, 4, 2)
    with pytest.raises(ValueError, match="key_bias"):
        pm.masked_attention_ref(q, k, v, np.ones((1, 4, 4), bool), 1.0, key_bias=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="q, k, v"):
        pm.masked_attention_ref(q, k[..., :1], v, np.ones((1, 4, 4), bool), 1.0)
    with pytest.raises(ValueError, match="mask"):
        pm.masked_attention_ref(q, k, v, np.ones((2, 4, 4), bool), 1.0)
    for name, args in (("n", (1, 1, 0, 4, 1)), ("d", (1, 1, 4, 0, 1)), ("nnz", (1, 1, 4, 4, -1))):
        with pytest.raises(ValueError, match=name):
            polarized_attention(*args, 1.0)


# ----------------------------------------------------------------------------------------------
# references


@SETTINGS
@given(b=st.integers(1, 2), heads=st.integers(1, 3), n=st.integers(1, 24), d=st.integers(1, 8),
       causal=st.booleans(), bias=st.booleans(), density=st.floats(0.0, 1.0), tau=st.floats(0, 12),
       seed=st.integers(0, 2**16))
def test_polarized_ref_matches_masked_ref(b, heads, n, d, causal, bias, density, tau, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((heads, n, n)) < density  # arbitrary masks: empty rows included
    p = pm.polarize(mask, tau=tau, causal=causal)
    q, k, v = _qkv(rng, b, heads, n, d)
    kb = rng.normal(size=(b, n)) if bias else None
    scale = float(rng.uniform(0.1, 1.0))
    want = pm.masked_attention_ref(q, k, v, p.mask, scale, kb, causal)
    got = pm.polarized_attention_ref(q, k, v, p, scale, kb, causal)
    assert _rel_err(got, want) <= 1e-6
    empty = ~p.mask.any(axis=-1)  # [H, N]
    assert np.all(got[:, empty] == 0)


# ----------------------------------------------------------------------------------------------
# TIR kernel


def _build(func, target):
    sch = PolarizedAttentionKernels().apply(func, target, False)
    assert sch is not None, "the CPU rule must take the polarized attention kernel"
    return tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"), target)


def _run_kernel(target, q, k, v, p: pm.PolarPattern, scale, kb, causal):
    b, heads, n, d = q.shape
    lib = _build(polarized_attention(b, heads, n, d, p.nnz, scale, causal=causal, key_bias=kb is not None), target)
    return _call(lib, q, k, v, p, kb)


def _call(lib, q, k, v, p: pm.PolarPattern, kb):
    """A built polarized-attention kernel on these inputs (the output starts as NaN)."""
    args = [q, k, v] + ([kb.astype(np.float32)] if kb is not None else []) + p.kernel_args()
    out = tvm.runtime.tensor(np.full(q.shape, np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    return out.numpy()


@KERNEL_SETTINGS
@given(b=st.integers(1, 2), heads=st.integers(1, 3), n=st.integers(1, 40),
       d=st.sampled_from([1, 3, 8, 12, 16, 64]), causal=st.booleans(), bias=st.booleans(),
       from_maps=st.booleans(), knob=st.floats(0.0, 0.95), tau=st.none() | st.floats(0, 8),
       seed=st.integers(0, 2**16))
def test_kernel_matches_masked_ref(cpu_target, b, heads, n, d, causal, bias, from_maps, knob, tau, seed):
    rng = np.random.default_rng(seed)
    if from_maps:
        p = pm.pattern_from_maps(_maps(rng, heads, n, causal), sparsity=knob, tau=tau, causal=causal)
    else:
        p = pm.polarize(rng.random((heads, n, n)) >= knob, tau=tau, causal=causal)
    q, k, v = _qkv(rng, b, heads, n, d)
    kb = rng.normal(size=(b, n)).astype(np.float32) if bias else None
    scale = float(rng.uniform(0.1, 1.0))
    got = _run_kernel(cpu_target, q, k, v, p, scale, kb, causal)
    want = pm.masked_attention_ref(q, k, v, p.mask, scale, kb, causal)
    assert _rel_err(got, want) <= 1e-5


def test_kernel_empty_rows_and_all_global(cpu_target):
    rng = np.random.default_rng(1)
    n, d = 9, 8
    mask = rng.random((2, n, n)) < 0.3
    mask[:, 3] = False  # row 3 keeps nothing → zeros
    mask[1] = True  # head 1: everything global (the dense engine only)
    p = pm.polarize(mask, tau=n - 1)
    assert p.gcount[1] == n and p.gcount[0] == 0
    q, k, v = _qkv(rng, 1, 2, n, d)
    got = _run_kernel(cpu_target, q, k, v, p, 0.5, None, False)
    assert np.all(got[0, 0, 3] == 0)
    assert _rel_err(got, pm.masked_attention_ref(q, k, v, p.mask, 0.5)) <= 1e-5


# The GPU twin (schedules/cuda/attention_sparse.py): CI has no GPU, so its per-row program runs
# here with the 32 lanes as loops (``emulate``); the CUDA build differs only in binding the lanes
# to threads and summing with warp shuffles (tests/test_cuda_compile.py compiles that with nvcc).
def _run_gpu_twin(q, k, v, p: pm.PolarPattern, scale, kb, causal):
    from accelc.schedules.cuda.attention_sparse import polarized_attention_gpu

    b, heads, n, d = q.shape
    func = polarized_attention_gpu(b, heads, n, d, p.nnz, scale, causal=causal, key_bias=kb is not None,
                                   emulate=True)
    return _call(tvm.tirx.build(func.with_attr("global_symbol", "main"), "llvm"), q, k, v, p, kb)


@KERNEL_SETTINGS
@given(b=st.integers(1, 2), heads=st.integers(1, 3), n=st.integers(1, 40),
       d=st.sampled_from([1, 3, 16, 32, 40, 64, 96]), causal=st.booleans(), bias=st.booleans(),
       knob=st.floats(0.0, 0.95), tau=st.none() | st.floats(0, 8), seed=st.integers(0, 2**16))
def test_gpu_twin_matches_masked_ref(b, heads, n, d, causal, bias, knob, tau, seed):
    rng = np.random.default_rng(seed)
    p = pm.pattern_from_maps(_maps(rng, heads, n, causal), sparsity=knob, tau=tau, causal=causal)
    q, k, v = _qkv(rng, b, heads, n, d)
    kb = rng.normal(size=(b, n)).astype(np.float32) if bias else None
    scale = float(rng.uniform(0.1, 1.0))
    got = _run_gpu_twin(q, k, v, p, scale, kb, causal)
    assert _rel_err(got, pm.masked_attention_ref(q, k, v, p.mask, scale, kb, causal)) <= 1e-5


def test_gpu_twin_empty_rows_masked_keys_and_all_global():
    rng = np.random.default_rng(2)
    n, d = 9, 40
    mask = rng.random((2, n, n)) < 0.3
    mask[:, 3] = False  # row 3 keeps nothing → zeros
    mask[1] = True  # head 1: everything global
    p = pm.polarize(mask, tau=n - 1)
    q, k, v = _qkv(rng, 1, 2, n, d)
    kb = rng.normal(size=(1, n)).astype(np.float32)
    kb[0, :4] = -np.inf  # a padding mask: these keys never count (-inf scores are skipped)
    got = _run_gpu_twin(q, k, v, p, 0.5, kb, False)
    assert np.all(got[0, 0, 3] == 0) and np.all(np.isfinite(got))
    assert _rel_err(got, _run_kernel(tvm.target.Target("llvm"), q, k, v, p, 0.5, kb, False)) <= 1e-5


def test_rule_declines_other_functions(cpu_target):
    from tvm import te

    x = te.placeholder((4,), name="x")
    y = te.compute((4,), lambda i: x[i] * 2, name="y")
    assert PolarizedAttentionKernels().apply(te.create_prim_func([x, y]), cpu_target, False) is None
    func = polarized_attention(1, 1, 4, 4, 0, 1.0)
    assert func.attrs["accelc.kernel"] == "polarized_attention"
    assert PolarizedAttentionKernels().apply(func, tvm.target.Target("c"), False) is None
