"""The GPU twins of the shift-add GEMMs, of the BCQ LUT matmul and of linear attention:
non-causal, causal and the decode step (``schedules/cuda/shift_add.py``,
``schedules/cuda/bcq_lut.py``, ``schedules/cuda/attention_linear.py``,
``schedules/cuda/attention_linear_causal.py``, ``schedules/cuda/attention_linear_decode.py``).

CI has no GPU: each twin's program is built for the CPU with its thread loops serial
(``emulate=True``) and held to the NumPy references (integer path bit-exact). The CUDA builds
are compiled with nvcc in ``tests/test_cuda_compile.py``; the ``needs_gpu`` tests here run
them on a GPU when there is one.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelc.passes import linear_attention_math as lam
from accelc.passes import shift_add_math as sam
from accelc.passes.shift_add import pack_pot_codes
from accelc.schedules import attention_linear as la
from accelc.schedules import shift_add as sa
from accelc.schedules.cuda import GPU_KERNELS
from accelc.schedules.cuda.attention_linear import linear_attention_gpu
from accelc.schedules.cuda.attention_linear_causal import linear_attention_causal_gpu, tile_keys
from accelc.schedules.cuda.attention_linear_decode import linear_attention_decode_gpu
from accelc.schedules.cuda.bcq_lut import bcq_matmul_lut_gpu
from accelc.schedules.cuda.shift_add import pot_matmul_gpu
from accelc.targets import cuda

from . import cuda_emu

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Below, at and above the 32-row / 32-column / 32-deep tiles, ragged and whole.
DIMS = st.integers(1, 9) | st.integers(10, 70)
needs_gpu = pytest.mark.skipif(cuda.local_arch() is None, reason="no CUDA device on this machine")


def _emulated(func):
    return tvm.tirx.build(func.with_attr("global_symbol", "main"), "llvm")


def _run(lib, args, out_shape, out_dtype, dev=None):
    dev = dev or tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
    return out.numpy()


def _rel(got, want) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# -- shift-add ---------------------------------------------------------------------------------
def _codes(rng, terms, k, n, e_max=14):
    mag = rng.integers(0, int(e_max) + 2, (terms, k, n))
    return (mag * rng.choice([-1, 1], (terms, k, n))).astype(np.int8)


def _pot_case(kind, m, k, n, terms, seed):
    """(kernel, its arguments, the NumPy reference, output dtype) for one PoT kernel form."""
    rng = np.random.default_rng(seed)
    codes = _codes(rng, terms, k, n, e_max=rng.choice([14, 31]) if kind == "int_acc" else 14)
    if kind == "int_acc":
        xq = rng.integers(-(2**30), 2**30, (m, k)).astype(np.int32)
        xq.flat[0] = -(2**31)
        func = sa.pot_matmul_int(m, k, n, terms, 16, 16, dequantize=False)
        return func, [xq, pack_pot_codes(sam.encode_int_codes(codes), sa.TILE_N)], \
            sam.shift_matmul_int_ref(xq, codes), "int32"
    x = (rng.standard_normal((m, k)) * rng.choice([0.1, 3.0, 300.0])).astype(np.float32)
    x[rng.random((m, k)) < 0.1] = 0.0
    scale = (rng.random(n) + 0.5).astype(np.float32)
    if kind == "int":
        scale *= np.float32(2.0**-12)
        func = sa.pot_matmul_int(m, k, n, terms, 12, 16)
        acc = sam.shift_matmul_int_ref(sam.quantize_activations(x, 12, 16), codes)
        return func, [x, pack_pot_codes(sam.encode_int_codes(codes), sa.TILE_N), scale], \
            acc.astype(np.float32) * scale, "float32"
    func = sa.pot_matmul_float(m, k, n, terms)
    return func, [x, pack_pot_codes(codes, sa.TILE_N), scale], sam.shift_matmul_float_ref(x, codes) * scale, \
        "float32"


def _check_pot(kind, got, want):
    if kind == "float":
        assert _rel(got, want) <= 1e-6
    else:  # the integer path, dequantized or not: bit-exact
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["int_acc", "int", "float"])
@SETTINGS
@given(m=DIMS, k=DIMS, n=DIMS | st.sampled_from([32, 64, 96]), terms=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_pot_twin_matches_reference(kind, m, k, n, terms, seed):
    func, args, want, dtype = _pot_case(kind, m, k, n, terms, seed)
    got = _run(_emulated(pot_matmul_gpu(func, emulate=True)), args, want.shape, dtype)
    _check_pot(kind, got, want)


def test_pot_twin_is_the_registered_one_and_keeps_the_kernel_attributes():
    func = sa.pot_matmul_int(40, 64, 48, 2, 16, 15)
    twin = GPU_KERNELS["pot_matmul_int"](func)
    assert twin.attrs["tirx.is_scheduled"] and twin.attrs["accelc.kernel"] == "pot_matmul_int"
    assert [p.name for p in twin.params] == [p.name for p in func.params]
    assert "tirx.is_scheduled" not in pot_matmul_gpu(func, emulate=True).attrs
    assert GPU_KERNELS["pot_matmul_float"] is GPU_KERNELS["pot_matmul_int"]


def test_pot_twin_declines_a_tile_wider_than_a_block():
    """1024 threads hold 8 rows of a 256-channel tile; a wider tile stays with generic rules."""
    assert pot_matmul_gpu(sa.pot_matmul_float(64, 16, 600, 1, tile_n=512)) is None
    assert pot_matmul_gpu(sa.pot_matmul_float(64, 16, 600, 1, tile_n=256)) is not None


# -- BCQ LUT matmul ----------------------------------------------------------------------------
def _bcq_case(m, k, n, bits, group_size, seed):
    """(x, weights) with random bit-planes (their padding bits set too: they must count 0) and
    α of both signs; ``group_size`` -1 is the whole K."""
    rng = np.random.default_rng(seed)
    k8 = -(-k // 8)
    gs = k8 * 8 if group_size == -1 else group_size
    planes = rng.integers(0, 256, (bits, k8, n), dtype=np.uint8)
    alpha = rng.standard_normal((bits, -(-k // gs), n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    return x, sam.BcqWeights(planes=planes, alpha=alpha, k=k, group_size=gs)


def _bcq_twin_output(lib, x, bq, dev=None):
    return _run(lib, [x, bq.planes, bq.alpha], (x.shape[0], bq.planes.shape[2]), "float32", dev)


@settings(SETTINGS, max_examples=25)
@given(m=DIMS, k=DIMS | st.sampled_from([130, 200]), n=DIMS | st.sampled_from([257, 300]), bits=st.integers(1, 4),
       group_size=st.sampled_from([8, 16, 24, 64, -1]), seed=st.integers(0, 2**16))
def test_bcq_twin_matches_reference(m, k, n, bits, group_size, seed):
    """Row, column and 64-input chunk tiles whole and ragged, α groups that straddle chunks
    (24, the whole K), 1 to 4 planes; the CPU kernel's tolerance against float64."""
    x, bq = _bcq_case(m, k, n, bits, group_size, seed)
    got = _bcq_twin_output(_emulated(bcq_matmul_lut_gpu(m, k, n, bits, bq.group_size, emulate=True)), x, bq)
    assert _rel(got, sam.bcq_matmul_ref(x, bq)) <= 1e-6


def test_bcq_twin_matches_quantized_weights():
    """Weights from ``bcq_quantize`` (the pass's) with a ragged last α group."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((100, 40)).astype(np.float32)
    bq = sam.bcq_quantize(w, bits=3, group_size=32, rounds=3)
    x = rng.standard_normal((35, 100)).astype(np.float32)
    got = _bcq_twin_output(_emulated(bcq_matmul_lut_gpu(35, 100, 40, 3, 32, emulate=True)), x, bq)
    assert _rel(got, sam.bcq_matmul_ref(x, bq)) <= 1e-6


def test_bcq_twin_is_the_registered_one_and_keeps_the_kernel_signature_and_attributes():
    func = sa.bcq_matmul_lut(40, 100, 70, 3, 24)
    twin = GPU_KERNELS["bcq_matmul_lut"](func)
    assert twin.attrs["tirx.is_scheduled"]
    assert [p.name for p in twin.params] == [p.name for p in func.params] == ["x", "planes", "alpha", "bcq_scale"]
    assert [str(p.dtype) for p in twin.params] == [str(p.dtype) for p in func.params]
    for key in ("kernel", "m", "k", "n", "bits", "group_size"):
        assert str(twin.attrs[f"accelc.{key}"]) == str(func.attrs[f"accelc.{key}"]), key
    assert "tirx.is_scheduled" not in bcq_matmul_lut_gpu(40, 100, 70, 3, 24, emulate=True).attrs


def test_bcq_twin_declines_more_accumulators_than_registers():
    """A 4×2 register tile holds ``bits + 1`` floats per output up to 128: 15 planes; short
    inputs (one output per thread) take more."""
    assert bcq_matmul_lut_gpu(64, 64, 64, 15, 64) is not None
    assert GPU_KERNELS["bcq_matmul_lut"](sa.bcq_matmul_lut(64, 64, 64, 16, 64)) is None
    assert bcq_matmul_lut_gpu(8, 64, 64, 16, 64) is not None


# -- linear attention --------------------------------------------------------------------------
def _attention_case(rng, b, h, n, d, bias_mode):
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3))
    bias = None
    if bias_mode != "none":
        bias = rng.uniform(-2.0, 2.0, (b, n)).astype(np.float32)
        if bias_mode == "masked":  # padding-like: weight exactly 0, every key of a row possibly
            bias[rng.random((b, n)) < 0.5] = -1e9
    return q, k, v, bias


@pytest.mark.parametrize("variant", ["angular", "castling"])
@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 9) | st.integers(30, 70),
       d=st.sampled_from([1, 3, 16, 19, 32, 40, 64, 80]), bias_mode=st.sampled_from(["none", "soft", "masked"]),
       seed=st.integers(0, 2**16))
def test_linear_attention_twin_matches_explicit_reference(variant, b, h, n, d, bias_mode, seed):
    """Several 32-key chunks with a ragged last one, d below, at and above a warp's width."""
    q, k, v, bias = _attention_case(np.random.default_rng(seed), b, h, n, d, bias_mode)
    func = linear_attention_gpu(b, h, n, d, variant, bias is not None, emulate=True)
    got = _run(_emulated(func), [q, k, v] + ([bias] if bias is not None else []), q.shape, "float32")
    want = lam.linear_attention_reference(q, k, v, variant, False, 64, False, 1.0, bias, None)
    assert np.all(np.isfinite(got))
    assert _rel(got, want) <= 1e-5


def test_linear_attention_all_keys_masked_gives_zero_rows():
    """Angular with every key's weight 0: the denominator is 0 and the rows are 0, as on CPU."""
    rng = np.random.default_rng(1)
    q, k, v, _ = _attention_case(rng, 1, 2, 40, 16, "none")
    bias = np.full((1, 40), -1e9, np.float32)
    got = _run(_emulated(linear_attention_gpu(1, 2, 40, 16, key_bias=True, emulate=True)), [q, k, v, bias],
               q.shape, "float32")
    assert np.array_equal(got, np.zeros_like(got))


def test_linear_attention_twin_keeps_the_kernel_signature_and_attributes():
    func = la.linear_attention(2, 3, 20, 8, "castling", chunk=16, scale=0.5, key_bias=True)
    twin = GPU_KERNELS["linear_attention"](func)
    assert twin.attrs["tirx.is_scheduled"]
    assert [p.name for p in twin.params] == [p.name for p in func.params] == ["q", "k", "v", "key_bias", "out"]
    for key in ("kernel", "b", "h", "n", "d", "causal", "chunk", "local", "key_bias", "variant", "scale"):
        assert str(twin.attrs[f"accelc.{key}"]) == str(func.attrs[f"accelc.{key}"]), key


@pytest.mark.parametrize("kwargs", [{"local": True}, {"d": 96}, {"causal": True, "d": 96},
                                    {"causal": True, "local": True, "chunk": 33},
                                    {"causal": True, "local": True, "chunk": 32, "d": 80}])
def test_linear_attention_twin_declines_what_it_does_not_cover(kwargs):
    """Left to the generic GPU rules: the non-causal local form (its far set is every other
    chunk), a state that does not fit 48 KiB of shared memory beside a tile (d = 96), a local
    window wider than a warp, and a window whose tile does not fit beside a d = 80 state."""
    dims = {"b": 1, "h": 2, "n": 40, "d": 16, "chunk": 64}
    dims.update({k: v for k, v in kwargs.items() if k in dims})
    flags = {k: v for k, v in kwargs.items() if k not in dims}
    assert GPU_KERNELS["linear_attention"](la.linear_attention(**dims, **flags)) is None


def _causal_args(q, k, v, bias, gate, local):
    return [q, k, v] + ([bias] if bias is not None else []) + ([gate] if local else [])


@pytest.mark.parametrize("local", [False, True])
@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 9) | st.integers(30, 70),
       d=st.sampled_from([1, 3, 16, 19, 32, 40, 64]), chunk=st.integers(1, 12) | st.sampled_from([16, 31, 32]),
       bias_mode=st.sampled_from(["none", "soft", "masked"]), seed=st.integers(0, 2**16))
def test_causal_linear_attention_twin_matches_explicit_reference(local, b, h, n, d, chunk, bias_mode, seed):
    """Causal, and causal with the local softmax (window ``chunk``, ragged last window): tiles of
    32 keys or one window each, ``n`` across several with a ragged last one, ``d`` below, at and
    above a warp's width."""
    rng = np.random.default_rng(seed)
    q, k, v, bias = _attention_case(rng, b, h, n, d, bias_mode)
    gate = rng.random((h, n)).astype(np.float32)
    scale = float(d) ** -0.5
    func = linear_attention_causal_gpu(b, h, n, d, bias is not None, local=local, chunk=chunk, scale=scale,
                                       emulate=True)
    got = _run(_emulated(func), _causal_args(q, k, v, bias, gate, local), q.shape, "float32")
    want = lam.linear_attention_reference(q, k, v, "angular", True, chunk, local, scale, bias, gate)
    assert np.all(np.isfinite(got))
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("d", [80, 88])
def test_causal_linear_attention_twin_takes_eight_key_tiles_for_wide_heads(d):
    """d = 80 and 88 fit 48 KiB only with tiles of 8 keys (one query row per warp and tile)."""
    assert (tile_keys(45, 64, False, 64), tile_keys(45, d, False, 64), tile_keys(45, 96, False, 64)) == (32, 8, None)
    rng = np.random.default_rng(d)
    q, k, v, bias = _attention_case(rng, 1, 2, 45, d, "masked")
    func = linear_attention_causal_gpu(1, 2, 45, d, True, emulate=True)
    got = _run(_emulated(func), [q, k, v, bias], q.shape, "float32")
    want = lam.linear_attention_reference(q, k, v, "angular", True, 64, False, 1.0, bias, None)
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("local", [False, True])
def test_causal_linear_attention_rows_without_a_visible_key_are_zero(local):
    """Keys 0..9 masked: queries 0..9 see no weighted key (both parts empty) and are exactly 0,
    as on CPU; later rows are not."""
    rng = np.random.default_rng(2)
    q, k, v, _ = _attention_case(rng, 1, 2, 40, 16, "none")
    bias = np.zeros((1, 40), np.float32)
    bias[:, :10] = -1e9
    gate = rng.random((2, 40)).astype(np.float32)
    func = linear_attention_causal_gpu(1, 2, 40, 16, True, local=local, chunk=8, emulate=True)
    got = _run(_emulated(func), _causal_args(q, k, v, bias, gate, local), q.shape, "float32")
    assert np.array_equal(got[:, :, :10], np.zeros_like(got[:, :, :10]))
    assert np.all(np.abs(got[:, :, 10:]).sum(-1) > 0)
    want = lam.linear_attention_reference(q, k, v, "angular", True, 8, local, 1.0, bias, gate)
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("local", [False, True])
def test_causal_linear_attention_twin_keeps_the_kernel_signature_and_attributes(local):
    func = la.linear_attention(2, 3, 20, 8, causal=True, chunk=6, local=local, scale=0.5, key_bias=True)
    twin = GPU_KERNELS["linear_attention"](func)
    assert twin is not None and twin.attrs["tirx.is_scheduled"]
    names = ["q", "k", "v", "key_bias"] + (["gate"] if local else []) + ["out"]
    assert [p.name for p in twin.params] == [p.name for p in func.params] == names
    for key in ("kernel", "b", "h", "n", "d", "causal", "chunk", "local", "key_bias", "variant", "scale"):
        assert str(twin.attrs[f"accelc.{key}"]) == str(func.attrs[f"accelc.{key}"]), key


def _decode_steps(lib, q, k, v, dev=None):
    """``q, k, v`` ``[B, H, N, d]`` through the decode kernel token by token from the zero
    state: the outputs ``[B, H, N, d]`` and the final state."""
    b, h, n, d = q.shape
    state = [np.zeros((b, h, d, d), np.float32), np.zeros((b, h, d), np.float32), np.zeros((b, h, d), np.float32),
             np.zeros((b, h), np.float32)]
    dev = dev or tvm.cpu()
    rows = []
    for i in range(n):
        args = [q[:, :, i], k[:, :, i], v[:, :, i], *state]
        outs = [tvm.runtime.tensor(np.zeros(x.shape, np.float32), dev) for x in [q[:, :, i]] + state]
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], *outs)
        out, *state = [o.numpy() for o in outs]
        rows.append(out)
    return np.stack(rows, axis=2), state


def _check_decode(got, state, q, k, v):
    ref_out, ref_state = lam.decode_sequence(q, k, v)
    assert _rel(got, ref_out) <= 1e-5
    assert _rel(got, lam.causal_angular_attention_explicit(q, k, v)) <= 1e-5  # decode = causal prefill
    for g, w in zip(state, ref_state):
        assert _rel(g, w) <= 1e-5


@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 6),
       d=st.sampled_from([1, 3, 16, 19, 32, 40, 64, 80, 130]), seed=st.integers(0, 2**16))
def test_decode_twin_matches_the_reference_step_by_step(b, h, n, d, seed):
    """The decode step from the zero state, token by token: its outputs and its state (S, z,
    sv, sw) against NumPy's ``decode_sequence``, d below, at and above a warp's width and not a
    multiple of the warps."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3))
    got, state = _decode_steps(_emulated(linear_attention_decode_gpu(b, h, d, emulate=True)), q, k, v)
    assert np.all(np.isfinite(got))
    _check_decode(got, state, q, k, v)


def test_decode_twin_keeps_the_kernel_signature_and_attributes():
    func = la.linear_attention_decode(2, 3, 24)
    twin = GPU_KERNELS["linear_attention_decode"](func)
    assert twin.attrs["tirx.is_scheduled"]
    assert [p.name for p in twin.params] == [p.name for p in func.params]
    for key in ("kernel", "b", "h", "d"):
        assert str(twin.attrs[f"accelc.{key}"]) == str(func.attrs[f"accelc.{key}"]), key


def test_decode_twin_declines_partials_wider_than_shared_memory():
    """8 warps' partials of q·S_new: d up to 1536 fits 48 KiB."""
    assert linear_attention_decode_gpu(1, 1, 1536) is not None
    assert GPU_KERNELS["linear_attention_decode"](la.linear_attention_decode(1, 1, 1537)) is None


def test_linear_attention_twin_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        linear_attention_gpu(1, 1, 4, 4, "relu2")


# -- their CUDA C: on a GPU, and run on the host -------------------------------------------------
# Each test below runs the twin as built for CUDA: on a GPU when there is one, and always as
# "emulated-cuda": the CUDA C that nvcc gets, compiled for the host by tests/cuda_emu.py (a
# thread per GPU thread; shared memory, barriers and warp shuffles emulated).
WHERE = [pytest.param("gpu", marks=needs_gpu), "emulated-cuda"]


def _twin(where, func, tmp_path, monkeypatch):
    """(module, device) of the twin ``func`` for ``where``."""
    if where == "gpu":
        return cuda_emu.on_gpu(func, tmp_path, monkeypatch), cuda.device()
    return cuda_emu.Emulated(func), tvm.cpu()


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("kind", ["int_acc", "int", "float"])
@pytest.mark.parametrize("shape", [(1, 70, 45, 2), (37, 70, 45, 2), (128, 256, 96, 3)])
def test_pot_twin_runs_as_cuda(where, kind, shape, tmp_path, monkeypatch):
    func, args, want, dtype = _pot_case(kind, *shape, seed=3)
    twin = GPU_KERNELS["pot_matmul_float" if kind == "float" else "pot_matmul_int"](func)
    lib, dev = _twin(where, twin, tmp_path, monkeypatch)
    _check_pot(kind, _run(lib, args, want.shape, dtype, dev), want)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("shape", [(1, 200, 300, 3, 64), (37, 130, 70, 2, 24), (128, 512, 256, 4, 128)])
def test_bcq_twin_runs_as_cuda(where, shape, tmp_path, monkeypatch):
    x, bq = _bcq_case(*shape, seed=8)
    lib, dev = _twin(where, GPU_KERNELS["bcq_matmul_lut"](sa.bcq_matmul_lut(*shape)), tmp_path, monkeypatch)
    assert _rel(_bcq_twin_output(lib, x, bq, dev), sam.bcq_matmul_ref(x, bq)) <= 1e-6


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("variant", ["angular", "castling"])
@pytest.mark.parametrize("shape", [(1, 3, 197, 64), (2, 2, 37, 19)])
def test_linear_attention_twin_runs_as_cuda(where, variant, shape, tmp_path, monkeypatch):
    b, h, n, d = shape
    q, k, v, bias = _attention_case(np.random.default_rng(4), b, h, n, d, "masked")
    lib, dev = _twin(where, linear_attention_gpu(b, h, n, d, variant, True), tmp_path, monkeypatch)
    got = _run(lib, [q, k, v, bias], q.shape, "float32", dev)
    want = lam.linear_attention_reference(q, k, v, variant, False, 64, False, 1.0, bias, None)
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("local,chunk", [(False, 64), (True, 32), (True, 7)])
@pytest.mark.parametrize("shape", [(1, 3, 197, 64), (2, 2, 37, 19)])
def test_causal_linear_attention_twin_runs_as_cuda(where, local, chunk, shape, tmp_path, monkeypatch):
    b, h, n, d = shape
    rng = np.random.default_rng(5)
    q, k, v, bias = _attention_case(rng, b, h, n, d, "masked")
    gate = rng.random((h, n)).astype(np.float32)
    twin = linear_attention_causal_gpu(b, h, n, d, True, local=local, chunk=chunk, scale=0.125)
    lib, dev = _twin(where, twin, tmp_path, monkeypatch)
    got = _run(lib, _causal_args(q, k, v, bias, gate, local), q.shape, "float32", dev)
    want = lam.linear_attention_reference(q, k, v, "angular", True, chunk, local, 0.125, bias, gate)
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("shape", [(1, 12, 5, 64), (2, 2, 3, 19)])
def test_decode_twin_runs_as_cuda(where, shape, tmp_path, monkeypatch):
    b, h, n, d = shape
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3))
    lib, dev = _twin(where, linear_attention_decode_gpu(b, h, d), tmp_path, monkeypatch)
    got, state = _decode_steps(lib, q, k, v, dev)
    _check_decode(got, state, q, k, v)
