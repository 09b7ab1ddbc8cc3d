"""CPU rule for purely spatial PrimFuncs: elementwise, broadcast, transpose, gather, concat."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from .base import CPURule, cpu_shape, is_reduction, schedule_injective


class Injective(CPURule):
    """Inline what inlines, then run every remaining loop nest parallel and vectorized."""

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        root = get_root_block(sch)
        blocks = sch.get_child_blocks(root)
        if not blocks or any(is_reduction(sch, b) for b in blocks):
            return None
        shape = cpu_shape(target)
        _inline_all(sch)
        for blk in sch.get_child_blocks(root):
            if not _patch_matrix(sch, blk):
                schedule_injective(sch, blk, shape)
        return sch


def _patch_matrix(sch: s_tir.Schedule, blk) -> bool:
    """An im2col block (``schedules.shift_add.im2col``, with producers inlined into it): its row
    loop split into (n, oh, ow) and its column loop into (c, kh, kw), so the flat indices'
    divisions and remainders become loop variables; parallel over (n, oh). Flat, the loop
    computed four divisions and remainders a element (12544 × 147 of them for ResNet's stem:
    3.5 ms of an int8 ResNet's 10.9)."""
    from ..shift_add import IM2COL_ATTR

    geometry = sch.get(blk).annotations.get(IM2COL_ATTR)
    loops = sch.get_loops(blk)
    if geometry is None or len(loops) != 2:
        return False
    n, oh, ow, c, kh, kw = (int(v) for v in geometry)
    rows, cols = (int(sch.get(lp).extent) for lp in loops)
    if rows != n * oh * ow or cols != c * kh * kw:
        return False
    r_n, r_oh, r_ow = sch.split(loops[0], [n, oh, ow])
    sch.split(loops[1], [c, kh, kw])
    sch.parallel(sch.fuse(r_n, r_oh))
    return True


def _inline_all(sch: s_tir.Schedule) -> None:
    """Inline every block into its consumer (never the function's outputs)."""
    root = get_root_block(sch)
    progress = True
    while progress:
        progress = False
        for blk in sch.get_child_blocks(root):
            try:
                sch.compute_inline(blk)
            except s_tir.ScheduleError:
                continue
            progress = True
            break
