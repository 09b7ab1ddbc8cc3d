"""The GPU twin of the power-of-two shift-add GEMMs (``pot_matmul_int`` and ``pot_matmul_float``
of ``accelc.schedules.shift_add``): a tiled GEMM, operands staged through shared memory.

A schedule of the CPU kernel's own PrimFunc (same blocks, so same numerics: the integer path
stays bit-exact; the float path sums each output in the same ``k``-tile, term, ``k`` order):

- grid: ``⌈M/BM⌉ · ⌈N/tile_n⌉`` blocks, one ``BM × tile_n`` output tile each (one packed weight
  tile wide, so its codes are one contiguous ``[terms, K, tile_n]`` slab); ``BM = 32`` rows with
  ``4 × 2`` outputs per thread (128 threads), or for short inputs (``M < 32``, decode) one row
  per thread over up to 8 rows.
- per ``BK = 32`` slice of ``K``: the block fetches the activations' ``BM × BK`` tile, *decoded
  once per element* on the way into shared memory (the integer path's fixed-point quantizer,
  the float path's exponent-field read), and the codes' ``terms × BK × tile_n`` bytes, together
  (the fetch loops fused and spread over all threads); then each thread adds its register tile
  of ``sign · (x >> e)`` (or the exponent-subtracted float) from shared memory: no multiply.
- the int32/float32 accumulators live in registers; the dequantize epilogue (``acc · scale``)
  runs per thread from them.

Ragged ``M``, ``N`` and ``K`` are predicated (``T.where``); the codes are zero-padded to whole
tiles by the pass.

``emulate=True`` applies the same tiling with the thread loops left serial, for the CPU tests
against the NumPy references (there is no GPU in CI). One difference: unbound, each emulated
thread stages only the part of the shared tiles it reads itself, where on the GPU the block
fetches each tile once, cooperatively; the per-thread arithmetic and its order are the same.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from ...targets.cuda import LIMITS
from ..kernel_attrs import kernel_param
from . import register

#: ``K`` per shared-memory stage.
BK = 32
#: Output rows and columns per thread, and thread rows per block, for ``M >= 32`` (GEMMs).
GEMM_TILE = (4, 2, 8)
#: Blocks of the kernel in front of the accumulation (the per-element decode of ``x``).
_PROLOGUES = ("quantize", "float_bits")


def pot_matmul_gpu(func: tirx.PrimFunc, *, emulate: bool = False) -> tirx.PrimFunc | None:
    """``func`` (a ``pot_matmul_int`` / ``pot_matmul_float`` kernel) scheduled as the CUDA GEMM
    (``emulate``: its CPU emulation); attributes kept, ``tirx.is_scheduled`` when bound. None
    (generic rules keep it) when a block would pass the GPU's limits: 1024 threads (a packed
    tile wider than 256 channels) or 48 KiB of shared memory (very many terms)."""
    m, k, tile_n, terms = (kernel_param(func, key) for key in ("m", "k", "tile_n", "terms"))
    rows, cols, thread_rows = _thread_tile(m, tile_n)
    bk = min(BK, k)
    threads = thread_rows * tile_n // cols
    shared = rows * thread_rows * (bk + 1) * 4 + terms * bk * tile_n
    if threads > LIMITS["max_threads_per_block"] or shared > LIMITS["max_shared_memory_per_block"]:
        return None
    sch = s_tir.Schedule(func)
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(get_root_block(sch))}
    acc = blocks["shift_acc"]
    epilogue = blocks.get("dequant")
    prologue = next((blocks[name] for name in _PROLOGUES if name in blocks), None)

    i, j, t, kk = sch.get_loops(acc)
    by, ty, ti = sch.split(i, [None, thread_rows, rows])
    bx, tx, tj = sch.split(j, [None, tile_n // cols, cols])
    ko, ki = sch.split(kk, [None, bk])
    sch.reorder(by, bx, ty, tx, ko, t, ki, ti, tj)
    thread = sch.fuse(ty, tx)  # consecutive threads along N: coalesced codes and output
    if epilogue is None:
        epilogue = sch.cache_write(acc, 0, "local")
    else:
        sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(epilogue, thread, preserve_unit_loops=True)

    codes = sch.cache_read(acc, _read_index(sch, acc, "int8"), "shared")
    if prologue is None:  # x arrives quantized (the bit-exact test form)
        x_tile = sch.cache_read(acc, _read_index(sch, acc, "int32"), "shared")
    else:  # decode each element once, into the shared tile
        x_tile = prologue
        sch.set_scope(x_tile, 0, "shared")
    sch.storage_align(x_tile, 0, axis=0, factor=32, offset=1)  # rows 33 words apart: no bank conflict
    if not emulate:  # bound first, so compute_at sizes the shared tiles for the whole block
        sch.bind(sch.fuse(by, bx), "blockIdx.x")
        sch.bind(thread, "threadIdx.x")
    for stage in (x_tile, codes):
        sch.compute_at(stage, ko, preserve_unit_loops=True)
        if not emulate:
            loops = sch.get_loops(stage)
            depth = [sch.get(lp) for lp in loops].index(sch.get(ko)) + 1
            _, lane = sch.split(sch.fuse(*loops[depth:]), [None, threads])
            sch.bind(lane, "threadIdx.x")
    sch.decompose_reduction(acc, ko)
    out = sch.mod["main"]
    return out if emulate else out.with_attr("tirx.is_scheduled", True)


@register("pot_matmul_int")
@register("pot_matmul_float")
def _twin(func):
    return pot_matmul_gpu(func)


def _thread_tile(m: int, tile_n: int) -> tuple[int, int, int]:
    """(rows, columns) of outputs per thread and thread rows per block: ``GEMM_TILE`` for
    ``M >= 32``; else one output per thread and as many thread rows as ``M`` needs, up to 8."""
    rows, cols, thread_rows = GEMM_TILE
    if m < rows * thread_rows:
        rows, cols, thread_rows = 1, 1, min(thread_rows, 1 << (m - 1).bit_length())
    return rows, cols if tile_n % cols == 0 else 1, thread_rows


def _read_index(sch, block, dtype: str) -> int:
    """Index of the one buffer of ``dtype`` among the block's reads (codes: int8, x: int32)."""
    reads = sch.get(block).reads
    (index,) = [n for n, region in enumerate(reads) if str(region.source.dtype) == dtype]
    return index


__all__ = ["BK", "GEMM_TILE", "pot_matmul_gpu"]
