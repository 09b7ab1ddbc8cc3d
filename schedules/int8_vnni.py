"""The int8 GEMM of ``schedules/int8.py`` on AVX-512 VNNI: ``vpdpbusd`` (64 int8 MACs an
instruction, 4 per int32 lane, exact int32 accumulation), bit-exact to the generic kernel.

``vpdpbusd`` multiplies *unsigned* by signed bytes. The weights are made unsigned,
``wu = w + 128`` (once, when they are packed), and the activations stay signed, so the
accumulator holds ``Σ (w + 128)·x = Σ w·x + 128·Σ x``; the row sum ``Σ_r x[i, r]`` (``m·k``
adds a call, ``1/n`` of the GEMM) is subtracted before the epilogue. Every step is exact in
int32 for ``k ≤ 65536`` (``255·128·k < 2³¹``), and the epilogue does the generic kernel's float
operations in its order, so the result equals it bit for bit.

Blocks:

- ``pack``: ``wu[jo, ko, ji, ki] = u8(w[4·ko + ki, nr·jo + ji] + 128)``: column panels of
  ``nr = 16·nj`` columns, each 4-deep ``k`` step of a panel one contiguous ``nr × 4`` bytes
  (``nj`` zmm loads); ``n`` padded to whole panels and ``k`` to a multiple of 4 (padding is
  ``w = 0``). Marked ``meta_schedule.layout_rewrite_preproc`` when the weight is a constant
  (``preproc_pack=True``), so the CPU pipeline hoists it out of the kernel and folds it at
  compile time; otherwise it runs every call.
- ``xpad`` (only when ``k % 4 ≠ 0``): ``x`` with ``k`` padded to a multiple of 4 with zeros.
- ``rowsum``: ``Σ_r x[i, r]``.
- ``gemm``: parallel over (column panel, row block); an ``mr × nj`` tile of int32x16
  accumulators in registers; per 4-deep ``k`` step ``nj`` weight loads, ``mr`` broadcasts of 4
  activation bytes and ``mr·nj`` ``vpdpbusd``; then ``acc - 128·rowsum`` through the epilogue.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .kernel_attrs import named_kernel

#: Largest k for which ``Σ (w + 128)·x`` cannot overflow int32 (255·128·k < 2³¹).
MAX_K = 65536


def int8_matmul_vnni(m: int, k: int, n: int, dequantize: bool = True, *, mr: int = 12, nj: int = 2,
                     parallel: bool = True, preproc_pack: bool = False) -> tirx.PrimFunc:
    """Same parameters and result as ``int8_matmul(m, k, n, dequantize)``, computed with
    ``vpdpbusd``. ``mr`` rows × ``nj`` zmm vectors is the register tile (``mr·nj + nj + 1 ≤ 32``);
    ``preproc_pack`` marks the weight packing as a layout rewrite the pipeline may fold."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"int8_matmul_vnni: k = {k} outside 1..{MAX_K} (the unsigned-weight form "
                         "would overflow int32)")
    if mr * nj + nj + 1 > 32:
        raise ValueError(f"int8_matmul_vnni: a {mr}×{nj} tile needs more than 32 zmm registers")
    func = _root_allocations(_build(m, k, n, bool(dequantize), mr, nj, bool(parallel), bool(preproc_pack)))
    return named_kernel(func, "int8_matmul", m=m, k=k, n=n, dequantize=int(bool(dequantize)))


def _root_allocations(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Move the root's ``AllocBuffer`` statements into the root block's ``alloc_buffers``.

    Upstream symptom: TVMScript (0.27) parses ``T.alloc_buffer`` as an ``AllocBuffer``
    statement even under an explicit root block, and SplitLayoutRewritePreproc then aborts with
    "There should be at least a block in the subtree" (it expects every statement under the
    root to hold a block, as ``te.create_prim_func`` output does)."""
    from tvm import s_tir

    root = func.body.block
    seq = list(root.body.seq) if isinstance(root.body, tirx.SeqStmt) else [root.body]
    allocs = [st.buffer for st in seq if isinstance(st, tirx.stmt.AllocBuffer)]
    rest = [st for st in seq if not isinstance(st, tirx.stmt.AllocBuffer)]
    block = s_tir.SBlock([], [], [], "root", tirx.SeqStmt(rest) if len(rest) > 1 else rest[0],
                         alloc_buffers=list(root.alloc_buffers) + allocs)
    return func.with_body(s_tir.SBlockRealize([], True, block))


def _build(M, K, N, dequantize, MR, NJ, parallel, preproc):
    NR = 16 * NJ  # columns a panel
    NB = -(-N // NR)  # column panels
    NP = NB * NR
    K4 = -(-K // 4)
    KP = K4 * 4
    MB = -(-M // MR)  # row blocks
    PADX = KP != K
    XS = (M, KP) if PADX else (1, 1)  # x padded to whole 4-byte groups (unused when k % 4 = 0)
    task_loop = T.parallel if parallel else T.serial
    vpdpbusd = T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512")

    def rows_cols(ib, jb, r, jv, l):
        return ib * MR + r, jb * NR + jv * 16 + l

    def epilogue(acc, x_scale, w_scale, i, j):
        return T.Cast("float32", acc) * x_scale[i] * w_scale[j] if dequantize else acc

    @T.macro
    def pack(wq, wu):
        for jo, ko, ji, ki in T.grid(NB, K4, NR, 4):
            with T.sblock("pack"):
                vjo, vko, vji, vki = T.axis.remap("SSSS", [jo, ko, ji, ki])
                T.reads(wq[vko * 4 + vki, vjo * NR + vji])
                T.writes(wu[vjo, vko, vji, vki])
                if preproc:
                    T.sblock_attr({"meta_schedule.layout_rewrite_preproc": True})
                wu[vjo, vko, vji, vki] = T.if_then_else(
                    vko * 4 + vki < K and vjo * NR + vji < N,
                    T.Cast("uint8", T.Cast("int32", wq[T.min(vko * 4 + vki, K - 1), T.min(vjo * NR + vji, N - 1)])
                           + 128), T.uint8(128))

    @T.macro
    def gemm(xs, wu, rs, x_scale, w_scale, y):
        for task in task_loop(NB * MB):
            with T.sblock("gemm"):
                T.reads(xs[:, :], wu[:, :, :, :], rs[:])
                T.writes(y[:, :])
                jb = T.meta_var(task // MB)
                ib = T.meta_var(task % MB)
                acc = T.alloc_buffer((MR, NR), "int32", scope="local")
                for r in T.unroll(MR):
                    for jv in T.unroll(NJ):
                        acc[r, T.ramp(jv * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                for ko in range(K4):
                    # row by row: one broadcast of 4 activation bytes feeds the panel's nj vectors
                    # (a gather-free form: staged in a register array, LLVM's SLP pass turned the
                    # mr loads into a vpgatherqd)
                    for r in T.unroll(MR):
                        for jv in T.unroll(NJ):
                            acc[r, T.ramp(jv * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                vpdpbusd, acc[r, T.ramp(jv * 16, 1, 16)],
                                wu.vload([jb, ko, jv * 16, 0], "uint8x64"),
                                T.reinterpret("int8x64", T.broadcast(T.reinterpret(
                                    "int32", xs.vload([T.min(ib * MR + r, M - 1), ko * 4], "int8x4")), 16)),
                                dtype="int32x16")
                for r in T.unroll(MR):
                    for jv in T.unroll(NJ):
                        if ib * MR + r < M:
                            if jb * NR + jv * 16 + 16 <= N:  # a whole vector: the common case
                                for l in T.vectorized(16):
                                    i, j = T.meta_var(rows_cols(ib, jb, r, jv, l))
                                    y[i, j] = epilogue(acc[r, jv * 16 + l] - rs[i] * 128, x_scale, w_scale, i, j)
                            else:
                                for l in T.serial(16):
                                    i, j = T.meta_var(rows_cols(ib, jb, r, jv, l))
                                    if j < N:
                                        y[i, j] = epilogue(acc[r, jv * 16 + l] - rs[i] * 128, x_scale, w_scale,
                                                           i, j)

    @T.macro
    def xpad(xq, xs):
        for i in task_loop(M):
            for r in T.vectorized(KP):
                with T.sblock("xpad"):
                    vi, vr = T.axis.remap("SS", [i, r])
                    xs[vi, vr] = T.if_then_else(vr < K, xq[vi, T.min(vr, K - 1)], T.int8(0))

    @T.macro
    def rowsum(xq, rs):
        for i in task_loop(M):
            with T.sblock("rowsum"):
                T.reads(xq[i, 0:K])
                T.writes(rs[i])
                s = T.alloc_buffer((16,), "int32", scope="local")
                for l in T.vectorized(16):
                    s[l] = 0
                for ro in range(K // 16):
                    for l in T.vectorized(16):
                        s[l] = s[l] + T.Cast("int32", xq[i, ro * 16 + l])
                rs[i] = 0
                for l in range(16):
                    rs[i] = rs[i] + s[l]
                for r in range(K // 16 * 16, K):
                    rs[i] = rs[i] + T.Cast("int32", xq[i, r])

    @T.macro
    def body(xq, wq, x_scale, w_scale, y, wu, rs, xs):
        pack(wq, wu)
        rowsum(xq, rs)
        if PADX:
            xpad(xq, xs)
            gemm(xs, wu, rs, x_scale, w_scale, y)
        else:
            gemm(xq, wu, rs, x_scale, w_scale, y)

    if dequantize:
        @T.prim_func(s_tir=True)
        def kernel(xq: T.Buffer((M, K), "int8"), wq: T.Buffer((K, N), "int8"), x_scale: T.Buffer((M,), "float32"),
                   w_scale: T.Buffer((N,), "float32"), y: T.Buffer((M, N), "float32")):
            T.func_attr({"tirx.noalias": True})
            wu = T.alloc_buffer((NB, K4, NR, 4), "uint8")
            rs = T.alloc_buffer((M,), "int32")
            xs = T.alloc_buffer(XS, "int8")
            body(xq, wq, x_scale, w_scale, y, wu, rs, xs)
    else:
        @T.prim_func(s_tir=True)
        def kernel(xq: T.Buffer((M, K), "int8"), wq: T.Buffer((K, N), "int8"), out: T.Buffer((M, N), "int32")):
            T.func_attr({"tirx.noalias": True})
            wu = T.alloc_buffer((NB, K4, NR, 4), "uint8")
            rs = T.alloc_buffer((M,), "int32")
            xs = T.alloc_buffer(XS, "int8")
            body(xq, wq, None, None, out, wu, rs, xs)
    return kernel


__all__ = ["MAX_K", "int8_matmul_vnni"]
