"""Numerics of the shift-add rewrite (accelc.passes.shift_add_math): PoT/APoT and BCQ."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from accelc.passes import shift_add_math as sam

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def out_metrics(x, w_ref, w_q):
    """(cosine, relative L2) of x @ w_ref vs x @ w_q."""
    a = x @ np.asarray(w_ref, dtype=np.float64)
    b = x @ np.asarray(w_q, dtype=np.float64)
    cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return cos, float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.fixture(scope="module")
def gauss():
    rng = np.random.default_rng(1234)
    w = rng.normal(0.0, 0.02, (512, 512)).astype(np.float32)
    x = rng.normal(size=(64, 512))
    return w, x


# ---------------------------------------------------------------------------------------------
# PoT / APoT


@pytest.mark.parametrize("terms", [1, 2, 3])
@pytest.mark.parametrize("weight_bits", [2, 3, 5, 8])
@pytest.mark.parametrize("scale", ["none", "pot", "float"])
def test_pot_dequantize_is_documented_formula(terms, weight_bits, scale):
    rng = np.random.default_rng(terms * 100 + weight_bits)
    w = rng.normal(0, 0.3, (13, 7)) * rng.choice([0, 1], size=(13, 7), p=[0.1, 0.9])
    pw = sam.pot_decompose(w, terms=terms, weight_bits=weight_bits, scale=scale)
    e_max = 2 ** (weight_bits - 1) - 2
    assert pw.codes.dtype == np.int8 and pw.codes.shape == (terms, 13, 7)
    assert pw.scale.dtype == np.float32 and pw.scale.shape == (7,)
    assert pw.weight_bits == weight_bits
    assert np.abs(pw.codes.astype(int)).max() <= e_max + 1  # fits sign + (weight_bits-1) bits
    expect = np.zeros((13, 7))
    for t, k, n in np.ndindex(pw.codes.shape):
        c = int(pw.codes[t, k, n])
        if c:
            expect[k, n] += (1 if c > 0 else -1) * 2.0 ** -(abs(c) - 1)
    expect *= pw.scale.astype(np.float64)
    np.testing.assert_array_equal(pw.dequantize(), expect.astype(np.float32))
    assert pw.dequantize().dtype == np.float32


def test_pot_single_term_hand_values():
    # scale "none": p = clip(round(log2|w|), -14, 0), zero below 2**-15.
    w = np.array([[1.0, 0.3, 2.0**-14, 0.99 * 2.0**-15, 0.0, -0.75, 5.0, -(2.0**-15) * 1.01]]).T
    pw = sam.pot_decompose(w, terms=1, weight_bits=5, scale="none")
    assert pw.codes[0, :, 0].tolist() == [1, 3, 15, 0, 0, -1, 1, -15]
    np.testing.assert_array_equal(pw.scale, [1.0])


def test_pot_greedy_residual_terms():
    w = np.array([[0.3], [-0.7]])
    pw = sam.pot_decompose(w, terms=3, weight_bits=5, scale="none")
    # 0.3 -> 0.25, residual 0.05 -> 2**-4, residual -0.0125 -> -2**-6
    assert pw.codes[:, 0, 0].tolist() == [3, 5, -7]
    assert pw.dequantize()[0, 0] == np.float32(0.25 + 0.0625 - 0.015625)
    # -0.7 -> -0.5 (log2 0.7 = -0.51 rounds to -1), residual -0.2 -> -0.25, residual 0.05 -> 2**-4
    assert pw.codes[:, 1, 0].tolist() == [-2, -3, 5]


def test_pot_scale_modes():
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.05, (32, 6))
    w[:, 2] = 0.0  # all-zero column -> scale 1
    w[:, 3] *= 100.0
    amax = np.abs(w).max(axis=0)
    pot = sam.pot_decompose(w, scale="pot").scale
    flt = sam.pot_decompose(w, scale="float").scale
    none = sam.pot_decompose(w, scale="none").scale
    np.testing.assert_array_equal(none, np.ones(6, np.float32))
    assert pot[2] == 1.0 and flt[2] == 1.0
    live = amax > 0
    assert np.all(np.log2(pot) == np.round(np.log2(pot)))  # a shift
    assert np.all(pot[live] >= amax[live]) and np.all(pot[live] < 2 * amax[live])
    np.testing.assert_array_equal(flt[live], amax[live].astype(np.float32))
    # A column with large weights: without a scale every |w| >= 1 saturates at 2**0.
    big = sam.pot_decompose(w, scale="none").dequantize()[:, 3]
    large = np.abs(w[:, 3]) >= 1
    assert large.sum() > 10 and np.all(np.abs(big[large]) == 1.0)
    scaled = sam.pot_decompose(w, scale="pot").dequantize()[:, 3]
    assert np.max(np.abs(scaled - w[:, 3]) / np.abs(w[:, 3])) < 0.5


def test_pot_zero_and_tiny_weights_no_warnings():
    w = np.zeros((4, 3))
    w[0, 0] = 1e-30
    with np.errstate(all="raise"):
        for scale in ("none", "pot", "float"):
            pw = sam.pot_decompose(w, terms=3, scale=scale)
            assert np.all(np.isfinite(pw.dequantize()))
    assert not np.any(sam.pot_decompose(w, scale="none").codes)


@pytest.mark.parametrize("terms,min_cos", [(1, 0.975), (2, 0.999), (3, 0.9999)])
def test_pot_fidelity_gaussian(gauss, terms, min_cos):
    w, x = gauss
    cos, rel = out_metrics(x, w, sam.pot_decompose(w, terms=terms).dequantize())
    assert cos >= min_cos
    if terms == 1:
        assert 0.15 <= rel <= 0.25
    if terms == 3:
        assert rel < 0.02


def test_pot_weight_bytes():
    pw = sam.pot_decompose(np.ones((10, 6)), terms=2)
    assert sam.pot_weight_bytes(pw) == 2 * 10 * 6 + 4 * 6


# ---------------------------------------------------------------------------------------------
# fixed-point activations and the shift-matmul references


def test_quantize_activations_values():
    x = np.array([1.5, -1.5, 2.0**-17, -(2.0**-17), np.nan, 1e10, -1e10, np.inf, -np.inf, 0.0])
    q = sam.quantize_activations(x, frac_bits=16, int_bits=16)
    assert q.dtype == np.int32
    assert q.tolist() == [98304, -98304, 0, -1, 0, INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN, 0]
    q8 = sam.quantize_activations(np.array([1000.0, -1000.0, 0.5, -0.0039]), frac_bits=8, int_bits=8)
    assert q8.tolist() == [2**15 - 1, -(2**15), 128, -1]
    # float32 input: exact, no double rounding
    v = np.float32(1.0 + 2.0**-20)
    assert sam.quantize_activations(np.array([v]), frac_bits=20, int_bits=12)[0] == 2**20 + 1


def brute_shift_matmul(xq, codes):
    t_count, k_count, n_count = codes.shape
    out = np.zeros((xq.shape[0], n_count), dtype=np.int32)
    for m in range(xq.shape[0]):
        for n in range(n_count):
            total = 0
            for t in range(t_count):
                for k in range(k_count):
                    c = int(codes[t, k, n])
                    if c:
                        total += (1 if c > 0 else -1) * (int(xq[m, k]) >> (abs(c) - 1))
            out[m, n] = (total + 2**31) % 2**32 - 2**31
    return out


_edge_ints = st.sampled_from([INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, -1, 0, 1, -(2**30), 2**30])


@st.composite
def shift_case(draw):
    m, k, n = (draw(st.integers(1, 9)) for _ in range(3))
    terms = draw(st.integers(1, 3))
    wb = draw(st.integers(2, 8))
    c_max = 2 ** (wb - 1) - 1
    xq = draw(hnp.arrays(np.int32, (m, k), elements=st.one_of(st.integers(INT32_MIN, INT32_MAX), _edge_ints,
                                                                st.integers(-300, 300))))
    codes = draw(hnp.arrays(np.int8, (terms, k, n), elements=st.integers(-c_max, c_max)))
    return xq, codes


@settings(max_examples=150, deadline=None)
@given(shift_case())
def test_shift_matmul_int_ref_bit_exact(case):
    xq, codes = case
    got = sam.shift_matmul_int_ref(xq, codes)
    assert got.dtype == np.int32 and got.shape == (xq.shape[0], codes.shape[2])
    np.testing.assert_array_equal(got, brute_shift_matmul(xq, codes))


def test_shift_matmul_int_ref_wraps_like_int32():
    xq = np.full((2, 4), INT32_MAX, dtype=np.int32)
    xq[1] = INT32_MIN
    codes = np.ones((1, 4, 3), dtype=np.int8)
    codes[0, :, 1] = -1
    codes[0, :, 2] = 3  # >> 2
    got = sam.shift_matmul_int_ref(xq, codes)
    wrap = lambda v: (v + 2**31) % 2**32 - 2**31  # noqa: E731
    assert got[0].tolist() == [wrap(4 * INT32_MAX), wrap(-4 * INT32_MAX), wrap(4 * (INT32_MAX >> 2))]
    assert got[1].tolist() == [0, 0, wrap(4 * (INT32_MIN >> 2))]  # 4 * -2**31 wraps to 0
    # Shifts beyond 31 (weight_bits = 8 allows e up to 126) are arithmetic: 0 or -1.
    big = np.array([[[127]]], dtype=np.int8)
    assert sam.shift_matmul_int_ref(np.array([[-5], [5]], np.int32), big).tolist() == [[-1], [0]]


@pytest.mark.parametrize("frac_bits", [16, 12, 8])
@pytest.mark.parametrize("terms", [1, 2, 3])
def test_shift_matmul_int_round_trip(frac_bits, terms):
    rng = np.random.default_rng(frac_bits + terms)
    k = 48
    w = rng.uniform(-1, 1, (k, 10))
    codes = sam.pot_decompose(w, terms=terms, weight_bits=5, scale="none").codes
    x = rng.normal(0, 4.0, (7, k))
    got = sam.shift_matmul_int_ref(sam.quantize_activations(x, frac_bits, 16), codes) / 2.0**frac_bits
    want = x @ sam._codes_value(codes)
    err = np.abs(got - want)
    assert err.max() <= k * terms * 2.0**-frac_bits
    assert err.max() > 0  # the check above is not vacuous: floor() does lose bits


def test_shift_matmul_float_ref_matches_dequantize():
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.1, (64, 24))
    x = rng.normal(size=(9, 64)).astype(np.float32)
    for terms in (1, 2, 3):
        pw = sam.pot_decompose(w, terms=terms, scale="none")
        got = sam.shift_matmul_float_ref(x, pw.codes)
        want = x.astype(np.float64) @ pw.dequantize().astype(np.float64)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_shift_matmul_float_ref_flushes_tiny_inputs():
    codes = np.array([[[1]], [[3]]], dtype=np.int8)  # 1 + 2**-2
    x = np.array([[2.0**-113], [2.0**-112], [-3.0]])
    np.testing.assert_array_equal(sam.shift_matmul_float_ref(x, codes)[:, 0], [0.0, 1.25 * 2.0**-112, -3.75])


# ---------------------------------------------------------------------------------------------
# BCQ


def test_apot_round_values():
    np.testing.assert_array_equal(sam.apot_round([0.3, -0.3, 0.0, 1.5], 1), [0.25, -0.25, 0.0, 2.0])
    np.testing.assert_array_equal(sam.apot_round([0.3, -0.3, 0.0], 2), [0.3125, -0.3125, 0.0])
    np.testing.assert_array_equal(sam.apot_round([0.3], 3), [0.296875])
    assert sam.apot_round([2.0**-60], 1)[0] == 2.0**-40  # exponent clip
    assert sam.apot_round([2.0**60], 1)[0] == 2.0**40


def test_bcq_hand_built_layout():
    # bits=2, K=10 (Kp=16), N=2, group_size=8 -> G=2
    planes = np.zeros((2, 2, 2), dtype=np.uint8)
    planes[0, 0, 1] = 0b00100000  # B_0[5, 1] = +1, all others -1
    planes[1, 1, 1] = 0b00000010  # B_1[9, 1] = +1 (row 8*1 + 1)
    alpha = np.zeros((2, 2, 2), dtype=np.float32)
    alpha[:, 0, 1] = [0.5, 0.125]
    alpha[:, 1, 1] = [0.25, 0.0625]
    b = sam.BcqWeights(planes=planes, alpha=alpha, k=10, group_size=8)
    d = b.dequantize()
    assert d.shape == (10, 2) and d.dtype == np.float32
    assert d[5, 1] == 0.5 - 0.125
    assert d[4, 1] == -0.5 - 0.125
    assert d[9, 1] == -0.25 + 0.0625
    assert d[8, 1] == -0.25 - 0.0625
    assert np.all(d[:, 0] == 0)
    assert sam.bcq_weight_bytes(b) == 8 + 8 * 2


@pytest.mark.parametrize("k,group_size,expect_gs", [(37, 16, 16), (37, -1, 40), (40, 0, 40), (64, 128, 128)])
def test_bcq_layout_padding_and_groups(k, group_size, expect_gs):
    rng = np.random.default_rng(k)
    w = rng.normal(size=(k, 5))
    b = sam.bcq_quantize(w, bits=3, group_size=group_size, rounds=5)
    kp = -(-k // 8) * 8
    assert b.k == k and b.group_size == expect_gs
    assert b.planes.dtype == np.uint8 and b.planes.shape == (3, kp // 8, 5)
    assert b.alpha.dtype == np.float32 and b.alpha.shape == (3, -(-k // expect_gs), 5)
    bits = np.unpackbits(b.planes, axis=1, bitorder="little")  # [3, Kp, N], bit j <-> row 8g+j
    assert not np.any(bits[:, k:])  # padding rows are 0
    manual = np.zeros((k, 5))
    for i in range(3):
        for kk in range(k):
            manual[kk] += b.alpha[i, kk // expect_gs].astype(np.float64) * np.where(bits[i, kk], 1.0, -1.0)
    np.testing.assert_array_equal(b.dequantize(), manual.astype(np.float32))


@pytest.mark.parametrize("apot_terms", [1, 2, 3])
def test_bcq_alpha_is_apot(apot_terms):
    rng = np.random.default_rng(apot_terms)
    w = rng.standard_t(4, size=(96, 40)) * 0.03
    for hessian in (None, np.eye(96) * 2.0):
        b = sam.bcq_quantize(w, bits=3, group_size=32, apot_terms=apot_terms, rounds=10, hessian=hessian)
        a = b.alpha.astype(np.float64)
        np.testing.assert_array_equal(sam.apot_round(a, apot_terms), a)
        if apot_terms == 1:
            assert np.all(np.log2(np.abs(a[a != 0])) % 1 == 0)  # single powers of two
    # apot_terms=0 keeps float scales: generically not powers of two
    a0 = sam.bcq_quantize(w, bits=3, group_size=32, apot_terms=0, rounds=10).alpha
    assert np.mean(np.log2(np.abs(a0[a0 != 0])) % 1 == 0) < 0.1


def test_bcq_fidelity_increases_with_bits(gauss):
    w, x = gauss
    cos = {}
    for bits, min_cos in ((2, 0.93), (3, 0.975), (4, 0.99)):
        cos[bits], _ = out_metrics(x, w, sam.bcq_quantize(w, bits=bits, group_size=128).dequantize())
        assert cos[bits] >= min_cos, (bits, cos[bits])
    assert cos[2] < cos[3] < cos[4]


def test_bcq_refinement_beats_greedy_init():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.02, (256, 64))
    err = {r: np.linalg.norm(w - sam.bcq_quantize(w, bits=3, rounds=r).dequantize()) for r in (0, 50)}
    assert err[50] < 0.95 * err[0]


def _correlated(rng, k):
    """A mixing L with decaying spectrum: X = Z @ L has strongly correlated features."""
    a = rng.normal(size=(k, k)) / np.sqrt(k)
    b = rng.normal(size=(k, k)) / np.sqrt(k)
    return a @ np.diag(np.exp(-np.arange(k) / 40.0)) @ b


@pytest.fixture(scope="module")
def calib():
    rng = np.random.default_rng(11)
    k, n = 256, 96
    mix = _correlated(rng, k)
    x_cal = rng.normal(size=(256, k)) @ mix
    x_test = rng.normal(size=(512, k)) @ mix
    w = rng.normal(0, 0.02, (k, n)).astype(np.float32)
    return w, x_cal, x_test


@pytest.mark.parametrize("bits", [2, 3])
def test_bcq_hessian_lowers_output_error(calib, bits):
    w, x_cal, x_test = calib
    h = 2.0 * x_cal.T @ x_cal / x_cal.shape[0]
    plain = sam.bcq_quantize(w, bits=bits, group_size=128).dequantize()
    gptq = sam.bcq_quantize(w, bits=bits, group_size=128, hessian=h).dequantize()
    _, e_plain = out_metrics(x_test, w, plain)
    _, e_gptq = out_metrics(x_test, w, gptq)
    assert e_gptq < 0.8 * e_plain, (e_plain, e_gptq)


def _textbook_gptq(w, h, bcq, percdamp, pats):
    """GPTQ as written in the paper (U = upper-Cholesky(H^-1), eager updates), reusing bcq's alphas."""
    w = np.array(w, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h += percdamp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    alpha = bcq.alpha.astype(np.float64)
    q_out = np.zeros_like(w)
    for k in range(w.shape[0]):
        cw = alpha[:, k // bcq.group_size, :].T @ pats.T  # [N, 2**bits]
        q = cw[np.arange(w.shape[1]), np.argmin(np.abs(w[k][:, None] - cw), axis=1)]
        q_out[k] = q
        err = (w[k] - q) / u[k, k]
        w[k + 1 :] -= np.outer(u[k, k + 1 :], err)
    return q_out


@pytest.mark.parametrize("blocksize,group_size", [(128, 32), (16, 40), (7, -1)])
def test_bcq_hessian_matches_textbook_gptq(blocksize, group_size):
    rng = np.random.default_rng(blocksize)
    k, n = 80, 24
    x = rng.normal(size=(200, k)) @ _correlated(rng, k)
    x[:, 5] = 0.0  # a dead input
    h = 2.0 * x.T @ x / len(x)
    w = rng.normal(0, 0.02, (k, n))
    b = sam.bcq_quantize(w, bits=3, group_size=group_size, hessian=h, blocksize=blocksize)
    q_ref = _textbook_gptq(w, h, b, 0.01, sam._patterns(3))
    deq, q_ref = b.dequantize(), q_ref.astype(np.float32)
    live = np.arange(k) != 5
    # Same codeword everywhere (a rare rounding-level flip near a midpoint is tolerated).
    assert np.mean(deq[live] == q_ref[live]) > 0.998
    # The dead row is all zeros, exactly between the two smallest codewords: either is right.
    np.testing.assert_array_equal(np.abs(deq[5]), np.abs(q_ref[5]))


@pytest.mark.parametrize("k,group_size", [(64, 32), (37, -1), (45, 16), (24, 0)])
def test_bcq_lut_form_equals_reference(k, group_size):
    rng = np.random.default_rng(k)
    w = rng.normal(0, 0.05, (k, 6))
    x = rng.normal(size=(3, k)).astype(np.float32)
    for bits in (2, 4):
        b = sam.bcq_quantize(w, bits=bits, group_size=group_size, rounds=10)
        ref = sam.bcq_matmul_ref(x, b)
        np.testing.assert_allclose(ref, x.astype(np.float64) @ b.dequantize().astype(np.float64), rtol=1e-12)
        lut_y = sam.bcq_matmul_lut_ref(x, b)
        np.testing.assert_allclose(lut_y, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    lut = sam.lut8_tables(x)
    kp = -(-k // 8) * 8
    assert lut.shape == (3, kp // 8, 256) and lut.dtype == np.float32
    last = kp // 8 - 1
    idx = 0b10100101
    xs = np.zeros(kp, np.float64)
    xs[:k] = x[1]
    want = sum((1 if idx >> j & 1 else -1) * xs[8 * last + j] for j in range(8))
    assert lut[1, last, idx] == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_bcq_zero_and_constant_groups():
    w = np.zeros((32, 3))
    w[:, 1] = 0.5
    b = sam.bcq_quantize(w, bits=2, group_size=16)
    d = b.dequantize()
    assert np.all(np.isfinite(d))
    np.testing.assert_array_equal(d[:, 0], 0.0)
    np.testing.assert_allclose(d[:, 1], 0.5, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# knobs


@pytest.mark.parametrize("call,knob", [
    (lambda w: sam.pot_decompose(w, terms=0), "terms"),
    (lambda w: sam.pot_decompose(w, terms=4), "terms"),
    (lambda w: sam.pot_decompose(w, weight_bits=9), "weight_bits"),
    (lambda w: sam.pot_decompose(w, weight_bits=1), "weight_bits"),
    (lambda w: sam.pot_decompose(w, scale="tensor"), "scale"),
    (lambda w: sam.bcq_quantize(w, bits=9), "bits"),
    (lambda w: sam.bcq_quantize(w, bits=1), "bits"),
    (lambda w: sam.bcq_quantize(w, group_size=12), "group_size"),
    (lambda w: sam.bcq_quantize(w, group_size=-8), "group_size"),
    (lambda w: sam.bcq_quantize(w, apot_terms=4), "apot_terms"),
    (lambda w: sam.bcq_quantize(w, rounds=-1), "rounds"),
    (lambda w: sam.bcq_quantize(w, hessian=np.eye(3)), "hessian"),
    (lambda w: sam.quantize_activations(w, frac_bits=20, int_bits=20), "int_bits + frac_bits"),
])
def test_bad_knobs_raise_naming_the_knob(call, knob):
    w = np.ones((16, 4))
    with pytest.raises(ValueError, match=knob.replace("+", r"\+")):
        call(w)


def test_terms_message_exact():
    with pytest.raises(ValueError, match=r"^terms must be 1, 2 or 3, got 0$"):
        sam.pot_decompose(np.ones((2, 2)), terms=0)
