"""Default (untuned) CPU schedule rules, dlight style: one rule per file, tried in order."""

from tvm.s_tir import dlight as dl

from .base import CpuShape, cpu_shape
from .conv import Conv2dNHWC
from .fallback import Fallback
from .injective import Injective
from .matmul import Matmul


def default_rules() -> list[dl.ScheduleRule]:
    """The rules ``targets.cpu`` applies to every PrimFunc no tuning record covers."""
    return [Conv2dNHWC(), Matmul(), dl.cpu.Reduction(), Injective(), Fallback()]


__all__ = [
    "Conv2dNHWC", "CpuShape", "Fallback", "Injective", "Matmul", "cpu_shape", "default_rules",
]
