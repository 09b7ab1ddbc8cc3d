"""Default (untuned) CPU schedule rules, dlight style: one rule per file, tried in order."""

import os
import sys

from tvm.s_tir import dlight as dl

from .attention_linear import LinearAttentionKernels
from .attention_sparse import PolarizedAttentionKernels
from .base import CpuShape, cpu_shape
from .conv import Conv2dNHWC
from .fallback import Fallback
from .injective import Injective
from .int8 import Int8MatmulVNNI
from .matmul import Matmul
from .reduction import RowReduction, WindowReduction
from .shift_add import ShiftAddKernels


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
        except (ImportError, NameError, SyntaxError):
            raise  # our bug, not TVM declining: a broken import once silenced a whole GPU rule
        except Exception as err:  # noqa: BLE001 - TVM raises RuntimeError/ValueError/TypeError…
            if os.environ.get("ACCELC_DEBUG"):
                name = func.attrs.get("global_symbol", "?") if func.attrs else "?"
                print(f"accelc: {type(self.rule).__name__} declined {name}: "
                      f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
            return None

    def __repr__(self) -> str:
        return f"Guarded({type(self.rule).__name__})"


def default_rules() -> list[dl.ScheduleRule]:
    """The rules ``targets.cpu`` applies to every PrimFunc no tuning record covers."""
    rules = (ShiftAddKernels(), PolarizedAttentionKernels(), LinearAttentionKernels(), Int8MatmulVNNI(),
             Conv2dNHWC(), Matmul(), RowReduction(), WindowReduction(), dl.cpu.Reduction(), Injective(), Fallback())
    return [Guarded(r) for r in rules]


__all__ = [
    "Conv2dNHWC", "CpuShape", "Fallback", "Guarded", "Injective", "Int8MatmulVNNI", "LinearAttentionKernels", "Matmul",
    "PolarizedAttentionKernels",
    "RowReduction", "ShiftAddKernels",
    "WindowReduction", "cpu_shape", "default_rules",
]
