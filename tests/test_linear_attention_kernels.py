"""Linear-attention kernels (``accelc.schedules.attention_linear``), scheduled by the CPU rule,
against the explicit N×N NumPy references of ``accelc.passes.linear_attention_math``; the
linear NumPy forms against the explicit ones; decode against causal prefill."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelc.passes import linear_attention_math as lam
from accelc.schedules import attention_linear as kernels
from accelc.schedules.cpu.attention_linear import LinearAttentionKernels

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: (variant, causal, local): every kernel form.
FORMS = [("angular", False, False), ("castling", False, False), ("angular", True, False),
         ("angular", False, True), ("angular", True, True)]
TOL = 1e-5


def _rel(got, want) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _build(func, target):
    sch = LinearAttentionKernels().apply(func, target, False)
    assert sch is not None, "the CPU rule must take the linear-attention kernels"
    return tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"), target)


def _run(lib, args, outs):
    bufs = [tvm.runtime.tensor(np.zeros(shape, np.float32)) for shape in outs]
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], *bufs)
    return [b.numpy() for b in bufs]


def _key_bias(rng, b, n, mode):
    """None, a soft bias, or a padding-like mask: −1e9 on random keys (random mode) or on a
    right-padded tail (tail mode). Masked keys get weight exactly 0, so whole windows or far
    sets can be empty: that part then drops out (``linear_attention_math``)."""
    if mode == "none":
        return None
    bias = rng.uniform(-2.0, 2.0, (b, n)).astype(np.float32)
    if mode == "random":
        bias[rng.random((b, n)) < 0.4] = -1e9
    elif mode == "tail":
        for row in bias:
            row[rng.integers(1, n + 1):] = -1e9
    return bias


@pytest.mark.parametrize("variant,causal,local", FORMS)
@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 40), d=st.integers(2, 19),
       chunk=st.integers(1, 12) | st.sampled_from([16, 64]),
       bias_mode=st.sampled_from(["none", "soft", "random", "tail"]),
       seed=st.integers(0, 2**16))
def test_kernel_matches_explicit_reference(cpu_target, variant, causal, local, b, h, n, d, chunk, bias_mode, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3))
    bias = _key_bias(rng, b, n, bias_mode)
    gate = rng.random((h, n)).astype(np.float32)
    scale = float(d) ** -0.5
    func = kernels.linear_attention(b, h, n, d, variant, causal, chunk, local, scale, key_bias=bias is not None)
    args = [q, k, v] + ([bias] if bias is not None else []) + ([gate] if local else [])
    (got,) = _run(_build(func, cpu_target), args, [(b, h, n, d)])
    want = lam.linear_attention_reference(q, k, v, variant, causal, chunk, local, scale, bias, gate)
    assert np.all(np.isfinite(got))
    assert _rel(got, want) <= TOL


def test_larger_shapes_with_full_vectors(cpu_target):
    """d and the chunk multiples of the vector width (the register-tiled paths), several
    chunks and a ragged last one."""
    rng = np.random.default_rng(7)
    b, h, n, d, chunk = 1, 2, 150, 32, 32
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3))
    bias = _key_bias(rng, b, n, "random")
    gate = np.linspace(0.1, 0.9, h * n).reshape(h, n).astype(np.float32)
    for variant, causal, local in FORMS:
        func = kernels.linear_attention(b, h, n, d, variant, causal, chunk, local, 0.2, key_bias=True)
        args = [q, k, v, bias] + ([gate] if local else [])
        (got,) = _run(_build(func, cpu_target), args, [(b, h, n, d)])
        want = lam.linear_attention_reference(q, k, v, variant, causal, chunk, local, 0.2, bias, gate)
        assert _rel(got, want) <= TOL, (variant, causal, local)


@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 30), d=st.integers(1, 12),
       chunk=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_linear_forms_equal_explicit_forms(b, h, n, d, chunk, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, h, n, d)) for _ in range(3))
    bias = _key_bias(rng, b, n, rng.choice(["none", "soft", "random"]))
    gate = rng.random((h, n))
    for variant, causal, local in FORMS:
        lin = lam.linear_attention_reference(q, k, v, variant, causal, chunk, local, 0.5, bias, gate, form="linear")
        exp = lam.linear_attention_reference(q, k, v, variant, causal, chunk, local, 0.5, bias, gate)
        assert _rel(lin, exp) <= 1e-10, (variant, causal, local)


def test_fully_masked_far_set_falls_back_to_local():
    """A key_bias that masks every key outside the first chunk: o = o_loc there, exactly."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 12, 4)) for _ in range(3))
    bias = np.zeros((1, 12))
    bias[:, 4:] = -1e9
    gate = np.repeat([[0.25], [0.75]], 12, axis=1)
    for causal in (False, True):
        got = lam.local_angular_attention_chunked(q, k, v, gate, 4, 1.0, bias, causal)
        want = lam.local_angular_attention_explicit(q, k, v, np.ones((2, 12)), 4, 1.0, bias, causal)
        np.testing.assert_allclose(got[:, :, :4], want[:, :, :4], rtol=1e-12, atol=1e-12)


def test_local_with_one_window_is_softmax():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 2, 9, 5)) for _ in range(3))
    for causal in (False, True):
        got = lam.local_angular_attention_explicit(q, k, v, np.full((2, 9), 0.4), 16, 0.3, None, causal)
        np.testing.assert_allclose(got, lam.softmax_attention(q, k, v, 0.3, None, causal), rtol=1e-12)


@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 12), d=st.integers(1, 17),
       seed=st.integers(0, 2**16))
def test_decode_kernel_loop_equals_causal_prefill(cpu_target, b, h, n, d, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3))
    lib = _build(kernels.linear_attention_decode(b, h, d), cpu_target)
    state = [np.zeros((b, h, d, d), np.float32), np.zeros((b, h, d), np.float32),
             np.zeros((b, h, d), np.float32), np.zeros((b, h), np.float32)]
    shapes = [(b, h, d), (b, h, d, d), (b, h, d), (b, h, d), (b, h)]
    rows = []
    for i in range(n):
        out, *state = _run(lib, [q[:, :, i], k[:, :, i], v[:, :, i], *state], shapes)
        rows.append(out)
    got = np.stack(rows, axis=2)
    assert _rel(got, lam.causal_angular_attention_explicit(q, k, v)) <= TOL
    ref_out, ref_state = lam.decode_sequence(q, k, v)
    assert _rel(got, ref_out) <= TOL
    for g, w in zip(state, ref_state):
        assert _rel(g, w) <= TOL


def test_decode_reference_equals_prefill():
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((2, 3, 11, 6)) for _ in range(3))
    out, _ = lam.decode_sequence(q, k, v)
    np.testing.assert_allclose(out, lam.causal_angular_attention_chunked(q, k, v, 4), rtol=1e-10, atol=1e-12)


def test_kernel_tags_and_params():
    func = kernels.linear_attention(2, 3, 20, 8, "angular", True, 16, True, 0.5, key_bias=True)
    assert kernels.kernel_name(func) == "linear_attention"
    assert [p.name for p in func.params] == ["q", "k", "v", "key_bias", "gate", "out"]
    assert str(func.attrs["accelc.variant"]) == "angular"
    assert kernels.kernel_param(func, "chunk") == 16 and kernels.kernel_param(func, "local") == 1
    assert float(func.attrs["accelc.scale"]) == 0.5
    plain = kernels.linear_attention(1, 1, 8, 4, "castling")
    assert [p.name for p in plain.params] == ["q", "k", "v", "out"]
    dec = kernels.linear_attention_decode(1, 2, 4)
    assert kernels.kernel_name(dec) == "linear_attention_decode"
    assert [p.name for p in dec.params] == ["q", "k", "v", "S", "z", "sv", "sw", "out", "S_new", "z_new",
                                           "sv_new", "sw_new"]


def test_rule_declines_other_functions(cpu_target):
    from accelc.schedules import shift_add

    assert LinearAttentionKernels().apply(shift_add.pot_matmul_float(2, 8, 8, 1), cpu_target, False) is None


def test_mac_counts():
    assert lam.softmax_attention_macs(197, 64) == 2 * 197 * 197 * 64
    lin = lam.linear_attention_macs(2048, 64)
    assert lin == 2 * 2048 * 64 * 64 + 2 * 2048 * 64
    assert lin < lam.softmax_attention_macs(2048, 64) / 10
    assert lam.linear_attention_macs(2048, 64, causal=True, chunk=64) > lin
    assert lam.linear_attention_macs(512, 64, "castling") == 2 * 512 * 64 * 64 + 512 * 64


@pytest.mark.parametrize("kwargs,param", [
    ({"variant": "relu2"}, "variant"),
    ({"variant": "castling", "causal": True}, "causal"),
    ({"variant": "castling", "local": True}, "local"),
    ({"chunk": 0}, "chunk"),
    ({"chunk": 2.5}, "chunk"),
    ({"scale": float("nan")}, "scale"),
])
def test_bad_parameters_raise(kwargs, param):
    with pytest.raises(ValueError, match=param):
        kernels.linear_attention(1, 2, 8, 4, **kwargs)
    if param in ("variant", "chunk"):
        q = np.zeros((1, 1, 4, 2))
        with pytest.raises(ValueError, match=param):
            lam.linear_attention_reference(q, q, q, **{k: v for k, v in kwargs.items() if k != "scale"})


@pytest.mark.parametrize("dim", ["b", "h", "n", "d"])
def test_bad_dims_raise(dim):
    dims = {"b": 1, "h": 1, "n": 4, "d": 4, dim: 0}
    with pytest.raises(ValueError, match=dim):
        kernels.linear_attention(**dims)
    if dim != "n":
        with pytest.raises(ValueError, match=dim):
            kernels.linear_attention_decode(**{k: v for k, v in {**dims}.items() if k != "n"})


def test_reference_rejects_bad_shapes():
    q = np.zeros((1, 2, 4, 3))
    with pytest.raises(ValueError, match="key_bias"):
        lam.angular_attention_linear(q, q, q, key_bias=np.zeros((1, 5)))
    with pytest.raises(ValueError, match="gate"):
        lam.local_angular_attention_chunked(q, q, q, np.zeros(3), 2)
    with pytest.raises(ValueError, match="q, k, v"):
        lam.angular_attention_explicit(q, q[:, :, :3], q)
