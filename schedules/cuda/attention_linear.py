"""The GPU twin of non-causal linear attention (``linear_attention`` of
``accelc.schedules.attention_linear``, variants angular and castling, no chunking): one thread
block per (batch, head), the d×d state built in shared memory, then a warp per query row.

Same numerics as the CPU kernel (``k_scale = w/‖k‖`` with ``w = exp(key_bias)``,
``q_scale = 1/(π‖q‖)``, the ``EPS`` in both norms; angular
``o = (½·Σw·v + q_scale·q·S) / (½·Σw + q_scale·q·z)`` with 0 for a zero denominator, castling
``o = normalize(½·v + q_scale·q·S)``), other loop structure:

- grid: ``B·H`` blocks of ``32 × W`` threads (``W`` warps).
- state: keys in chunks of ``KT``. Per chunk, warp ``ty`` stages keys ``ty, ty + W, …``: its
  lanes read the key's row (coalesced), a ``__shfl_xor_sync`` butterfly sums ``‖k‖²``, and the
  row ``k·k_scale`` and ``v`` land in shared memory (angular: each lane also sums ``k̂``,
  ``w·v`` and ``w`` over its warp's keys in registers, added once per chunk into its warp's
  shared partial of ``z``, ``Σw·v``, ``Σw``). Then every thread adds the chunk into its
  register tile of ``S = Σ k̂ vᵀ`` (rows ``ty + W·r``, columns ``lane + 32·s``: the ``k̂`` read
  is a broadcast, the ``v`` read conflict-free) and writes it back to the shared ``S``: the
  reduction over ``n`` happens in shared memory, block-wide; the output phase sums the ``W``
  warps' partials as it reads them.
- output: warp ``ty`` takes query rows ``ty, ty + W, …``; lanes hold ``q``'s and the output's
  columns ``lane + 32·t``; ``‖q‖²``, ``q·z`` (and castling's ``‖raw‖²``) by butterflies,
  ``q·S`` from the shared state. No global scratch.

Barriers: one explicit ``__syncthreads`` opens each phase (``WarpLayout.barrier_macro``); TVM's
sync planner adds two more per chunk (before the shared partials' and the state's
write-backs), five per ``KT`` keys in all.

Parallelism is ``B·H`` blocks: enough for batched or many-head inputs, few for one image of a
small ViT (the state is not split over ``n`` across blocks). The shared state holds ``d`` up
to 88 (castling, without the partials, a little more); larger ``d`` is declined (``None``) and
stays with the generic GPU rules. The causal forms (with or without the local softmax) are
``attention_linear_causal.py``'s twin, which the registered builder here hands them to; the
non-causal local form is declined (its docstring says why).

``emulate=True`` builds the same program for a CPU (``warp.WarpLayout``), which the CPU tests
hold to the NumPy reference; only the thread bindings and the shuffles differ from the CUDA
build.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ...targets.cuda import LIMITS
from ..attention_linear import EPS
from ..kernel_attrs import kernel_param, kernel_param_float, named_kernel
from . import register
from .attention_linear_causal import linear_attention_causal_gpu
from .linear_state import HALF, ONE, ZERO, StateRows, state_shape
from .warp import WARP, WarpLayout

#: Warps per block (256 threads).
WARPS = 8


def linear_attention_gpu(b: int, h: int, n: int, d: int, variant: str = "angular", key_bias: bool = False, *,
                         chunk: int = 64, scale: float = 1.0, warps: int = WARPS, emulate: bool = False):
    """The CUDA kernel (``emulate``: its CPU emulation) of the non-causal, non-local
    ``linear_attention`` with that kernel's parameters and attributes (``chunk`` and ``scale``
    are recorded, unused, as there); ``tirx.is_scheduled``. None when the state does not fit
    in 48 KiB of shared memory (``d`` above 88)."""
    castling = variant == "castling"
    if variant not in ("angular", "castling"):
        raise ValueError(f"variant must be 'angular' or 'castling', got {variant!r}")
    shared = LIMITS["max_shared_memory_per_block"]
    fits = [kt for kt in (32, 16, 8) if kt % warps == 0 and _shared_floats(d, kt, warps, castling) * 4 <= shared]
    if not fits:
        return None
    keys = fits[0]
    func = _build(b, h, n, d, castling, bool(key_bias), warps, keys, WarpLayout(emulate))
    func = named_kernel(func, "linear_attention", b=b, h=h, n=n, d=d, causal=0, chunk=chunk, local=0,
                        key_bias=int(bool(key_bias)), variant=variant, scale=float(scale))
    return func if emulate else func.with_attr("tirx.is_scheduled", True)


@register("linear_attention")
def _twin(func):
    p = {key: kernel_param(func, key) for key in ("b", "h", "n", "d", "key_bias", "chunk", "causal", "local")}
    shape, scale = (p["b"], p["h"], p["n"], p["d"]), kernel_param_float(func, "scale")
    if p["causal"]:
        return linear_attention_causal_gpu(*shape, bool(p["key_bias"]), local=bool(p["local"]), chunk=p["chunk"],
                                           scale=scale)
    if p["local"]:
        return None  # non-causal local: its far set is every other chunk (attention_linear_causal.py)
    return linear_attention_gpu(*shape, str(func.attrs["accelc.variant"]), bool(p["key_bias"]), chunk=p["chunk"],
                                scale=scale)


def _shared_floats(d: int, keys: int, warps: int, castling: bool) -> int:
    rows, cols = state_shape(d, warps)
    partials = 0 if castling else 2 * warps * cols + warps
    return rows * cols + keys * rows + keys * cols + partials


def _build(B, H, N, D, castling, has_bias, W, KT, lay: WarpLayout):
    SR, SC = state_shape(D, W)  # state rows (by warp) and columns (by lane), padded
    RPW, SPL = SR // W, SC // WARP  # state rows per warp, columns per lane
    DPL = -(-D // WARP)  # q / output columns per lane
    KPW = KT // W  # keys per warp and chunk
    NCH = -(-N // KT)
    PW = 1 if castling else W  # warps' partial sums (angular)
    LN = lay.held
    EPS_ = T.float32(EPS)
    warp_sum = lay.sum_macro()
    barrier = lay.barrier_macro()
    rows = StateRows(lay, B, H, N, D, W, has_bias, partials=not castling)
    over_warps = rows.over_warps

    @T.macro
    def stage_key(k, v, key_bias, kh, vs, kreg, vreg, sums, part, wst, bb, hh, ch, jj, ty, tx):
        """Key ``ch·KT + jj`` (zero past ``N``) into the shared chunk, scaled by w/‖k‖."""
        j = T.meta_var(ch * KT + jj)
        rows.load_key(k, v, key_bias, kreg, vreg, part, wst, bb, hh, j, j < N, tx)
        for li in lay.lanes():
            for s in T.unroll(SPL):
                c = T.meta_var(lay.lane(li, tx) + WARP * s)
                if c < SR:
                    kh[jj, c] = kreg[li, s] * wst[1]
                vs[jj, c] = vreg[li, s]
            if not castling:
                for s in T.unroll(SPL):
                    sums[li, s] = sums[li, s] + kreg[li, s] * wst[1]
                    sums[li, SPL + s] = sums[li, SPL + s] + wst[0] * vreg[li, s]
                sums[li, 2 * SPL] = sums[li, 2 * SPL] + wst[0]

    @T.macro
    def out_row(q, v, out, S, zpart, svpart, swpart, qreg, num, part, st, bb, hh, i, tx):
        rows.query_state(q, S, qreg, num, part, st, bb, hh, i, tx)
        if castling:
            for li in lay.lanes():
                part[li] = ZERO
                for t in T.unroll(DPL):
                    c = T.meta_var(lay.lane(li, tx) + WARP * t)
                    num[li, t] = HALF * T.if_then_else(c < D, v[bb, hh, i, T.min(c, D - 1)], ZERO) + st[0] * num[li, t]
                    part[li] = part[li] + num[li, t] * num[li, t]
            warp_sum(part)
            st[1] = ONE / T.sqrt(part[0] + EPS_)
            for li in lay.lanes():
                for t in T.unroll(DPL):
                    c = T.meta_var(lay.lane(li, tx) + WARP * t)
                    if c < D:
                        out[bb, hh, i, c] = num[li, t] * st[1]
        else:
            rows.query_z(qreg, zpart, part, tx)
            st[2] = HALF * over_warps(swpart, 0) + st[0] * part[0]  # the denominator
            st[1] = T.Select(st[2] > ZERO, ONE / st[2], ZERO)
            for li in lay.lanes():
                for t in T.unroll(DPL):
                    c = T.meta_var(lay.lane(li, tx) + WARP * t)
                    if c < D:
                        out[bb, hh, i, c] = (HALF * over_warps(svpart, c) + st[0] * num[li, t]) * st[1]

    @T.macro
    def head(q, k, v, key_bias, gate, out, bb, hh, S, zpart, svpart, swpart):
        kh = T.alloc_buffer((KT, SR), "float32", scope="shared")
        vs = T.alloc_buffer((KT, SC), "float32", scope="shared")
        for ch in range(NCH):
            for ty in lay.warps(W):
                for tx in lay.lane_threads():
                    with T.sblock("stage"):
                        T.reads(k[:, :, :, :], v[:, :, :, :])
                        T.writes(kh[:, :], vs[:, :], zpart[:, :], svpart[:, :], swpart[:, :])
                        barrier()
                        kreg = T.alloc_buffer((LN, SPL), "float32", scope="local")
                        vreg = T.alloc_buffer((LN, SPL), "float32", scope="local")
                        part = T.alloc_buffer((LN,), "float32", scope="local")
                        wst = T.alloc_buffer((2,), "float32", scope="local")
                        sums = T.alloc_buffer((LN, 2 * SPL + 1), "float32", scope="local")
                        for li, e in T.grid(LN, 2 * SPL + 1):
                            sums[li, e] = ZERO
                        for p in range(KPW):
                            stage_key(k, v, key_bias, kh, vs, kreg, vreg, sums, part, wst, bb, hh, ch,
                                      ty + W * p, ty, tx)
                        if not castling:
                            rows.flush_sums(zpart, svpart, swpart, sums, ty, tx)
            for ty in lay.warps(W):
                for tx in lay.lane_threads():
                    with T.sblock("accumulate"):
                        T.reads(kh[:, :], vs[:, :])
                        T.writes(S[:, :])
                        barrier()
                        acc = T.alloc_buffer((LN, RPW, SPL), "float32", scope="local")
                        krow = T.alloc_buffer((LN, RPW), "float32", scope="local")
                        rows.add_to_state(S, vs, acc, krow, lambda jj, a: kh[jj, a], KT, ty, tx)
        for ty in lay.warps(W):
            for tx in lay.lane_threads():
                with T.sblock("rows"):
                    T.reads(q[:, :, :, :], v[:, :, :, :], S[:, :], zpart[:, :], svpart[:, :], swpart[:, :])
                    T.writes(out[:, :, :, :])
                    barrier()
                    qreg = T.alloc_buffer((LN, DPL), "float32", scope="local")
                    num = T.alloc_buffer((LN, DPL), "float32", scope="local")
                    part = T.alloc_buffer((LN,), "float32", scope="local")
                    st = T.alloc_buffer((3,), "float32", scope="local")
                    for p in range(-(-N // W)):
                        if ty + W * p < N:  # the same for the whole warp
                            out_row(q, v, out, S, zpart, svpart, swpart, qreg, num, part, st, bb, hh,
                                    ty + W * p, tx)

    return rows.kernel(head, False)


__all__ = ["WARPS", "linear_attention_gpu"]
