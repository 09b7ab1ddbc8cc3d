"""The shift-add TIR kernels, scheduled by the CPU rule, against the NumPy references:
integer path bit-exact, float paths to 1e-6, and no multiply in the integer inner loop."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.target.codegen import target_has_features
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelc.passes import shift_add_math as sam
from accelc.passes.shift_add import pack_pot_codes
from accelc.schedules import shift_add as kernels
from accelc.schedules.cpu.shift_add import ShiftAddKernels

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIMS = st.integers(1, 9) | st.integers(10, 70)
#: Output widths: whole 32-channel tiles take the CPU rule's psignd form, ragged ones the generic.
NS = st.sampled_from([32, 64, 96]) | DIMS


def _schedule(func, target):
    sch = ShiftAddKernels().apply(func, target, False)
    assert sch is not None, "the CPU rule must take the shift-add kernels"
    return sch.mod


def _build(func, target):
    mod = _schedule(func, target)
    return tvm.tirx.build(mod["main"].with_attr("global_symbol", "main"), target)


def _run(lib, args, out_shape, out_dtype):
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


def _codes(rng, terms, k, n, e_max=14):
    mag = rng.integers(0, int(e_max) + 2, (terms, k, n))
    return (mag * rng.choice([-1, 1], (terms, k, n))).astype(np.int8)


def _int_codes(codes):
    return pack_pot_codes(sam.encode_int_codes(codes), kernels.TILE_N)


#: The host, plus x86 baselines that take the xor-shift sign form (SSE2: no psignd; AVX-512
#: hosts take it too) and the 128-bit psignd (x86-64-v2 has SSSE3); ragged output tiles take
#: the generic form: every form of the int kernel is held bit-exact.
INT_TARGETS = ["host", "x86-64", "x86-64-v2"]


def _target(name, host):
    if name == "host":
        return host
    if not target_has_features(["sse2"], host):
        pytest.skip("not an x86 host")
    return tvm.target.Target({"kind": "llvm", "mcpu": name, "num-cores": 2})


@pytest.mark.parametrize("target_name", INT_TARGETS)
@SETTINGS
@given(m=DIMS, k=DIMS, n=NS, terms=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_int_accumulator_is_bit_exact(cpu_target, target_name, m, k, n, terms, seed):
    rng = np.random.default_rng(seed)
    codes = _codes(rng, terms, k, n, e_max=rng.choice([14, 31]))
    span = rng.choice([2**8, 2**20, 2**30])
    xq = rng.integers(-span, span, (m, k)).astype(np.int32)
    xq.flat[0] = -(2**31)  # the most negative value shifts too
    lib = _build(kernels.pot_matmul_int(m, k, n, terms, 16, 16, dequantize=False),
                 _target(target_name, cpu_target))
    got = _run(lib, [xq, _int_codes(codes)], (m, n), "int32")
    np.testing.assert_array_equal(got, sam.shift_matmul_int_ref(xq, codes))


@SETTINGS
@given(m=DIMS, k=DIMS, n=NS, terms=st.integers(1, 3), frac=st.sampled_from([8, 12, 16]),
       seed=st.integers(0, 2**16))
def test_int_kernel_with_quantization_is_bit_exact(cpu_target, m, k, n, terms, frac, seed):
    """quantize → shift-accumulate → dequantize equals the reference computed step by step
    (the float epilogue is one IEEE multiply per output, so even that is exact)."""
    rng = np.random.default_rng(seed)
    codes = _codes(rng, terms, k, n)
    x = (rng.standard_normal((m, k)) * rng.choice([0.1, 3.0, 300.0])).astype(np.float32)
    out_scale = (rng.random(n) + 0.5).astype(np.float32) * np.float32(2.0 ** -frac)
    lib = _build(kernels.pot_matmul_int(m, k, n, terms, frac, 32 - frac - 4), cpu_target)
    got = _run(lib, [x, _int_codes(codes), out_scale], (m, n), "float32")
    acc = sam.shift_matmul_int_ref(sam.quantize_activations(x, frac, 32 - frac - 4), codes)
    np.testing.assert_array_equal(got, acc.astype(np.float32) * out_scale)


@SETTINGS
@given(m=DIMS, k=DIMS, n=DIMS, terms=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_float_kernel_matches_ldexp_reference(cpu_target, m, k, n, terms, seed):
    rng = np.random.default_rng(seed)
    codes = _codes(rng, terms, k, n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[rng.random((m, k)) < 0.1] = 0.0  # zeros (and the flushed range) contribute nothing
    scale = (rng.random(n) + 0.5).astype(np.float32)
    lib = _build(kernels.pot_matmul_float(m, k, n, terms), cpu_target)
    got = _run(lib, [x, pack_pot_codes(codes, kernels.TILE_N), scale], (m, n), "float32")
    want = sam.shift_matmul_float_ref(x, codes) * scale
    assert np.linalg.norm(got - want) <= 1e-6 * max(np.linalg.norm(want), 1e-30)


@SETTINGS
@given(m=DIMS, k=DIMS, n=DIMS, bits=st.integers(2, 4), groups=st.sampled_from([8, 16, 64, -1]),
       seed=st.integers(0, 2**16))
def test_bcq_lut_kernel_matches_reference(cpu_target, m, k, n, bits, groups, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bq = sam.bcq_quantize(w, bits=bits, group_size=groups, rounds=3)
    x = rng.standard_normal((m, k)).astype(np.float32)
    lib = _build(kernels.bcq_matmul_lut(m, k, n, bits, bq.group_size), cpu_target)
    got = _run(lib, [x, bq.planes, bq.alpha], (m, n), "float32")
    want = sam.bcq_matmul_ref(x, bq)
    assert np.linalg.norm(got - want) <= 1e-6 * max(np.linalg.norm(want), 1e-30)


def _stores(func, block_name):
    """The value expressions stored by one block of a scheduled PrimFunc."""
    from tvm import s_tir

    values = []

    def visit(block):
        if block.name_hint == block_name:
            tvm_ffi.structural_walk(block.body, [(tvm.tirx.BufferStore, lambda s: values.append(s.value))])

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, visit)])
    return values


def _count(expr, node_type) -> int:
    found = []
    tvm_ffi.structural_walk(expr, [(node_type, lambda n: found.append(n))])
    return len(found)


@pytest.mark.parametrize("kind", ["int", "float"])
def test_shift_inner_loop_has_no_multiply(cpu_target, kind):
    """The accumulation (the loop over terms × K) is shifts, xors, subtracts, adds: no Mul,
    and it is vectorized; the generated x86 code uses per-lane variable shifts."""
    func = (kernels.pot_matmul_int(4, 64, 64, 2, 16, 16) if kind == "int"
            else kernels.pot_matmul_float(4, 64, 64, 2))
    mod = _schedule(func, cpu_target)
    values = _stores(mod["main"], "shift_acc_update")
    assert values, "the scheduled kernel lost its accumulation block"
    assert all(_count(v, tvm.tirx.Mul) == 0 for v in values)
    assert _count(values[0], tvm.tirx.Add) >= 1
    if kind == "int":
        assert _count(values[0], tvm.tirx.RShift) >= 1  # the per-lane shift
    loops = []
    tvm_ffi.structural_walk(mod["main"].body, [(tvm.tirx.For, lambda f: loops.append(f))])
    assert any(f.kind == tvm.tirx.ForKind.VECTORIZED for f in loops)
    if kind == "int" and target_has_features(["avx2"], cpu_target):
        asm = tvm.tirx.build(mod["main"].with_attr("global_symbol", "main"), cpu_target).inspect_source("s")
        assert "vpsravd" in asm
        if not target_has_features(["avx512f"], cpu_target):  # the 8-lane loop takes psignd
            assert "vpsignd" in asm


def test_int_codes_encoding():
    codes = np.array([0, 1, -1, 2, -2, 32, -32], np.int8)  # 0, ±2**0, ±2**-1, ±2**-31
    byte = sam.encode_int_codes(codes)
    assert byte.dtype == np.int8
    np.testing.assert_array_equal(byte.view(np.uint8), [0, 0x20, 0x80, 0x21, 0x81, 0x3F, 0x9F])
    assert np.array_equal(np.sign(byte), np.sign(codes))  # psignd reads the sign off the byte
    with pytest.raises(ValueError, match="at most 31"):
        sam.encode_int_codes(np.array([33], np.int8))


def test_bad_kernel_parameters_are_rejected():
    with pytest.raises(ValueError, match="int_bits"):
        kernels.pot_matmul_int(1, 8, 8, 1, 30, 8)
    with pytest.raises(ValueError, match="group_size"):
        kernels.bcq_matmul_lut(1, 8, 8, 2, 12)


@pytest.mark.parametrize("m", [13, 197])
def test_int_kernel_shares_weights_across_ragged_rows(cpu_target, m):
    """Row counts that 2 and 4 do not divide (DeiT's 197 tokens) still share each decoded
    weight vector over 6 rows, the last task short; bit-exact like every other shape."""
    rng = np.random.default_rng(m)
    k, n, terms = 24, 64, 2
    codes = _codes(rng, terms, k, n)
    xq = rng.integers(-2**20, 2**20, (m, k)).astype(np.int32)
    func = kernels.pot_matmul_int(m, k, n, terms, 16, 16, dequantize=False)
    assert "T.unroll(6)" in _schedule(func, cpu_target)["main"].script()
    got = _run(_build(func, cpu_target), [xq, _int_codes(codes)], (m, n), "int32")
    np.testing.assert_array_equal(got, sam.shift_matmul_int_ref(xq, codes))
