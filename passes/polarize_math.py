"""Numerics of ViTCoD's sparsity polarization: fixed attention masks from average softmax maps,
polarized into a dense part (every query × the head's global key tokens) and a sparse part (the
remaining kept entries, CSR over the permuted key order), plus NumPy references.

Pure NumPy. Shapes: average maps ``[H, N, N]`` (rows sum to 1), activations ``q, k, v`` of
``[B, H, N, d]``, masks ``[H, N, N]`` with ``True`` = kept (ViTCoD's files store the opposite).

Pipeline (ViTCoD ``gen_mask.py`` + ``reorder.py``):

1. :func:`select_mask`: per query row keep the smallest prefix of the descending row whose
   cumulative mass reaches ``info_cut``, or the top ``(1 − sparsity)·N`` entries; always keep
   the diagonal and (``keep_cls``) row and column 0; never keep ``j > i`` when ``causal``.
2. :func:`polarize`: ``deg(j)`` = rows keeping column ``j``; columns with ``deg > tau`` are the
   head's global tokens ``G`` (moved to the front of the key order). The dense part computes
   every row against ``G``, so the *effective* mask is ``mask ∪ (rows × G)`` (with ``causal``
   the kernel still drops ``j > i``), and that is what the stats report.

:func:`pattern_from_maps` runs both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PolarPattern", "select_mask", "polarize", "pattern_from_maps", "masked_attention_ref",
    "polarized_attention_ref", "polarized_macs", "dense_attention_macs",
]

#: ViTCoD's global-token threshold: 50 of 197 rows.
DEFAULT_TAU_FRACTION = 0.25


@dataclass(frozen=True)
class PolarPattern:
    """One layer's polarized attention pattern (all heads).

    ``perm[h]``: key token at each permuted position (global tokens ascending, then the rest
    ascending). ``gcount[h]``: number of global tokens (positions ``< gcount[h]`` are the dense
    part). ``indptr[h, i]:indptr[h, i + 1]``: absolute offsets into ``indices`` of row ``i``'s
    sparse entries, given as permuted positions (each ``>= gcount[h]``, ascending). ``mask``:
    the effective kept mask in the original key order (causal pruning applied). ``kept``: the
    selected mask before polarization (what pruning asked for).

    Stats per head: ``nnz_sparse``, ``sparsity`` (pruned fraction of the effective mask, over
    ``N²`` or, causal, over the ``N(N+1)/2`` allowed entries), ``retained_mass`` (average-map
    mass inside the effective mask / N; NaN without maps), ``dense_ratio`` (ViTCoD's
    ``G·N / (nnz_sparse + G·N)``, the dense engine's share of the work).
    """

    perm: np.ndarray  # int32 [H, N]
    gcount: np.ndarray  # int32 [H]
    indptr: np.ndarray  # int32 [H, N + 1]
    indices: np.ndarray  # int32 [nnz]
    mask: np.ndarray  # bool [H, N, N]
    kept: np.ndarray  # bool [H, N, N]
    nnz_sparse: np.ndarray  # int64 [H]
    sparsity: np.ndarray  # float64 [H]
    retained_mass: np.ndarray  # float64 [H]
    dense_ratio: np.ndarray  # float64 [H]
    tau: float
    causal: bool

    @property
    def heads(self) -> int:
        return int(self.perm.shape[0])

    @property
    def n(self) -> int:
        return int(self.perm.shape[1])

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @property
    def global_tokens(self) -> np.ndarray:
        """|G| per head (same as ``gcount``)."""
        return self.gcount.astype(np.int64)

    @property
    def achieved_sparsity(self) -> float:
        """Pruned fraction of the effective mask over all heads."""
        allowed = _allowed(self.n, self.causal).sum() * self.heads
        return float(1.0 - self.mask.sum() / allowed)

    def kernel_args(self) -> list[np.ndarray]:
        """``[perm, gcount, indptr, indices]`` in the kernel's argument order (``indices`` at
        least one entry long: a zero-length buffer cannot be passed)."""
        indices = self.indices if self.nnz else np.zeros(1, np.int32)
        return [self.perm, self.gcount, self.indptr, indices]


# ----------------------------------------------------------------------------------------------
# argument checks


def _allowed(n: int, causal: bool) -> np.ndarray:
    if causal:
        return np.tril(np.ones((n, n), dtype=bool))
    return np.ones((n, n), dtype=bool)


def _maps(avg_maps) -> np.ndarray:
    a = np.asarray(avg_maps)
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[1] == 0 or a.dtype.kind not in "fiu":
        raise ValueError(f"avg_maps must be a real [H, N, N] array, got shape {a.shape} dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("avg_maps must be finite and non-negative")
    return a


def _mask(mask, n: int | None = None, heads: int | None = None) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3 or m.shape[1] != m.shape[2] or m.dtype != np.bool_:
        raise ValueError(f"mask must be a bool [H, N, N] array, got shape {m.shape} dtype {m.dtype}")
    if (n is not None and m.shape[1] != n) or (heads is not None and m.shape[0] != heads):
        raise ValueError(f"mask must be [{heads}, {n}, {n}], got {m.shape}")
    return m


def _tau(tau, n: int) -> float:
    if tau is None:
        return DEFAULT_TAU_FRACTION * n
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)) or not np.isfinite(tau) \
            or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    return float(tau)


def _qkv(q, k, v):
    q, k, v = (np.asarray(x) for x in (q, k, v))
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one [B, H, N, d] shape, got {q.shape}, {k.shape}, {v.shape}")
    return q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)


def _bias(key_bias, b: int, n: int):
    if key_bias is None:
        return np.zeros((b, n))
    kb = np.asarray(key_bias, dtype=np.float64)
    if kb.shape != (b, n):
        raise ValueError(f"key_bias must be [B, N] = [{b}, {n}], got {kb.shape}")
    return kb


# ----------------------------------------------------------------------------------------------
# pattern construction


def select_mask(avg_maps, *, info_cut=None, sparsity=None, keep_cls: bool = True,
                causal: bool = False) -> np.ndarray:
    """The pruning mask (bool ``[H, N, N]``, True = kept) chosen from average attention maps.

    Exactly one of ``info_cut`` (in ``(0, 1]``: per row, the smallest prefix of the
    descending-sorted row whose cumulative mass is ``>= info_cut``) or ``sparsity`` (in
    ``[0, 1)``: per row the top ``max(1, round((1 − sparsity)·L))`` entries, ``L = N``, or
    ``i + 1`` for row ``i`` when ``causal``). Ties go to the lower key index. The diagonal is
    always kept, and with ``keep_cls`` row and column 0 (within the causal triangle).
    """
    a = _maps(avg_maps)
    if (info_cut is None) == (sparsity is None):
        raise ValueError("give exactly one of info_cut and sparsity")
    if info_cut is not None and (isinstance(info_cut, bool) or not isinstance(info_cut, (int, float, np.number))
                                 or not 0.0 < float(info_cut) <= 1.0):
        raise ValueError(f"info_cut must be in (0, 1], got {info_cut!r}")
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.number))
                                 or not 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    heads, n, _ = a.shape
    allowed = _allowed(n, causal)
    scores = np.where(allowed[None], a, -np.inf)
    # Descending order, ties to the lower index (stable sort of the negated row).
    order = np.argsort(-scores, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[None, None, :].repeat(heads, 0).repeat(n, 1), axis=-1)
    lengths = allowed.sum(axis=-1)  # [N]
    if sparsity is not None:
        keep = np.maximum(1, np.round((1.0 - float(sparsity)) * lengths).astype(np.int64))  # [N]
        keep = np.broadcast_to(keep[None, :], (heads, n))
    else:
        sorted_mass = np.take_along_axis(np.where(np.isfinite(scores), scores, 0.0), order, axis=-1)
        cum = np.cumsum(sorted_mass, axis=-1)
        # smallest prefix with cum >= info_cut (tolerating rounding); all allowed if never reached
        reached = cum >= float(info_cut) * (1.0 - 1e-12)
        keep = np.where(reached.any(axis=-1), reached.argmax(axis=-1) + 1, n)
        keep = np.minimum(keep, lengths[None, :])
    mask = (rank < keep[..., None]) & allowed[None]
    mask |= np.eye(n, dtype=bool)[None]
    if keep_cls:
        mask[:, 0, :] = allowed[0]
        mask[:, :, 0] = True  # column 0 is inside every row's causal range
    return mask


def polarize(mask, *, tau=None, causal: bool = False, avg_maps=None) -> PolarPattern:
    """Polarize a kept mask (bool ``[H, N, N]``) per head into global tokens + CSR remainder.

    ``tau`` (default ``0.25·N``): columns kept by more than ``tau`` rows are global. With
    ``causal``, entries ``j > i`` of ``mask`` are dropped first and the global columns cover only
    rows ``i >= j`` (the kernel applies that condition). ``avg_maps`` only feeds
    ``retained_mass``.
    """
    m = _mask(mask)
    heads, n, _ = m.shape
    tau = _tau(tau, n)
    allowed = _allowed(n, causal)
    m = m & allowed[None]
    maps = None if avg_maps is None else _maps(avg_maps)
    if maps is not None and maps.shape != m.shape:
        raise ValueError(f"avg_maps must be {m.shape} like the mask, got {maps.shape}")
    perm = np.empty((heads, n), np.int32)
    gcount = np.empty(heads, np.int32)
    indptr = np.empty((heads, n + 1), np.int32)
    eff = np.empty_like(m)
    chunks = []
    offset = 0
    for hh in range(heads):
        deg = m[hh].sum(axis=0)
        is_global = deg > tau
        glob = np.flatnonzero(is_global)
        rest = np.flatnonzero(~is_global)
        perm[hh] = np.concatenate([glob, rest])
        gcount[hh] = len(glob)
        pos = np.empty(n, np.int64)
        pos[perm[hh]] = np.arange(n)
        sparse = m[hh] & ~is_global[None, :]
        rows, cols = np.nonzero(sparse)
        p = pos[cols]
        order = np.lexsort((p, rows))
        chunks.append(p[order].astype(np.int32))
        counts = np.bincount(rows, minlength=n)
        indptr[hh, 0] = offset
        indptr[hh, 1:] = offset + np.cumsum(counts)
        offset += len(rows)
        eff[hh] = (m[hh] | is_global[None, :]) & allowed
    indices = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    if offset >= 2 ** 31:
        raise ValueError("pattern too large for int32 CSR offsets")
    nnz_sparse = np.diff(indptr[:, [0, -1]], axis=1)[:, 0].astype(np.int64)
    total = allowed.sum()
    sparsity = 1.0 - eff.reshape(heads, -1).sum(axis=1) / total
    if maps is None:
        retained = np.full(heads, np.nan)
    else:
        retained = (maps * eff).reshape(heads, -1).sum(axis=1) / n
    dense_work = gcount.astype(np.float64) * n
    work = nnz_sparse + dense_work
    dense_ratio = np.divide(dense_work, work, out=np.zeros(heads), where=work > 0)
    return PolarPattern(perm=perm, gcount=gcount, indptr=indptr, indices=indices, mask=eff, kept=m,
                        nnz_sparse=nnz_sparse, sparsity=sparsity, retained_mass=retained,
                        dense_ratio=dense_ratio, tau=tau, causal=bool(causal))


def pattern_from_maps(avg_maps, *, info_cut=None, sparsity=None, tau=None, keep_cls: bool = True,
                      causal: bool = False) -> PolarPattern:
    """:func:`select_mask` then :func:`polarize` (see both for the knobs)."""
    maps = _maps(avg_maps)
    _tau(tau, maps.shape[1])  # reject a bad tau before the work
    mask = select_mask(maps, info_cut=info_cut, sparsity=sparsity, keep_cls=keep_cls, causal=causal)
    return polarize(mask, tau=tau, causal=causal, avg_maps=maps)


# ----------------------------------------------------------------------------------------------
# references


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    """Row softmax of scores with -inf for dropped entries; all-dropped rows give zeros."""
    mx = s.max(axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(s - mx)
    tot = e.sum(axis=-1, keepdims=True)
    return np.divide(e, tot, out=np.zeros_like(e), where=tot > 0)


def masked_attention_ref(q, k, v, mask, scale, key_bias=None, causal: bool = False) -> np.ndarray:
    """Dense masked softmax attention (float64 inside, float32 out): ``softmax(scale·q·kᵀ +
    key_bias[b, j], masked_fill(−inf) off the mask and, causal, where j > i) @ v``. Rows with
    nothing kept give zeros."""
    q, k, v = _qkv(q, k, v)
    b, heads, n, _ = q.shape
    m = _mask(mask, n, heads)
    kb = _bias(key_bias, b, n)
    s = float(scale) * np.einsum("bhid,bhjd->bhij", q, k) + kb[:, None, None, :]
    keep = m & _allowed(n, causal)[None]
    s = np.where(keep[None], s, -np.inf)
    return (_softmax_rows(s) @ v).astype(np.float32)


def polarized_attention_ref(q, k, v, pattern: PolarPattern, scale, key_bias=None,
                            causal: bool = False) -> np.ndarray:
    """The two-engine computation in NumPy (float64 inside, float32 out): gather ``K/V`` into
    the permuted order; dense ``S_d = scale·Q·K_Gᵀ``; sparse ``S_s`` = SDDMM on the CSR; one
    row softmax over both (shared max and sum); ``O = P_d·V_G + SpMM(P_s, V_rest)``."""
    q, k, v = _qkv(q, k, v)
    b, heads, n, d = q.shape
    if pattern.perm.shape != (heads, n):
        raise ValueError(f"pattern is for {pattern.perm.shape} (heads, tokens), activations {(heads, n)}")
    kb = _bias(key_bias, b, n)
    out = np.zeros((b, heads, n, d))
    rows_i = np.arange(n)
    for hh in range(heads):
        perm = pattern.perm[hh].astype(np.int64)
        g = int(pattern.gcount[hh])
        kp, vp, bp = k[:, hh, perm], v[:, hh, perm], kb[:, perm]  # reorder engine
        # dense engine: N × G GEMM
        sd = scale * np.einsum("bid,bpd->bip", q[:, hh], kp[:, :g]) + bp[:, None, :g]
        if causal:
            sd = np.where(perm[None, None, :g] <= rows_i[None, :, None], sd, -np.inf)
        # sparse engine: SDDMM over the CSR entries
        lo, hi = int(pattern.indptr[hh, 0]), int(pattern.indptr[hh, -1])
        pos = pattern.indices[lo:hi].astype(np.int64)
        row = np.repeat(rows_i, np.diff(pattern.indptr[hh]))
        ss = scale * np.einsum("bed,bed->be", q[:, hh, row], kp[:, pos]) + bp[:, pos]
        if causal:
            ss = np.where(perm[pos][None] <= row[None], ss, -np.inf)
        # joint softmax: shared row max and sum
        mx = np.full((b, n), -np.inf)
        if g:
            mx = sd.max(axis=-1)
        if len(row):
            np.maximum.at(mx.T, row, ss.T)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        pd = np.exp(sd - mx[:, :, None])
        ps = np.exp(ss - mx[:, row])
        tot = pd.sum(axis=-1)
        if len(row):
            np.add.at(tot.T, row, ps.T)
        inv = np.divide(1.0, tot, out=np.zeros_like(tot), where=tot > 0)
        o = np.einsum("bip,bpd->bid", pd, vp[:, :g])
        contrib = ps[:, :, None] * vp[:, pos]  # [B, E, d] SpMM
        for bb in range(b):
            np.add.at(o[bb], row, contrib[bb])
        out[:, hh] = o * inv[:, :, None]
    return out.astype(np.float32)


def polarized_macs(pattern: PolarPattern, d: int, batch: int = 1) -> int:
    """Multiply-accumulates of the polarized kernel: per head ``(N·G + nnz_sparse)·d`` for the
    scores plus the same for ``P·V``."""
    work = pattern.gcount.astype(np.int64) * pattern.n + pattern.nnz_sparse
    return int(2 * int(d) * int(batch) * int(work.sum()))


def dense_attention_macs(n: int, d: int, heads: int, batch: int = 1) -> int:
    """Multiply-accumulates of dense attention: ``Q·Kᵀ`` and ``P·V``, ``N²·d`` each per head."""
    return int(2 * int(batch) * int(heads) * int(n) * int(n) * int(d))
