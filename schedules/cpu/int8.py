"""CPU rule for the int8 rewrite's GEMM (``schedules/int8.py``) on AVX-512 VNNI targets.

Where the target has ``avx512vnni`` the kernel is re-derived as ``schedules/int8_vnni.py``
(``vpdpbusd``, bit-exact to the generic kernel); elsewhere the rule declines and the generic
``Matmul`` rule schedules it (int32 multiply-adds). A constant weight's packing is marked as a
layout rewrite, which the CPU pipeline hoists out of the kernel and folds at compile time.
"""

from __future__ import annotations

from tvm import s_tir

from .. import int8_vnni
from ..kernel_attrs import kernel_name, kernel_param
from .base import CPURule, cpu_shape, has_isa_feature


def has_vnni(target) -> bool:
    return has_isa_feature(target, "avx512vnni")


class Int8MatmulVNNI(CPURule):
    """Schedules PrimFuncs tagged ``accelc.kernel = "int8_matmul"`` with ``vpdpbusd``."""

    def apply(self, func, target, _tunable):  # noqa: D102
        if not self.is_target_available(target) or kernel_name(func) != "int8_matmul" or not has_vnni(target):
            return None
        m, k, n = (kernel_param(func, key) for key in ("m", "k", "n"))
        if k > int8_vnni.MAX_K:
            return None
        layout_free = {int(i) for i in (func.attrs or {}).get("layout_free_buffers", [])}
        new = int8_vnni.int8_matmul_vnni(m, k, n, bool(kernel_param(func, "dequantize")),
                                         parallel=cpu_shape(target).cores > 1, preproc_pack=1 in layout_free)
        return s_tir.Schedule(new.with_attrs({key: v for key, v in func.attrs.items()}))


__all__ = ["Int8MatmulVNNI", "has_vnni"]
