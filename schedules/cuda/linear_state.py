"""What the linear-attention twins (``attention_linear.py`` non-causal, ``attention_linear_causal.py``
causal) share: the padded layout of the d×d state in shared memory and the steps around it,
as macros for ``32 × W``-thread blocks (``warp.WarpLayout``), one ``StateRows`` per shape.

- ``kernel`` / ``per_head``: the PrimFunc with ``linear_attention``'s signature, a block per
  (batch, head) that allocates the shared state ``S`` (rows ``d`` padded to whole warps, columns
  to whole lanes) and the per-warp partials of ``z``, ``Σw·v``, ``Σw``, zeroes them, and runs
  the twin's macro.
- ``load_key``: key ``j``'s rows of ``k`` and ``v`` into the lanes' registers (column
  ``lane + 32·s``), ``‖k‖²`` by a butterfly, then the CPU kernel's ``w = exp(key_bias)`` (1
  without a bias, 0 for an invalid key: the padded tail) and ``k_scale = w/sqrt(‖k‖² + EPS)``.
- ``add_to_state``: staged keys into the thread's register tile of ``S``, written back;
  ``flush_sums``: a thread's key sums into its warp's partials.
- ``query_state``: query ``i``'s row, ``q_scale = 1/(π·sqrt(‖q‖² + EPS))`` and ``q·S`` (``q[a]``
  a broadcast read, ``S``'s row ``a`` a conflict-free one); ``query_z``: ``q·z`` by a
  butterfly, ``z`` summed over the warps' partials as it is read (``over_warps``).
"""

from __future__ import annotations

import functools
import math
import operator

from tvm import tirx
from tvm.script import tirx as T

from ..attention_linear import EPS
from .warp import WARP, WarpLayout

ZERO = T.float32(0.0)
HALF = T.float32(0.5)
ONE = T.float32(1.0)


def state_shape(d: int, warps: int) -> tuple[int, int]:
    """The shared state's rows and columns: ``d`` padded to whole warps and whole lanes, so the
    register tiles need no bounds checks (the padding stays 0)."""
    return -(-d // warps) * warps, -(-d // WARP) * WARP


def over_warps(partial, c, warps: int):
    """Column ``c`` of a per-warp shared partial (``z``, ``Σw·v``, ``Σw``) summed over the warps."""
    return functools.reduce(operator.add, [partial[w, c] for w in range(warps)])


class StateRows:
    """The shared macros for one twin's shape: ``b·h`` heads of ``n`` keys of width ``d``,
    ``warps`` warps (``partials``: the state's ``z``, ``Σw·v``, ``Σw`` kept as per-warp shared
    partials)."""

    def __init__(self, lay: WarpLayout, b: int, h: int, n: int, d: int, warps: int, has_bias: bool,
                 partials: bool = True):
        dpl = -(-d // WARP)  # columns per lane: of q, k, v, the output and the state
        sr, sc = state_shape(d, warps)
        rpw = sr // warps  # state rows per warp
        pw = warps if partials else 1
        eps, inv_pi = T.float32(EPS), T.float32(1.0 / math.pi)
        warp_sum = lay.sum_macro()
        self.warps, self.shape, self.has_bias = warps, (b, h, n, d), has_bias

        @T.macro
        def zero_state(S, zpart, svpart, swpart):
            """The phase that zeroes the state: thread (ty, lane) its tile of ``S``
            (rows ``ty + W·r``, columns ``lane + 32·s``) and its slots of warp ``ty``'s partials."""
            for ty in lay.warps(warps):
                for tx in lay.lane_threads():
                    for li in lay.lanes():
                        lane = T.meta_var(lay.lane(li, tx))
                        for r, s in T.grid(rpw, dpl):
                            S[ty + warps * r, lane + WARP * s] = ZERO
                        if partials:
                            for s in range(dpl):
                                zpart[ty, lane + WARP * s] = ZERO
                                svpart[ty, lane + WARP * s] = ZERO
                            swpart[ty, lane] = ZERO

        @T.macro
        def load_key(k, v, key_bias, kreg, vreg, part, wst, bb, hh, j, valid, tx):
            jc = T.meta_var(T.min(j, n - 1))
            for li in lay.lanes():
                part[li] = ZERO
                for s in T.unroll(dpl):
                    c = T.meta_var(lay.lane(li, tx) + WARP * s)
                    kreg[li, s] = T.if_then_else(tirx.all(valid, c < d), k[bb, hh, jc, T.min(c, d - 1)], ZERO)
                    vreg[li, s] = T.if_then_else(tirx.all(valid, c < d), v[bb, hh, jc, T.min(c, d - 1)], ZERO)
                    part[li] = part[li] + kreg[li, s] * kreg[li, s]
            warp_sum(part)
            if has_bias:
                wst[0] = T.Select(valid, T.exp(key_bias[bb, jc]), ZERO)
            else:
                wst[0] = T.Select(valid, ONE, ZERO)
            wst[1] = wst[0] / T.sqrt(part[0] + eps)

        @T.macro
        def query_state(q, S, qreg, num, part, st, bb, hh, i, tx):
            """``qreg`` = q's row, ``st[0]`` = q_scale, ``num`` = q·S (unscaled)."""
            for li in lay.lanes():
                part[li] = ZERO
                for t in T.unroll(dpl):
                    c = T.meta_var(lay.lane(li, tx) + WARP * t)
                    qreg[li, t] = T.if_then_else(c < d, q[bb, hh, i, T.min(c, d - 1)], ZERO)
                    part[li] = part[li] + qreg[li, t] * qreg[li, t]
            warp_sum(part)
            st[0] = inv_pi / T.sqrt(part[0] + eps)
            for li in lay.lanes():
                for t in T.unroll(dpl):
                    num[li, t] = ZERO
                for a in range(d):
                    for t in T.unroll(dpl):
                        num[li, t] = num[li, t] + q[bb, hh, i, a] * S[a, lay.lane(li, tx) + WARP * t]

        @T.macro
        def query_z(qreg, zpart, part, tx):
            """``part[0]`` = q·z (unscaled), in every lane."""
            for li in lay.lanes():
                part[li] = ZERO
                for t in T.unroll(dpl):
                    part[li] = part[li] + qreg[li, t] * over_warps(zpart, lay.lane(li, tx) + WARP * t, warps)
            warp_sum(part)

        @T.macro
        def flush_sums(zpart, svpart, swpart, sums, ty, tx):
            """The thread's sums over some of its warp's keys (``sums[li]``: ``z``'s columns, then
            ``Σw·v``'s, then ``Σw``) added into warp ``ty``'s shared partials (every lane keeps a
            copy of ``Σw``: no single-lane branch for TVM's sync planner to put a barrier in)."""
            for li in lay.lanes():
                lane = T.meta_var(lay.lane(li, tx))
                for s in range(dpl):
                    zpart[ty, lane + WARP * s] = zpart[ty, lane + WARP * s] + sums[li, s]
                    svpart[ty, lane + WARP * s] = svpart[ty, lane + WARP * s] + sums[li, dpl + s]
                swpart[ty, lane] = swpart[ty, lane] + sums[li, 2 * dpl]

        @T.macro
        def add_to_state(S, vals, acc, krow, khat, keys, ty, tx):
            """The thread's register tile of S (rows ``ty + W·r``, columns ``lane + 32·s``) plus
            ``Σ_jj k̂[jj, a]·v[jj, c]`` over ``keys`` staged keys (``khat(jj, a)`` reads k̂; the
            ``vals`` read is conflict-free), written back."""
            for li in lay.lanes():
                lane = T.meta_var(lay.lane(li, tx))
                for r, s in T.grid(rpw, dpl):
                    acc[li, r, s] = S[ty + warps * r, lane + WARP * s]
                for jj in range(keys):
                    for r in T.unroll(rpw):
                        krow[li, r] = khat(jj, ty + warps * r)  # one broadcast read a row
                    for r in T.unroll(rpw):
                        for s in T.unroll(dpl):
                            acc[li, r, s] = acc[li, r, s] + krow[li, r] * vals[jj, lane + WARP * s]
                for r, s in T.grid(rpw, dpl):
                    S[ty + warps * r, lane + WARP * s] = acc[li, r, s]

        @T.macro
        def per_head(q, k, v, key_bias, gate, out, head):
            """A block per (batch, head): the shared state (and partials) zeroed, then the
            twin's macro ``head(q, k, v, key_bias, gate, out, bb, hh, S, zpart, svpart, swpart)``."""
            for bx in lay.blocks(b * h):
                with T.sblock("head"):
                    T.reads(q[:, :, :, :], k[:, :, :, :], v[:, :, :, :])
                    T.writes(out[:, :, :, :])
                    S = T.alloc_buffer((sr, sc), "float32", scope="shared")
                    zpart = T.alloc_buffer((pw, sc), "float32", scope="shared")
                    svpart = T.alloc_buffer((pw, sc), "float32", scope="shared")
                    swpart = T.alloc_buffer((pw, WARP), "float32", scope="shared")
                    zero_state(S, zpart, svpart, swpart)
                    head(q, k, v, key_bias, gate, out, bx // h, bx % h, S, zpart, svpart, swpart)

        self.per_head, self.load_key, self.add_to_state, self.flush_sums = per_head, load_key, add_to_state, flush_sums
        self.query_state, self.query_z = query_state, query_z

    def over_warps(self, partial, c):
        return over_warps(partial, c, self.warps)

    def kernel(self, head, has_gate: bool):
        """The PrimFunc with ``linear_attention``'s signature (``q, k, v``, ``key_bias`` if the
        twin has one, ``gate`` if ``has_gate``, ``out``): ``per_head`` around the twin's ``head``
        macro (None for an absent buffer)."""
        b, h, n, d = x = self.shape
        bias, gate = (b, n), (h, n)
        per_head = self.per_head
        if self.has_bias and has_gate:
            @T.prim_func(s_tir=True)
            def kernel(q: T.Buffer(x, "float32"), k: T.Buffer(x, "float32"), v: T.Buffer(x, "float32"),
                       key_bias: T.Buffer(bias, "float32"), gate: T.Buffer(gate, "float32"),
                       out: T.Buffer(x, "float32")):
                T.func_attr({"tirx.noalias": True})
                per_head(q, k, v, key_bias, gate, out, head)
        elif self.has_bias:
            @T.prim_func(s_tir=True)
            def kernel(q: T.Buffer(x, "float32"), k: T.Buffer(x, "float32"), v: T.Buffer(x, "float32"),
                       key_bias: T.Buffer(bias, "float32"), out: T.Buffer(x, "float32")):
                T.func_attr({"tirx.noalias": True})
                per_head(q, k, v, key_bias, None, out, head)
        elif has_gate:
            @T.prim_func(s_tir=True)
            def kernel(q: T.Buffer(x, "float32"), k: T.Buffer(x, "float32"), v: T.Buffer(x, "float32"),
                       gate: T.Buffer(gate, "float32"), out: T.Buffer(x, "float32")):
                T.func_attr({"tirx.noalias": True})
                per_head(q, k, v, None, gate, out, head)
        else:
            @T.prim_func(s_tir=True)
            def kernel(q: T.Buffer(x, "float32"), k: T.Buffer(x, "float32"), v: T.Buffer(x, "float32"),
                       out: T.Buffer(x, "float32")):
                T.func_attr({"tirx.noalias": True})
                per_head(q, k, v, None, None, out, head)
        return kernel


__all__ = ["HALF", "ONE", "ZERO", "StateRows", "over_warps", "state_shape"]
