"""CPU schedule for ViTCoD's polarized attention kernel (``accelc.schedules.attention_sparse``).

The kernel is re-derived with the target's vector width (its inner loops carry the vector
structure: a ``rows × 2·lanes`` register tile for the dense ``Q·K_Gᵀ`` GEMM, ``rows × 2·lanes``
output tiles for ``P_d·V_G``, ``lanes``-wide dot products and axpys for the CSR part), with the
task loops parallel: the reorder (gather) over (batch, head), the row tasks over
(batch, head, row block) as one loop.
"""

from __future__ import annotations

from tvm import s_tir

from .. import attention_sparse as kernels
from ..kernel_attrs import kernel_name, kernel_param, kernel_param_float
from .base import CPURule, cpu_shape

#: Query rows per task: the dense GEMM's register tile is ``ROWS × 2·lanes`` accumulators
#: (8 of 16 AVX2 registers), each ``K_G`` vector load serving ``ROWS`` rows.
ROWS = 4


class PolarizedAttentionKernels(CPURule):
    """Schedules PrimFuncs tagged ``accelc.kernel = "polarized_attention"``."""

    def apply(self, func, target, _tunable):  # noqa: D102
        if not self.is_target_available(target) or kernel_name(func) != "polarized_attention":
            return None
        shape = cpu_shape(target)
        lanes = shape.lanes("float32")
        p = {key: kernel_param(func, key) for key in ("b", "h", "n", "d", "nnz", "causal", "key_bias")}
        func = kernels.polarized_attention(
            p["b"], p["h"], p["n"], p["d"], p["nnz"], kernel_param_float(func, "scale"),
            causal=bool(p["causal"]), key_bias=bool(p["key_bias"]), lanes=lanes, rows=ROWS,
            parallel=shape.cores > 1).with_attrs({k: v for k, v in func.attrs.items()})
        # The blocks are opaque (CSR loop bounds), so s_tir's parallel primitive, which needs
        # affine data-parallel blocks, cannot mark the task loops: the re-derived kernel carries
        # them as parallel loops instead.
        return s_tir.Schedule(func)


__all__ = ["PolarizedAttentionKernels"]
