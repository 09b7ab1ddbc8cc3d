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
            schedule_injective(sch, blk, shape)
        return sch


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
