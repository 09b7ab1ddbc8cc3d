"""Numerics of attention linearization (Castling-ViT's angular kernel, Linearized-LLM's chunked
causal form and its "exact softmax inside local windows" variant).

Pure NumPy, computed in float64. ``q, k, v`` are ``[B, H, N, d]``; ``key_bias`` (optional) is a
float ``[B, N]`` additive logit bias per key, as padding masks add. The linear forms weight key
``j`` by ``w_bj = exp(key_bias[b, j])`` (exact for 0/−inf masks; ``w = 1`` without a bias).

``q̂ = q / sqrt(Σ q² + 1e-12)`` per token (same for ``k̂``), and the angular kernel is
``φ(q, k) = 0.5 + q̂·k̂/π`` — the first two Taylor terms of ``1 − arccos(q̂·k̂)/π``. Since
``φ = [q̂/π, 0.5]·[k̂, 1]`` it is an exact linear kernel in ``d + 1`` features, so every
normalized form below has an O(N·d²) evaluation through the states

    S = Σ_j w_j k̂_j v_jᵀ (d×d),  z = Σ_j w_j k̂_j,  sv = Σ_j w_j v_j,  sw = Σ_j w_j.

Every form comes twice: ``*_explicit`` builds the N×N (masked, weighted) kernel matrix — the
definition — and ``*_linear`` / ``*_chunked`` evaluates the O(N·d²) form the TIR kernels
(``accelc.schedules.attention_linear``) compute. The tests hold all three together.

Forms:

- angular (non-causal): ``o_i = Σ_j w_j φ_ij v_j / Σ_j w_j φ_ij``.
- castling (non-causal, the paper's): ``o_i = 0.5·v_i + q̂_i S/π``, then ``o_i /= sqrt(‖o_i‖²+1e-12)``.
- causal angular: the same ratio over ``j ≤ i``; chunked with chunk ``c``: explicit φ inside the
  query's chunk under the causal mask plus the exclusive prefix state of the earlier chunks.
- local (angular only, causal or not), chunk ``c``, softmax ``scale``, per head and query row ``gate[H, N]``:
  ``L(i)`` = the keys of the query's chunk (causal: ``j ≤ i``), ``F(i)`` = the other allowed
  keys (non-causal: every other chunk; causal: the earlier chunks). ``o_loc`` = softmax of
  ``scale·q_i·k_j + key_bias_j`` over ``L(i)``, ``o_far`` = the angular ratio over ``F(i)``;
  ``o_i = gate_hi·o_loc + (1 − gate_hi)·o_far``.

Masked keys: a set counts as empty when its total weight is zero (every key in it has
``w = 0``, i.e. a −inf-like bias such as −1e9). Then ``o_i`` takes the other part alone
(``o_loc`` when ``F(i)`` is empty, ``o_far`` when ``L(i)`` is), and a row with no weighted key at
all is 0 (an ordinary softmax would give NaN or a uniform average of masked keys there). The
local softmax is evaluated as ``w_j·exp(scale·q_i·k_j − m_i) / Σ ...`` with ``m_i`` the max
over the weighted keys of ``L(i)``: the same numbers as ``softmax(scale·qkᵀ + bias)`` wherever
one key is unmasked, without float32 losing ``q·k`` against a −1e9 bias.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "EPS", "VARIANTS", "normalize", "key_weights", "angular_kernel",
    "angular_attention_explicit", "angular_attention_linear",
    "castling_attention_explicit", "castling_attention_linear",
    "causal_angular_attention_explicit", "causal_angular_attention_chunked",
    "local_angular_attention_explicit", "local_angular_attention_chunked",
    "linear_attention_reference", "zero_state", "decode_step", "decode_sequence",
    "linear_attention_macs", "softmax_attention_macs", "softmax_attention",
]

#: The epsilon under every square root (token norms of q, k and castling's output norm).
EPS = 1e-12
VARIANTS = ("angular", "castling")


# ----------------------------------------------------------------------------------------------
# pieces


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def normalize(x):
    """``x / sqrt(Σ x² + 1e-12)`` along the last axis (float64)."""
    x = _f64(x)
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + EPS)


def key_weights(key_bias, b: int, n: int):
    """``w = exp(key_bias)`` as ``[B, 1, N]`` (broadcast over heads); ones without a bias."""
    if key_bias is None:
        return np.ones((b, 1, n))
    kb = _f64(key_bias)
    if kb.shape != (b, n):
        raise ValueError(f"key_bias must be [B, N] = {(b, n)}, got {kb.shape}")
    with np.errstate(under="ignore", over="ignore"):
        return np.exp(kb)[:, None, :]


def angular_kernel(q, k):
    """``φ = 0.5 + q̂ k̂ᵀ / π``: ``[B, H, N, N]``."""
    return 0.5 + normalize(q) @ np.swapaxes(normalize(k), -1, -2) / math.pi


def _ratio(num, den):
    """``num / den`` per row (``den`` ``[..., N]``), 0 where ``den`` is 0 (no weighted key)."""
    safe = np.where(den > 0, den, 1.0)
    return np.where((den > 0)[..., None], num / safe[..., None], 0.0)


def _shapes(q, k, v):
    q, k, v = _f64(q), _f64(k), _f64(v)
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one [B, H, N, d] shape, got {q.shape}, {k.shape}, {v.shape}")
    return q, k, v


def _check_chunk(chunk) -> int:
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    return int(chunk)


def _chunk_ids(n: int, chunk: int):
    return np.arange(n) // chunk


# ----------------------------------------------------------------------------------------------
# explicit O(N²) forms (the definitions)


def _angular_explicit(q, k, v, key_bias, mask):
    """``Σ_j M_ij w_j φ_ij v_j / Σ_j M_ij w_j φ_ij`` for a boolean ``mask`` ``[N, N]``."""
    b, _, n, _ = q.shape
    wmat = angular_kernel(q, k) * key_weights(key_bias, b, n)[:, :, None, :] * mask
    return _ratio(wmat @ v, wmat.sum(-1))


def angular_attention_explicit(q, k, v, key_bias=None):
    """Non-causal angular attention from the N×N weighted kernel matrix."""
    q, k, v = _shapes(q, k, v)
    n = q.shape[2]
    return _angular_explicit(q, k, v, key_bias, np.ones((n, n), bool))


def causal_angular_attention_explicit(q, k, v, key_bias=None):
    """Causal angular attention: the kernel matrix under the ``j ≤ i`` mask."""
    q, k, v = _shapes(q, k, v)
    n = q.shape[2]
    return _angular_explicit(q, k, v, key_bias, np.tril(np.ones((n, n), bool)))


def castling_attention_explicit(q, k, v, key_bias=None):
    """Castling-ViT: ``o = 0.5·v + (q̂ k̂ᵀ/π ⊙ w) v``, L2-normalized per token."""
    q, k, v = _shapes(q, k, v)
    b, _, n, _ = q.shape
    kmat = normalize(q) @ np.swapaxes(normalize(k), -1, -2) / math.pi
    o = 0.5 * v + (kmat * key_weights(key_bias, b, n)[:, :, None, :]) @ v
    return normalize(o)


def _local_sets(n: int, chunk: int, causal: bool):
    ids = _chunk_ids(n, chunk)
    same = ids[:, None] == ids[None, :]
    allowed = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    return same & allowed, ~same & allowed


def _combine(o_loc, den_loc, o_far, den_far, gate):
    g = _f64(gate)[None, :, :, None]
    has_loc, has_far = (den_loc > 0)[..., None], (den_far > 0)[..., None]
    both = g * o_loc + (1.0 - g) * o_far
    return np.where(has_loc & has_far, both, np.where(has_loc, o_loc, np.where(has_far, o_far, 0.0)))


def _check_gate(gate, h: int, n: int):
    gate = _f64(gate)
    if gate.shape != (h, n):
        raise ValueError(f"gate must be [H, N] = ({h}, {n}), got {gate.shape}")
    return gate


def local_angular_attention_explicit(q, k, v, gate, chunk: int, scale: float = 1.0, key_bias=None,
                                     causal: bool = False):
    """Exact softmax inside each query's chunk, angular attention over the other allowed keys,
    mixed per head by ``gate``; both from N×N masked matrices."""
    q, k, v = _shapes(q, k, v)
    b, h, n, _ = q.shape
    chunk, gate = _check_chunk(chunk), _check_gate(gate, h, n)
    loc, far = _local_sets(n, chunk, causal)
    w = key_weights(key_bias, b, n)[:, :, None, :]
    logits = scale * (q @ np.swapaxes(k, -1, -2))
    live = loc & (w > 0)
    m = np.max(np.where(live, logits, -np.inf), axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.where(live, np.exp(np.where(live, logits - m, 0.0)) * w, 0.0)
    den_loc = p.sum(-1)
    wfar = angular_kernel(q, k) * w * far
    den_far = wfar.sum(-1)
    return _combine(_ratio(p @ v, den_loc), den_loc, _ratio(wfar @ v, den_far), den_far, gate)


def softmax_attention(q, k, v, scale: float = 1.0, key_bias=None, causal: bool = False):
    """Ordinary softmax attention (float64), the accuracy baseline the linear forms replace."""
    q, k, v = _shapes(q, k, v)
    n = q.shape[2]
    logits = scale * (q @ np.swapaxes(k, -1, -2))
    if key_bias is not None:
        logits = logits + _f64(key_bias)[:, None, None, :]
    if causal:
        logits = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
    logits = logits - logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(-1, keepdims=True)) @ v


# ----------------------------------------------------------------------------------------------
# O(N·d²) forms (what the kernels compute)


def _weighted(q, k, v, key_bias):
    """``q̂/π``, ``w·k̂``, ``w`` ``[B, 1, N]``."""
    b, _, n, _ = q.shape
    w = key_weights(key_bias, b, n)
    return normalize(q) / math.pi, normalize(k) * w[..., None], w


def angular_attention_linear(q, k, v, key_bias=None):
    """``o_i = (0.5·sv + q̂_i S/π) / (0.5·sw + q̂_i·z/π)``."""
    q, k, v = _shapes(q, k, v)
    qs, kw, w = _weighted(q, k, v, key_bias)
    s = np.swapaxes(kw, -1, -2) @ v  # [B, H, d, d]
    z = kw.sum(2)  # [B, H, d]
    sv = np.einsum("bxn,bhnd->bhd", w, v)
    sw = w.sum(-1)  # [B, 1]
    num = 0.5 * sv[:, :, None, :] + qs @ s
    den = 0.5 * sw[:, :, None] + np.einsum("bhnd,bhd->bhn", qs, z)
    return _ratio(num, den)


def castling_attention_linear(q, k, v, key_bias=None):
    """``o = 0.5·v + q̂ (Σ_j w_j k̂_j v_jᵀ)/π``, normalized: O(N·d²)."""
    q, k, v = _shapes(q, k, v)
    qs, kw, _ = _weighted(q, k, v, key_bias)
    return normalize(0.5 * v + qs @ (np.swapaxes(kw, -1, -2) @ v))


def _chunk_states(kw, v, w, chunk):
    """Per-chunk ``(S, z, sv, sw)``: ``[B, H, C, d, d]``, ``[B, H, C, d]``, ``[B, H, C, d]``, ``[B, 1, C]``."""
    b, h, n, d = v.shape
    nc = -(-n // chunk)
    pad = nc * chunk - n
    kwp = np.pad(kw, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, nc, chunk, d)
    vp = np.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, nc, chunk, d)
    wp = np.pad(w, ((0, 0), (0, 0), (0, pad))).reshape(b, 1, nc, chunk)
    s = np.swapaxes(kwp, -1, -2) @ vp
    return s, kwp.sum(3), np.einsum("bxcj,bhcjd->bhcd", wp, vp), wp.sum(-1)


def _far_states(states, causal: bool):
    """Sum of the chunk states over the far chunks of each chunk: the exclusive prefix (causal)
    or every other chunk — summed directly, so fully masked far sets are exactly zero."""
    out = []
    for st in states:
        nc = st.shape[2]
        sel = (np.tril(np.ones((nc, nc)), -1) if causal else 1.0 - np.eye(nc))  # [chunk, far chunk]
        out.append(np.einsum("cp,bhp...->bhc...", sel, st))
    return out


def _far_terms(qs, far, chunk):
    """Numerator ``[B,H,N,d]`` and denominator ``[B,H,N]`` of the angular ratio over F(i)."""
    s, z, sv, sw = far
    n = qs.shape[2]
    ids = _chunk_ids(n, chunk)
    num = 0.5 * sv[:, :, ids, :] + np.einsum("bhna,bhnac->bhnc", qs, s[:, :, ids])
    den = 0.5 * sw[:, :, ids] + np.einsum("bhna,bhna->bhn", qs, z[:, :, ids])
    return num, den


def _in_chunk(n, chunk):
    """Per query: the key index of each in-chunk slot ``[N, c]`` and whether it exists."""
    keys = (_chunk_ids(n, chunk) * chunk)[:, None] + np.arange(chunk)[None, :]
    return np.minimum(keys, n - 1), keys < n


def causal_angular_attention_chunked(q, k, v, chunk: int, key_bias=None):
    """Causal angular attention, Linearized-LLM style: explicit φ inside the query's chunk with
    the causal mask, plus the exclusive prefix state of the earlier chunks."""
    q, k, v = _shapes(q, k, v)
    chunk = _check_chunk(chunk)
    n = q.shape[2]
    qs, kw, w = _weighted(q, k, v, key_bias)
    far = _far_states(_chunk_states(kw, v, w, chunk), causal=True)
    num, den = _far_terms(qs, far, chunk)
    keys, exists = _in_chunk(n, chunk)
    live = exists & (keys <= np.arange(n)[:, None])
    a = (0.5 * w[:, :, keys] + np.einsum("bhna,bhnja->bhnj", qs, kw[:, :, keys])) * live  # [B,H,N,c]
    num = num + np.einsum("bhnj,bhnjd->bhnd", a, v[:, :, keys])
    return _ratio(num, den + a.sum(-1))


def local_angular_attention_chunked(q, k, v, gate, chunk: int, scale: float = 1.0, key_bias=None,
                                    causal: bool = False):
    """The local form with O(N·c·d) in-chunk softmax and O(N·d²) far sums (chunk states summed
    over the far chunks)."""
    q, k, v = _shapes(q, k, v)
    b, h, n, _ = q.shape
    chunk, gate = _check_chunk(chunk), _check_gate(gate, h, n)
    qs, kw, w = _weighted(q, k, v, key_bias)
    far = _far_states(_chunk_states(kw, v, w, chunk), causal=causal)
    num_far, den_far = _far_terms(qs, far, chunk)
    keys, exists = _in_chunk(n, chunk)
    live = exists & ((keys <= np.arange(n)[:, None]) if causal else True)
    wk = w[:, :, keys]  # [B, 1, N, c]
    live = live & (wk > 0)
    logits = scale * np.einsum("bhna,bhnja->bhnj", q, k[:, :, keys])
    m = np.max(np.where(live, logits, -np.inf), axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.where(live, np.exp(np.where(live, logits - m, 0.0)) * wk, 0.0)
    den_loc = p.sum(-1)
    o_loc = _ratio(np.einsum("bhnj,bhnjd->bhnd", p, v[:, :, keys]), den_loc)
    return _combine(o_loc, den_loc, _ratio(num_far, den_far), den_far, gate)


def linear_attention_reference(q, k, v, variant: str = "angular", causal: bool = False, chunk: int = 64,
                               local: bool = False, scale: float = 1.0, key_bias=None, gate=None,
                               form: str = "explicit"):
    """The kernel ``accelc.schedules.attention_linear.linear_attention`` computes, by its
    parameters: ``form="explicit"`` (N×N matrices) or ``"linear"`` (the O(N·d²)/chunked form)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if form not in ("explicit", "linear"):
        raise ValueError(f"form must be 'explicit' or 'linear', got {form!r}")
    if variant == "castling" and (causal or local):
        raise ValueError("variant 'castling' is non-causal and has no local form (causal/local must be False)")
    _check_chunk(chunk)
    explicit = form == "explicit"
    if local:
        if gate is None:
            raise ValueError("gate is required with local=True")
        fn = local_angular_attention_explicit if explicit else local_angular_attention_chunked
        return fn(q, k, v, gate, chunk, scale, key_bias, causal)
    if causal:
        if explicit:
            return causal_angular_attention_explicit(q, k, v, key_bias)
        return causal_angular_attention_chunked(q, k, v, chunk, key_bias)
    if variant == "castling":
        return (castling_attention_explicit if explicit else castling_attention_linear)(q, k, v, key_bias)
    return (angular_attention_explicit if explicit else angular_attention_linear)(q, k, v, key_bias)


# ----------------------------------------------------------------------------------------------
# decode


def zero_state(b: int, h: int, d: int):
    """The empty causal state ``(S [B,H,d,d], z [B,H,d], sv [B,H,d], sw [B,H])``."""
    return (np.zeros((b, h, d, d)), np.zeros((b, h, d)), np.zeros((b, h, d)), np.zeros((b, h)))


def decode_step(q, k, v, state):
    """One causal angular decode step for the new token (``q, k, v`` ``[B, H, d]``, weight 1):
    the state takes the token (``S += k̂vᵀ``, ``z += k̂``, ``sv += v``, ``sw += 1``), then
    ``o = (0.5·sv + q̂S/π) / (0.5·sw + q̂·z/π)``. Returns ``(o, new_state)``."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    s, z, sv, sw = (_f64(x) for x in state)
    kh, qs = normalize(k), normalize(q) / math.pi
    s = s + kh[..., :, None] * v[..., None, :]
    z, sv, sw = z + kh, sv + v, sw + 1.0
    num = 0.5 * sv + np.einsum("bha,bhac->bhc", qs, s)
    den = 0.5 * sw + np.einsum("bha,bha->bh", qs, z)
    return _ratio(num, den), (s, z, sv, sw)


def decode_sequence(q, k, v):
    """Decode ``[B, H, N, d]`` token by token from the zero state: equals causal prefill."""
    q, k, v = _shapes(q, k, v)
    b, h, n, d = q.shape
    state, outs = zero_state(b, h, d), []
    for i in range(n):
        o, state = decode_step(q[:, :, i], k[:, :, i], v[:, :, i], state)
        outs.append(o)
    return np.stack(outs, axis=2), state


# ----------------------------------------------------------------------------------------------
# cost


def softmax_attention_macs(n: int, d: int) -> int:
    """Multiply-adds of softmax attention per (batch, head): ``QKᵀ`` and ``PV``, ``2·N²·d``."""
    return 2 * n * n * d


def linear_attention_macs(n: int, d: int, variant: str = "angular", causal: bool = False, chunk: int = 64,
                          local: bool = False) -> int:
    """Multiply-adds per (batch, head) of the linear kernel as computed (masked-out products
    inside a chunk included): the state ``N·d²`` plus the output ``N·d²`` (and the ``N·d``
    normalizers), plus ``2·N·c·d`` for the explicit in-chunk part of the chunked forms —
    ``N²·d`` becomes ``N·d²``. The far/prefix states add ``C²·d²`` additions (C = ⌈N/c⌉
    chunks), not counted as MACs."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    chunk = _check_chunk(chunk)
    state = n * d * d
    out = n * d * d
    if variant == "castling":
        return state + out + n * d  # + the output norm
    norms = 2 * n * d  # z and the denominator
    if not (causal or local):
        return state + out + norms
    c = min(chunk, n)
    return state + out + norms + 2 * n * c * d
