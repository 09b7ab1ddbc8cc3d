"""How accelc's custom TIR kernels name themselves.

Every kernel PrimFunc carries ``accelc.kernel`` (its name) and its shape parameters as
``accelc.<param>`` attributes, so a target's schedule rule can recognise it and a simulator or
report can cost it. Kernels are opaque to FuseOps (``op_pattern`` 8): a fused PrimFunc would
lose these attributes, and with them the rule that schedules the kernel.
"""

from __future__ import annotations

from tvm import tirx


def named_kernel(func: tirx.PrimFunc, kernel: str, **params) -> tirx.PrimFunc:
    """``func`` tagged as ``kernel`` with its parameters (ints, floats or strings)."""
    func = func.with_attr("accelc.kernel", kernel).with_attr("op_pattern", 8)
    for key, value in params.items():
        func = func.with_attr(f"accelc.{key}", value)
    return func


def kernel_name(func) -> str | None:
    """The ``accelc.kernel`` attribute of a PrimFunc (None for other functions)."""
    attrs = getattr(func, "attrs", None)
    if attrs is None or "accelc.kernel" not in attrs:
        return None
    return str(attrs["accelc.kernel"])


def kernel_param(func, key: str) -> int:
    return int(func.attrs[f"accelc.{key}"])


def kernel_param_float(func, key: str) -> float:
    return float(func.attrs[f"accelc.{key}"])


__all__ = ["kernel_name", "kernel_param", "kernel_param_float", "named_kernel"]
