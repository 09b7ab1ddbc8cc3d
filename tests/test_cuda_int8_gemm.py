"""int8 GEMMs on CUDA with ``__dp4a`` (``schedules/cuda/int8_gemm.py``).

CI has no GPU: the CUDA C that TVM generates for the kernel runs on the host under
``tests/cuda_emu.py`` (a thread per GPU thread, shared memory and barriers emulated) and must
match NumPy bit for bit; nvcc compiles the same source in ``tests/test_cuda_compile.py``.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import tvm
from tvm import relax

from accelc.schedules import int8 as i8
from accelc.schedules.cuda import Matmul, int8_gemm
from accelc.targets import cuda

from . import cuda_emu

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler to emulate CUDA with")
needs_gpu = pytest.mark.skipif(cuda.local_arch() is None, reason="no CUDA device on this machine")


def _cuda(sch) -> tuple[str, tuple, tuple]:
    """The CUDA C (sm_90) of a scheduled GEMM and its launch extents."""
    return cuda_emu.kernel(sch.mod["main"].with_attr("tirx.is_scheduled", True))


def _relax_matmul(shape_a, shape_b):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape_a, "int8"))
    w = relax.Var("w", relax.TensorType(shape_b, "int8"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.matmul(x, w, out_dtype="int32")))
        bb.emit_func_output(y)
    mod = relax.transform.LegalizeOps()(bb.get())
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    return func


@pytest.mark.parametrize("m,k,n,dequantize", [
    (197, 192, 576, True),  # DeiT-tiny's qkv layer: ragged rows, whole K tiles
    (20, 147, 40, False),   # K = 147 (a 7×7×3 im2col): not whole words, copied a byte at a time
    (65, 36, 100, False),   # one row and a few columns past a tile; K not a whole 32-deep slice
    (16, 64, 48, True),     # smaller than one tile
])
def test_dp4a_gemm_matches_numpy_bit_exactly(m, k, n, dequantize):
    target = cuda.target("sm_90")
    sch = int8_gemm.schedule(i8.int8_matmul(m, k, n, dequantize=dequantize), target)
    assert sch is not None
    src, grid, block = _cuda(sch)
    assert "__dp4a(" in src.split('extern "C" __global__')[-1]
    rng = np.random.default_rng(m * k + n)
    xq = rng.integers(-128, 128, (m, k), dtype=np.int8)
    wq = rng.integers(-128, 128, (k, n), dtype=np.int8)
    acc = (xq.astype(np.int64) @ wq.astype(np.int64)).astype(np.int32)
    bufs = {"xq": xq, "wq": wq}
    if dequantize:
        sx, sw = rng.random(m, dtype=np.float32), rng.random(n, dtype=np.float32)
        out = np.full((m, n), np.nan, np.float32)
        bufs.update(x_scale=sx, w_scale=sw, dequant=out)
        ref = acc.astype(np.float32) * sx[:, None] * sw[None, :]
    else:
        out = np.full((m, n), -1, np.int32)
        bufs["acc"] = out
        ref = acc
    cuda_emu.run(src, grid, block, bufs)
    np.testing.assert_array_equal(out, ref)


def test_dp4a_batched_matmul_from_relax_matches_numpy():
    """A Relax ``matmul`` of int8 tensors with an int32 result (legalized by TVM, batch dim 2)."""
    func = _relax_matmul((2, 33, 64), (2, 64, 40))
    target = cuda.target("sm_90")
    sch = Matmul().apply(func, target, False)
    src, grid, block = _cuda(sch)
    assert "__dp4a(" in src
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (2, 33, 64), dtype=np.int8)
    w = rng.integers(-128, 128, (2, 64, 40), dtype=np.int8)
    out = np.zeros((2, 33, 40), np.int32)
    cuda_emu.run(src, grid, block, dict(zip([p.name for p in func.params], [x, w, out])))
    np.testing.assert_array_equal(out, (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32))


def test_word_copies_only_where_rows_start_on_a_word():
    """K = 196: the activations are copied from global memory as 4-byte words; K = 147: as bytes
    (a word load there would be misaligned on the GPU); the shared rows are 36 bytes either way."""
    target = cuda.target("sm_90")
    whole, _, _ = _cuda(int8_gemm.schedule(i8.int8_matmul(40, 196, 64), target))
    ragged, _, _ = _cuda(int8_gemm.schedule(i8.int8_matmul(40, 147, 64), target))
    assert re.search(r"\*\(int\*\)\(xq_ptr", whole)
    assert not re.search(r"\(int\*\)\(xq_ptr", ragged)
    assert "__dp4a(*(int*)(xq_reindex_pad_shared_ptr" in ragged  # shared words stay aligned


def test_emulator_catches_a_wrong_kernel():
    """The emulation is a real check: the same kernel with one dot product off by one fails."""
    target = cuda.target("sm_90")
    src, grid, block = _cuda(int8_gemm.schedule(i8.int8_matmul(16, 64, 48, dequantize=False), target))
    head, kernel = src.split('extern "C" __global__', 1)  # the declaration, then the definition
    kernel = kernel.replace("__dp4a(", "off_by_one(", 1)
    rng = np.random.default_rng(1)
    xq = rng.integers(-128, 128, (16, 64), dtype=np.int8)
    wq = rng.integers(-128, 128, (64, 48), dtype=np.int8)
    out = np.zeros((16, 48), np.int32)
    cuda_emu.run(head + 'extern "C" __global__' + kernel, grid, block, {"xq": xq, "wq": wq, "acc": out},
                 extra="static int off_by_one(int a, int b, int c) { return __dp4a(a, b, c) + 1; }\n")
    assert not np.array_equal(out, (xq.astype(np.int64) @ wq.astype(np.int64)).astype(np.int32))


def test_declines_what_it_cannot_run():
    """Pre-Pascal targets have no dp4a; a float GEMM is not int8. (The rule then falls back.)"""
    assert int8_gemm.schedule(i8.int8_matmul(64, 64, 64), cuda.target("sm_90")) is not None
    old = tvm.target.Target({**cuda.target("sm_90").export(), "arch": "sm_60"})
    assert int8_gemm.schedule(i8.int8_matmul(64, 64, 64), old) is None
    from tvm import te

    a, b = te.placeholder((64, 64), "float32"), te.placeholder((64, 64), "float32")
    r = te.reduce_axis((0, 64))
    c = te.compute((64, 64), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r))
    assert int8_gemm.schedule(te.create_prim_func([a, b, c]), cuda.target("sm_90")) is None


def test_matmul_rule_falls_back_to_simt_when_tensorize_fails(monkeypatch):
    """If TVM refuses the dp4a tensorization, the int8 GEMM still gets a GPU schedule (dlight's
    SIMT one), not a silent decline."""
    from tvm.s_tir.tensor_intrin import dot_product_common

    monkeypatch.setattr(dot_product_common, "DP4A_S8S8S32_INTRIN", "no_such_intrinsic")
    target = cuda.target("sm_90")
    func = i8.int8_matmul(197, 192, 576)
    assert int8_gemm.schedule(func, target) is None
    sch = Matmul().apply(func, target, False)
    assert sch is not None and "__dp4a" not in sch.mod.script() and "threadIdx" in sch.mod.script()


@needs_gpu
def test_dp4a_gemm_on_the_gpu(tmp_path, monkeypatch):
    """On a real GPU: DeiT's qkv-shaped int8 GEMM, bit-exact against NumPy."""
    func = _relax_matmul((197, 192), (192, 576))
    sch = Matmul().apply(func, cuda.target(), False)
    lib = cuda_emu.on_gpu(sch.mod["main"].with_attr("tirx.is_scheduled", True), tmp_path, monkeypatch)
    dev = tvm.cuda(0)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (197, 192), dtype=np.int8)
    w = rng.integers(-128, 128, (192, 576), dtype=np.int8)
    out = tvm.runtime.empty((197, 576), "int32", dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), out)
    np.testing.assert_array_equal(out.numpy(), (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32))
