"""Fused softmax attention for CPU: ``O = softmax(scale·QKᵀ [+ key bias] [causal]) V`` in one
kernel, one parallel task per (batch, head, block of ``mr`` query rows).

Unfused, the CPU target runs three kernels per attention: the scores GEMM (with K transposed
and packed inside), the written-out softmax (``schedules/softmax.py``) and P·V, with the
[B, H, N, N] score tensor written and re-read twice in between (DeiT-tiny: 93 + 24 + 70 µs
per layer on a Zen 4 host, 2 threads). Here a task keeps its ``mr × N`` scores in an L1/L2
buffer of its own:

1. ``pack``: Kᵀ per head into ``[B, H, N/lanes, d, lanes]`` column panels, copied in
   ``lanes × lanes`` blocks (one parallel region over every head, before the tasks);
2. scores: ``mr`` rows × one vector of keys at a time, an ``mr × lanes`` accumulator tile in
   vector registers over d, written back scaled, biased and masked (padding keys and, causal,
   keys after the query take ``finfo(float32).min``);
3. softmax per row: vector running maxima folded pairwise, ``fast_exp`` (TOPI's polynomial,
   the one the unfused CPU softmax uses) and the sums; the padding keys' terms are selected out,
   so a row whose every key is masked comes out uniform, as the reference does;
4. P·V: an ``mr × lanes`` accumulator tile per vector of d over the keys, each output row
   scaled once by ``1 / Σ`` (the normalisation is deferred from P to O).

Q, K and V are read through *views*: a flat offset and a stride per (b, h, n, d) axis into the
tensor they were sliced from (``take`` of a stacked QKV, a head-splitting reshape/permute), so
none of them is materialised; the output is written head-merged as ``[B, N, H, d]``, the
layout the model's next GEMM reads. What it computes is pinned against NumPy and onnxruntime in
``tests/test_attention_fused.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T

from ..softmax import fadd, fast_exp, fmax, fold, fold_steps

#: Masked scores: float32's lowest finite value, what HF's masks write (exp underflows to 0).
NEG = -3.4028234663852886e38


@dataclass(frozen=True)
class View:
    """Where a [B, H, N, d] operand's elements sit in the flat tensor it is read from."""

    root_shape: tuple  # the tensor passed to the kernel
    offset: int
    strides: tuple  # elements per step of b, h, n, d

    def at(self, buf, b, h, n, d):
        sb, sh, sn, sd = self.strides
        return buf[self.offset + b * sb + h * sh + n * sn + d * sd]


def contiguous(shape) -> View:
    """The view of a row-major [B, H, N, d] tensor."""
    b, h, n, d = (int(s) for s in shape)
    return View((b, h, n, d), 0, (h * n * d, n * d, d, 1))


def row_tile(n: int, registers: int) -> int:
    """Query rows per task, ``mr``: one vector of keys (scores) or of d (P·V) at a time, so
    ``mr`` accumulators plus that vector and a broadcast must fit the register file, and at
    least 8 of them hide the FMA latency; among those, the fewest padding rows, then the most.

    Wider tiles (2-4 vectors, as the Matmul rule's) measured no faster here, and LLVM hoists
    every row's broadcast out of the vector loop, so 11 × 2 spilled (DeiT: 1.5× slower)."""
    hi = max(1, min(14, registers - 2, n))
    lo = min(8, hi)
    return min(range(lo, hi + 1), key=lambda mr: (math.ceil(n / mr) * mr - n, -mr))


def fused_attention(b: int, h: int, n: int, d: int, scale: float, lanes: int, registers: int,
                    q: View, k: View, v: View, key_bias: bool = False, causal: bool = False,
                    mr: int | None = None) -> tirx.PrimFunc:
    """The fused kernel: params ``(q_src, k_src, v_src[, bias [B, N]], out [B, N, H, d])``."""
    L = int(lanes)
    if L < 2 or L & (L - 1) or d % L:
        raise ValueError(f"fused_attention: head dim {d} is not whole vectors of {L} lanes")
    MR = int(mr or row_tile(n, registers))
    if MR * L > 256:  # the accumulator tile must stay a stack array (TVM: up to 1 KiB)
        raise ValueError(f"fused_attention: {MR} rows x {L} lanes exceed the 1 KiB accumulator")
    NB = math.ceil(n / L)  # key vectors, the last one padded
    NP = NB * L
    RB = math.ceil(n / MR)
    DV = d // L  # vectors of d: the pack's blocks and P·V's column tiles
    TAIL = n % L != 0  # the last key vector has padding lanes
    SCALE = float(scale)
    H8, H4, H2, H1 = fold_steps(L)
    qshape, kshape, vshape = (tuple(int(s) for s in x.root_shape) for x in (q, k, v))
    qsize, ksize, vsize = (math.prod(s) for s in (qshape, kshape, vshape))

    # a task's batch, head and first query row, heads innermost: the pool's contiguous share
    # of tasks per thread is then a band of rows, which the next GEMM (one chunk of rows per
    # core, ``matmul.row_chunks``) reads on the same core. (Python helpers: a scalar assigned
    # in a TVMScript block becomes a one-element buffer, allocated per task.)
    def tb(t):
        return t // (h * RB)

    def th(t):
        return t % h

    def r0(t):
        return t // h % RB * MR

    def score(t, r, col, value, bias):
        """A scaled score as stored: biased, and ``NEG`` for padding and (causal) future keys."""
        if key_bias:
            value = value + bias[tb(t), T.min(col, n - 1)]
        keep = col <= r0(t) + r if causal else col < n
        return T.Select(keep, value, T.float32(NEG))

    @T.macro
    def body(qf, kf, vf, bias, of):
        kp = T.alloc_buffer((b, h, NB, d, L), "float32")
        # 1. Kᵀ packed per head, in lanes × lanes blocks (rows of K are read whole)
        for t in T.parallel(b * h * NB * DV):
            with T.sblock("pack"):
                T.reads(kf[0:ksize])
                T.writes(kp[0:b, 0:h, 0:NB, 0:d, 0:L])
                for kk in T.unroll(L):
                    for l in T.vectorized(L):
                        # keys past n repeat the last one: their scores are masked anyway
                        kp[t // (h * NB * DV), t // (NB * DV) % h, t // DV % NB, t % DV * L + kk, l] = k.at(
                            kf, t // (h * NB * DV), t // (NB * DV) % h, T.min(t // DV % NB * L + l, n - 1), t % DV * L + kk)
        for t in T.parallel(b * h * RB):
            with T.sblock("rows"):
                T.reads(qf[0:qsize], vf[0:vsize], kp[0:b, 0:h, 0:NB, 0:d, 0:L])
                T.writes(of[0:b, 0:n, 0:h, 0:d])
                s = T.alloc_buffer((MR, NP), "float32")
                acc = T.alloc_buffer((MR, L), "float32")
                part = T.alloc_buffer((L,), "float32")
                stat = T.alloc_buffer((MR, 2), "float32")  # [max, 1 / Σ]
                # 2. scores, one key vector at a time (causal: vectors wholly after the task's
                # last query are masked without computing them)
                for j in range(NB):
                    if not causal or j * L <= r0(t) + MR - 1:
                        for r in T.unroll(MR):
                            for l in T.vectorized(L):
                                acc[r, l] = T.float32(0)
                        for kk in range(d):
                            for r in T.unroll(MR):
                                for l in T.vectorized(L):
                                    acc[r, l] = acc[r, l] + q.at(qf, tb(t), th(t), T.min(r0(t) + r, n - 1), kk) * kp[tb(t), th(t), j, kk, l]
                        for r in T.unroll(MR):
                            for l in T.vectorized(L):
                                s[r, j * L + l] = score(t, r, j * L + l, acc[r, l] * T.float32(SCALE), bias)
                    else:
                        for r in range(MR):
                            for l in T.vectorized(L):
                                s[r, j * L + l] = T.float32(NEG)
                # 3. softmax rows: max, exp and Σ (normalisation deferred to O)
                for r in range(MR):
                    for l in T.vectorized(L):
                        part[l] = s[r, l]
                    for j in range(1, NB):
                        for l in T.vectorized(L):
                            part[l] = T.max(part[l], s[r, j * L + l])
                    fold(part, H8, fmax)
                    fold(part, H4, fmax)
                    fold(part, H2, fmax)
                    fold(part, H1, fmax)
                    stat[r, 0] = part[0]
                    for l in T.vectorized(L):
                        part[l] = T.float32(0)
                    for j in range(NB - 1 if TAIL else NB):
                        for l in T.vectorized(L):
                            s[r, j * L + l] = fast_exp(s[r, j * L + l] - stat[r, 0])
                            part[l] = part[l] + s[r, j * L + l]
                    if TAIL:  # padding keys are selected out, so a wholly masked row is uniform
                        for l in T.vectorized(L):
                            s[r, (NB - 1) * L + l] = T.Select((NB - 1) * L + l < n,
                                                              fast_exp(s[r, (NB - 1) * L + l] - stat[r, 0]), T.float32(0))
                            part[l] = part[l] + s[r, (NB - 1) * L + l]
                    fold(part, H8, fadd)
                    fold(part, H4, fadd)
                    fold(part, H2, fadd)
                    fold(part, H1, fadd)
                    stat[r, 1] = T.float32(1) / part[0]
                # 4. O = P·V, one vector of d at a time over the keys (causal: up to the task's
                # last query), rows scaled by 1 / Σ
                for c in range(DV):
                    for r in T.unroll(MR):
                        for l in T.vectorized(L):
                            acc[r, l] = T.float32(0)
                    for kk in range(T.min(n, r0(t) + MR) if causal else n):
                        for r in T.unroll(MR):
                            for l in T.vectorized(L):
                                acc[r, l] = acc[r, l] + s[r, kk] * v.at(vf, tb(t), th(t), kk, c * L + l)
                    for r in range(MR):
                        if r0(t) + r < n:
                            for l in T.vectorized(L):
                                of[tb(t), r0(t) + r, th(t), c * L + l] = acc[r, l] * stat[r, 1]

    if key_bias:
        @T.prim_func(private=True, s_tir=True)
        def kernel(q_src: T.Buffer(qshape, "float32"), k_src: T.Buffer(kshape, "float32"),
                   v_src: T.Buffer(vshape, "float32"), bias: T.Buffer((b, n), "float32"),
                   out: T.Buffer((b, n, h, d), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
            qf = T.decl_buffer((qsize,), "float32", data=q_src.data)
            kf = T.decl_buffer((ksize,), "float32", data=k_src.data)
            vf = T.decl_buffer((vsize,), "float32", data=v_src.data)
            body(qf, kf, vf, bias, out)
    else:
        @T.prim_func(private=True, s_tir=True)
        def kernel(q_src: T.Buffer(qshape, "float32"), k_src: T.Buffer(kshape, "float32"),
                   v_src: T.Buffer(vshape, "float32"), out: T.Buffer((b, n, h, d), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
            qf = T.decl_buffer((qsize,), "float32", data=q_src.data)
            kf = T.decl_buffer((ksize,), "float32", data=k_src.data)
            vf = T.decl_buffer((vsize,), "float32", data=v_src.data)
            body(qf, kf, vf, out, out)  # no bias: never read

    return kernel


__all__ = ["NEG", "View", "contiguous", "fused_attention", "row_tile"]
