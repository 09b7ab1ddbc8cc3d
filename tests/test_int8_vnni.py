"""The AVX-512 VNNI int8 GEMM (``schedules/int8_vnni.py``): bit-exact to NumPy and to the
generic kernel, taken by the CPU rule only on VNNI targets, its weight packed at compile time.
Running it needs a VNNI CPU (skipped elsewhere, with the reason); building it does not."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelc.schedules import int8_vnni
from accelc.schedules.cpu.int8 import Int8MatmulVNNI, has_vnni
from accelc.schedules.cpu.matmul import Matmul
from accelc.schedules.int8 import int8_matmul
from accelc.targets import cpu

HOST = cpu.host_target()
needs_vnni = pytest.mark.skipif(not has_vnni(HOST), reason="this CPU has no AVX-512 VNNI")
VNNI_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})


def _run(func, args, out_shape, out_dtype, target=HOST):
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), target)
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


@needs_vnni
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 40), k=st.integers(1, 150), n=st.integers(1, 100), tile=st.sampled_from([(12, 2), (6, 4), (1, 1)]),
       seed=st.integers(0, 2**16))
def test_vnni_gemm_is_bit_exact(m, k, n, tile, seed):
    """Every padding case (k % 4, n % 16·nj, m % mr), and -128 in both operands."""
    rng = np.random.default_rng(seed)
    xq = rng.integers(-128, 128, (m, k), dtype=np.int8)
    wq = rng.integers(-128, 128, (k, n), dtype=np.int8)
    func = int8_vnni.int8_matmul_vnni(m, k, n, dequantize=False, mr=tile[0], nj=tile[1])
    got = _run(func, [xq, wq], (m, n), "int32")
    np.testing.assert_array_equal(got, xq.astype(np.int64) @ wq.astype(np.int64))


@needs_vnni
def test_vnni_gemm_equals_the_generic_kernel_bit_for_bit():
    """Same epilogue float ops in the same order: the dequantized outputs are identical."""
    from tvm.s_tir import dlight as dl

    rng = np.random.default_rng(3)
    m, k, n = 197, 190, 70
    args = [rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (k, n), dtype=np.int8),
            rng.uniform(0.01, 0.1, m).astype(np.float32), rng.uniform(0.001, 0.01, n).astype(np.float32)]
    with HOST:
        generic = dl.ApplyDefaultSchedule(Matmul())(tvm.IRModule({"main": int8_matmul(m, k, n)}))["main"]
    want = _run(generic, args, (m, n), "float32")
    got = _run(int8_vnni.int8_matmul_vnni(m, k, n), args, (m, n), "float32")
    np.testing.assert_array_equal(got, want)
    ref = (args[0].astype(np.int64) @ args[1].astype(np.int64)).astype(np.float32) * args[2][:, None] * args[3]
    np.testing.assert_array_equal(got, ref)


def test_rule_takes_int8_gemms_on_vnni_targets_only():
    func = int8_matmul(16, 64, 48)
    assert Int8MatmulVNNI().apply(func, tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}), False) is None
    sch = Int8MatmulVNNI().apply(func, VNNI_TARGET, False)
    assert sch is not None and sch.mod["main"].attrs["accelc.kernel"] == "int8_matmul"
    asm = tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"), VNNI_TARGET).inspect_source("asm")
    assert "vpdpbusd" in asm and "gather" not in asm  # VNNI, and no gathered activation loads
    assert Int8MatmulVNNI().apply(int8_matmul(2, int8_vnni.MAX_K + 4, 2), VNNI_TARGET, False) is None
    with pytest.raises(ValueError, match="overflow"):
        int8_vnni.int8_matmul_vnni(2, int8_vnni.MAX_K + 1, 2)


def test_constant_weight_is_packed_at_compile_time():
    """The pack block is split out of the kernel (SplitLayoutRewritePreproc) and folded: the
    compiled kernel reads packed unsigned weights and packs nothing per call."""
    from accelc.benchmarks.bench_gemm import gemm_model
    from accelc.compiler import pipeline
    from accelc.compiler.frontend import import_onnx

    model, _ = gemm_model(64)
    mod = pipeline.apply_passes(import_onnx(model), ["int8"], None)[0]
    with VNNI_TARGET, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(cpu.front_passes(VNNI_TARGET) + cpu.schedule_passes())(mod)
    main = mod["main"].script()
    called = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
              and f.attrs.get("accelc.kernel") == "int8_matmul" and f"R.call_tir({gv.name_hint}," in main]
    assert called == ["int8_matmul1_prepacked"], called  # the pack's call was folded into a constant
    text = mod["int8_matmul1_prepacked"].script()
    assert 'sblock("gemm")' in text and 'sblock("pack")' not in text


@needs_vnni
def test_int8_model_on_vnni_matches_the_generic_build():
    """End to end: the GEMM model rewritten to int8 gives the same bits with and without VNNI."""
    import accelc
    from accelc.benchmarks.bench_gemm import gemm_model

    model, w = gemm_model(96)
    a = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32)
    fast = accelc.compile(model, passes=["int8"]).run({"a": a})["c"]
    slow = accelc.compile(model, passes=["int8"], target_options={"mcpu": "haswell"}).run({"a": a})["c"]
    np.testing.assert_array_equal(fast, slow)
    assert np.linalg.norm(fast - a @ w) / np.linalg.norm(a @ w) < 2e-2
