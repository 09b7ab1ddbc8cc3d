"""Default (untuned) CPU schedule rules, dlight style: one rule per file, tried in order."""

import tvm
from tvm import s_tir
from tvm.s_tir import dlight as dl

from .base import CpuShape, cpu_shape
from .conv import Conv2dNHWC
from .fallback import Fallback
from .injective import Injective
from .matmul import Matmul


class Guarded(dl.ScheduleRule):
    """A rule that declines (returns None) instead of failing when TVM rejects a primitive.

    Rules inspect PrimFuncs they did not write (scans, extern calls, opaque blocks); an odd
    one must cost a faster schedule, never the compile. The next rule then takes it.
    """

    def __init__(self, rule: dl.ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):  # noqa: D102
        try:
            return self.rule.apply(func, target, tunable)
        except (s_tir.ScheduleError, tvm.TVMError, ValueError, AssertionError):
            return None

    def __repr__(self) -> str:
        return f"Guarded({type(self.rule).__name__})"


def default_rules() -> list[dl.ScheduleRule]:
    """The rules ``targets.cpu`` applies to every PrimFunc no tuning record covers."""
    return [Guarded(r) for r in (Conv2dNHWC(), Matmul(), dl.cpu.Reduction(), Injective(), Fallback())]


__all__ = [
    "Conv2dNHWC", "CpuShape", "Fallback", "Guarded", "Injective", "Matmul", "cpu_shape", "default_rules",
]
