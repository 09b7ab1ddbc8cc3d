"""int8 × int8 → int32 GEMMs on the CUDA cores with ``__dp4a`` (sm_61 and newer).

``dp4a`` multiplies four int8 pairs packed in two 32-bit registers and adds the sum to an int32:
four multiply-adds per instruction, where dlight's SIMT schedule issues one (it widens every
int8 to int32 first). TVM 0.27 ships the intrinsic (``tensor_intrin.dot_product_common``,
``dp4a_s8s8s32``) but no rule uses it on CUDA, and dlight's int8 tensor-core schedule fails in
lowering (see ``Matmul`` in this package), so int8 GEMMs get this schedule:

- dlight's normalization (``C[S, I, J] += A[S, I, K] · B[S, J, K]``, operands reindexed), the
  reduction padded to a whole tile;
- a 32 × 64 output tile per block, 8 × 16 threads, each a 4 × 4 register tile of int32;
- per 32-deep slice of K both operands are staged in shared memory with K innermost, rows
  padded to 36 bytes (a multiple of 4, so every 4-byte group is an aligned word, and rows 9
  banks apart); an operand with K innermost in global memory is copied a word at a time when
  K is a multiple of 4 (rows start on a word), else a byte at a time;
- an operand whose K is not innermost in global memory (the int8 rewrite's ``wq[k, n]``) is
  fetched K-major: a warp's lanes read 32 consecutive bytes of one row of K, each lane four
  rows, and store its 4 bytes as one word — coalesced loads, no byte stores;
- the inner product over each group of 4 is tensorized to ``__dp4a``; the epilogue
  (dequantize, bias, …) is inlined into the write-back from registers.

Returns None (the caller falls back to dlight's SIMT schedule) for anything else: not a single
int8 × int8 → int32 reduction, an unsigned operand, or a pre-Pascal target.
"""

from __future__ import annotations

import re

from tvm import s_tir, tirx

TILE_X, TILE_Y = 32, 64  # rows of A / columns of B per block
THREADS_X, THREADS_Y = 8, 16  # threads per block: 128
MICRO_X, MICRO_Y = TILE_X // THREADS_X, TILE_Y // THREADS_Y  # 4 × 4 accumulators per thread
K_TILE = 32  # K per shared-memory stage (bytes per row)
ROW_PAD = 4  # bytes after each shared row: 36-byte rows, word aligned, 9 banks apart


def supports(target) -> bool:
    """``dp4a`` needs compute capability 6.1 or newer."""
    if target.kind.name != "cuda":
        return False
    m = re.match(r"sm_(\d+)", str(target.attrs.get("arch", "")))
    return m is not None and int(m.group(1)) >= 61


def schedule(func: tirx.PrimFunc, target) -> s_tir.Schedule | None:
    """The dp4a schedule of ``func`` for ``target``, or None if it does not apply (then the
    caller falls back to dlight's SIMT schedule)."""
    if not supports(target):
        return None
    try:
        return _schedule(func)
    except (ImportError, NameError, SyntaxError):  # our bugs, never a declined schedule
        raise
    except Exception:  # noqa: BLE001 - TVM refused a step (tensorize, layout) for this workload
        return None


def _schedule(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.matmul import (auto_inline_consumer_chain, auto_inline_producers, get_index_map,
                                             get_reduction_blocks)
    from tvm.s_tir.tensor_intrin.dot_product_common import DP4A_S8S8S32_INTRIN

    sch = s_tir.Schedule(func)
    blocks = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if blocks is None:
        return None
    main = blocks[0]
    stmt = sch.get(main)
    if (str(stmt.writes[0].source.dtype) != "int32" or len(_operand_reads(stmt)) != 2
            or any(str(r.source.dtype) != "int8" for r in _operand_reads(stmt))):
        return None
    if get_index_map(stmt) is None:
        return None
    k_inner = [_k_innermost(stmt, r) for r in _operand_reads(stmt)]

    # dlight's normalization to C[S, I, J] += A[S, I, K] * B[S, J, K]
    reindex = [sch.reindex(main, ("read", 0)), sch.reindex(main, ("read", 1)), sch.reindex(main, ("write", 0))]
    matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main))
    sch.transform_layout(reindex[0], ("write", 0), a_map)
    sch.transform_layout(reindex[1], ("write", 0), b_map)
    sch.transform_layout(reindex[2], ("read", 0), c_map)
    sch.transform_block_layout(main, matmul_map)
    k_len = sch.get(main).iter_vars[-1].dom.extent
    # 4-byte loads along K from global memory are aligned only if every row starts at a word
    words = isinstance(k_len, tirx.IntImm) and k_len.value % 4 == 0
    sch.pad_einsum(main, [1, TILE_X, TILE_Y, K_TILE])

    batch, x, y, k = sch.get_loops(main)
    by, ty, yi = sch.split(y, [None, THREADS_Y, MICRO_Y])
    bx, tx, xi = sch.split(x, [None, THREADS_X, MICRO_X])
    ko, ki, k4 = sch.split(k, [None, K_TILE // 4, 4])
    sch.reorder(by, bx, ty, tx, ko, ki, xi, yi, k4)
    sch.bind(sch.fuse(batch, by), "blockIdx.y")
    sch.bind(bx, "blockIdx.x")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.annotate(tx, "pragma_auto_unroll_max_step", 256)
    sch.annotate(tx, "pragma_unroll_explicit", 1)

    store = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(store, tx, preserve_unit_loops=True)

    for index, inner in enumerate(k_inner):
        fetch = sch.cache_read(main, index, "shared")
        n_loops = len(sch.get_loops(fetch))
        sch.compute_at(fetch, ko, preserve_unit_loops=True)
        *lead, rows, depth = sch.get_loops(fetch)[-n_loops:]  # shared [1, tile rows, K_TILE]
        if inner:  # K innermost in global memory too: each thread copies words along K
            _, t_y, t_x, vec = sch.split(sch.fuse(*lead, rows, depth), [None, THREADS_Y, THREADS_X, 4])
        else:  # K outermost in global memory: lanes along the rows (coalesced), 4 K each
            d_o, d_i = sch.split(depth, [None, 4])
            sch.reorder(d_o, rows, d_i)
            _, t_y, t_x = sch.split(sch.fuse(*lead, d_o, rows), [None, THREADS_Y, THREADS_X])
            vec = d_i
        sch.bind(t_y, "threadIdx.y")
        sch.bind(t_x, "threadIdx.x")
        if words or not inner:  # the 4 bytes are one aligned word (in shared memory at least)
            sch.vectorize(vec)
        sch.storage_align(fetch, 0, axis=-2, factor=K_TILE, offset=ROW_PAD)
        auto_inline_producers(sch, fetch)

    auto_inline_consumer_chain(sch, store)
    sch.decompose_reduction(main, ko)
    sch.tensorize(sch.get_loops(main)[-1], DP4A_S8S8S32_INTRIN)
    return sch


def _operand_reads(stmt) -> list:
    """The two operands of the update ``C += A · B`` (the accumulator's own read left out)."""
    out = stmt.writes[0].source
    return [r for r in stmt.reads if not r.source.same_as(out)]


def _k_innermost(stmt, region) -> bool:
    """Whether the operand's innermost index is the block's reduction variable."""
    reduce_vars = {iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    last = region.region[-1].min
    return isinstance(last, tirx.Var) and any(last.same_as(v) for v in reduce_vars)
