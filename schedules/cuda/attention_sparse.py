"""The GPU twin of polarized attention (``accelc.schedules.attention_sparse``): one warp per
query row, the row's kept keys streamed with an online softmax.

Same numerics as the CPU kernel (``scale · q·k + key_bias``, dropped keys when ``causal``, one
softmax over the global and the CSR keys, rows that keep nothing give 0), other loop structure:

- grid: ``B·H·⌈N/W⌉`` blocks of ``32 × W`` threads; warp ``ty`` of a block owns query row
  ``i``. Every branch and loop bound of a warp depends on ``i`` only, so warps never diverge.
- lane ``x`` holds ``q[i, c]`` and the output accumulator for ``c = x, x + 32, …``
  (``⌈d/32⌉`` registers each).
- per kept key ``j`` (first the head's global keys ``perm[h, :gcount[h]]``, then the row's CSR
  entries ``perm[h, indices[e]]``): each lane reads its slice of the row ``K[j]`` (coalesced),
  a butterfly of ``__shfl_xor_sync`` sums the dot product into every lane, and the running max
  ``m``, sum ``l`` and accumulator are rescaled flash-attention style (``O += e^{s-m}·V[j]``).
- at the end ``O / l`` (``0`` when ``l = 0``: a row with nothing kept).

No global scratch: the scores never leave registers, where the CPU kernel's two engines write
``N × G`` dense and ``nnz`` sparse scores.

``emulate=True`` builds the same per-row program for a CPU: the 32 lanes become loops around
each per-lane step and the butterfly a sum over them. That is the program the CPU tests run
against the NumPy reference (there is no GPU in CI); only the lane binding and the shuffle
differ from the CUDA build.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..attention_sparse import kernel_signature
from ..kernel_attrs import kernel_param, kernel_param_float, named_kernel
from . import register
from .warp import WARP, WarpLayout

#: Query rows (warps) per thread block: 128 threads.
ROWS_PER_BLOCK = 4
_NEG_INF = float("-inf")


def polarized_attention_gpu(b: int, h: int, n: int, d: int, nnz: int, scale: float, causal: bool = False,
                            key_bias: bool = False, *, rows: int = ROWS_PER_BLOCK, emulate: bool = False):
    """The CUDA kernel (``emulate``: its CPU emulation) with the CPU kernel's parameters and
    attributes; ``tirx.is_scheduled`` (its threads are bound)."""
    func = _build(b, h, n, d, max(nnz, 1), float(scale), bool(causal), bool(key_bias), rows, emulate)
    func = named_kernel(func, "polarized_attention", b=b, h=h, n=n, d=d, nnz=nnz, causal=int(bool(causal)),
                        key_bias=int(bool(key_bias)), scale=float(scale))
    return func if emulate else func.with_attr("tirx.is_scheduled", True)


@register("polarized_attention")
def _twin(func):
    p = {key: kernel_param(func, key) for key in ("b", "h", "n", "d", "nnz", "causal", "key_bias")}
    return polarized_attention_gpu(p["b"], p["h"], p["n"], p["d"], p["nnz"], kernel_param_float(func, "scale"),
                                   causal=bool(p["causal"]), key_bias=bool(p["key_bias"]))


def _build(B, H, N, D, NNZ, scale, causal, has_bias, W, emulate):
    DPL = -(-D // WARP)  # elements of d per lane
    NRB = -(-N // W)  # row blocks
    lay = WarpLayout(emulate)
    LN = lay.held
    SCALE = T.float32(scale)
    NEG = T.float32(_NEG_INF)
    ZERO = T.float32(0.0)
    warp_sum = lay.sum_macro()
    lanes, lane_of = lay.lanes, lay.lane

    def score(part, key_bias, bb, j):
        return part[0] * SCALE + key_bias[bb, j] if has_bias else part[0] * SCALE

    def keep(sc, i, j):
        return tirx.all(j <= i, sc > NEG) if causal else sc > NEG

    @T.macro
    def load_q(q, qreg, acc, bb, hh, i, lane, li):
        for t in T.unroll(DPL):
            qreg[li, t] = T.if_then_else(t * WARP + lane < D, q[bb, hh, i, T.min(t * WARP + lane, D - 1)], ZERO)
            acc[li, t] = ZERO

    @T.macro
    def dot(k, qreg, part, bb, hh, j, lane, li):
        part[li] = ZERO
        for t in T.unroll(DPL):
            part[li] = part[li] + qreg[li, t] * T.if_then_else(
                t * WARP + lane < D, k[bb, hh, j, T.min(t * WARP + lane, D - 1)], ZERO)

    @T.macro
    def update(v, acc, st, bb, hh, j, lane, li):
        for t in T.unroll(DPL):
            acc[li, t] = acc[li, t] * st[2] + st[3] * T.if_then_else(
                t * WARP + lane < D, v[bb, hh, j, T.min(t * WARP + lane, D - 1)], ZERO)

    @T.macro
    def store(out, acc, st, bb, hh, i, lane, li):
        for t in T.unroll(DPL):
            if t * WARP + lane < D:
                out[bb, hh, i, t * WARP + lane] = acc[li, t] * T.Select(st[1] > ZERO, T.float32(1.0) / st[1], ZERO)

    @T.macro
    def key(k, v, key_bias, qreg, acc, part, st, bb, hh, i, j, tx):
        """Fold key ``j`` into the row's running softmax (st: m, l, alpha, p)."""
        for li in lanes():
            dot(k, qreg, part, bb, hh, j, lane_of(li, tx), li)
        warp_sum(part)  # every lane gets the sum
        sc = T.meta_var(score(part, key_bias, bb, j))
        if keep(sc, i, j):
            # m' = max(m, s); alpha = e^{m - m'} (0 while m = -inf); p = e^{s - m'}
            st[2] = T.Select(st[0] > NEG, T.exp(st[0] - T.max(st[0], sc)), ZERO)
            st[0] = T.max(st[0], sc)
            st[3] = T.exp(sc - st[0])
            st[1] = st[1] * st[2] + st[3]
            for li in lanes():
                update(v, acc, st, bb, hh, j, lane_of(li, tx), li)

    @T.macro
    def row(q, k, v, key_bias, perm, gcount, indptr, indices, out, bx, ty, tx):
        with T.sblock("row"):
            T.reads(q[:, :, :, :], k[:, :, :, :], v[:, :, :, :], perm[:, :], gcount[:], indptr[:, :], indices[:])
            T.writes(out[:, :, :, :])
            bh = T.meta_var(bx // NRB)
            bb = T.meta_var(bh // H)
            hh = T.meta_var(bh % H)
            i = T.meta_var(bx % NRB * W + ty)
            qreg = T.alloc_buffer((LN, DPL), "float32", scope="local")
            acc = T.alloc_buffer((LN, DPL), "float32", scope="local")
            part = T.alloc_buffer((LN,), "float32", scope="local")
            st = T.alloc_buffer((4,), "float32", scope="local")
            if i < N:  # the same for the whole warp
                for li in lanes():
                    load_q(q, qreg, acc, bb, hh, i, lane_of(li, tx), li)
                st[0] = NEG
                st[1] = ZERO
                for p in range(gcount[hh]):  # the global keys (the CPU kernel's dense engine)
                    key(k, v, key_bias, qreg, acc, part, st, bb, hh, i, perm[hh, p], tx)
                for e in range(indptr[hh, i], indptr[hh, i + 1]):  # the row's CSR entries
                    key(k, v, key_bias, qreg, acc, part, st, bb, hh, i, perm[hh, indices[e]], tx)
                for li in lanes():
                    store(out, acc, st, bb, hh, i, lane_of(li, tx), li)

    @T.macro
    def body(q, k, v, key_bias, perm, gcount, indptr, indices, out):
        for bx in lay.blocks(B * H * NRB):
            for ty in lay.warps(W):
                for tx in lay.lane_threads():
                    row(q, k, v, key_bias, perm, gcount, indptr, indices, out, bx, ty, tx)

    return kernel_signature(B, H, N, D, NNZ, has_bias, body)


__all__ = ["ROWS_PER_BLOCK", "polarized_attention_gpu"]
