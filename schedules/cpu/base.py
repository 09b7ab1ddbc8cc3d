"""What the CPU schedule rules share: the target's vector shape and a few schedule helpers."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.target import Target
from tvm.target.codegen import target_has_features


def has_isa_feature(target: Target, feature: str) -> bool:
    """Whether ``target`` may use ISA extension ``feature`` (False for a name this LLVM does
    not know, e.g. another architecture's)."""
    try:
        return bool(target_has_features([feature], target))
    except Exception:  # noqa: BLE001 - LLVM raises for feature names of other architectures
        return False


@dataclass(frozen=True)
class CpuShape:
    """The numbers a CPU schedule is sized by, read off the target."""

    vector_bits: int  # widest SIMD register: 512 (AVX-512), 256 (AVX2), 128 (SSE, NEON)
    vector_registers: int  # architectural SIMD registers: 32 with AVX-512 or NEON, else 16
    cores: int
    l2_bytes: int = 512 * 1024  # per core; a conservative figure for current server parts
    #: Vector loads the core issues per widest-vector FMA, where known (``micro_kernel``'s
    #: roofline). Zen 4 (``znver4``) runs a 512-bit FMA as two 256-bit halves, one per cycle,
    #: beside two loads: 2.0. None: the earlier model, chosen on Intel Xeon hosts.
    loads_per_fma: float | None = None

    def lanes(self, dtype: str) -> int:
        return max(self.vector_bits // tvm.DataType(dtype).bits, 1) if dtype else 1


def cpu_shape(target: Target) -> CpuShape:
    """Vector width and register count from the target's ``mcpu``/``mattr`` features."""
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple.startswith(("aarch64", "arm")):
        bits, regs = 128, 32
    elif target_has_features(["avx512f"], target):
        bits, regs = 512, 32
    elif target_has_features(["avx2"], target) or target_has_features(["avx"], target):
        bits, regs = 256, 16
    else:
        bits, regs = 128, 16
    cores = int(target.attrs.get("num-cores", 1) or 1)
    loads_per_fma = 2.0 if bits == 512 and str(target.attrs.get("mcpu", "") or "") == "znver4" else None
    return CpuShape(vector_bits=bits, vector_registers=regs, cores=cores, loads_per_fma=loads_per_fma)


class CPURule(dl.ScheduleRule):
    """A dlight schedule rule for llvm (CPU) targets."""

    def is_target_available(self, target: Target) -> bool:  # noqa: D102
        return target.kind.name == "llvm"


def extent(sch: s_tir.Schedule, loop) -> int | None:
    """A loop's constant extent, or None when it is symbolic."""
    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def is_reduction(sch: s_tir.Schedule, blk) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(blk).iter_vars)


def block_dtype(sch: s_tir.Schedule, blk) -> str:
    return str(sch.get(blk).writes[0].source.dtype)


def inline_spatial_around(sch: s_tir.Schedule, keep) -> None:
    """Inline every spatial block that inlines cleanly, sparing ``keep`` and reductions."""
    root = get_root_block(sch)
    progress = True
    while progress:
        progress = False
        for blk in sch.get_child_blocks(root):
            if sch.get(blk).same_as(sch.get(keep)) or is_reduction(sch, blk):
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(blk)
                except s_tir.ScheduleError:
                    continue
                progress = True
                break
            if progress:
                break


def vectorize_inner(sch: s_tir.Schedule, blk, lanes: int) -> None:
    """Vectorize the innermost loop by ``lanes`` (the whole loop if it is shorter).

    A ragged extent stays scalar: a predicated vector loop measured no faster on the zoo
    models, and it changed results (QLinearMatMul's rounding) in the ONNX conformance suite.
    """
    loops = sch.get_loops(blk)
    n = extent(sch, loops[-1]) if loops else None
    if n is None or n < 2:
        return
    if n <= lanes:
        sch.vectorize(loops[-1])
    elif n % lanes == 0:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])


def schedule_injective(sch: s_tir.Schedule, blk, shape: CpuShape) -> None:
    """Parallel over the outer loops, vectorized along the innermost (contiguous) one."""
    loops = sch.get_loops(blk)
    if not loops:
        return
    lanes = shape.lanes(block_dtype(sch, blk))
    if len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        sch.parallel(outer)
    vectorize_inner(sch, blk, lanes)
