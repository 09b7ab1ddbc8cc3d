"""CPU rule for matmul-like PrimFuncs: dense, batch matmul, any one-reduction GEMM-shaped einsum.

The schedule is the BLIS/GotoBLAS one, written with TVM schedule primitives:
  1. inline spatial producers (transposes, mask arithmetic) and fold the epilogue chain;
  2. canonicalise the reduction to ``C[S, I, J] += A[S, I, K] · B[S, K, J]`` (``reindex``);
  3. pad I and J up to the micro-kernel (``pad_einsum``) so no predicate enters the inner loop;
  4. pack B into column panels ``B[S, J/nr, K, nr]``. For constant weights the packing block is
     marked ``meta_schedule.layout_rewrite_preproc``: the CPU pipeline splits it out and folds it,
     so weights are packed once, at compile time;
  5. tile ``S·Jb·I/mr (parallel), Jt, K, mr (unrolled), nj (unrolled), lanes (vector)``: an
     ``mr × nj·lanes`` accumulator tile lives in vector registers, the B block of ``Jt`` panels
     is sized to stay in L2. An unbatched GEMM whose row blocks split evenly over the cores
     runs ``cores (parallel), Jb, I/mr/cores, …`` instead: each core keeps its rows
     (``row_chunks``);
  6. write each tile back once, through the fused epilogue (bias, activation, residual, scale).
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.ir import Range
from tvm.s_tir.dlight.gpu.matmul import IterKind, IterTrait, make_iter_fusion_index_map
from tvm.tirx.analysis import undefined_vars

from .base import (
    CPURule,
    CpuShape,
    block_dtype,
    cpu_shape,
    extent,
    inline_spatial_around,
    is_reduction,
    schedule_injective,
    vectorize_inner,
)

_FLOAT = ("float32", "float64", "float16", "bfloat16")

#: True while the rule must return a schedule its trace replays (MetaSchedule stores traces):
#: ``clamp_padded_rows`` and ``overlap_last_panel`` are rewrites, not schedule primitives, so
#: they are left out then.
_REPLAYABLE = contextvars.ContextVar("accelc_matmul_replayable", default=False)


@contextlib.contextmanager
def replayable_only():
    """Within it, the rule's schedule is exactly what its trace replays to: the padded rows keep
    ``pad_einsum``'s inlined guard instead of the clamped load, and a ragged last column panel
    its padding and write-back predicate (same results, slower). ``accelc tune`` stores a
    task's default schedule this way."""
    token = _REPLAYABLE.set(True)
    try:
        yield
    finally:
        _REPLAYABLE.reset(token)

#: Accumulator dtypes the rule takes: float GEMMs and int8 × int8 → int32 (schedules/int8.py).
_ACC = _FLOAT + ("int32",)
_S, _I, _J, _K = IterKind.kIter_S, IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K


def micro_kernel(m: int, n: int, lanes: int, registers: int, loads_per_fma: float | None = None) -> tuple[int, int]:
    """The accumulator tile ``(mr rows, nj vectors)`` for an ``m × n`` output.

    ``mr·nj`` accumulators, ``nj`` B vectors and one broadcast register must fit the register
    file. A tile's useful work discounts the padding it forces on ``m`` and ``n``; its
    arithmetic intensity ``mr·nj / (mr + nj)`` is FMAs per load in the inner loop.

    ``loads_per_fma=None``: the best ``useful work × intensity`` wins (the model chosen on the
    Intel Xeon hosts). With the core's load:FMA issue ratio ``r`` known, a roofline: a tile
    runs at ``min(1, r·intensity)`` of the FMA peak, so past the point where FMAs bound it,
    more intensity buys nothing and less padding wins, as long as the tile holds the 8
    independent accumulators that hide the FMA latency; among tiles within 1% of the best,
    the most intense. On Zen 4 (r = 2) that moved BERT's 128 × 384 GEMMs from 6 × 4 (132 rows)
    to 8 × 3 and DeiT's 197 × 197 QKᵀ from 9 × 3 (240 columns) to 11 × 1 (208): whole
    models 0.96–0.97× (BERT, DeiT) and 0.95× (GPT-2-like), outputs bit-identical.
    """
    cands = []
    for nj in (1, 2, 3, 4):
        for mr in range(1, 15):
            if mr * nj + nj + 1 > registers:
                continue
            pad_m = math.ceil(m / mr) * mr
            pad_n = math.ceil(n / (nj * lanes)) * nj * lanes
            useful = (m * n) / (pad_m * pad_n)
            intensity = (mr * nj) / (mr + nj)
            if loads_per_fma is None:
                cands.append((useful * intensity, 0.0, (mr, nj)))
            elif mr <= m and (nj == 1 or (nj - 1) * lanes < n):  # no tile row or vector all padding
                # FMA latency (4 cycles) × FMAs in flight: fewer than 8 independent
                # accumulators leave the FMA pipes idle (measured: 1 × 4 for 37 rows ran 1.6-1.8×
                # slower than 6 × 4; 2 × 4 ran 0.97×)
                cands.append((useful * min(1.0, loads_per_fma * intensity) * min(1.0, mr * nj / 8), intensity, (mr, nj)))
    best = max(c[0] for c in cands)
    if loads_per_fma is None:  # the first of the best, in (nj, mr) order
        return next(c[2] for c in cands if c[0] > best - 1e-9)
    return max((c for c in cands if c[0] >= best * 0.99), key=lambda c: (c[1], c[0]))[2]


def row_chunks(row_blocks: int, cores: int) -> int:
    """Parallel tasks of a single (unbatched) GEMM: one contiguous chunk of row blocks per core,
    each sweeping every column block, when the chunks come out even (the longest within 1/8 of
    the mean); else 1 (the column-block × row-block tasks, split evenly by the thread pool).

    Row chunks keep each core's rows on that core from one kernel to the next (the next GEMM
    reads the rows this one wrote; layer norm and residual adds are row-parallel too), where
    column-block tasks had each core read every row of A, half of them written by the other
    core. Zen 4, 2 vCPUs, DeiT: 0.99× in the host's fast state, 0.89-0.92× in its slow state
    (where the two vCPUs share less cache); each core now streams all of B, from L3."""
    if cores < 2 or row_blocks < 2 * cores:
        return 1
    per = math.ceil(row_blocks / cores)
    return cores if (per * cores - row_blocks) * 8 <= row_blocks else 1


def detect_iter_traits(block: s_tir.SBlock):
    """Classify a ``C[S, I, J] += A[S, I, K] · B[S, J, K]`` block's iterators (any order).

    dlight's version demands an I axis; here a missing (extent-1) I is allowed, so batch-1
    GEMV ``[1, K] × [K, N]`` takes the same packed micro-kernel with ``mr = 1``. Returns
    (A traits, B traits, C traits, block traits) or None.
    """
    if len(block.reads) < 2 or len(block.writes) != 1:
        return None

    def axes(region: list[Range]):
        out = set()
        for r in region:
            if not (isinstance(r.extent, tirx.IntImm) and r.extent.value == 1):
                return None
            out |= set(undefined_vars(r.min))
        return out

    a_axes, b_axes, c_axes = axes(block.reads[0].region), axes(block.reads[1].region), axes(block.writes[0].region)
    if a_axes is None or b_axes is None or c_axes is None:
        return None
    traits = {}
    for iv in block.iter_vars:
        var, ext = iv.var, iv.dom.extent
        if isinstance(ext, tirx.IntImm) and ext.value == 1:
            kind = IterKind.kIter_T
        elif iv.iter_type == tirx.IterVar.DataPar:
            in_a, in_b, in_c = var in a_axes, var in b_axes, var in c_axes
            if in_a and in_b and in_c:
                kind = IterKind.kIter_S
            elif in_a and in_c:
                kind = IterKind.kIter_I
            elif in_b and in_c:
                kind = IterKind.kIter_J
            else:
                return None
        elif iv.iter_type == tirx.IterVar.CommReduce and var in a_axes and var in b_axes and var not in c_axes:
            kind = IterKind.kIter_K
        else:
            return None
        traits[var] = IterTrait(kind, ext)
    kinds = {t.kind for t in traits.values()}
    if not {_J, _K} <= kinds:
        return None
    pick = lambda ax: [traits[iv.var] for iv in block.iter_vars if iv.var in ax]  # noqa: E731
    return pick(a_axes), pick(b_axes), pick(c_axes), [traits[iv.var] for iv in block.iter_vars]


class Matmul(CPURule):
    """Register-blocked, packed, parallel GEMM for single-reduction matmul-like PrimFuncs."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        main = gemm_reduction(sch)
        if main is None or str(sch.get(main).writes[0].source.dtype) not in _ACC:
            return None
        layout_free = {int(i) for i in (func.attrs or {}).get("layout_free_buffers", [])}
        try:
            padded_rows, ragged_cols = _schedule(sch, main, cpu_shape(target), layout_free, func)
        except (ValueError, s_tir.ScheduleError, RuntimeError):  # TVM errors are RuntimeErrors
            return None  # a shape this rule cannot take: the next rule tries
        if _REPLAYABLE.get() or not (padded_rows or ragged_cols):
            return sch
        out = sch.mod["main"]
        if padded_rows:
            out = clamp_padded_rows(out, sch.get(main).name_hint)
        if ragged_cols:
            out = overlap_last_panel(out, *ragged_cols)
        return s_tir.Schedule(out)


def gemm_reduction(sch: s_tir.Schedule):
    """The function's one reduction block if it is a GEMM the rule's micro-kernel computes
    (``C = C + A·B`` over iterators ``detect_iter_traits`` classifies), else None."""
    reductions = [b for b in sch.get_child_blocks(get_root_block(sch)) if is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    stmt = sch.get(reductions[0])
    if detect_iter_traits(stmt) is None or not is_multiply_accumulate(stmt):
        return None
    return reductions[0]


def is_multiply_accumulate(block: s_tir.SBlock) -> bool:
    """``C = C + A * B`` (possibly with casts): what the rule's micro-kernel computes."""
    body = block.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return False
    rhs = body.value.b
    while isinstance(rhs, tirx.Cast):
        rhs = rhs.value
    return isinstance(rhs, tirx.Mul)


def _schedule(sch: s_tir.Schedule, main, shape: CpuShape, layout_free: set[int], func):
    """Schedules ``main``; returns whether I was padded (its guard is inlined: see
    ``clamp_padded_rows``), and where J is ragged ``(pack block, write-back block, n, nr)`` for
    ``overlap_last_panel`` (else None)."""
    inline_spatial_around(sch, main)
    root = get_root_block(sch)
    if len([b for b in sch.get_child_blocks(root) if is_reduction(sch, b)]) != 1:
        raise ValueError("a second reduction survived inlining")

    a_traits, b_traits, c_traits, block_traits = detect_iter_traits(sch.get(main))
    b_source = sch.get(main).reads[1].source
    reindex_a = sch.reindex(main, ("read", 0))
    reindex_b = sch.reindex(main, ("read", 1))
    reindex_c = sch.reindex(main, ("write", 0))
    sch.transform_layout(reindex_a, ("write", 0), make_iter_fusion_index_map(a_traits, [_S, _I, _K]))
    sch.transform_layout(reindex_b, ("write", 0), make_iter_fusion_index_map(b_traits, [_S, _K, _J]))
    sch.transform_layout(reindex_c, ("read", 0), make_iter_fusion_index_map(c_traits, [_S, _I, _J]))
    sch.transform_block_layout(main, make_iter_fusion_index_map(block_traits, [_S, _I, _J, _K]))

    s_loop, i_loop, j_loop, k_loop = sch.get_loops(main)
    m, n, k = extent(sch, i_loop), extent(sch, j_loop), extent(sch, k_loop)
    if None in (m, n, k):
        raise ValueError("symbolic extents")
    dtype = block_dtype(sch, main)
    lanes = shape.lanes(dtype)
    mr, nj = micro_kernel(m, n, lanes, shape.vector_registers, shape.loads_per_fma)
    nr = nj * lanes
    sch.pad_einsum(main, [1, mr, nr, 1])

    # A: read in place. Where I was padded, the padding rows read A's last row instead of a
    # padded copy (``clamp_padded_rows`` after scheduling): their results are never written back.
    a_pad = _next_stage(sch, reindex_a, main)
    sch.compute_inline(reindex_a)
    if a_pad is not None:
        sch.compute_inline(a_pad)

    # B: staged through a panel-packed buffer (folded at compile time for weights), except an
    # activation that already is one panel ([S, K, J], J contiguous, no padding): read in place.
    b_pad = _next_stage(sch, reindex_b, main)
    layout_free_b = _is_layout_free(b_source, layout_free, func)
    if b_pad is None and not layout_free_b and n == nr and _contiguous_copy(sch, reindex_b):
        sch.compute_inline(reindex_b)
    else:
        if b_pad is not None:
            sch.compute_inline(reindex_b)
            b_pack = b_pad
        else:
            b_pack = reindex_b
        sch.transform_layout(b_pack, ("write", 0), lambda s, kk, j: (s, j // nr, kk, j % nr))
        if layout_free_b:
            sch.annotate(b_pack, "meta_schedule.layout_rewrite_preproc", True)
        elif not _transpose_copy(sch, b_pack, lanes):
            _parallel_copy(sch, b_pack, shape, lanes)

    ragged = None
    if b_pad is not None and n % nr and n > nr:  # the last panel is partly padding
        ragged = (sch.get(b_pack).name_hint, n, nr)

    # C: accumulate in registers, write back through the epilogue once per tile.
    writeback = sch.get_consumers(main)[0]
    _fold_consumers_into(sch, writeback)
    sch.set_scope(main, 0, "local")

    n_panels = math.ceil(n / nr)
    panel_bytes = k * nr * tvm.DataType(dtype).bits // 8
    jt = max(1, min(n_panels, (shape.l2_bytes // 2) // max(panel_bytes, 1)))
    while n_panels % jt:
        jt -= 1
    s_loop, i_loop, j_loop, k_loop = sch.get_loops(main)
    jb, jt_loop, j_vec, j_lane = sch.split(j_loop, [None, jt, nj, lanes])
    i_outer, i_inner = sch.split(i_loop, [None, mr])
    chunks = row_chunks(math.ceil(m / mr), shape.cores)
    if chunks > 1 and extent(sch, s_loop) == 1:
        ic, ir = sch.split(i_outer, [chunks, None])
        sch.reorder(s_loop, ic, jb, ir, jt_loop, k_loop, i_inner, j_vec, j_lane)
        sch.parallel(sch.fuse(s_loop, ic))
    else:
        sch.reorder(s_loop, jb, i_outer, jt_loop, k_loop, i_inner, j_vec, j_lane)
        sch.parallel(sch.fuse(s_loop, jb, i_outer))
    sch.unroll(i_inner)
    sch.unroll(j_vec)
    sch.vectorize(j_lane)

    sch.reverse_compute_at(writeback, jt_loop, preserve_unit_loops=True)
    vectorize_inner(sch, writeback, lanes)
    init = sch.decompose_reduction(main, k_loop)
    vectorize_inner(sch, init, lanes)

    for blk in sch.get_child_blocks(root):  # epilogue blocks that could not be folded
        if not sch.get(blk).same_as(sch.get(main)) and sch.get_producers(blk) and _reads_output(
            sch, blk, writeback
        ):
            schedule_injective(sch, blk, shape)
    if ragged is not None:
        ragged = (ragged[0], sch.get(writeback).name_hint, ragged[1], ragged[2])
    return a_pad is not None, ragged


def _contiguous_copy(sch: s_tir.Schedule, blk) -> bool:
    """Whether a reindex block copies its source's innermost axis to its own innermost axis
    (so reading the source in place keeps the micro-kernel's vector loads contiguous)."""
    stmt = sch.get(blk)
    if len(stmt.reads) != 1 or len(stmt.writes) != 1:
        return False
    src, dst = stmt.reads[0].region, stmt.writes[0].region
    return bool(src and dst) and tvm_ffi.structural_equal(src[-1].min, dst[-1].min)


def clamp_padded_rows(func: tirx.PrimFunc, update: str) -> tirx.PrimFunc:
    """In the GEMM's update block ``update`` (iterators ``s, i, j, k``), the inlined guard of
    ``pad_einsum``'s row padding, ``if_then_else(i < m, A[.., i, ..], 0)``, becomes
    ``A[.., min(i, m - 1), ..]``. The rows ``i ≥ m`` only pad I to the register tile and are
    never written back (the write-back keeps ``i < m``), so any finite value will do; the
    clamped load has no branch or select in the micro-kernel, and its address is invariant in
    the k loop. Only a guard on ``i`` itself is rewritten (never one on k: that padding adds)."""
    ite = tvm.ir.Op.get("prim.if_then_else")

    def rewrite(block):
        ivs = block.iter_vars
        if block.name_hint != update or len(ivs) != 4 or ivs[3].iter_type != tirx.IterVar.CommReduce:
            return block
        i_var = ivs[1].var

        def clamp(call):
            if not call.op.same_as(ite):
                return call
            cond, then, other = call.args
            if not (isinstance(cond, tirx.LT) and cond.a.same_as(i_var) and isinstance(cond.b, tirx.IntImm)
                    and isinstance(then, tvm.ir.expr.TensorLoad) and isinstance(other, (tirx.FloatImm, tirx.IntImm))
                    and other.value == 0):
                return call
            hits = [d for d, idx in enumerate(then.indices) if idx.same_as(i_var)]
            if len(hits) != 1 or not tvm_ffi.structural_equal(then.source.shape[hits[0]], cond.b):
                return call
            idx = list(then.indices)
            idx[hits[0]] = tirx.min(i_var, cond.b - 1)
            return tirx.BufferLoad(then.source, idx)

        return tvm_ffi.structural_map(block, [(tvm.ir.expr.Call, clamp)])

    return tvm_ffi.structural_map(func, [(s_tir.SBlock, rewrite)])


def overlap_last_panel(func: tirx.PrimFunc, pack: str, writeback: str, n: int, nr: int) -> tirx.PrimFunc:
    """J padded to whole ``nr``-column panels (``n % nr != 0``): the last panel computes the
    last ``nr`` real columns, ``[n - nr, n)``, instead of ``[⌊n/nr⌋·nr, ⌈n/nr⌉·nr)`` with padding.

    Padded column ``c`` stands for real column ``min(⌊c/nr⌋·nr, n - nr) + c mod nr``. The
    packing block ``pack`` reads B there (its ``if_then_else(c < n, B[.., c], 0)`` guard goes);
    the write-back block ``writeback`` stores there, unpredicated on J, so every store is a
    whole contiguous vector. Before, the one ragged column predicate made the x86 vectorizer
    scalarize the whole write-back (DeiT's QKᵀ, 197 keys: 171 µs against 110 µs for 208
    columns). The columns the last panel shares with the one before are computed twice, by the
    same products in the same order, and stored twice with identical values; the work is what
    the padding cost."""
    ite = tvm.ir.Op.get("prim.if_then_else")
    last = n - nr

    def real(c):
        return tirx.min(tirx.floordiv(c, nr) * nr, tirx.const(last, c.ty.dtype)) + tirx.floormod(c, nr)

    def subst(expr, var, by):
        return tvm_ffi.structural_map(expr, [(tirx.Var, lambda v: by if v.same_as(var) else v)])

    def rewrite_pack(block):
        if block.name_hint != pack:
            return block

        def unguard(call):
            if not call.op.same_as(ite):
                return call
            cond, then, other = call.args
            if not (isinstance(cond, tirx.LT) and isinstance(cond.a, tirx.Var) and isinstance(cond.b, tirx.IntImm)
                    and cond.b.value == n and isinstance(then, tvm.ir.expr.TensorLoad)
                    and isinstance(other, (tirx.FloatImm, tirx.IntImm)) and other.value == 0):
                return call
            c = cond.a
            if sum(idx.same_as(c) for idx in then.indices) != 1:
                return call
            unguarded.append(call)
            return tirx.BufferLoad(then.source, [real(c) if idx.same_as(c) else idx for idx in then.indices])

        return tvm_ffi.structural_map(block, [(tvm.ir.expr.Call, unguard)])

    def rewrite_writeback(realize):
        block = realize.block
        if block.name_hint != writeback:
            return realize
        loads = []
        tvm_ffi.structural_walk(block.body, [(tvm.ir.expr.TensorLoad, loads.append)])
        # the accumulator: the local buffer the write-back reads; its last index is the column
        # (the store may be in any layout: a fused transpose writes out[.., j, i])
        acc = {ld.source for ld in loads if str(ld.source.scope()) == "local"}
        if len(acc) != 1:
            return realize
        acc = acc.pop()
        cols = {ld.indices[-1] for ld in loads if ld.source.same_as(acc)}
        col_vars = [iv for iv in block.iter_vars if any(iv.var.same_as(c) for c in cols)]
        if len(cols) != 1 or len(col_vars) != 1:
            return realize
        civ = col_vars[0]
        pos = [i for i, iv in enumerate(block.iter_vars) if iv.same_as(civ)][0]
        binding = realize.iter_values[pos]
        pad = (n + nr - 1) // nr * nr

        def move(node):
            if isinstance(node, tirx.BufferStore) and not node.buffer.same_as(acc):
                return tirx.BufferStore(node.buffer, node.value, [subst(i, civ.var, real(civ.var)) for i in node.indices])
            return node

        def move_load(load):
            if load.source.same_as(acc):
                return load
            return tirx.BufferLoad(load.source, [subst(i, civ.var, real(civ.var)) for i in load.indices])

        body = tvm_ffi.structural_map(block.body, [(tvm.ir.expr.TensorLoad, move_load), (tirx.BufferStore, move)])
        iter_vars = list(block.iter_vars)
        iter_vars[pos] = tirx.IterVar(Range(tirx.const(0, civ.var.ty.dtype), tirx.const(pad, civ.var.ty.dtype)), civ.var,
                                      civ.iter_type)
        new_block = s_tir.SBlock(iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
                                 block.alloc_buffers, block.match_buffers, block.annotations)

        def conjuncts(e):
            return conjuncts(e.a) + conjuncts(e.b) if isinstance(e, tirx.And) else [e]

        ana = tvm.sym.Analyzer()
        parts = conjuncts(realize.predicate)
        keep = [c for c in parts if not (
            isinstance(c, tirx.LT) and isinstance(c.b, tirx.IntImm) and c.b.value == n
            and ana.can_prove_equal(c.a, binding))]
        if len(keep) != len(parts) - 1:  # the column guard must go, or the last columns go unwritten
            return realize
        done.append(block.name_hint)
        pred = keep[0] if keep else tirx.const(True, "bool")
        for c in keep[1:]:
            pred = tirx.And(pred, c)
        return s_tir.SBlockRealize(realize.iter_values, pred, new_block)

    unguarded, done = [], []
    out = tvm_ffi.structural_map(func, [(s_tir.SBlock, rewrite_pack)])
    out = tvm_ffi.structural_map(out, [(s_tir.SBlockRealize, rewrite_writeback)])
    # both halves or neither: a last panel computing [n - nr, n) must be stored there, and one
    # stored there must have been computed there
    return out if len(unguarded) == 1 and done == [writeback] else func


def _next_stage(sch: s_tir.Schedule, blk, main):
    """The pad block between ``blk`` and ``main``, or None when ``blk`` feeds ``main`` directly."""
    consumers = sch.get_consumers(blk)
    if len(consumers) == 1 and not sch.get(consumers[0]).same_as(sch.get(main)):
        return consumers[0]
    return None


def _fold_consumers_into(sch: s_tir.Schedule, writeback) -> None:
    """Reverse-inline the unpad/reindex copies and the epilogue into the write-back block."""
    progress = True
    while progress:
        progress = False
        for consumer in sch.get_consumers(writeback):
            try:
                sch.reverse_compute_inline(consumer)
            except s_tir.ScheduleError:
                continue
            progress = True
            break


def _reads_output(sch: s_tir.Schedule, blk, writeback) -> bool:
    outs = {r.source.name for r in sch.get(writeback).writes}
    return any(r.source.name in outs for r in sch.get(blk).reads)


def _is_layout_free(buffer, layout_free: set[int], func: tirx.PrimFunc) -> bool:
    """Whether ``buffer`` is a parameter the caller passes as a constant (a weight).

    In TVM 0.27 a PrimFunc's params are its buffers, so identity is a ``same_as``.
    """
    return any(i < len(func.params) and func.params[i].same_as(buffer) for i in layout_free)


def _parallel_copy(sch: s_tir.Schedule, blk, shape: CpuShape, lanes: int) -> None:
    loops = sch.get_loops(blk)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    vectorize_inner(sch, blk, lanes)


def _transpose_copy(sch: s_tir.Schedule, blk, lanes: int) -> bool:
    """Schedule a packing copy that transposes (QKᵀ: B is Kᵀ, packed from K ``[.., J, K]``,
    whose contiguous axis is the reduction) in ``lanes × lanes`` blocks: per block, each
    vector store writes ``lanes`` contiguous panel columns, gathered from ``lanes`` source rows
    that the block keeps in L1. The plain copy either gathers along a whole panel row (vector
    over J, one source row per lane, strided by the row length) or scatters scalar stores;
    the blocked one measured 4.2 µs against 11.5 µs for DeiT's 3 × 197 × 64 keys (Zen 4,
    2 threads). Returns False (nothing scheduled) for any other copy."""
    stmt = sch.get(blk)
    loops = sch.get_loops(blk)
    if len(stmt.reads) != 1 or len(stmt.writes) != 1 or len(loops) != len(stmt.iter_vars):
        return False
    src, dst = stmt.reads[0].region, stmt.writes[0].region
    used = lambda r: set(undefined_vars(r.min))  # noqa: E731
    ivs = [iv.var for iv in stmt.iter_vars]
    if len(dst) < 2:
        return False
    # the panel's column (j) and reduction (k) iterators; transposing: k, not j, moves along
    # the source's contiguous axis (there, other iterators may add offsets: a head's columns)
    col = [i for i, v in enumerate(ivs) if v in used(dst[-1])]
    row = [i for i, v in enumerate(ivs) if v in used(dst[-2]) and v in used(src[-1])]
    if len(col) != 1 or len(row) != 1 or col == row or ivs[col[0]] in used(src[-1]):
        return False
    j, k = col[0], row[0]
    for loop, iv in zip(loops, stmt.iter_vars):  # a fresh block: loop i binds iterator i
        if not isinstance(iv.dom.extent, tirx.IntImm) or extent(sch, loop) != iv.dom.extent.value:
            return False
    if extent(sch, loops[j]) % lanes or extent(sch, loops[k]) % lanes:
        return False
    jo, ji = sch.split(loops[j], [None, lanes])
    ko, ki = sch.split(loops[k], [None, lanes])
    outer = [lp for i, lp in enumerate(loops) if i not in (j, k)]
    sch.reorder(*outer, jo, ko, ki, ji)
    sch.parallel(sch.fuse(*outer, jo, ko))
    sch.unroll(ki)
    sch.vectorize(ji)
    return True
