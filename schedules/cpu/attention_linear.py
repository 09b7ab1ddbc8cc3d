"""CPU schedules for the linear-attention kernels (``accelc.schedules.attention_linear``).

Two phases:

- Keys, one parallel region per block over (b, h[, chunk]): ``key_weight``, ``k_scale`` (its
  ``k_sumsq`` inside), ``k_hat`` (w·k̂), the per-chunk states — ``chunk_kv`` a 4 × 2·lanes
  register-tiled GEMM over the chunk's keys, which sit in L1 — and, for the non-causal forms,
  the totals (``kv_state``…) summed chunk by chunk into an L1-resident accumulator.
- Queries: the output's rows in tiles (the chunk for the chunked forms, else 32 rows), one
  parallel region over (b, h, tile); every per-query block — the norms, the far (prefix)
  states of the tile's chunk, the transposed chunk keys, the in-chunk weights, the products
  with the states — is computed inside its tile, so its intermediates stay in cache. Products
  are register-tiled GEMMs; per-row reductions over d or the chunk (norms, denominators, the
  softmax max) are rfactored over the vector width instead of one scalar dependency chain.

Loops whose extent is not a multiple of the vector width stay scalar (``vectorize_inner``).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from ..attention_linear import kernel_name, kernel_param
from .base import CPURule, cpu_shape, extent, vectorize_inner

#: Blocks of the key phase (scheduled at the root); every other block but ``out`` moves into
#: the output's row tiles.
_KEY_PHASE = ("key_weight", "k_sumsq", "k_scale", "k_hat", "kv_state", "k_state", "v_state", "w_state",
              "chunk_kv", "chunk_k", "chunk_v", "chunk_w")
#: Reductions whose innermost spatial loop is d-wide (or the chunk): reordered below the
#: reduction and vectorized.
_VECTOR_REDUCTIONS = ("kv_state", "k_state", "v_state", "chunk_kv", "chunk_k", "chunk_v", "far_kv", "far_k",
                      "far_v", "attn_num", "far_num", "intra_num", "intra_dot")
#: Spatial blocks vectorized along their innermost loop.
_VECTOR_SPATIAL = ("out", "castling_raw", "intra_weight", "key_weight")
#: GEMM-shaped reductions, register-tiled (``_register_tile``).
_GEMMS = ("chunk_kv", "attn_num", "far_num", "intra_num", "intra_dot")
#: Sums of chunk states over chunks: (chunk, state) order, each chunk's state streamed
#: contiguously into an L1-resident accumulator.
_STREAMS = {"kv_state": 2, "k_state": 2, "v_state": 2, "far_kv": 3, "far_k": 3, "far_v": 3}
#: Rows of a register tile.
_X_TILE = 4
#: Row reductions, rfactored over the vector width (``_rfactor_row``).
_ROW_REDUCTIONS = ("q_sumsq", "k_sumsq", "attn_den", "far_den", "out_sumsq", "intra_den", "local_max")
#: Rows per parallel task of the non-chunked forms.
_ROW_TILE = 32


def _reduce_loops(sch, blk, loops):
    """Split a block's own loops (in iter-var order) into spatial and reduction loops."""
    ivs = sch.get(blk).iter_vars
    loops = loops[-len(ivs):]
    sp = [lp for lp, iv in zip(loops, ivs) if iv.iter_type != tirx.IterVar.CommReduce]
    rd = [lp for lp, iv in zip(loops, ivs) if iv.iter_type == tirx.IterVar.CommReduce]
    return sp, rd


def _vector_reduction(sch, blk, lanes, pending):
    """(spatial…, reduction, innermost spatial): the innermost spatial loop vectorized. The
    accumulator's init is split off later (``_decompose``): a decomposed block is no longer a
    reduction block, which ``parallel`` and ``compute_at`` on enclosing loops reject."""
    sp, rd = _reduce_loops(sch, blk, sch.get_loops(blk))
    if not rd:
        vectorize_inner(sch, blk, lanes)
        return
    sch.reorder(*sp[:-1], *rd, sp[-1])
    vectorize_inner(sch, blk, lanes)
    pending.append((blk, rd[0]))


def _stream_reduction(sch, blk, lanes, pending, lead):
    """Loops (first ``lead`` spatial, reduction, other spatial), the innermost vectorized."""
    sp, rd = _reduce_loops(sch, blk, sch.get_loops(blk))
    if rd and len(sp) > lead:
        sch.reorder(*sp[:lead], *rd, *sp[lead:])
    vectorize_inner(sch, blk, lanes)
    if rd:
        pending.append((blk, rd[0]))


def _rfactor_row(sch, blk, lanes):
    """A per-row reduction over a d- or chunk-wide loop (norms, denominators, the softmax max)
    split into ``lanes`` partial accumulators (rfactor, block ``<name>_rf``) and one short
    horizontal reduction — instead of one dependent chain of d scalar FMAs per row. Run at the
    root, before ``compute_at``; ragged widths stay scalar. Returns the rf block or None."""
    sp, rd = _reduce_loops(sch, blk, sch.get_loops(blk))
    if len(rd) != 1:
        return None
    width = extent(sch, rd[0])
    if width is None or width % lanes or width < 2 * lanes:
        return None
    _, ri = sch.split(rd[0], [None, lanes])
    return sch.rfactor(ri, len(sp))


def _vectorize_rf(sch, rf, pending):
    """An rf block's loops (in iter-var order: the lane axis first) as (rows, partial step,
    lane), the lanes vectorized."""
    sp, rd = _reduce_loops(sch, rf, sch.get_loops(rf))
    sch.reorder(*sp[1:], *rd, sp[0])
    sch.vectorize(sp[0])
    pending.append((rf, rd[0]))


def _register_tile(sch, blk, lanes, pending):
    """A GEMM-shaped reduction ``acc[…, x, y] += f(…, x, r) * g(…, r, y)``: an ``XR`` × ``2·lanes``
    tile of accumulators held in registers (a local cache, fully unrolled) over the whole
    reduction — per step, ``XR`` broadcasts, two vector loads and ``2·XR`` FMAs. Blocks whose
    ``y`` is not a multiple of the vector width fall back to :func:`_vector_reduction`."""
    sp, rd = _reduce_loops(sch, blk, sch.get_loops(blk))
    if not rd or len(sp) < 2:
        _vector_reduction(sch, blk, lanes, pending)
        return
    x, y = sp[-2], sp[-1]
    nx, ny = extent(sch, x), extent(sch, y)
    yv = next((w for w in (2 * lanes, lanes) if ny is not None and ny % w == 0), None)
    if yv is None or nx is None:
        _vector_reduction(sch, blk, lanes, pending)
        return
    xr = next(r for r in (_X_TILE, 2, 1) if nx % r == 0) if nx < 2 * _X_TILE else _X_TILE
    xo, xi = sch.split(x, [None, xr])
    yo, yi = sch.split(y, [None, yv])
    yio, yii = sch.split(yi, [None, lanes])
    sch.reorder(*sp[:-2], xo, yo, *rd, xi, yio, yii)
    cached = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(cached, yo, preserve_unit_loops=True)
    sch.unroll(xi)
    sch.unroll(yio)
    sch.vectorize(yii)
    c_loops = sch.get_loops(cached)
    c_yo, c_yi = sch.split(c_loops[-1], [None, lanes])
    sch.unroll(c_loops[-2])
    sch.unroll(c_yo)
    sch.vectorize(c_yi)
    pending.append((blk, rd[0]))


def _decompose(sch, pending, lanes):
    """Split each reduction's init out at its reduction loop and vectorize it."""
    for blk, loop in pending:
        init = sch.decompose_reduction(blk, loop)
        vectorize_inner(sch, init, lanes)


def _parallel_outer(sch, blk, count):
    """Fuse the block's first ``count`` loops into one parallel loop."""
    loops = sch.get_loops(blk)
    outer = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    sch.parallel(outer)
    return outer


class LinearAttentionKernels(CPURule):
    """Schedules PrimFuncs tagged ``linear_attention`` / ``linear_attention_decode``."""

    def apply(self, func, target, _tunable):  # noqa: D102
        name = kernel_name(func)
        if not self.is_target_available(target) or name not in ("linear_attention", "linear_attention_decode"):
            return None
        lanes = cpu_shape(target).lanes("float32")
        sch = s_tir.Schedule(func)
        if name == "linear_attention":
            self._prefill(sch, func, lanes)
        else:
            self._decode(sch, lanes)
        return sch

    @staticmethod
    def _blocks(sch):
        return {sch.get(b).name_hint: b for b in sch.get_child_blocks(get_root_block(sch))}

    def _prefill(self, sch, func, lanes) -> None:
        n = kernel_param(func, "n")
        chunked = bool(kernel_param(func, "causal")) or bool(kernel_param(func, "local"))
        tile = min(kernel_param(func, "chunk"), n) if chunked else min(_ROW_TILE, n)
        blocks = self._blocks(sch)
        pending = []
        rfs = set()
        for nm in _ROW_REDUCTIONS:
            if nm in blocks and _rfactor_row(sch, blocks[nm], lanes) is not None:
                rfs.add(nm + "_rf")
        blocks = self._blocks(sch)
        order = list(blocks)  # topological: create_prim_func emits producers first

        # Query phase: (b, h, tile) parallel; the per-query blocks inside the tile.
        out = blocks["out"]
        b, h, i, cc = sch.get_loops(out)
        io, ii = sch.split(i, [None, tile])
        task = sch.fuse(b, h, io)
        sch.parallel(task)
        key_phase = set(_KEY_PHASE) | {"k_sumsq_rf"}
        tiled = [nm for nm in reversed(order) if nm != "out" and nm not in key_phase]
        for nm in tiled:
            sch.compute_at(blocks[nm], task, preserve_unit_loops=True)
        for nm in tiled + ["out"]:
            blk = blocks[nm]
            if nm in rfs:
                _vectorize_rf(sch, blk, pending)
            elif nm in _GEMMS:
                _register_tile(sch, blk, lanes, pending)
            elif nm in _STREAMS:
                _stream_reduction(sch, blk, lanes, pending, _STREAMS[nm])
            elif nm in _VECTOR_REDUCTIONS:
                _vector_reduction(sch, blk, lanes, pending)
            elif nm in _VECTOR_SPATIAL:
                vectorize_inner(sch, blk, lanes)

        # Key phase.
        if "key_weight" in blocks:
            _parallel_outer(sch, blocks["key_weight"], 1)
            vectorize_inner(sch, blocks["key_weight"], lanes)
        ks = _parallel_outer(sch, blocks["k_scale"], 2)
        sch.compute_at(blocks["k_sumsq"], ks, preserve_unit_loops=True)
        if "k_sumsq_rf" in blocks:
            sch.compute_at(blocks["k_sumsq_rf"], ks, preserve_unit_loops=True)
            _vectorize_rf(sch, blocks["k_sumsq_rf"], pending)
        khat = blocks["k_hat"]
        _parallel_outer(sch, khat, 2)
        vectorize_inner(sch, khat, lanes)
        for names, outer in ((("kv_state", "k_state", "v_state", "w_state"), 2),
                             (("chunk_kv", "chunk_k", "chunk_v", "chunk_w"), 3)):
            for nm in names:
                if nm in blocks:
                    if nm in _GEMMS:
                        _register_tile(sch, blocks[nm], lanes, pending)
                    elif nm in _STREAMS:
                        _stream_reduction(sch, blocks[nm], lanes, pending, _STREAMS[nm])
                    elif nm in _VECTOR_REDUCTIONS:
                        _vector_reduction(sch, blocks[nm], lanes, pending)
                    _parallel_outer(sch, blocks[nm], outer)
        _decompose(sch, pending, lanes)

    def _decode(self, sch, lanes) -> None:
        blocks = self._blocks(sch)
        pending = []
        # The state update is the bulk (d² per head): (b, h) parallel, rows vectorized.
        s_new = blocks["S_new"]
        _parallel_outer(sch, s_new, 2)
        vectorize_inner(sch, s_new, lanes)
        num = blocks["attn_num"]
        _vector_reduction(sch, num, lanes, pending)
        _parallel_outer(sch, num, 2)
        for nm in ("z_new", "sv_new", "out"):
            vectorize_inner(sch, blocks[nm], lanes)
        _decompose(sch, pending, lanes)


__all__ = ["LinearAttentionKernels"]
