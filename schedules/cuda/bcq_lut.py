"""The GPU twin of the BCQ LUT matmul (``bcq_matmul_lut`` of ``accelc.schedules.shift_add``,
ShiftAddLLM's binary-coded weights): ``y = x @ Σ_b α_b·B_b`` by table lookups, the tables of
partial sums of ``x`` built cooperatively in shared memory.

Same signature and input layout as the CPU kernel (``x`` float32 ``[M, K]``, bit-planes uint8
``[bits, ⌈K/8⌉, N]``, ``α`` float32 ``[bits, G, N]``), same sums, other tables and order:

- tables of 4 inputs (LUT-4): for every nibble of a plane byte a 16-entry table
  ``Σ_j (+x if bit j else −x)``; a byte's lookup is its low nibble's entry plus its high
  nibble's, which is the CPU kernel's 256-entry LUT-8 entry as a sum of two halves. A warp's
  lanes hold one row and 32 columns, so their 16-float table reads never conflict (one bank
  each, equal entries broadcast), where LUT-8's 256 entries would; and the tables are 8×
  smaller to build and to keep.
- grid: ``⌈M/BM⌉ · ⌈N/BN⌉`` blocks of 8 warps (256 threads), one ``BM × BN`` output tile each:
  for ``M >= 32`` ``32 × 64`` with a ``4 × 2`` register tile per thread (rows ``ty + 8·r``,
  columns ``lane + 32·c``); for short inputs (``M < 32``, decode) one output per thread, the
  warps split between up to 8 rows and the columns (``M = 1``: ``1 × 256``).
- per chunk of 8 plane bytes (64 inputs), two phases, each opened by a ``__syncthreads``:
  1. build: warp ``ty`` builds byte ``ty``'s two nibble tables for every row of the tile
     (lane ``l``: entry ``l mod 16`` of nibble ``l / 16``, four ``±x`` from global memory, zero
     past ``K`` and ``M``), consecutive lanes writing consecutive floats.
  2. accumulate: per byte and bit-plane each thread reads its columns' plane bytes (coalesced
     along the lanes), adds ``lut_lo[byte & 15] + lut_hi[byte >> 4]`` into its per-plane group
     partials for each of its rows, and where an α group ends (``(g + 1) mod gs/8 = 0`` or the
     last byte: the same for the whole block) adds ``α[b, q, j] · partial`` into its outputs.
  The outputs and the group partials (``bits + 1`` floats per output) stay in registers
  across the chunks: a thread's local buffers, allocated for the whole block (ptxas, sm_90:
  64 registers at 4 planes, no spills). TVM's sync planner adds no barrier of its own (it
  would place the same two).

Parallelism is ``⌈M/BM⌉ · ⌈N/BN⌉`` blocks, ``K`` is not split: a decode step (``M = 1``) with
``N = 4096`` is 16 blocks, few for a large GPU.

Numerics: float32 throughout; each table entry sums its four inputs in order, each group
partial its bytes' ``lo + hi`` in order, each output its groups (and in a group its planes)
in order. That differs from the CPU kernel's order (LUT-8 entries summed over 8 inputs, the
planes outer); both are held to the float64 reference with the same tolerance.

Declined (``None``, the generic GPU rules take it): a thread's accumulators over 128 floats,
i.e. more than 15 bit-planes with the ``4 × 2`` tile. The tables take ``BM`` KiB of shared
memory (32 KiB at most) and a block 256 threads, within ``targets.cuda.LIMITS`` for any shape.

``emulate=True`` builds the same program for a CPU (``warp.WarpLayout``: blocks, warps and
lanes as serial loops, the phases one after the other), which the CPU tests hold to the NumPy
reference; the block-wide registers get a leading (warp, lane) index there.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ...targets.cuda import LIMITS
from ..kernel_attrs import kernel_param, named_kernel
from . import register
from .warp import WARP, WarpLayout

#: Warps per block (256 threads); also the plane bytes per chunk: warp ``ty`` builds byte ``ty``'s tables.
WARPS = 8
#: Output rows and columns per thread for ``M >= 32`` (GEMMs): a ``32 × 64`` block tile.
GEMM_TILE = (4, 2)
#: Most accumulator floats (outputs and group partials) one thread keeps in registers.
MAX_ACC_FLOATS = 128
#: Entries of a nibble's table.
NIBBLE = 16

ZERO = T.float32(0.0)


def bcq_matmul_lut_gpu(m: int, k: int, n: int, bits: int, group_size: int, *, emulate: bool = False):
    """The CUDA kernel (``emulate``: its CPU emulation) of ``bcq_matmul_lut(m, k, n, bits,
    group_size)`` with that kernel's signature and attributes; ``tirx.is_scheduled``. None when
    a thread's accumulators would pass ``MAX_ACC_FLOATS``."""
    if group_size <= 0 or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
    tile = block_tile(m)
    rows, cols, warp_rows = tile
    block_rows = rows * warp_rows
    threads = WARPS * WARP
    shared = block_rows * WARPS * 2 * NIBBLE * 4
    if ((bits + 1) * rows * cols > MAX_ACC_FLOATS or threads > LIMITS["max_threads_per_block"]
            or shared > LIMITS["max_shared_memory_per_block"]):
        return None
    func = _build(m, k, n, bits, group_size // 8, tile, WarpLayout(emulate))
    func = named_kernel(func, "bcq_matmul_lut", m=m, k=k, n=n, bits=bits, group_size=group_size)
    return func if emulate else func.with_attr("tirx.is_scheduled", True)


@register("bcq_matmul_lut")
def _twin(func):
    return bcq_matmul_lut_gpu(*(kernel_param(func, key) for key in ("m", "k", "n", "bits", "group_size")))


def block_tile(m: int) -> tuple[int, int, int]:
    """(rows, columns) of outputs per thread and warps along the rows (the rest of the 8 go
    along the columns): ``GEMM_TILE`` and all 8 for ``M >= 32``; else one output per thread and
    as many warp rows as ``M`` needs, a power of two up to 8."""
    rows, cols = GEMM_TILE
    if m >= rows * WARPS:
        return rows, cols, WARPS
    return 1, 1, min(WARPS, 1 << (m - 1).bit_length())


def _build(M, K, N, BITS, G8, tile, lay: WarpLayout):
    R, C, WR = tile
    WC = WARPS // WR  # warps along the columns
    BM, BN = R * WR, C * WARP * WC
    K8 = -(-K // 8)
    KB = WARPS  # plane bytes per chunk
    NCH = -(-K8 // KB)
    NBN = -(-N // BN)
    LN = lay.held
    WP = WARPS if lay.emulate else 1  # warps whose block-wide registers one program holds
    barrier = lay.barrier_macro()

    def warp_regs(ty):
        return ty if lay.emulate else 0

    def row(by, ty, r):
        return by * BM + ty % WR + WR * r

    def col(bx, ty, lane, c):
        return bx * BN + (ty // WR) * C * WARP + WARP * c + lane

    @T.macro
    def build(x, lut, xs, by, ch, ty, tx):
        """Warp ``ty``: byte ``ch·KB + ty``'s two nibble tables for every row of the tile."""
        for li in lay.lanes():
            lane = T.meta_var(lay.lane(li, tx))
            base = T.meta_var(((ch * KB + ty) * 2 + lane // NIBBLE) * 4)  # the nibble's first input
            for lr in range(BM):
                i = T.meta_var(by * BM + lr)
                for jj in T.unroll(4):
                    xs[li, jj] = T.if_then_else(tirx.all(i < M, base + jj < K),
                                                x[T.min(i, M - 1), T.min(base + jj, K - 1)], ZERO)
                lut[lr, ty, lane] = _signed_sum(xs, li, lane % NIBBLE)

    @T.macro
    def accumulate(planes, alpha, lut, acc, part, code, bx, ch, ty, tx):
        wi = T.meta_var(warp_regs(ty))
        for li in lay.lanes():
            lane = T.meta_var(lay.lane(li, tx))
            for gg in range(KB):
                g = T.meta_var(ch * KB + gg)
                if g < K8:
                    for b in T.unroll(BITS):
                        for c in T.unroll(C):
                            code[li, c] = T.Cast("int32", planes[b, g, T.min(col(bx, ty, lane, c), N - 1)])
                        for r in T.unroll(R):
                            for c in T.unroll(C):
                                lr = T.meta_var(ty % WR + WR * r)
                                part[wi, li, b, r, c] = part[wi, li, b, r, c] + (
                                    lut[lr, gg, T.bitwise_and(code[li, c], NIBBLE - 1)]
                                    + lut[lr, gg, NIBBLE + T.shift_right(code[li, c], 4)])
                    if tirx.any((g + 1) % G8 == 0, g == K8 - 1):  # an α group ends here
                        for b in T.unroll(BITS):
                            for r in T.unroll(R):
                                for c in T.unroll(C):
                                    j = T.meta_var(T.min(col(bx, ty, lane, c), N - 1))
                                    acc[wi, li, r, c] = acc[wi, li, r, c] + alpha[b, g // G8, j] * part[wi, li, b, r, c]
                                    part[wi, li, b, r, c] = ZERO

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((M, K), "float32"), planes: T.Buffer((BITS, K8, N), "uint8"),
               alpha: T.Buffer((BITS, -(-K8 // G8), N), "float32"), bcq_scale: T.Buffer((M, N), "float32")):
        T.func_attr({"tirx.noalias": True})
        for blk in lay.blocks(-(-M // BM) * NBN):
            with T.sblock("tile"):
                T.reads(x[:, :], planes[:, :, :], alpha[:, :, :])
                T.writes(bcq_scale[:, :])
                by = T.meta_var(blk // NBN)
                bx = T.meta_var(blk % NBN)
                lut = T.alloc_buffer((BM, KB, 2 * NIBBLE), "float32", scope="shared")
                acc = T.alloc_buffer((WP, LN, R, C), "float32", scope="local")
                part = T.alloc_buffer((WP, LN, BITS, R, C), "float32", scope="local")
                for ty in lay.warps(WARPS):
                    for tx in lay.lane_threads():
                        with T.sblock("zero"):
                            for li in lay.lanes():
                                for r in T.unroll(R):
                                    for c in T.unroll(C):
                                        acc[warp_regs(ty), li, r, c] = ZERO
                                        for b in T.unroll(BITS):
                                            part[warp_regs(ty), li, b, r, c] = ZERO
                for ch in range(NCH):
                    for ty in lay.warps(WARPS):
                        for tx in lay.lane_threads():
                            with T.sblock("build"):
                                T.reads(x[:, :])
                                T.writes(lut[:, :, :])
                                barrier()
                                xs = T.alloc_buffer((LN, 4), "float32", scope="local")
                                build(x, lut, xs, by, ch, ty, tx)
                    for ty in lay.warps(WARPS):
                        for tx in lay.lane_threads():
                            with T.sblock("accumulate"):
                                T.reads(planes[:, :, :], alpha[:, :, :], lut[:, :, :])
                                T.writes(acc[:, :, :, :], part[:, :, :, :, :])
                                barrier()
                                code = T.alloc_buffer((LN, C), "int32", scope="local")
                                accumulate(planes, alpha, lut, acc, part, code, bx, ch, ty, tx)
                for ty in lay.warps(WARPS):
                    for tx in lay.lane_threads():
                        with T.sblock("store"):
                            for li in lay.lanes():
                                for r in T.unroll(R):
                                    for c in T.unroll(C):
                                        i = T.meta_var(row(by, ty, r))
                                        j = T.meta_var(col(bx, ty, lay.lane(li, tx), c))
                                        if i < M and j < N:
                                            bcq_scale[i, j] = acc[warp_regs(ty), li, r, c]

    return kernel


def _signed_sum(xs, li, idx):
    """``Σ_{j<4} (+xs[li, j] if bit j of idx else −xs[li, j])``, in order."""
    total = None
    for j in range(4):
        term = tirx.Select(tirx.bitwise_and(tirx.shift_right(idx, j), 1) == 1, xs[li, j], -xs[li, j])
        total = term if total is None else total + term
    return total


__all__ = ["GEMM_TILE", "MAX_ACC_FLOATS", "WARPS", "bcq_matmul_lut_gpu", "block_tile"]
