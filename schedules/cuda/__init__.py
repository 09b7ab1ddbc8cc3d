"""Default (untuned) CUDA schedule rules, dlight style, and the GPU versions of accelc's kernels.

accelc's named kernels (``schedules/kernel_attrs.py``) are written for CPUs: hand-placed
vector loops, parallel task loops, opaque blocks that no generic GPU rule can bind to threads.
``gpu_kernels`` swaps each for its GPU-shaped twin (same attributes, same numerics) before the
rules run; a kernel without a twin is left to the generic rules.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight as dl

from ..cpu import Guarded
from ..kernel_attrs import kernel_name
from . import int8_gemm

#: kernel name → builder(func) -> PrimFunc already scheduled for CUDA (or None to decline)
GPU_KERNELS: dict = {}


def register(name: str):
    def deco(fn):
        GPU_KERNELS[name] = fn
        return fn

    return deco


@tvm.transform.module_pass(opt_level=0, name="accelc.cuda.GpuKernels")
def gpu_kernels(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Replace each accelc named kernel with its GPU twin (attributes kept)."""
    out = None
    for gv, func in mod.functions_items():
        name = kernel_name(func) if isinstance(func, tvm.tirx.PrimFunc) else None
        build = GPU_KERNELS.get(name) if name else None
        if build is None:
            continue
        new = build(func)
        if new is None:
            continue
        for key, value in func.attrs.items():
            if key not in new.attrs:
                new = new.with_attr(key, value)
        if out is None:
            out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        out[gv] = new
    return mod if out is None else out


class Matmul(dl.gpu.Matmul):
    """dlight's GPU Matmul, except for int8 × int8 → int32 GEMMs: accelc's ``__dp4a`` schedule
    (``int8_gemm``), or where that does not apply dlight's SIMT schedule.

    Upstream symptom (TVM 0.27): for int8 GEMMs with every dim over 64 (the int8 rewrite's
    layers on real models: DeiT's 197×192×576) the rule picks ``MatmulInt8Tensorization``,
    whose schedule fails in lowering — ``Check failed: (it != fragment_info_.end())`` — so no
    int8-rewritten zoo model compiled for CUDA. fp16/bf16 GEMMs keep the tensor cores.
    """

    def apply(self, func, target, tunable):  # noqa: D102
        if isinstance(func, tvm.tirx.PrimFunc) and target.kind.name == "cuda" and _int8_gemm(func):
            sch = int8_gemm.schedule(func, target)
            if sch is not None:
                return sch
            target = tvm.target.Target({**target.export(), "arch": "sm_60"})  # no tensor cores
        return super().apply(func, target, tunable)


def _int8_gemm(func) -> bool:
    """Whether ``func`` holds a reduction reading int8 buffers into an int32 accumulator."""
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.matmul import get_reduction_blocks

    try:
        sch = tvm.s_tir.Schedule(func)
        blocks = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch))) or []
    except Exception:  # noqa: BLE001 - not analysable: not ours to change
        return False
    for block in blocks:
        stmt = sch.get(block)
        if (str(stmt.writes[0].source.dtype) == "int32"
                and any(str(r.source.dtype) == "int8" for r in stmt.reads)):
            return True
    return False


def default_rules() -> list[dl.ScheduleRule]:
    """dlight's GPU rules (Matmul tensorizes fp16 GEMMs onto tensor cores on sm_70+)."""
    rules = (Matmul(), dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Reduction(),
             dl.gpu.GeneralReduction(), dl.gpu.Transpose(), dl.gpu.Fallback())
    return [Guarded(r) for r in rules]


# Imported to register their twins.
from . import attention_linear, attention_linear_decode, attention_sparse, bcq_lut, shift_add  # noqa: E402,F401

__all__ = ["GPU_KERNELS", "default_rules", "gpu_kernels", "register"]
