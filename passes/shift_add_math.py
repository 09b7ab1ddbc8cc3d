"""Numerics of the shift-add rewrite: power-of-two (DeepShift/ShiftAddViT) and BCQ (ShiftAddLLM).

Pure NumPy. Weights follow the ``y = x @ W`` layout, ``W`` of shape ``[K, N]`` (K inputs,
N outputs). Everything here is the offline quantizer plus bit-exact references that the TVM
kernels are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PotWeights", "pot_decompose", "encode_int_codes", "quantize_activations", "shift_matmul_int_ref",
    "shift_matmul_float_ref", "BcqWeights", "apot_round", "bcq_quantize", "bcq_matmul_ref",
    "lut8_tables", "bcq_matmul_lut_ref", "pot_weight_bytes", "bcq_weight_bytes",
]

_SCALE_MODES = ("none", "pot", "float")
# Below this the float "exponent add" kernel would leave float32's normal range for e <= 14.
_FLOAT_FLUSH = 2.0 ** -112


# ----------------------------------------------------------------------------------------------
# knob checks


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_choice(name: str, value, allowed: tuple[int, ...]) -> int:
    if not _is_int(value) or int(value) not in allowed:
        words = ", ".join(str(a) for a in allowed[:-1]) + f" or {allowed[-1]}"
        raise ValueError(f"{name} must be {words}, got {value!r}")
    return int(value)


def _check_range(name: str, value, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _weight_matrix(w) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype.kind not in "fiu":
        raise ValueError(f"w must be a real [K, N] matrix, got shape {w.shape} dtype {w.dtype}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("w must be finite (found NaN or Inf)")
    return w


def _safe_log2_abs(a: np.ndarray) -> np.ndarray:
    """log2|a| with -inf for zeros, without floating-point warnings."""
    mag = np.abs(a)
    nz = mag > 0
    out = np.full(mag.shape, -np.inf)
    np.log2(mag, out=out, where=nz)
    return out


# ----------------------------------------------------------------------------------------------
# power-of-two weights (DeepShift-PS, APoT terms)


@dataclass(frozen=True, eq=False)  # eq=False: a generated __eq__ would compare arrays ambiguously
class PotWeights:
    """``W[k, n] ~= scale[n] * sum_t sign_t * 2**-e_t`` with code ``c = sign * (e + 1)`` (0 = no term)."""

    codes: np.ndarray  # int8 [terms, K, N]
    scale: np.ndarray  # float32 [N]
    weight_bits: int

    def __post_init__(self):
        if self.codes.dtype != np.int8 or self.codes.ndim != 3:
            raise ValueError(f"codes must be int8 [terms, K, N], got {self.codes.dtype} {self.codes.shape}")
        if self.scale.dtype != np.float32 or self.scale.shape != (self.codes.shape[2],):
            raise ValueError(f"scale must be float32 [N={self.codes.shape[2]}], "
                             f"got {self.scale.dtype} {self.scale.shape}")

    @property
    def e_max(self) -> int:
        return 2 ** (self.weight_bits - 1) - 2

    def dequantize(self) -> np.ndarray:
        """float32 [K, N]."""
        return (self.scale.astype(np.float64) * _codes_value(self.codes)).astype(np.float32)


def _codes_value(codes: np.ndarray) -> np.ndarray:
    """float64 [K, N] = sum_t sign * 2**-(|c|-1), scale-free."""
    c = codes.astype(np.int64)
    # |c| - 1 < 0 only where c == 0, and sign(0) = 0 kills that term.
    return np.sum(np.sign(c) * np.ldexp(1.0, -np.maximum(np.abs(c) - 1, 0)), axis=0)


def pot_decompose(w, terms: int = 1, weight_bits: int = 5, scale: str = "pot") -> PotWeights:
    """Greedy APoT decomposition of ``w`` [K, N] into ``terms`` signed powers of two per weight."""
    terms = _check_choice("terms", terms, (1, 2, 3))
    weight_bits = _check_range("weight_bits", weight_bits, 2, 8)
    if scale not in _SCALE_MODES:
        raise ValueError(f"scale must be 'none', 'pot' or 'float', got {scale!r}")
    w = _weight_matrix(w)
    e_max = 2 ** (weight_bits - 1) - 2

    amax = np.max(np.abs(w), axis=0) if w.shape[0] else np.zeros(w.shape[1])
    if scale == "none":
        s = np.ones(w.shape[1])
    elif scale == "pot":
        # ceil(log2 amax) so that |w / scale| <= 1 and the scale is itself a shift.
        s = np.where(amax > 0, np.exp2(np.ceil(_safe_log2_abs(np.where(amax > 0, amax, 1.0)))), 1.0)
    else:
        s = np.where(amax > 0, amax, 1.0)
    s32 = s.astype(np.float32)
    # Divide by the stored float32 scale so that dequantize() is consistent with the codes.
    r = w / s32.astype(np.float64)

    codes = np.zeros((terms,) + w.shape, dtype=np.int8)
    tiny = 2.0 ** (-e_max - 1)  # midpoint between 0 and the smallest term 2**-e_max
    for t in range(terms):
        p = np.clip(np.round(_safe_log2_abs(r)), -e_max, 0)  # -inf (zeros) clips to -e_max
        sg = np.sign(r)
        sg[np.abs(r) < tiny] = 0
        codes[t] = (sg * (1 - p)).astype(np.int8)  # sign * (e + 1), e = -p
        r = r - sg * np.exp2(p)
    return PotWeights(codes=codes, scale=s32, weight_bits=weight_bits)


def quantize_activations(x, frac_bits: int = 16, int_bits: int = 16) -> np.ndarray:
    """Fixed point ``floor(x * 2**frac_bits)`` as int32, saturated to ``int_bits + frac_bits`` bits."""
    frac_bits = _check_range("frac_bits", frac_bits, 0, 32)
    int_bits = _check_range("int_bits", int_bits, 0, 32)
    total = int_bits + frac_bits
    if not 1 <= total <= 32:
        raise ValueError(f"int_bits + frac_bits must be in [1, 32], got {total}")
    # float64 scaling by a power of two is exact for float32/float64 inputs (barring overflow).
    v = np.floor(np.ldexp(np.asarray(x, dtype=np.float64), frac_bits))
    lo, hi = -(2.0 ** (total - 1)), 2.0 ** (total - 1) - 1
    v = np.clip(np.nan_to_num(v, nan=0.0, posinf=hi, neginf=lo), lo, hi)
    return v.astype(np.int32)


def _shift_planes(codes: np.ndarray):
    """Yield (t, e, signs[K, N] float64) for each term and each shift amount present."""
    c = codes.astype(np.int16)
    mag = np.abs(c)
    sgn = np.sign(c).astype(np.float64)
    for t in range(c.shape[0]):
        for m in np.unique(mag[t]):
            if m == 0:
                continue
            yield t, int(m) - 1, np.where(mag[t] == m, sgn[t], 0.0)


def _check_codes(codes, k: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.int8 or codes.ndim != 3 or codes.shape[1] != k:
        raise ValueError(f"codes must be int8 [T, K={k}, N], got {codes.dtype} {codes.shape}")
    return codes


def encode_int_codes(codes) -> np.ndarray:
    """PoT codes ``c = sign * (e + 1)`` → the integer kernel's byte: ``0`` for a zero weight,
    else ``e`` in bits 0–4, bit 5 set (so ``e = 0`` is not zero) and bit 7 the sign.

    As int8 the byte is negative exactly for negative weights and zero exactly for zero ones,
    so one x86 ``psignd`` applies both, and ``byte & 31`` is always a defined shift count.
    """
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    e = np.abs(codes.astype(np.int32)) - 1
    if codes.size and e.max() > 31:
        raise ValueError(f"shift exponents must be at most 31, got {int(e.max())}")
    byte = np.where(codes < 0, 0x80, 0x20) | np.maximum(e, 0)
    return np.where(codes == 0, 0, byte).astype(np.uint8).view(np.int8)


def shift_matmul_int_ref(xq, codes) -> np.ndarray:
    """int32 [M, N]: ``sum_t sum_k sign(c) * (xq >> (|c|-1))`` with int32 wrap-around."""
    xq = np.asarray(xq)
    if xq.ndim != 2 or xq.dtype.kind not in "iu":
        raise ValueError(f"xq must be an integer [M, K] matrix, got {xq.dtype} {xq.shape}")
    if xq.size and (xq.min() < -(2**31) or xq.max() > 2**31 - 1):
        raise ValueError("xq values must fit in int32")
    xq = xq.astype(np.int32)
    codes = _check_codes(codes, xq.shape[1])
    m, k = xq.shape
    acc = np.zeros((m, codes.shape[2]), dtype=np.int64)
    # float64 GEMM of |x| < 2**31 against {-1, 0, 1} is exact while every partial sum stays
    # below 2**53, i.e. K <= 2**21; beyond that fall back to (slow, exact) int64 matmul.
    exact_float = k <= 2**21
    for _, e, sg in _shift_planes(codes):
        # Shifting an int32 by >= 32 is undefined in C/LLVM; x >> 31 already is the arithmetic
        # result (0 or -1) for every larger shift, so clamp.
        xs = np.right_shift(xq, min(e, 31))
        if exact_float:
            acc += (xs.astype(np.float64) @ sg).astype(np.int64)
        else:
            acc += xs.astype(np.int64) @ sg.astype(np.int64)
    # Two's-complement wrap to int32: the sum modulo 2**32 is order independent.
    return ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)


def shift_matmul_float_ref(x, codes) -> np.ndarray:
    """float64 [M, N]: ``sum_t sum_k sign(c) * ldexp(x, -(|c|-1))``, flushing |x| < 2**-112 to 0."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be [M, K], got shape {x.shape}")
    codes = _check_codes(codes, x.shape[1])
    # Mirrors the float32 exponent-add kernel, which cannot produce subnormals.
    x = np.where(np.abs(x) < _FLOAT_FLUSH, 0.0, x)
    out = np.zeros((x.shape[0], codes.shape[2]))
    for _, e, sg in _shift_planes(codes):
        out += np.ldexp(x, -e) @ sg
    return out


def pot_weight_bytes(pw: PotWeights) -> int:
    """Packed bytes: int8 codes + float32 per-channel scale."""
    return int(pw.codes.size + 4 * pw.scale.size)


# ----------------------------------------------------------------------------------------------
# BCQ with additive-power-of-two scales (ShiftAddLLM)


@dataclass(frozen=True, eq=False)  # eq=False: a generated __eq__ would compare arrays ambiguously
class BcqWeights:
    """``W[k, n] = sum_i alpha[i, k // group_size, n] * (+1 if bit else -1)``; bits packed 8 along K."""

    planes: np.ndarray  # uint8 [bits, Kp // 8, N], bit j of planes[i, g, n] <-> row 8*g + j
    alpha: np.ndarray  # float32 [bits, G, N]
    k: int
    group_size: int

    def __post_init__(self):
        bits, g8, n = self.planes.shape
        if self.planes.dtype != np.uint8 or g8 != -(-self.k // 8):
            raise ValueError(f"planes must be uint8 [bits, ceil(K/8)={-(-self.k // 8)}, N], "
                             f"got {self.planes.dtype} {self.planes.shape}")
        if self.group_size <= 0 or self.group_size % 8:
            raise ValueError(f"group_size must be a positive multiple of 8, got {self.group_size}")
        want = (bits, -(-self.k // self.group_size), n)
        if self.alpha.dtype != np.float32 or self.alpha.shape != want:
            raise ValueError(f"alpha must be float32 {list(want)}, got {self.alpha.dtype} {self.alpha.shape}")

    @property
    def bits(self) -> int:
        return int(self.planes.shape[0])

    def signs(self) -> np.ndarray:
        """int8 [bits, K, N] of +-1."""
        b = np.unpackbits(self.planes, axis=1, bitorder="little")[:, : self.k]
        return (2 * b.astype(np.int8) - 1).astype(np.int8)

    def dequantize(self) -> np.ndarray:
        """float32 [K, N]."""
        return _bcq_dequant64(self).astype(np.float32)


def _bcq_dequant64(b: BcqWeights) -> np.ndarray:
    rows = np.arange(b.k) // b.group_size
    a = b.alpha.astype(np.float64)[:, rows, :]  # [bits, K, N]
    return np.sum(a * b.signs(), axis=0)


def apot_round(a, terms: int = 3) -> np.ndarray:
    """Greedy additive power of two: ``terms`` times ``q = sign(r) * 2**round(log2|r|)``, ``r -= q``."""
    if not _is_int(terms) or terms < 0:
        raise ValueError(f"terms must be a non-negative integer, got {terms!r}")
    r = np.array(a, dtype=np.float64)
    out = np.zeros_like(r)
    for _ in range(int(terms)):
        p = np.clip(np.round(_safe_log2_abs(r)), -40, 40)  # zeros: -inf -> -40, times sign 0
        q = np.sign(r) * np.exp2(p)
        out += q
        r = r - q
    return out


def _patterns(bits: int) -> np.ndarray:
    """[2**bits, bits] of +-1: row j has +1 in column i iff bit i of j is set."""
    j = np.arange(2**bits)[:, None]
    return np.where((j >> np.arange(bits)) & 1, 1.0, -1.0)


def _round_alpha(alpha: np.ndarray, apot_terms: int) -> np.ndarray:
    if apot_terms == 0:
        return alpha.astype(np.float32).astype(np.float64)  # ablation: plain float32 scales
    # Stored as float32: round through it so the scales we optimize are the ones we store.
    return apot_round(alpha, apot_terms).astype(np.float32).astype(np.float64)


class _Codebook:
    """Sorted codewords ``alpha . {+-1}^bits`` per batch row, for nearest-codeword lookups."""

    def __init__(self, alpha: np.ndarray, pats: np.ndarray):
        cw = alpha @ pats.T  # [P, 2**bits]
        self.order = np.argsort(cw, axis=1, kind="stable")
        self.sorted = np.take_along_axis(cw, self.order, axis=1)
        self.mids = 0.5 * (self.sorted[:, 1:] + self.sorted[:, :-1])

    def nearest(self, w: np.ndarray):
        """w [P, L] -> (pattern index [P, L], codeword value [P, L])."""
        pos = np.zeros(w.shape, dtype=np.intp)
        for j in range(self.mids.shape[1]):  # 2**bits - 1 <= 15 vectorized compares
            pos += w > self.mids[:, j : j + 1]
        return np.take_along_axis(self.order, pos, axis=1), np.take_along_axis(self.sorted, pos, axis=1)


def _bcq_fit(w: np.ndarray, bits: int, apot_terms: int, rounds: int, patience: int = 4):
    """BCQ of each row of ``w`` [P, L] -> (alpha [P, bits] float64, pattern index [P, L])."""
    p_count, length = w.shape
    pats = _patterns(bits)

    # Greedy init (ShiftAddLLM): b_i = sign(r) with sign(0) = +1, alpha_i = mean |r|.
    r = w.copy()
    alpha = np.empty((p_count, bits))
    for i in range(bits):
        alpha[:, i] = np.mean(np.abs(r), axis=1)
        r -= alpha[:, i : i + 1] * np.where(r >= 0, 1.0, -1.0)
    alpha = _round_alpha(alpha, apot_terms)
    idx, val = _Codebook(alpha, pats).nearest(w)
    best_alpha, best_idx = alpha.copy(), idx.copy()
    best_err = np.sum((w - val) ** 2, axis=1)

    # Rows still iterating; a row leaves when it reaches a fixed point (same codes as the
    # previous round: the map is deterministic, so further rounds would repeat) or when its
    # best error has not improved for `patience` rounds.
    act = np.arange(p_count)
    stale = np.zeros(p_count, dtype=np.int64)
    eye = np.eye(bits)
    n_pat = pats.shape[0]
    pat_outer = np.einsum("pi,pj->pij", pats, pats).reshape(n_pat, bits * bits)
    for _ in range(rounds):
        if act.size == 0:
            break
        wa, ia = w[act], idx[act]
        # (a) least squares alpha: (B^T B) alpha = B^T w. B's columns are rows of `pats`, so
        # both sides only need per-row pattern counts and per-pattern sums of w (bincount).
        flat = (np.arange(act.size)[:, None] * n_pat + ia).ravel()
        cnt = np.bincount(flat, minlength=act.size * n_pat).reshape(act.size, n_pat)
        wsum = np.bincount(flat, weights=wa.ravel(), minlength=act.size * n_pat).reshape(act.size, n_pat)
        btb = (cnt @ pat_outer).reshape(act.size, bits, bits)
        btw = wsum @ pats
        # A tiny ridge keeps collinear planes (e.g. b_1 == -b_2) solvable; it tends to the
        # pseudo-inverse solution.
        btb += (1e-9 * length + 1e-300) * eye
        a = np.linalg.solve(btb, btw[..., None])[..., 0]
        # Make alpha positive and sorted descending; the flips/permutation only relabel planes
        # (the nearest-codeword step below recomputes B from alpha anyway).
        a = -np.sort(-np.abs(a), axis=1)
        # (b) additive powers of two; (c) optimal codeword per weight.
        a = _round_alpha(a, apot_terms)
        ni, nv = _Codebook(a, pats).nearest(wa)
        err = np.sum((wa - nv) ** 2, axis=1)

        better = err < best_err[act]
        upd = act[better]
        best_alpha[upd], best_idx[upd], best_err[upd] = a[better], ni[better], err[better]
        stale[act] = np.where(better, 0, stale[act] + 1)
        fixed = np.all(ni == ia, axis=1)
        idx[act] = ni
        act = act[~fixed & (stale[act] < patience)]
    return best_alpha, best_idx


def _check_bcq_knobs(bits, group_size, apot_terms, rounds, percdamp, blocksize, k: int):
    bits = _check_choice("bits", bits, (2, 3, 4))
    apot_terms = _check_choice("apot_terms", apot_terms, (0, 1, 2, 3))
    if not _is_int(group_size) or not (int(group_size) in (0, -1) or (group_size > 0 and group_size % 8 == 0)):
        raise ValueError(f"group_size must be a positive multiple of 8, or 0/-1 for the whole K, "
                         f"got {group_size!r}")
    if not _is_int(rounds) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative integer, got {rounds!r}")
    if not _is_int(blocksize) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
    if not np.isfinite(percdamp) or percdamp < 0:
        raise ValueError(f"percdamp must be a non-negative number, got {percdamp!r}")
    kp = -(-k // 8) * 8
    gs = max(kp, 8) if int(group_size) in (0, -1) else int(group_size)
    return bits, gs, apot_terms, int(rounds), int(blocksize)


def _pack(idx: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Pattern index [K, N] -> planes uint8 [bits, Kp // 8, N] (padding rows get bit 0)."""
    kp = -(-k // 8) * 8
    on = np.zeros((bits, kp, idx.shape[1]), dtype=np.uint8)
    for i in range(bits):
        on[i, :k] = (idx >> i) & 1
    return np.packbits(on.reshape(bits, kp // 8, 8, -1), axis=2, bitorder="little")[:, :, 0, :]


def _fit_groups(w: np.ndarray, gs: int, bits: int, apot_terms: int, rounds: int):
    """Plain BCQ of W [K, N] by groups along K -> (alpha [bits, G, N], pattern index [K, N])."""
    k, n = w.shape
    g_full, rem = divmod(k, gs)
    alpha = np.zeros((bits, g_full + (rem > 0), n))
    idx = np.zeros((k, n), dtype=np.intp)
    if g_full:
        # Batch over (group, output): rows of [G*N, gs].
        wg = w[: g_full * gs].reshape(g_full, gs, n).transpose(0, 2, 1).reshape(g_full * n, gs)
        a, ix = _bcq_fit(wg, bits, apot_terms, rounds)
        alpha[:, :g_full] = a.reshape(g_full, n, bits).transpose(2, 0, 1)
        idx[: g_full * gs] = ix.reshape(g_full, n, gs).transpose(0, 2, 1).reshape(g_full * gs, n)
    if rem:
        a, ix = _bcq_fit(np.ascontiguousarray(w[g_full * gs :].T), bits, apot_terms, rounds)
        alpha[:, g_full] = a.T
        idx[g_full * gs :] = ix.T
    return alpha, idx


def bcq_quantize(w, bits: int = 3, group_size: int = 128, apot_terms: int = 3, rounds: int = 50,
                 hessian=None, percdamp: float = 0.01, blocksize: int = 128) -> BcqWeights:
    """ShiftAddLLM BCQ of ``w`` [K, N] with APoT scales per (group of K rows, output); GPTQ if ``hessian``."""
    w = _weight_matrix(w)
    k, n = w.shape
    bits, gs, apot_terms, rounds, blocksize = _check_bcq_knobs(
        bits, group_size, apot_terms, rounds, percdamp, blocksize, k)
    if k == 0:
        raise ValueError("w must have at least one input row (K >= 1)")
    if hessian is None:
        alpha, idx = _fit_groups(w, gs, bits, apot_terms, rounds)
    else:
        alpha, idx = _gptq(w, np.asarray(hessian, dtype=np.float64), gs, bits, apot_terms, rounds,
                           float(percdamp), blocksize)
    return BcqWeights(planes=_pack(idx, bits, k), alpha=alpha.astype(np.float32), k=k, group_size=gs)


# A blocked Cholesky written with matmuls: LAPACK's potrf thread pool spins badly when the CPUs
# are shared (10x slower here under load), while GEMM degrades gracefully.
_FACTOR_BLOCK = 64


def _chol_small(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    lo = np.zeros_like(a)
    for j in range(n):
        d = a[j, j] - lo[j, :j] @ lo[j, :j]
        if not d > 0:
            raise np.linalg.LinAlgError("matrix is not positive definite")
        lo[j, j] = np.sqrt(d)
        lo[j + 1 :, j] = (a[j + 1 :, j] - lo[j + 1 :, :j] @ lo[j, :j]) / lo[j, j]
    return lo


def _tri_inv_small(lo: np.ndarray) -> np.ndarray:
    n = lo.shape[0]
    x = np.zeros_like(lo)
    for i in range(n):
        x[i, : i + 1] = -(lo[i, :i] @ x[:i, : i + 1])
        x[i, i] += 1.0
        x[i, : i + 1] /= lo[i, i]
    return x


def _cholesky(h: np.ndarray) -> np.ndarray:
    """Lower L with h = L L^T (blocked, right-looking)."""
    a = np.array(h, dtype=np.float64)
    n, bs = a.shape[0], _FACTOR_BLOCK
    for j0 in range(0, n, bs):
        j1 = min(j0 + bs, n)
        l11 = _chol_small(a[j0:j1, j0:j1])
        a[j0:j1, j0:j1] = l11
        if j1 < n:
            l21 = a[j1:, j0:j1] @ _tri_inv_small(l11).T
            a[j1:, j0:j1] = l21
            a[j1:, j1:] -= l21 @ l21.T
    return np.tril(a)


def _ul_factor(h: np.ndarray) -> np.ndarray:
    """Upper R with h = R R^T: the Cholesky factor of h in reversed order (J L J)."""
    return np.ascontiguousarray(_cholesky(h[::-1, ::-1])[::-1, ::-1])


def _gptq(w, h, gs, bits, apot_terms, rounds, percdamp, blocksize):
    """GPTQ/OPTQ over the K rows of W with per-group BCQ codebooks (ShiftAddLLM §2.2).

    GPTQ's recurrence with U = upper-Cholesky(H^-1), ``err_k = (w'_k - q_k) / U[k,k]`` and
    ``w'_{k+1:} -= U[k, k+1:] err_k``, is computed here through R = U^-1 (upper, H = R R^T):
    since W - Q = U^T Err, the updated row is ``w'_k = W[k] + sum_{j<k} R[j,k] (W[j]-q_j) / R[k,k]``.
    Same iterates, but only one Cholesky and no inverse (cheaper and better conditioned).
    """
    k, n = w.shape
    if h.shape != (k, k) or not np.all(np.isfinite(h)):
        raise ValueError(f"hessian must be a finite [K, K] = [{k}, {k}] matrix, got shape {h.shape}")
    w = w.copy()
    h = 0.5 * (h + h.T)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(k)] += percdamp * np.mean(np.diag(h))
    try:
        r = _ul_factor(h)
    except np.linalg.LinAlgError:
        raise ValueError("hessian is not positive definite after dampening; raise percdamp") from None
    rdiag = np.diag(r).copy()

    pats = _patterns(bits)
    alpha = np.zeros((bits, -(-k // gs), n))
    idx = np.zeros((k, n), dtype=np.intp)
    d = np.zeros_like(w)  # W - Q of the rows done so far
    cols = np.arange(n)
    book = None
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        # Feedback from all earlier blocks at once (GPTQ's lazy batch update), then row by row.
        acc = r[:i1, i1:i2].T @ d[:i1]
        for kk in range(i1, i2):
            if kk % gs == 0:
                q = kk // gs
                g_end = min(kk + gs, k)
                # Fit the group's codebook on its current, error-updated rows.
                fb = r[:kk, kk:g_end].T @ d[:kk]
                rows = w[kk:g_end] + fb / rdiag[kk:g_end, None]
                a, _ = _bcq_fit(np.ascontiguousarray(rows.T), bits, apot_terms, rounds)
                alpha[:, q] = a.T
                book = _Codebook(a, pats)
            cur = w[kk] + acc[kk - i1] / rdiag[kk]
            pos = np.sum(cur[:, None] > book.mids, axis=1)
            idx[kk] = book.order[cols, pos]
            d[kk] = w[kk] - book.sorted[cols, pos]
            if kk + 1 < i2:
                acc[kk + 1 - i1 :] += np.outer(r[kk, kk + 1 : i2], d[kk])
    return alpha, idx


def bcq_matmul_ref(x, bcq: BcqWeights) -> np.ndarray:
    """float64 [M, N] = x @ bcq.dequantize()."""
    return np.asarray(x, dtype=np.float64) @ bcq.dequantize().astype(np.float64)


def lut8_tables(x) -> np.ndarray:
    """float32 [M, Kp//8, 256]: ``lut[m, g, idx] = sum_j (+x if bit j of idx else -x)[m, 8g+j]``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be [M, K], got shape {x.shape}")
    m, k = x.shape
    kp = -(-k // 8) * 8
    xp = np.zeros((m, kp))
    xp[:, :k] = x
    return (xp.reshape(m, kp // 8, 8) @ _patterns(8).T).astype(np.float32)


def bcq_matmul_lut_ref(x, bcq: BcqWeights) -> np.ndarray:
    """float64 [M, N] via LUT-8 queries: ``sum_i sum_q alpha[i,q,n] * sum_{g in q} lut[m,g,planes[i,g,n]]``."""
    lut = lut8_tables(x).astype(np.float64)
    m, g8, _ = lut.shape
    if lut.shape[1] != bcq.planes.shape[1]:
        raise ValueError(f"x has K={np.shape(x)[1]}, weights have K={bcq.k}")
    # First LUT group of each alpha group (group_size is a multiple of 8, so groups align).
    starts = np.arange(bcq.alpha.shape[1]) * (bcq.group_size // 8)
    out = np.zeros((m, bcq.planes.shape[2]))
    gi = np.arange(g8)[:, None]
    for i in range(bcq.bits):
        partial = lut[:, gi, bcq.planes[i]]  # [M, G8, N] table lookups
        per_group = np.add.reduceat(partial, starts, axis=1)
        out += np.einsum("mqn,qn->mn", per_group, bcq.alpha[i].astype(np.float64))
    return out


def bcq_weight_bytes(b: BcqWeights) -> int:
    """Packed bytes: sign bit-planes + alpha stored as float16."""
    return int(b.planes.nbytes + b.alpha.size * 2)
