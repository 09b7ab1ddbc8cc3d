"""Softmax over the last axis for CPU rows longer than one vector.

It was written for ragged rows (ViT's 197 tokens, CLIP's 50 or 77), which ``RowReduction``
(``schedules/cpu/reduction.py``) left scalar: TVM 0.27 cannot express the vector main part +
scalar tail of a reduction with schedule primitives (``compute_at`` drops the ``T.where`` of an
``rfactor``-ed split, which sums the padding lanes; ``loop_partition`` of a reduction gives each
part its own ``init``). On whole-vector rows it beats RowReduction's schedule as well (1.4-1.8x
on rows of 32 to 1024), so the CPU target uses it for every row longer than one vector. One
row per parallel task:

1. ``max``: ``lanes`` running maxima over the whole vectors, folded, then the tail;
2. ``exp``: ``e = fast_exp(x - max)`` stored to the output and summed into ``lanes`` partial
   sums, vector part then tail;
3. ``scale``: the output multiplied by ``1 / Σ e``.

``fast_exp`` is TOPI's ``fast_exp`` polynomial written out (same constants and operation
order), so the kernel computes what ``topi.nn.fast_softmax`` does, up to the summation order
and one reciprocal instead of a division per element.
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T

# topi/include/tvm/topi/elemwise.h: fast_exp_float32
_X_HI, _X_LO = 88.3762626647950, -88.3762626647949
_LOG2E, _LN2 = 1.44269504088896341, 0.6931471805599453
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """TOPI's ``fast_exp_float32`` as a PrimExpr (exact to ~1 ulp over [-88.4, 88.4])."""
    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    xc = tirx.max(tirx.min(x, f32(_X_HI)), f32(_X_LO))
    n = tirx.floor(xc * f32(_LOG2E) + f32(0.5))
    r = xc - n * f32(_LN2)
    y = f32(_P[0])
    for p in _P[1:]:
        y = y * r + f32(p)
    y = y * r * r + r + f32(1.0)
    two_n = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n + f32(127.0)), tirx.const(23, "int32")))
    return tirx.max(two_n * y, xc)


def fold_steps(lanes: int) -> tuple[int, int, int, int]:
    """The halving steps (8, 4, 2, 1) that fold ``lanes`` partials into one, 0 where a step
    does not apply (``fold`` skips it)."""
    return tuple(h if h < lanes else 0 for h in (8, 4, 2, 1))


@T.macro
def fold(part, h, op):
    """``part[0:h] = op(part[0:h], part[h:2h])``: one vector step of a tree of log2(lanes),
    not a lanes-long scalar dependency chain (that chain took a third of the softmax kernel's
    time). ``h = 0``: nothing."""
    if h > 0:
        for l in T.vectorized(h):
            part[l] = op(part[l], part[l + h])


def fmax(a, b):
    return T.max(a, b)


def fadd(a, b):
    return a + b


def softmax_rows(shape, lanes: int) -> tirx.PrimFunc:
    """``y = softmax(x, axis=-1)`` for a float32 tensor of ``shape`` (static), rows of
    ``n = shape[-1]`` elements with ``n > lanes``; whole vectors of ``lanes`` then a scalar tail."""
    shape = tuple(int(s) for s in shape)
    N = shape[-1]
    R = math.prod(shape[:-1])
    L = int(lanes)
    if N <= L or L < 2:
        raise ValueError(f"softmax_rows: rows of {N} need more than {L} elements")
    NV, NT = N // L, N % L
    if L & (L - 1) or L > 16:
        raise ValueError(f"softmax_rows: {L} lanes is no power of two up to 16")
    H16, H8, H4, H2 = fold_steps(L)

    @T.prim_func(private=True, s_tir=True)
    def softmax(x: T.Buffer(shape, "float32"), y: T.Buffer(shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        xf = T.decl_buffer((R, N), "float32", data=x.data)
        yf = T.decl_buffer((R, N), "float32", data=y.data)
        for r in T.parallel(R):
            with T.sblock("softmax_row"):
                T.reads(xf[r, 0:N])
                T.writes(yf[r, 0:N])
                # default scope, not "local": a local buffer in a parallel loop became two
                # TVMBackendAllocWorkspace calls per row (half the kernel's time)
                part = T.alloc_buffer((L,), "float32")
                acc = T.alloc_buffer((2,), "float32")  # [max, 1 / sum]
                for l in T.vectorized(L):
                    part[l] = xf[r, l]
                for c in range(1, NV):
                    for l in T.vectorized(L):
                        part[l] = T.max(part[l], xf[r, c * L + l])
                if NT > 0:  # the last L elements: max is idempotent over the overlap
                    for l in T.vectorized(L):
                        part[l] = T.max(part[l], xf[r, N - L + l])
                fold(part, H16, fmax)
                fold(part, H8, fmax)
                fold(part, H4, fmax)
                fold(part, H2, fmax)
                acc[0] = part[0]
                for l in T.vectorized(L):
                    part[l] = T.float32(0)
                for c in range(NV):
                    for l in T.vectorized(L):
                        yf[r, c * L + l] = fast_exp(xf[r, c * L + l] - acc[0])
                        part[l] = part[l] + yf[r, c * L + l]
                if NT > 0:  # rewrites the overlap with the same values; sums only the tail lanes
                    for l in T.vectorized(L):
                        yf[r, N - L + l] = fast_exp(xf[r, N - L + l] - acc[0])
                        part[l] = part[l] + T.Select(l >= L - NT, yf[r, N - L + l], T.float32(0))
                fold(part, H16, fadd)
                fold(part, H8, fadd)
                fold(part, H4, fadd)
                fold(part, H2, fadd)
                acc[1] = T.float32(1) / part[0]
                for c in range(NV):
                    for l in T.vectorized(L):
                        yf[r, c * L + l] = yf[r, c * L + l] * acc[1]
                if NT > 0:  # the overlap is scaled already: only the tail lanes
                    for l in T.vectorized(L):
                        yf[r, N - L + l] = T.Select(l >= L - NT, yf[r, N - L + l] * acc[1], yf[r, N - L + l])

    return softmax


__all__ = ["fadd", "fast_exp", "fmax", "fold", "fold_steps", "softmax_rows"]
