"""TIR kernel of the int8 rewrite (``passes/int8.py``): ``y = (xq @ wq) · sx[i] · sw[j]``.

``xq`` int8 ``[m, k]`` (activations quantized per row by the host), ``wq`` int8 ``[k, n]``
(weights quantized per output channel at compile time), int32 accumulation, float32 scales.
This is the operation a MAC PE array computes (int8 × int8 → int32), so the simulated
accelerator offloads it unchanged: the integer product is exact on both, and a ``-t sim``
build equals the CPU build bit for bit.
"""

from __future__ import annotations

from tvm import te, tirx

from .kernel_attrs import named_kernel


def int8_matmul(m: int, k: int, n: int, dequantize: bool = True) -> tirx.PrimFunc:
    """``acc[i, j] = Σ_k int32(xq[i, k]) · int32(wq[k, j])`` (block ``acc``), then, with
    ``dequantize``, ``y[i, j] = float(acc[i, j]) · x_scale[i] · w_scale[j]`` (block ``dequant``).

    Params: ``xq`` int8 ``[m, k]``, ``wq`` int8 ``[k, n]``, and with ``dequantize`` ``x_scale``
    float32 ``[m]``, ``w_scale`` float32 ``[n]``, output float32 ``[m, n]``; without it the
    int32 accumulator is the output (the bit-exact tests and the accelerator's view).
    """
    if not 1 <= k <= 2 ** 17:  # 127·127·k must stay below 2**31
        raise ValueError(f"int8_matmul: k = {k} would overflow the int32 accumulator (k ≤ 131072)")
    xq = te.placeholder((m, k), "int8", name="xq")
    wq = te.placeholder((k, n), "int8", name="wq")
    r = te.reduce_axis((0, k), "r")
    acc = te.compute((m, n), lambda i, j: te.sum(xq[i, r].astype("int32") * wq[r, j].astype("int32"), axis=r),
                     name="acc")
    if dequantize:
        sx = te.placeholder((m,), "float32", name="x_scale")
        sw = te.placeholder((n,), "float32", name="w_scale")
        y = te.compute((m, n), lambda i, j: acc[i, j].astype("float32") * sx[i] * sw[j], name="dequant")
        func = te.create_prim_func([xq, wq, sx, sw, y])
    else:
        func = te.create_prim_func([xq, wq, acc])
    return named_kernel(func, "int8_matmul", m=m, k=k, n=n, dequantize=int(dequantize))


def dequantize(m: int, n: int, row_scale: bool) -> tirx.PrimFunc:
    """``y[i, j] = float(acc[i, j]) · sx[i] · sw[j]`` (``row_scale``), else ``float(acc[i, j]) ·
    sw[j]``: the host half of an offloaded integer GEMM, the same float operations in the same
    order as the epilogue of :func:`int8_matmul` / ``pot_matmul_int``. A named (opaque) kernel,
    so FuseOps cannot fuse the following bias add into it (LLVM would contract the two into an
    FMA and round differently from the CPU build)."""
    acc = te.placeholder((m, n), "int32", name="acc")
    sw = te.placeholder((n,), "float32", name="w_scale")
    if row_scale:
        sx = te.placeholder((m,), "float32", name="x_scale")
        y = te.compute((m, n), lambda i, j: acc[i, j].astype("float32") * sx[i] * sw[j], name="dequant")
        params = [acc, sx, sw, y]
    else:
        y = te.compute((m, n), lambda i, j: acc[i, j].astype("float32") * sw[j], name="dequant")
        params = [acc, sw, y]
    return named_kernel(te.create_prim_func(params), "dequantize", m=m, n=n, row_scale=int(row_scale))


__all__ = ["dequantize", "int8_matmul"]
