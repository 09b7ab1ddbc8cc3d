"""The GPU twin of the causal angular decode step (``linear_attention_decode`` of
``accelc.schedules.attention_linear``): one thread block per (batch, head) streams the d×d
state once, ``S_new = S + k̂vᵀ`` and the partial ``q·S_new`` together, then one warp finishes
the row.

Same numerics as the CPU kernel (key weight 1: ``k_scale = 1/sqrt(‖k‖² + EPS)``,
``q_scale = 1/(π·sqrt(‖q‖² + EPS))``; ``S_new = S + (k·k_scale)·vᵀ``, ``z_new = z + k·k_scale``,
``sv_new = sv + v``, ``sw_new = sw + 1``; ``o = (½·sv_new + q_scale·q·S_new) /
(½·sw_new + q_scale·q·z_new)``, 0 for a zero denominator), other loop structure:

- grid: ``B·H`` blocks of ``32 × W`` threads (``W`` warps). The step is memory-bound (it reads
  and writes ``d²`` floats of state for ``O(d²)`` flops): every element is read once, coalesced.
- phase 1, every warp: the lanes read ``k``'s and ``v``'s rows (columns ``lane + 32·s``), a
  ``__shfl_xor_sync`` butterfly sums ``‖k‖²``; warp ``ty`` then streams state rows
  ``a = ty, ty + W, …``: ``S_new[a, c] = S[a, c] + (k[a]·k_scale)·v[c]`` (``k[a]`` a broadcast
  read), stored, and ``q[a]·S_new[a, c]`` summed in registers; the warp's partial ``q·S_new``
  goes to a ``W × d`` shared buffer (its own row: no other warp writes it).
- phase 2, after one ``__syncthreads``, warp 0: ``‖q‖²`` and ``‖k‖²`` by butterflies,
  ``z_new`` (stored) and ``q·z_new`` (a butterfly), ``sv_new``, ``sw_new``, and the output
  with ``q·S_new`` summed over the warps' partials as it is read. The branch is the whole warp's
  and holds no shared write (no barrier for TVM's sync planner to put in it).

Parallelism is ``B·H`` blocks, one per head of the batch's new tokens. Declined (``None``):
a ``d`` whose partials do not fit 48 KiB of static shared memory (above 1536).

``emulate=True`` builds the same program for a CPU (``warp.WarpLayout``), which the CPU tests
hold to the NumPy reference (``decode_step``); only the thread bindings and the shuffles
differ from the CUDA build.
"""

from __future__ import annotations

import math

from tvm.script import tirx as T

from ...targets.cuda import LIMITS
from ..attention_linear import EPS
from ..kernel_attrs import kernel_param, named_kernel
from . import register
from .linear_state import HALF, ONE, ZERO, over_warps
from .warp import WARP, WarpLayout

#: Warps per block (256 threads).
WARPS = 8


def linear_attention_decode_gpu(b: int, h: int, d: int, *, warps: int = WARPS, emulate: bool = False):
    """The CUDA kernel (``emulate``: its CPU emulation) of ``linear_attention_decode`` with that
    kernel's parameters and attributes; ``tirx.is_scheduled``. None when the warps' partials do
    not fit in shared memory."""
    if warps * -(-d // WARP) * WARP * 4 > LIMITS["max_shared_memory_per_block"]:
        return None
    func = named_kernel(_build(b, h, d, warps, WarpLayout(emulate)), "linear_attention_decode", b=b, h=h, d=d)
    return func if emulate else func.with_attr("tirx.is_scheduled", True)


@register("linear_attention_decode")
def _twin(func):
    return linear_attention_decode_gpu(*(kernel_param(func, key) for key in ("b", "h", "d")))


def _build(B, H, D, W, lay: WarpLayout):
    DPL = -(-D // WARP)  # columns per lane
    RPW = -(-D // W)  # state rows per warp
    LN = lay.held
    EPS_ = T.float32(EPS)
    INV_PI = T.float32(1.0 / math.pi)
    warp_sum = lay.sum_macro()
    barrier = lay.barrier_macro()

    @T.macro
    def inv_norm(x, part, st, slot, scale, bb, hh, tx):
        """``st[slot] = scale / sqrt(‖x[bb, hh]‖² + EPS)`` (lanes read the row, a butterfly sums)."""
        for li in lay.lanes():
            part[li] = ZERO
            for t in range(DPL):
                c = T.meta_var(lay.lane(li, tx) + WARP * t)
                part[li] = part[li] + T.if_then_else(c < D, x[bb, hh, T.min(c, D - 1)] * x[bb, hh, T.min(c, D - 1)],
                                                     ZERO)
        warp_sum(part)
        st[slot] = scale / T.sqrt(part[0] + EPS_)

    @T.macro
    def stream_state(q, k, v, S, S_new, pn, vreg, num, cell, part, st, bb, hh, ty, tx):
        inv_norm(k, part, st, 0, ONE, bb, hh, tx)  # k_scale
        for li in lay.lanes():
            lane = T.meta_var(lay.lane(li, tx))
            for t in range(DPL):
                c = T.meta_var(lane + WARP * t)
                vreg[li, t] = T.if_then_else(c < D, v[bb, hh, T.min(c, D - 1)], ZERO)
                num[li, t] = ZERO
            for r in range(RPW):
                a = T.meta_var(ty + W * r)
                if a < D:  # the same for the whole warp
                    for t in range(DPL):
                        c = T.meta_var(lane + WARP * t)
                        if c < D:
                            cell[li] = S[bb, hh, a, c] + k[bb, hh, a] * st[0] * vreg[li, t]
                            S_new[bb, hh, a, c] = cell[li]
                            num[li, t] = num[li, t] + q[bb, hh, a] * cell[li]
            for t in range(DPL):
                pn[ty, lane + WARP * t] = num[li, t]

    @T.macro
    def finish_row(q, k, v, z, sv, sw, out, z_new, sv_new, sw_new, pn, cell, part, st, bb, hh, tx):
        inv_norm(k, part, st, 0, ONE, bb, hh, tx)  # k_scale
        inv_norm(q, part, st, 1, INV_PI, bb, hh, tx)  # q_scale
        for li in lay.lanes():
            part[li] = ZERO
            for t in range(DPL):
                c = T.meta_var(lay.lane(li, tx) + WARP * t)
                if c < D:
                    cell[li] = z[bb, hh, c] + k[bb, hh, c] * st[0]
                    z_new[bb, hh, c] = cell[li]
                    part[li] = part[li] + q[bb, hh, c] * cell[li]
        warp_sum(part)
        st[2] = HALF * (sw[bb, hh] + ONE) + st[1] * part[0]  # the denominator
        st[3] = T.Select(st[2] > ZERO, ONE / st[2], ZERO)
        for li in lay.lanes():
            sw_new[bb, hh] = sw[bb, hh] + ONE  # every lane the same value: no single-lane branch
            for t in range(DPL):
                c = T.meta_var(lay.lane(li, tx) + WARP * t)
                if c < D:
                    cell[li] = sv[bb, hh, c] + v[bb, hh, c]
                    sv_new[bb, hh, c] = cell[li]
                    out[bb, hh, c] = (HALF * cell[li] + st[1] * over_warps(pn, c, W)) * st[3]

    vec, mat = (B, H, D), (B, H, D, D)

    @T.prim_func(s_tir=True)
    def kernel(q: T.Buffer(vec, "float32"), k: T.Buffer(vec, "float32"), v: T.Buffer(vec, "float32"),
               S: T.Buffer(mat, "float32"), z: T.Buffer(vec, "float32"), sv: T.Buffer(vec, "float32"),
               sw: T.Buffer((B, H), "float32"), out: T.Buffer(vec, "float32"), S_new: T.Buffer(mat, "float32"),
               z_new: T.Buffer(vec, "float32"), sv_new: T.Buffer(vec, "float32"),
               sw_new: T.Buffer((B, H), "float32")):
        T.func_attr({"tirx.noalias": True})
        for bx in lay.blocks(B * H):
            with T.sblock("head"):
                T.reads(q[:, :, :], k[:, :, :], v[:, :, :], S[:, :, :, :], z[:, :, :], sv[:, :, :], sw[:, :])
                T.writes(out[:, :, :], S_new[:, :, :, :], z_new[:, :, :], sv_new[:, :, :], sw_new[:, :])
                pn = T.alloc_buffer((W, DPL * WARP), "float32", scope="shared")
                for ty in lay.warps(W):
                    for tx in lay.lane_threads():
                        with T.sblock("state"):
                            T.reads(q[:, :, :], k[:, :, :], v[:, :, :], S[:, :, :, :])
                            T.writes(S_new[:, :, :, :], pn[:, :])
                            vreg = T.alloc_buffer((LN, DPL), "float32", scope="local")
                            num = T.alloc_buffer((LN, DPL), "float32", scope="local")
                            cell = T.alloc_buffer((LN,), "float32", scope="local")
                            part = T.alloc_buffer((LN,), "float32", scope="local")
                            st = T.alloc_buffer((1,), "float32", scope="local")
                            stream_state(q, k, v, S, S_new, pn, vreg, num, cell, part, st, bx // H, bx % H, ty, tx)
                for ty in lay.warps(W):
                    for tx in lay.lane_threads():
                        with T.sblock("row"):
                            T.reads(q[:, :, :], k[:, :, :], v[:, :, :], z[:, :, :], sv[:, :, :], sw[:, :], pn[:, :])
                            T.writes(out[:, :, :], z_new[:, :, :], sv_new[:, :, :], sw_new[:, :])
                            barrier()
                            cell = T.alloc_buffer((LN,), "float32", scope="local")
                            part = T.alloc_buffer((LN,), "float32", scope="local")
                            st = T.alloc_buffer((4,), "float32", scope="local")
                            if ty == 0:  # the whole warp
                                finish_row(q, k, v, z, sv, sw, out, z_new, sv_new, sw_new, pn, cell, part, st,
                                           bx // H, bx % H, tx)

    return kernel


__all__ = ["WARPS", "linear_attention_decode_gpu"]
