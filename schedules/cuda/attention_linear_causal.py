"""The GPU twin of causal linear attention (``linear_attention`` of
``accelc.schedules.attention_linear`` with ``causal=True``, variant angular, with or without
the local softmax): one thread block per (batch, head) walks the keys in order, the running
d×d prefix state in shared memory; per tile of keys, first its queries, then the tile folds
into the state.

Same numerics as the CPU kernel's chunked form (``k_scale = w/‖k‖`` with ``w = exp(key_bias)``,
``q_scale = 1/(π‖q‖)``, the ``EPS`` in both norms; in-tile weights
``0.5·w_j + q_scale·k_scale_j·(q·k_j)`` for ``j ≤ i``, the prefix part ``½·sv + q_scale·q·S``
over ``½·sw + q_scale·q·z``, 0 for a zero denominator; local: softmax of ``scale·q·k`` times
``w`` over the window's live keys, ``o = g·o_loc + (1 − g)·o_far`` with a part whose weights
are all zero dropping out), other loop structure:

- grid: ``B·H`` blocks of ``32 × W`` threads (``W`` warps). The block walks tiles of ``KT``
  keys. Without the local softmax the causal sum does not depend on how it is split (the
  in-chunk φ and the prefix state are one sum over ``j ≤ i``), so ``KT`` is the twin's own
  (32, 16 or 8, what fits) and the kernel's ``chunk`` is recorded, unused; with it the tile is
  the softmax window, ``KT = min(chunk, n)``.
- per tile, three phases, each opened by a ``__syncthreads`` (``WarpLayout.barrier_macro``):
  1. stage: warp ``ty`` loads keys ``ty, ty + W, …`` of the tile (lanes read the row,
     coalesced; a ``__shfl_xor_sync`` butterfly sums ``‖k‖²``) into shared memory: raw ``k``
     (rows padded by one float, so that lane ``t`` reading key ``t`` is conflict-free), ``v``,
     ``k_scale`` and ``w`` (zero past ``N``).
  2. queries: warp ``ty`` takes the tile's query rows ``ty, ty + W, …``; lanes hold ``q``'s and
     the output's columns ``lane + 32·t``. ``q·S`` reads the shared prefix state (``q[a]`` a
     broadcast, ``S``'s row conflict-free), ``q·z`` sums the warps' partials of ``z`` as it
     reads them; in the same pass over ``a`` lane ``t`` forms ``q·k_t`` for the tile's key
     ``t``, its weight then sums by a butterfly (local: a max butterfly first) and goes to
     every lane by ``__shfl_sync`` for ``Σ_t a_t·v_t``. No global scratch.
  3. fold: every thread adds the tile into its register tile of ``S`` (rows ``ty + W·r``,
     columns ``lane + 32·s``), written back to the shared ``S``; warp ``ty`` adds its staged
     keys' ``Σ k̂``, ``Σ w·v`` and ``Σ w`` into its own shared partials (no other warp writes
     them).
  TVM's sync planner adds its own in the fold, before the write-backs (for ``d = 64`` two:
  five ``__syncthreads`` per tile in the code; for ``d ≤ 32`` four); none sits inside a branch
  that some threads could skip.

Parallelism is ``B·H`` blocks and the tiles run one after the other: enough for batched or
many-head prefill, little for one short sequence. Declined (``None``, the generic GPU rules
take them): a state that does not fit 48 KiB of static shared memory beside one tile (``d``
above 88); a local window wider than a warp (``min(chunk, n) > 32``: one key per lane) or whose
tile does not fit; and the non-causal local form, whose far set is every *other* chunk — the
walk has only the prefix, and a total minus the own chunk would lose the exact zero of a fully
masked far set that decides which part drops out.

``emulate=True`` builds the same program for a CPU (``warp.WarpLayout``), which the CPU tests
hold to the NumPy reference; only the thread bindings and the shuffles differ from the CUDA
build.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ...targets.cuda import LIMITS
from ..kernel_attrs import named_kernel
from .linear_state import HALF, ONE, ZERO, StateRows, state_shape
from .warp import WARP, WarpLayout

#: Warps per block (256 threads).
WARPS = 8


def linear_attention_causal_gpu(b: int, h: int, n: int, d: int, key_bias: bool = False, *, local: bool = False,
                                chunk: int = 64, scale: float = 1.0, warps: int = WARPS, emulate: bool = False):
    """The CUDA kernel (``emulate``: its CPU emulation) of the causal angular
    ``linear_attention`` (``local``: with the local softmax of window ``chunk`` and logit scale
    ``scale``) with that kernel's parameters and attributes; ``tirx.is_scheduled``. None where
    declined (the module docstring says when)."""
    keys = tile_keys(n, d, local, chunk, warps)
    if keys is None:
        return None
    func = _build(b, h, n, d, bool(key_bias), local, float(scale), warps, keys, WarpLayout(emulate))
    func = named_kernel(func, "linear_attention", b=b, h=h, n=n, d=d, causal=1, chunk=chunk, local=int(local),
                        key_bias=int(bool(key_bias)), variant="angular", scale=float(scale))
    return func if emulate else func.with_attr("tirx.is_scheduled", True)


def tile_keys(n: int, d: int, local: bool, chunk: int, warps: int = WARPS) -> int | None:
    """Keys per tile: the local softmax's window ``min(chunk, n)`` (at most a warp's 32), else the
    largest of 32, 16, 8 whose tile fits beside the state; None when nothing fits."""
    if local:
        window = min(chunk, n)
        tiles = [window] if window <= WARP else []
    else:
        tiles = [kt for kt in (32, 16, 8) if kt % warps == 0]
    shared = LIMITS["max_shared_memory_per_block"]
    return next((kt for kt in tiles if _shared_floats(d, kt, warps) * 4 <= shared), None)


def _staged_rows(keys: int, warps: int) -> int:
    """Rows of the staged tile: whole warps' worth (a short window's extra rows stay zero)."""
    return -(-keys // warps) * warps


def _shared_floats(d: int, keys: int, warps: int) -> int:
    rows, cols = state_shape(d, warps)
    kr = _staged_rows(keys, warps)
    staged = kr * (rows + 1) + kr * cols + 2 * kr  # raw k (one float of padding a row), v, k_scale, w
    partials = 2 * warps * cols + warps * WARP  # z, Σw·v, Σw per warp
    return rows * cols + staged + partials


def _build(B, H, N, D, has_bias, local, scale, W, KT, lay: WarpLayout):
    SR, SC = state_shape(D, W)  # state rows (by warp) and columns (by lane), padded
    RPW, SPL = SR // W, SC // WARP  # state rows per warp, columns per lane
    KR = _staged_rows(KT, W)
    KS = SR + 1  # staged keys' row stride: lanes reading keys t = 0..31 at one column hit 32 banks
    KPW = KR // W  # staged keys (and query rows) per warp and tile
    NT = -(-N // KT)
    LN = lay.held
    SCALE = T.float32(scale)
    warp_sum = lay.sum_macro()
    warp_max = lay.max_macro()
    barrier = lay.barrier_macro()
    rows = StateRows(lay, B, H, N, D, W, has_bias)
    over_warps = rows.over_warps

    def key_slot(lane):
        """The staged key lane ``lane`` weighs (clamped: lanes past the tile are masked)."""
        return lane if KR >= WARP else T.min(lane, KR - 1)

    @T.macro
    def stage_key(k, v, key_bias, keys, vals, kscale, kweight, kreg, vreg, part, wst, bb, hh, tile, jj, tx):
        """Key ``tile·KT + jj`` (zero past ``N`` and past the tile) into the shared tile."""
        j = T.meta_var(tile * KT + jj)
        valid = T.meta_var(j < N if KR == KT else tirx.all(j < N, jj < KT))
        rows.load_key(k, v, key_bias, kreg, vreg, part, wst, bb, hh, j, valid, tx)
        for li in lay.lanes():
            for s in T.unroll(SPL):
                c = T.meta_var(lay.lane(li, tx) + WARP * s)
                if c < SR:
                    keys[jj * KS + c] = kreg[li, s]
                vals[jj, c] = vreg[li, s]
        kweight[jj] = wst[0]  # every lane writes the same value: no single-lane branch
        kscale[jj] = wst[1]

    @T.macro
    def query_row(q, gate, out, S, keys, vals, kscale, kweight, zpart, svpart, swpart, qreg, num, inum, wgt,
                  part, st, bb, hh, i, il, tx):
        """Query ``i``, the tile's ``il``-th: prefix part from the state, in-tile part from the
        staged keys ``0..il``."""
        rows.query_state(q, S, qreg, num, part, st, bb, hh, i, tx)
        for li in lay.lanes():  # lane t: q·k of the tile's key t
            wgt[li] = ZERO
            for a in range(D):
                wgt[li] = wgt[li] + q[bb, hh, i, a] * keys[key_slot(lay.lane(li, tx)) * KS + a]
        if local:
            for li in lay.lanes():
                t = T.meta_var(lay.lane(li, tx))
                wgt[li] = SCALE * wgt[li]
                part[li] = T.Select(tirx.all(t <= il, kweight[key_slot(t)] > ZERO), wgt[li], T.min_value("float32"))
            warp_max(part)
            st[1] = part[0]
            for li in lay.lanes():
                t = T.meta_var(lay.lane(li, tx))
                wgt[li] = T.Select(tirx.all(t <= il, kweight[key_slot(t)] > ZERO),
                                   T.exp(wgt[li] - st[1]) * kweight[key_slot(t)], ZERO)
                part[li] = wgt[li]
        else:
            for li in lay.lanes():
                t = T.meta_var(lay.lane(li, tx))
                wgt[li] = T.Select(t <= il, HALF * kweight[key_slot(t)] + st[0] * kscale[key_slot(t)] * wgt[li], ZERO)
                part[li] = wgt[li]
        warp_sum(part)
        st[1] = part[0]  # the in-tile denominator
        for li in lay.lanes():
            for s in T.unroll(SPL):
                inum[li, s] = ZERO
            for t in range(il + 1):  # the same bound for the whole warp
                for s in T.unroll(SPL):
                    inum[li, s] = inum[li, s] + lay.broadcast(wgt, t) * vals[t, lay.lane(li, tx) + WARP * s]
        rows.query_z(qreg, zpart, part, tx)
        st[2] = HALF * over_warps(swpart, 0) + st[0] * part[0]  # the prefix denominator
        if local:  # o = g·o_loc + (1 − g)·o_far, a part with zero weight dropping out
            st[3] = T.Select(st[1] > ZERO, T.Select(st[2] > ZERO, gate[hh, i], ONE) / st[1], ZERO)
            st[4] = T.Select(st[2] > ZERO, T.Select(st[1] > ZERO, ONE - gate[hh, i], ONE) / st[2], ZERO)
        else:
            st[3] = st[1] + st[2]
            st[3] = T.Select(st[3] > ZERO, ONE / st[3], ZERO)
        for li in lay.lanes():
            for s in T.unroll(SPL):
                c = T.meta_var(lay.lane(li, tx) + WARP * s)
                far = T.meta_var(HALF * over_warps(svpart, c) + st[0] * num[li, s])
                if c < D:
                    if local:
                        out[bb, hh, i, c] = inum[li, s] * st[3] + far * st[4]
                    else:
                        out[bb, hh, i, c] = (inum[li, s] + far) * st[3]

    @T.macro
    def fold_tile(S, keys, vals, kscale, kweight, zpart, svpart, swpart, acc, krow, sums, ty, tx):
        """The tile into the thread's register tile of S, and warp ``ty``'s staged keys into its
        partials of ``z``, ``Σw·v``, ``Σw``."""
        # k̂ = k·k_scale, as the CPU kernel's k_hat
        rows.add_to_state(S, vals, acc, krow, lambda jj, a: keys[jj * KS + a] * kscale[jj], KT, ty, tx)
        for li in lay.lanes():
            lane = T.meta_var(lay.lane(li, tx))
            for e in range(2 * SPL + 1):
                sums[li, e] = ZERO
            for p in range(KPW):
                jj = T.meta_var(ty + W * p)
                for s in T.unroll(SPL):
                    c = T.meta_var(lane + WARP * s)
                    khat = T.meta_var(T.if_then_else(c < SR, keys[jj * KS + T.min(c, SR - 1)], ZERO) * kscale[jj])
                    sums[li, s] = sums[li, s] + khat
                    sums[li, SPL + s] = sums[li, SPL + s] + kweight[jj] * vals[jj, c]
                sums[li, 2 * SPL] = sums[li, 2 * SPL] + kweight[jj]
        rows.flush_sums(zpart, svpart, swpart, sums, ty, tx)

    @T.macro
    def head(q, k, v, key_bias, gate, out, bb, hh, S, zpart, svpart, swpart):
        keys = T.alloc_buffer((KR * KS,), "float32", scope="shared")  # flat: kept padded
        vals = T.alloc_buffer((KR, SC), "float32", scope="shared")
        kscale = T.alloc_buffer((KR,), "float32", scope="shared")
        kweight = T.alloc_buffer((KR,), "float32", scope="shared")
        for tile in range(NT):
            for ty in lay.warps(W):
                for tx in lay.lane_threads():
                    with T.sblock("stage"):
                        T.reads(k[:, :, :, :], v[:, :, :, :])
                        T.writes(keys[:], vals[:, :], kscale[:], kweight[:])
                        barrier()
                        kreg = T.alloc_buffer((LN, SPL), "float32", scope="local")
                        vreg = T.alloc_buffer((LN, SPL), "float32", scope="local")
                        part = T.alloc_buffer((LN,), "float32", scope="local")
                        wst = T.alloc_buffer((2,), "float32", scope="local")
                        for p in range(KPW):
                            stage_key(k, v, key_bias, keys, vals, kscale, kweight, kreg, vreg, part, wst,
                                      bb, hh, tile, ty + W * p, tx)
            for ty in lay.warps(W):
                for tx in lay.lane_threads():
                    with T.sblock("queries"):
                        T.reads(q[:, :, :, :], S[:, :], keys[:], vals[:, :], kscale[:], kweight[:],
                                zpart[:, :], svpart[:, :], swpart[:, :])
                        T.writes(out[:, :, :, :])
                        barrier()
                        qreg = T.alloc_buffer((LN, SPL), "float32", scope="local")
                        num = T.alloc_buffer((LN, SPL), "float32", scope="local")
                        inum = T.alloc_buffer((LN, SPL), "float32", scope="local")
                        wgt = T.alloc_buffer((LN,), "float32", scope="local")
                        part = T.alloc_buffer((LN,), "float32", scope="local")
                        st = T.alloc_buffer((5,), "float32", scope="local")
                        for p in range(KPW):
                            if tirx.all(tile * KT + ty + W * p < N, ty + W * p < KT):  # warp-uniform
                                query_row(q, gate, out, S, keys, vals, kscale, kweight, zpart, svpart,
                                          swpart, qreg, num, inum, wgt, part, st, bb, hh,
                                          tile * KT + ty + W * p, ty + W * p, tx)
            for ty in lay.warps(W):
                for tx in lay.lane_threads():
                    with T.sblock("fold"):
                        T.reads(keys[:], vals[:, :], kscale[:], kweight[:])
                        T.writes(S[:, :], zpart[:, :], svpart[:, :], swpart[:, :])
                        barrier()
                        acc = T.alloc_buffer((LN, RPW, SPL), "float32", scope="local")
                        krow = T.alloc_buffer((LN, RPW), "float32", scope="local")
                        sums = T.alloc_buffer((LN, 2 * SPL + 1), "float32", scope="local")
                        fold_tile(S, keys, vals, kscale, kweight, zpart, svpart, swpart, acc, krow, sums,
                                  ty, tx)

    return rows.kernel(head, local)


__all__ = ["WARPS", "linear_attention_causal_gpu", "tile_keys"]
