"""Last-resort CPU rule: any PrimFunc gets parallel outer loops and a vectorized inner loop."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from .base import CPURule, cpu_shape, extent, is_reduction, schedule_injective


class Fallback(CPURule):
    """Inline spatial blocks, then parallelize the leading spatial loops of each block.

    Reductions keep their loop order (their innermost loop is the reduction); spatial blocks are
    also vectorized along their innermost loop. Correct for everything, fast for little.
    """

    def apply(self, func: tirx.PrimFunc, target, tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        root = get_root_block(sch)
        shape = cpu_shape(target)
        for blk in sch.get_child_blocks(root):
            if not is_reduction(sch, blk):
                try:
                    sch.compute_inline(blk)
                except s_tir.ScheduleError:
                    pass
        for blk in sch.get_child_blocks(root):
            if not is_reduction(sch, blk):
                schedule_injective(sch, blk, shape)
                continue
            loops = sch.get_loops(blk)
            kinds = [iv.iter_type for iv in sch.get(blk).iter_vars]
            if len(loops) != len(kinds):
                continue
            lead = []
            for loop, kind in zip(loops, kinds):
                if kind != tirx.IterVar.DataPar or extent(sch, loop) is None:
                    break
                lead.append(loop)
            if lead:
                sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])
        return sch
