"""ViTCoD's polarized sparse attention as one TIR kernel (the two-engine form of
``accelc.passes.polarize_math.polarized_attention_ref``).

Per head ``h`` and query row ``i``: the dense part is every permuted key position
``p < gcount[h]`` (the global tokens), the sparse part the permuted positions
``indices[indptr[h, i]:indptr[h, i + 1]]``; key ``j = perm[h, p]``, dropped when ``causal`` and
``j > i``. One softmax over both parts (shared row max and sum); rows with nothing kept give 0.

Blocks (opaque: the CSR loop bounds are data-dependent, so this is hand-written TIR):

- ``reorder``: per (b, h) gathers ``K``/``V`` (and the key bias) into the permuted order, plus
  ``K_G`` transposed (``[d, G]``, padded to whole ``tile``s) for the dense engine.
- ``row_task``: per (b, h, block of ``rows`` query rows), holding
  ``dense_qk`` (the ``rows × G × d`` GEMM, a ``rows × tile`` register tile),
  ``sparse_qk`` (SDDMM over the CSR), ``softmax`` (joint max / exp / sum),
  ``dense_pv`` (``P_d · V_G`` GEMM) and ``sparse_pv`` (SpMM ``P_s · V_rest``).

The loops inside the blocks carry their vector structure (``lanes``, a schedule knob the CPU
rule picks from the target), and so do the task loops (``parallel``), which the CPU rule
``accelc.schedules.cpu.attention_sparse.PolarizedAttentionKernels`` turns on.
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T

from .kernel_attrs import kernel_name, kernel_param, named_kernel as _named

__all__ = ["polarized_attention", "kernel_name", "kernel_param"]

_NEG_INF = float("-inf")


def _fast_exp(x):
    """``exp(x)`` for float32 as a vectorizable polynomial (Cephes ``expf``: ``2**n · p(r)``,
    relative error ~2e-7 over the normal range); ``-inf`` and very negative ``x`` give 0."""
    f32 = "float32"
    c = lambda v: tirx.const(v, f32)  # noqa: E731
    xv, nv, rv = tirx.Var("ex_x", f32), tirx.Var("ex_n", f32), tirx.Var("ex_r", f32)
    p = c(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * rv + c(coef)
    p = p * rv * rv + rv + c(1.0)
    two_n = tirx.reinterpret(f32, tirx.shift_left(nv.astype("int32") + tirx.const(127, "int32"), 23))
    body = tirx.Select(xv < c(-87.3365447504019), c(0.0), p * two_n)
    body = tirx.Let(rv, tirx.max(tirx.min(xv, c(88.3762626647950)), c(-87.3365447504019))
                    - nv * c(0.693359375) + nv * c(2.12194440e-4), body)
    body = tirx.Let(nv, tirx.floor(tirx.max(tirx.min(xv, c(88.3762626647950)), c(-87.3365447504019))
                                   * c(1.44269504088896341) + c(0.5)), body)
    return tirx.Let(xv, x, body)


def polarized_attention(b: int, h: int, n: int, d: int, nnz: int, scale: float, causal: bool = False,
                        key_bias: bool = False, *, lanes: int = 8, rows: int = 4,
                        fast_exp: bool = True, parallel: bool = False) -> tirx.PrimFunc:
    """Polarized attention ``out[B, H, N, d]`` from ``q, k, v`` float32 ``[B, H, N, d]``.

    Params, in order: ``q, k, v``, (``key_bias`` float32 ``[B, N]`` when ``key_bias``),
    ``perm`` int32 ``[H, N]``, ``gcount`` int32 ``[H]``, ``indptr`` int32 ``[H, N + 1]``
    (absolute offsets), ``indices`` int32 ``[nnz]`` (permuted key positions), ``out``.
    Scores are ``scale · q·k (+ key_bias[b, j])``. ``lanes`` (vector width of the inner loops)
    and ``rows`` (query rows per task) and ``parallel`` (the task loops run in parallel) are
    schedule knobs; ``fast_exp`` uses a vectorizable
    polynomial exp (~2e-7 relative) instead of libm's.
    """
    for name, value in (("b", b), ("h", h), ("n", n), ("d", d), ("lanes", lanes), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(nnz, bool) or not isinstance(nnz, int) or nnz < 0:
        raise ValueError(f"nnz must be a non-negative integer, got {nnz!r}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale!r}")
    func = _build(b, h, n, d, max(nnz, 1), float(scale), bool(causal), bool(key_bias), lanes, rows, fast_exp,
                  bool(parallel))
    return _named(func, "polarized_attention", b=b, h=h, n=n, d=d, nnz=nnz, causal=int(bool(causal)),
                  key_bias=int(bool(key_bias)), scale=float(scale))


def _build(B, H, N, D, NNZ, scale, causal, has_bias, lanes, R, fast_exp, parallel):
    TL = 2 * lanes  # dense-engine tile width: two vectors per accumulator row
    NP = -(-N // TL) * TL  # key positions padded to whole tiles
    DL = lanes if D % lanes == 0 else 1  # vector width along d
    DV = D // DL
    CT = TL if D % TL == 0 else DL  # d chunk of the P·V register tile
    NC = D // CT
    SC = D if D <= 8 * lanes else CT  # d chunk of the SpMM accumulator (≤ 8 vectors)
    EG = 4  # CSR entries per SDDMM step
    NRB = -(-N // R)  # row blocks
    SCALE = T.float32(scale)
    NEG = T.float32(_NEG_INF)
    ZERO = T.float32(0.0)
    exp = _fast_exp if fast_exp else T.exp
    task_loop = T.parallel if parallel else T.serial

    def biasp_or_zero(bias_p, bh, p):
        return bias_p[bh, p] if has_bias else ZERO

    def key_ok(perm, hh, p, i):
        return perm[hh, p] <= i if causal else True

    @T.macro
    def body(q, k, v, key_bias, perm, gcount, indptr, indices, out):
        kp = T.alloc_buffer((B * H, N, D), "float32")  # K in the permuted order (sparse engine)
        vp = T.alloc_buffer((B * H, N, D), "float32")  # V in the permuted order
        kgt = T.alloc_buffer((B * H, D, NP), "float32")  # K_G transposed (dense engine)
        bias_p = T.alloc_buffer((B * H, N), "float32")
        ssp = T.alloc_buffer((B, NNZ), "float32")  # sparse scores, then probabilities
        for bh in task_loop(B * H):
            with T.sblock("reorder"):
                T.reads(k[:, :, :, :], v[:, :, :, :], perm[:, :], gcount[:])
                T.writes(kp[:, :, :], vp[:, :, :], kgt[:, :, :], bias_p[:, :])
                bb = T.meta_var(bh // H)
                hh = T.meta_var(bh % H)
                gpad = T.meta_var(T.min((gcount[hh] + (TL - 1)) // TL * TL, NP))
                for p in range(N):
                    for c in T.vectorized(D):
                        kp[bh, p, c] = k[bb, hh, perm[hh, p], c]
                        vp[bh, p, c] = v[bb, hh, perm[hh, p], c]
                    if has_bias:
                        bias_p[bh, p] = key_bias[bb, perm[hh, p]]
                for c in range(D):
                    for p in range(gpad):
                        kgt[bh, c, p] = T.if_then_else(p < N, kp[bh, T.min(p, N - 1), c], ZERO)
        for task in task_loop(B * H * NRB):
            with T.sblock("row_task"):
                bh = T.meta_var(task // NRB)
                rb = T.meta_var(task % NRB)
                T.reads(q[:, :, :, :], kp[:, :, :], vp[:, :, :], kgt[:, :, :], bias_p[:, :], perm[:, :], gcount[:], indptr[:, :], indices[:])
                T.writes(ssp[:, :], out[:, :, :, :])
                bb = T.meta_var(bh // H)
                hh = T.meta_var(bh % H)
                g = T.meta_var(gcount[hh])
                ntile = T.meta_var((g + (TL - 1)) // TL)
                sd = T.alloc_buffer((R, NP), "float32")  # dense scores, then probabilities
                rmax = T.alloc_buffer((R,), "float32", scope="local")
                rsum = T.alloc_buffer((R,), "float32", scope="local")
                qs = T.alloc_buffer((R, D), "float32", scope="local")
                oacc = T.alloc_buffer((R, D), "float32", scope="local")
                for r in range(R):
                    for c in T.vectorized(D):
                        qs[r, c] = q[bb, hh, T.min(rb * R + r, N - 1), c]
                with T.sblock("dense_qk"):
                    T.reads(qs[:, :], kgt[:, :, :], bias_p[:, :], perm[:, :])
                    T.writes(sd[:, :])
                    acc = T.alloc_buffer((R, TL), "float32", scope="local")
                    for pt in range(ntile):
                        for r in T.unroll(R):
                            for l in T.vectorized(TL):
                                acc[r, l] = ZERO
                        for c in range(D):
                            for r in T.unroll(R):
                                for l in T.vectorized(TL):
                                    acc[r, l] = acc[r, l] + qs[r, c] * kgt[bh, c, pt * TL + l]
                        for r in T.unroll(R):
                            for l in T.vectorized(TL):
                                sd[r, pt * TL + l] = T.Select(
                                    pt * TL + l < g and key_ok(perm, hh, T.min(pt * TL + l, N - 1), rb * R + r),
                                    acc[r, l] * SCALE + biasp_or_zero(bias_p, bh, T.min(pt * TL + l, N - 1)), NEG)
                with T.sblock("sparse_qk"):
                    T.reads(qs[:, :], kp[:, :, :], bias_p[:, :], perm[:, :], indptr[:, :], indices[:])
                    T.writes(ssp[:, :])
                    # EG entries at a time: EG independent FMA chains hide the FMA latency
                    part = T.alloc_buffer((EG, DL), "float32", scope="local")
                    for r in range(R):
                        i = T.meta_var(T.min(rb * R + r, N - 1))
                        lo = T.meta_var(indptr[hh, i])
                        hi = T.meta_var(indptr[hh, i + 1])
                        if rb * R + r < N:
                            for eg in range((hi - lo + (EG - 1)) // EG):
                                for u in T.unroll(EG):
                                    for l in T.vectorized(DL):
                                        part[u, l] = ZERO
                                for co in range(DV):
                                    for u in T.unroll(EG):
                                        for l in T.vectorized(DL):
                                            part[u, l] = part[u, l] + qs[r, co * DL + l] * kp[
                                                bh, indices[T.min(lo + eg * EG + u, hi - 1)], co * DL + l]
                                for l in range(1, DL):
                                    for u in T.unroll(EG):
                                        part[u, 0] = part[u, 0] + part[u, l]
                                for u in T.unroll(EG):
                                    if lo + eg * EG + u < hi:
                                        ssp[bb, lo + eg * EG + u] = T.Select(
                                            key_ok(perm, hh, indices[lo + eg * EG + u], i),
                                            part[u, 0] * SCALE + biasp_or_zero(bias_p, bh, indices[lo + eg * EG + u]),
                                            NEG)
                with T.sblock("softmax"):
                    T.reads(sd[:, :], ssp[:, :], indptr[:, :])
                    T.writes(sd[:, :], ssp[:, :], rmax[:], rsum[:])
                    vm = T.alloc_buffer((TL,), "float32", scope="local")
                    for r in range(R):
                        # rows past N (the last block's padding) see an empty CSR range
                        i = T.meta_var(T.min(rb * R + r, N - 1))
                        lo = T.meta_var(indptr[hh, i])
                        cnt = T.meta_var(T.Select(rb * R + r < N, indptr[hh, i + 1] - indptr[hh, i], 0))
                        # max: dense tiles, then whole TL chunks of the CSR scores, vectorized
                        for l in T.vectorized(TL):
                            vm[l] = NEG
                        for pt in range(ntile):
                            for l in T.vectorized(TL):
                                vm[l] = T.max(vm[l], sd[r, pt * TL + l])
                        for ec in range(cnt // TL):
                            for l in T.vectorized(TL):
                                vm[l] = T.max(vm[l], ssp[bb, lo + ec * TL + l])
                        rmax[r] = NEG
                        for l in range(TL):
                            rmax[r] = T.max(rmax[r], vm[l])
                        for e in range(lo + cnt // TL * TL, lo + cnt):
                            rmax[r] = T.max(rmax[r], ssp[bb, e])
                        # an empty row has max -inf: exp(-inf - 0) = 0 everywhere, sum 0 → output 0
                        rmax[r] = T.Select(rmax[r] == NEG, ZERO, rmax[r])
                        for l in T.vectorized(TL):
                            vm[l] = ZERO
                        for pt in range(ntile):
                            for l in T.vectorized(TL):
                                sd[r, pt * TL + l] = exp(sd[r, pt * TL + l] - rmax[r])
                                vm[l] = vm[l] + sd[r, pt * TL + l]
                        for ec in range(cnt // TL):
                            for l in T.vectorized(TL):
                                ssp[bb, lo + ec * TL + l] = exp(ssp[bb, lo + ec * TL + l] - rmax[r])
                                vm[l] = vm[l] + ssp[bb, lo + ec * TL + l]
                        rsum[r] = ZERO
                        for l in range(TL):
                            rsum[r] = rsum[r] + vm[l]
                        for e in range(lo + cnt // TL * TL, lo + cnt):
                            ssp[bb, e] = exp(ssp[bb, e] - rmax[r])
                            rsum[r] = rsum[r] + ssp[bb, e]
                with T.sblock("dense_pv"):
                    T.reads(sd[:, :], vp[:, :, :])
                    T.writes(oacc[:, :])
                    oc = T.alloc_buffer((R, CT), "float32", scope="local")
                    for cc in range(NC):
                        for r in T.unroll(R):
                            for l in T.vectorized(CT):
                                oc[r, l] = ZERO
                        for p in range(g):
                            for r in T.unroll(R):
                                for l in T.vectorized(CT):
                                    oc[r, l] = oc[r, l] + sd[r, p] * vp[bh, p, cc * CT + l]
                        for r in T.unroll(R):
                            for l in T.vectorized(CT):
                                oacc[r, cc * CT + l] = oc[r, l]
                with T.sblock("sparse_pv"):
                    T.reads(ssp[:, :], vp[:, :, :], oacc[:, :], rsum[:], indptr[:, :], indices[:])
                    T.writes(out[:, :, :, :])
                    osp = T.alloc_buffer((SC,), "float32", scope="local")
                    for r in range(R):
                        i = T.meta_var(T.min(rb * R + r, N - 1))
                        if rb * R + r < N:
                            for sc in range(D // SC):
                                for l in T.vectorized(SC):
                                    osp[l] = oacc[r, sc * SC + l]
                                for e in range(indptr[hh, i], indptr[hh, i + 1]):
                                    for l in T.vectorized(SC):
                                        osp[l] = osp[l] + ssp[bb, e] * vp[bh, indices[e], sc * SC + l]
                                for l in T.vectorized(SC):
                                    out[bb, hh, i, sc * SC + l] = osp[l] * T.Select(
                                        rsum[r] > ZERO, T.float32(1.0) / rsum[r], ZERO)

    return kernel_signature(B, H, N, D, NNZ, has_bias, body)


def kernel_signature(B, H, N, D, NNZ, has_bias, body) -> tirx.PrimFunc:
    """The polarized-attention PrimFunc around ``body(q, k, v, key_bias, perm, gcount, indptr,
    indices, out)`` (a ``T.macro``; ``key_bias`` is None without a bias): the parameters of
    :func:`polarized_attention`, shared by its CPU and GPU versions."""
    if has_bias:
        @T.prim_func(s_tir=True)
        def kernel(q: T.Buffer((B, H, N, D), "float32"), k: T.Buffer((B, H, N, D), "float32"),
                   v: T.Buffer((B, H, N, D), "float32"), key_bias: T.Buffer((B, N), "float32"),
                   perm: T.Buffer((H, N), "int32"), gcount: T.Buffer((H,), "int32"),
                   indptr: T.Buffer((H, N + 1), "int32"), indices: T.Buffer((NNZ,), "int32"),
                   out: T.Buffer((B, H, N, D), "float32")):
            T.func_attr({"tirx.noalias": True})
            body(q, k, v, key_bias, perm, gcount, indptr, indices, out)
    else:
        @T.prim_func(s_tir=True)
        def kernel(q: T.Buffer((B, H, N, D), "float32"), k: T.Buffer((B, H, N, D), "float32"),
                   v: T.Buffer((B, H, N, D), "float32"),
                   perm: T.Buffer((H, N), "int32"), gcount: T.Buffer((H,), "int32"),
                   indptr: T.Buffer((H, N + 1), "int32"), indices: T.Buffer((NNZ,), "int32"),
                   out: T.Buffer((B, H, N, D), "float32")):
            T.func_attr({"tirx.noalias": True})
            body(q, k, v, None, perm, gcount, indptr, indices, out)
    return kernel
