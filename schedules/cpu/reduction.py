"""CPU rules for reductions that are not GEMMs.

``RowReduction`` — softmax, layer norm, RMS norm, row sums: every block shares the leading
spatial axes (rows) and reduces along the innermost, contiguous one. Rows run in parallel;
each reduction is split by the vector width and ``rfactor``-ed into a vector of partial
results (a dependency chain of length n/lanes instead of n: the scalar chain is what makes
dlight's CPU rule latency-bound), then folded; elementwise stages are vectorized; every
intermediate shrinks to one row.

``WindowReduction`` — pooling and reductions over outer axes (max/avg pool, mean over H×W in
NHWC): the innermost output axis is spatial and contiguous, so it is moved inside the
reduction loops and vectorized.
"""

from __future__ import annotations

import re

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block, normalize_prim_func

from .base import CPURule, block_dtype, cpu_shape, extent, is_reduction, vectorize_inner


def _leading_spatial(kind: str) -> int:
    return len(kind) - len(kind.lstrip("S"))


def _cheap(sch: s_tir.Schedule, blk) -> bool:
    """A block whose value is a short expression with no call but ``fabs`` or a cast (the
    quantizer's ``abs``): recomputing it in each consumer costs less than storing it.
    (TVM 0.27's Python API has no TIR expression visitor; the printed form says it.)"""
    body = sch.get(blk).body
    if not isinstance(body, tirx.BufferStore):
        return False
    text = str(body.value)
    calls = set(re.findall(r"T\.(\w+)\(", text)) - {"fabs", "Cast", "float32", "float16", "int32", "int8", "int64"}
    return not calls and text.count("[") <= 2 and len(text) <= 160


def _inline_single_use(sch: s_tir.Schedule) -> None:
    """Inline spatial blocks with one consumer, or cheap ones with several (others would
    recompute, e.g. softmax's exp)."""
    root = get_root_block(sch)
    progress = True
    while progress:
        progress = False
        blocks = sch.get_child_blocks(root)
        for blk in blocks[:-1]:
            if is_reduction(sch, blk) or (len(sch.get_consumers(blk)) != 1 and not _cheap(sch, blk)):
                continue
            try:
                sch.compute_inline(blk)
            except s_tir.ScheduleError:
                continue
            progress = True
            break


class RowReduction(CPURule):
    """Parallel rows, rfactor-vectorized row reductions, vectorized elementwise stages."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        _inline_single_use(sch)
        infos = normalize_prim_func(sch)
        if not infos or not any(i.is_reduction() for i in infos):
            return None
        kinds = [i.dom_kind() for i in infos]
        if any(not k or k[0] != "S" for k in kinds):
            return None
        rows = min(_leading_spatial(k) for k in kinds)
        for info, kind in zip(infos, kinds):
            if info.is_reduction() and kind != "S" * _leading_spatial(kind) + "R" * (len(kind) - _leading_spatial(kind)):
                return None  # reductions must come after all spatial axes
            if info.is_reduction() and not _reduces_innermost(sch, info.block_rv):
                return None  # a column reduction: WindowReduction's business
        shape = cpu_shape(target)
        lanes = shape.lanes(block_dtype(sch, infos[-1].block_rv))

        # rfactor first, while every block still has its own loop nest at the root
        partials = [rf for info in infos if info.is_reduction()
                    for rf in self._vector_partials(sch, info.block_rv, lanes)]

        root = get_root_block(sch)
        blocks = sch.get_child_blocks(root)
        last = blocks[-1]
        loops = sch.get_loops(last)
        row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
        sch.parallel(row)
        for blk in reversed(blocks[:-1]):
            sch.compute_at(blk, row, preserve_unit_loops=False)
        for blk in blocks:
            # the row loop is the outermost; only loops below it are the block's own (a block
            # that is one value per row has none, and the row loop must stay parallel)
            if not is_reduction(sch, blk) and len(sch.get_loops(blk)) > 1:
                vectorize_inner(sch, blk, lanes)
        for rf in partials:
            # compute_at regenerated the loops in block-iterator order: the lane loop (rfactor
            # puts it first) above the reduction loop. Make the lanes innermost, vectorize
            # them, then split off the init (vectorize must come first).
            *_, ri, ro = sch.get_loops(rf)
            sch.reorder(ro, ri)
            sch.vectorize(ri)
            sch.decompose_reduction(rf, ro)
        return sch

    @staticmethod
    def _vector_partials(sch: s_tir.Schedule, blk, lanes: int) -> list:
        """``acc = Σ_r x[r]`` → ``part[l] = Σ_ro x[ro·lanes + l]`` (vector), then the partials
        folded pairwise, ``lanes → lanes/2 → … → 2`` (one vector add per level), then
        ``acc = part[0] + part[1]``.

        The fold used to be one scalar loop over the ``lanes`` partials: a chain of 16
        dependent adds per row and reduction, most of a layer norm's time on DeiT's 192-wide
        rows. Returns the partial-sum (rfactor) blocks, outermost level first; none when the
        row is short or ragged.
        """
        loops = sch.get_loops(blk)
        n = extent(sch, loops[-1])
        if n is None or n % lanes or n < 2 * lanes:
            return []  # (a predicated rfactor over a ragged row computed wrong partials)
        axis = len(sch.get(blk).writes[0].region)
        _, inner = sch.split(loops[-1], [None, lanes])
        out = [sch.rfactor(inner, factor_axis=axis)]
        width = lanes
        while width > 2 and width % 2 == 0:
            width //= 2
            _, inner = sch.split(sch.get_loops(blk)[-1], [2, width])
            out.append(sch.rfactor(inner, factor_axis=axis))
        return out


def _reduces_innermost(sch: s_tir.Schedule, blk) -> bool:
    """Whether the block's innermost loop is a reduction reading the innermost buffer axis."""
    stmt = sch.get(blk)
    red = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    if not red:
        return False
    inner = red[-1]
    for read in stmt.reads:
        last = read.region[-1].min if read.region else None
        if last is not None and any(v.same_as(inner) for v in tirx.analysis.undefined_vars(last)):
            return True
    return False


class WindowReduction(CPURule):
    """Reductions whose output's innermost axis is spatial: vectorize that axis inside them."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        root = get_root_block(sch)
        reds = [b for b in sch.get_child_blocks(root) if is_reduction(sch, b)]
        if len(reds) != 1:
            return None
        red = reds[0]
        for blk in sch.get_producers(red):  # the padding block: read it inline (a select)
            try:
                sch.compute_inline(blk)
            except s_tir.ScheduleError:
                pass
        stmt = sch.get(red)
        ivs = list(stmt.iter_vars)
        kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in ivs)
        if len(kinds) < 2 or kinds[-1] != "R" or "R" not in kinds or kinds.index("R") == 0:
            return None
        out_last = stmt.writes[0].region[-1].min
        spatial = [i for i, k in enumerate(kinds) if k == "S"]
        inner_s = spatial[-1]
        if not any(v.same_as(ivs[inner_s].var) for v in tirx.analysis.undefined_vars(out_last)):
            return None
        if _reduces_innermost(sch, red):
            return None  # that is a row reduction
        shape = cpu_shape(target)
        lanes = shape.lanes(block_dtype(sch, red))
        loops = sch.get_loops(red)
        c = loops[inner_s]
        reductions = [loops[i] for i, k in enumerate(kinds) if k == "R"]
        outer = [loops[i] for i in spatial[:-1]]
        sch.reorder(*outer, *reductions, c)
        n = extent(sch, c)
        if n is not None and n > lanes and n % lanes == 0:
            co, ci = sch.split(c, [None, lanes])
            sch.reorder(*outer, co, *reductions, ci)
            sch.vectorize(ci)
            par = [*outer, co]
        else:
            if n is not None and n <= lanes:
                sch.vectorize(c)
            par = outer
        if par:
            sch.parallel(sch.fuse(*par) if len(par) > 1 else par[0])
        sch.decompose_reduction(red, reductions[0])
        for blk in sch.get_consumers(red):
            try:
                sch.reverse_compute_inline(blk)
            except s_tir.ScheduleError:
                loops = sch.get_loops(blk)
                if len(loops) > 1:
                    sch.parallel(sch.fuse(*loops[:-1]))
                vectorize_inner(sch, blk, lanes)
        return sch
