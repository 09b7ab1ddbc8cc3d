"""Issue 7's CI bar without a GPU: every custom kernel and every zoo model compiles for CUDA
(sm_90) and the result carries device code (nvcc fatbin, no CUDA source)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from accelc import models
from accelc.schedules import attention_linear as la
from accelc.schedules import attention_sparse as sp
from accelc.schedules import int8 as i8
from accelc.schedules import shift_add as sa
from accelc.targets import cuda
from accelc.targets.cuda import fatbin

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")

KERNELS = {
    "quantize_fixed_point": lambda: sa.quantize_fixed_point(16, 64, 16, 15),
    "pot_matmul_int": lambda: sa.pot_matmul_int(16, 64, 48, 2, 16, 15),
    "pot_matmul_float": lambda: sa.pot_matmul_float(16, 64, 48, 2),
    "bcq_matmul_lut": lambda: sa.bcq_matmul_lut(16, 64, 48, 3, 32),
    "int8_matmul": lambda: i8.int8_matmul(16, 64, 48),
    # every dim over 64: dlight's Matmul would tensorize it and fail in lowering (TVM 0.27)
    "int8_matmul_large": lambda: i8.int8_matmul(197, 192, 576),
    "int8_matmul_ragged_k": lambda: i8.int8_matmul(20, 147, 40),  # K not whole words: byte copies
    "dequantize": lambda: i8.dequantize(16, 48, True),
    "linear_attention": lambda: la.linear_attention(1, 2, 37, 16),
    "linear_attention_castling_bias": lambda: la.linear_attention(2, 2, 70, 64, "castling", key_bias=True),
    "linear_attention_causal": lambda: la.linear_attention(1, 2, 70, 16, causal=True, chunk=32),
    "linear_attention_causal_local_bias": lambda: la.linear_attention(2, 2, 45, 19, causal=True, chunk=7, local=True,
                                                                      key_bias=True),
    "linear_attention_local": lambda: la.linear_attention(1, 2, 70, 16, chunk=32, local=True),
    "linear_attention_decode": lambda: la.linear_attention_decode(1, 2, 16),
    "polarized_attention": lambda: sp.polarized_attention(1, 2, 37, 64, 300, 0.25),
    "polarized_attention_causal_bias": lambda: sp.polarized_attention(2, 2, 37, 40, 300, 0.25, causal=True,
                                                                      key_bias=True),
}


def cuda_source(func, arch: str = "sm_90") -> str:
    """``func`` through the CUDA target's kernel swap and GPU rules, built; its CUDA source."""
    import tvm
    from tvm.s_tir import dlight as dl

    from accelc.schedules.cuda import default_rules, gpu_kernels
    from accelc.targets.cuda import _default_gpu_schedule

    target = cuda.target(arch)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target, tvm.transform.PassContext(opt_level=3):
        mod = gpu_kernels(mod)
        mod = dl.ApplyDefaultSchedule(*default_rules())(mod)
        mod = _default_gpu_schedule(mod)
        assert "threadIdx" in mod.script() or "blockIdx" in mod.script()  # a GPU kernel, not host code
        lib = tvm.tirx.build(mod, target=target)
    (dev,) = [m for m in fatbin.cuda_modules(lib) if m.kind == "cuda"]
    return dev.inspect_source("cuda")


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_custom_kernel_compiles_for_cuda_with_nvcc(name):
    src = cuda_source(KERNELS[name]())
    assert "__global__" in src
    binary = fatbin.compile_fatbin(src, "sm_90")
    assert binary[:4] == np.uint32(fatbin.FATBIN_MAGIC).tobytes()


def test_polarized_attention_runs_on_the_gpu_twin():
    """The CPU kernel is swapped for the warp-per-row GPU kernel: coalesced K/V row reads and a
    shuffle butterfly for each kept key's dot product, no global score scratch."""
    src = cuda_source(sp.polarized_attention(1, 2, 37, 64, 300, 0.25))
    assert src.count("__shfl_xor_sync") == 2 * 5  # global keys and CSR keys: 5 butterfly steps each
    assert "__launch_bounds__(128)" in src and "threadIdx.y" in src
    signature = src.split("__global__")[-1].split("{")[0]
    assert signature.count("__restrict__") == 8  # q, k, v, perm, gcount, indptr, indices, out: no scratch


@pytest.mark.parametrize("name,decoded", [("pot_matmul_int", "quantize"), ("pot_matmul_float", "float_bits")])
def test_shift_add_runs_on_the_gpu_twin(name, decoded):
    """The shift-add GEMM is the tiled twin: the activations' tile decoded into shared memory,
    the codes' tile staged there too, a 4×2 register tile per thread of a 128-thread block."""
    func = sa.pot_matmul_int(64, 100, 70, 2, 16, 15) if name == "pot_matmul_int" else sa.pot_matmul_float(64, 100, 70, 2)
    src = cuda_source(func)
    assert f"__shared__ alignas(64) int {decoded}_shared_ptr[" in src
    assert "__shared__ alignas(64) signed char codes_shared_ptr[" in src
    assert "__launch_bounds__(128)" in src and "__syncthreads()" in src
    assert "shift_acc_local_ptr[8];" in src


def test_bcq_runs_on_the_gpu_twin():
    """The BCQ LUT matmul is the tiled twin: a 32-row tile's 16-entry nibble tables for 64
    inputs in shared memory, rebuilt per chunk between two barriers; a 4×2 register tile of
    outputs with 3 planes' group partials per thread. 16 planes are declined (generic rules)."""
    src = cuda_source(sa.bcq_matmul_lut(64, 100, 70, 3, 32))
    assert "__shared__ alignas(64) float lut_ptr[8192];" in src and "__launch_bounds__(256)" in src
    assert "float acc_ptr[8];" in src and "float part_ptr[24];" in src
    assert src.count("__syncthreads()") == 2
    declined = cuda_source(sa.bcq_matmul_lut(64, 100, 70, 16, 32))
    assert "lut_ptr[8192]" not in declined and "part_ptr" not in declined


@pytest.mark.parametrize("variant", ["angular", "castling"])
def test_linear_attention_runs_on_the_gpu_twin(variant):
    """Non-causal linear attention is the block-per-head twin: the d×d state in shared memory,
    the norms (and castling's output norm) by warp butterflies; the non-causal local form is
    not (declined: generic rules)."""
    src = cuda_source(la.linear_attention(1, 2, 70, 64, variant, key_bias=True))
    assert "__shared__ alignas(64) float S_ptr[4096];" in src and "__launch_bounds__(256)" in src
    # 5-step butterflies: ‖k‖², ‖q‖², then q·z (angular) or the output's norm (castling)
    assert src.count("__shfl_xor_sync") == 3 * 5
    local = cuda_source(la.linear_attention(1, 2, 70, 16, chunk=32, local=True))
    assert "S_ptr" not in local


@pytest.mark.parametrize("local", [False, True])
def test_causal_linear_attention_runs_on_the_gpu_twin(local):
    """Causal linear attention (and its local-softmax form) is the block-per-head twin too: the
    prefix state in shared memory, a tile of 32 keys staged beside it with rows padded to 65
    floats (conflict-free when lane t reads key t), the in-tile weights broadcast by
    ``__shfl_sync``, three phase barriers per tile and the sync planner's two."""
    src = cuda_source(la.linear_attention(1, 2, 70, 64, causal=True, chunk=32, local=local, key_bias=True))
    assert "__shared__ alignas(64) float S_ptr[4096];" in src and "__launch_bounds__(256)" in src
    assert "__shared__ alignas(64) float keys_ptr[2079];" in src  # 32 rows of 64 + 1, the last one's pad unused
    # 5-step butterflies: ‖k‖², ‖q‖², the in-tile denominator, q·z (local: and the in-tile max)
    assert src.count("__shfl_xor_sync") == (5 if local else 4) * 5
    assert src.count("__shfl_sync((uint)4294967295, wgt_ptr[0], t, 32)") == 2  # Σ_t a_t·v_t, 2 columns a lane
    assert src.count("__syncthreads()") == 5


def test_linear_attention_decode_runs_on_the_gpu_twin():
    """The decode step is the block-per-head twin: the state streamed once by 8 warps, their
    partial q·S_new in shared memory, one barrier, then warp 0 finishes the row."""
    src = cuda_source(la.linear_attention_decode(1, 2, 64))
    assert "__shared__ alignas(64) float pn_ptr[512];" in src and "__launch_bounds__(256)" in src
    # 5-step butterflies: ‖k‖² (every warp), then warp 0's ‖k‖², ‖q‖² and q·z_new
    assert src.count("__shfl_xor_sync") == 4 * 5
    assert src.count("__syncthreads()") == 1


def test_a_kernel_without_a_gpu_version_is_refused_not_built_as_host_code():
    """Upstream, an unscheduled PrimFunc silently becomes host code reading device pointers. A
    named kernel with no GPU twin whose structure defeats TVM's DefaultGPUSchedule (here the CPU
    polarized-attention kernel under another name) stops the compile with one line instead."""
    orphan = sp.polarized_attention(1, 2, 37, 16, 300, 0.25).with_attr("accelc.kernel", "orphan_kernel")
    with pytest.raises(RuntimeError, match="orphan_kernel: this kernel has no CUDA version yet"):
        cuda_source(orphan)  # raised through the TVM pass


def test_gpt2_with_polarized_attention_compiles_for_cuda(tmp_path):
    meta = _build_export("gpt2-like", ["polarize:sparsity=0.8"], tmp_path)
    assert meta.target_name == "cuda"


def _build_export(name, passes, tmp_path):
    from accelc.compiler import artifact, pipeline
    from accelc.compiler.frontend import import_model

    calib = [models.example_inputs(name, seed=s) for s in (1, 2)]
    ex, meta = pipeline.build(import_model(models.build(name)), target="cuda", passes=passes,
                              target_options={"arch": "sm_90"}, calibration=calib)
    lib = artifact.export(ex, meta, tmp_path / f"{name}.so")
    data = lib.read_bytes()
    assert np.uint32(fatbin.FATBIN_MAGIC).tobytes() in data and b"__global__" not in data
    return meta


def test_gpt2_with_every_rewrite_compiles_for_cuda(tmp_path):
    """One small zoo model through the rewrites at once: the shift-add kernels, linear
    attention and the fp16 tensor-core GEMMs in one artifact."""
    meta = _build_export("gpt2-like", ["shift-add:terms=2", "linearize", "fp16"], tmp_path)
    assert meta.target_name == "cuda" and meta.target["arch"] == "sm_90"


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names(include_real=False))
def test_zoo_model_compiles_for_cuda(name, tmp_path):
    _build_export(name, [], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["int8", "linearize", "fp16"])
def test_deit_rewrites_compile_for_cuda(spec, tmp_path):
    _build_export("deit-tiny", [spec], tmp_path)


@pytest.mark.slow
def test_int8_cnn_compiles_for_cuda(tmp_path):
    """The int8 rewrite's per-tensor convs (int8 im2col, kept opaque to fusion) on the GPU."""
    _build_export("resnet-small", ["int8"], tmp_path)


def test_int8_gemm_takes_the_dp4a_schedule():
    """accelc's GPU Matmul rule schedules an int8 GEMM over 64 in every dim itself (``__dp4a``,
    no WMMA: dlight's int8 tensor-core schedule fails in TVM 0.27's lowering), and still
    tensorizes a float16 one."""
    import tvm
    from tvm import te

    from accelc.schedules.cuda import Matmul

    target = cuda.target("sm_90")
    int8_sch = Matmul().apply(i8.int8_matmul(197, 192, 576), target, False)
    assert int8_sch is not None and "wmma" not in int8_sch.mod.script()
    assert '"__dp4a"' in int8_sch.mod.script()
    a, b = te.placeholder((256, 256), "float16"), te.placeholder((256, 512), "float16")
    k = te.reduce_axis((0, 256))
    c = te.compute((256, 512), lambda i, j: te.sum(a[i, k].astype("float32") * b[k, j].astype("float32"), axis=k))
    fp16_sch = Matmul().apply(te.create_prim_func([a, b, c]), target, False)
    assert fp16_sch is not None and "wmma" in fp16_sch.mod.script()
    assert isinstance(fp16_sch, tvm.s_tir.Schedule)
