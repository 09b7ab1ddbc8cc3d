"""TIR kernels of attention linearization (Castling-ViT angular kernel, Linearized-LLM chunked
causal form, exact softmax inside local windows), as TE computes turned into PrimFuncs.

The math and its NumPy references live in ``accelc.passes.linear_attention_math``; the tests
hold every kernel to the explicit N×N forms there. All float32, ``q, k, v`` ``[B, H, N, d]``.

Kernel structure (block names are what the CPU rule schedules by):

- Per token: ``q_sumsq``/``k_sumsq`` (Σx²), ``q_scale = 1/(π·‖q‖)``, ``k_scale = w/‖k‖`` (0 on
  the padded tail of the last chunk), ``key_weight = exp(key_bias)`` (0 on the pad). So
  ``q̂/π = q·q_scale`` and ``w·k̂ = k·k_scale`` (materialized as ``k_hat`` for the states);
  elsewhere the scales are factored out of the products.
- Non-causal, non-local (variant angular or castling): states ``kv_state`` (``Σ w k̂ vᵀ``,
  d×d), ``k_state``, ``v_state``, ``w_state``; then per query ``attn_num = q·S``,
  ``attn_den = q·z``, ``row_scale`` (1/denominator) and ``out`` (castling: ``castling_raw``,
  ``out_sumsq``, ``out``).
- Chunked (causal and/or local), chunk ``c``, ``C = ⌈N/c⌉`` chunks: per-chunk states
  ``chunk_kv``/``chunk_k``/``chunk_v``/``chunk_w``; far states ``far_*`` = the chunk states
  summed over the far chunks (the earlier ones when causal — the exclusive prefix —, every
  other one otherwise) by a Select-guarded reduction over chunks: O(C²·d²) adds, exact zeros
  for fully masked far sets; per query ``far_num``/``far_den``; in-chunk ``key_t`` (the
  chunk's keys transposed, ``[B, H, C, d, c]``), ``intra_dot`` (q·k over the chunk),
  ``local_max`` (local softmax), ``intra_weight`` (the chunk's N×c weights: masked φ, or
  softmax numerators), ``intra_num``/``intra_den``, ``row_scale`` and ``out``.

Nothing N×N is materialized; only the N×c in-chunk weights.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from .kernel_attrs import kernel_name, kernel_param, named_kernel as _named

VARIANTS = ("angular", "castling")
EPS = 1e-12
F32 = "float32"
#: Keys per state chunk of the non-causal, non-local forms (their ``chunk`` is unused).
STATE_CHUNK = 64


def _f(x) -> tirx.PrimExpr:
    return tirx.const(float(x), F32)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_dims(**dims) -> None:
    for name, value in dims.items():
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check(b, h, n, d, variant, causal, chunk, local, scale) -> None:
    _check_dims(b=b, h=h, n=n, d=d)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not _is_int(chunk) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if variant == "castling" and causal:
        raise ValueError("causal=True needs variant 'angular' (castling is non-causal)")
    if variant == "castling" and local:
        raise ValueError("local=True needs variant 'angular' (castling has no local form)")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")


def _ratio_scale(den) -> tirx.PrimExpr:
    """``1/den``, 0 where ``den`` is 0 (a query whose every key is masked)."""
    return tirx.Select(den > _f(0.0), _f(1.0) / den, _f(0.0))


def linear_attention(b: int, h: int, n: int, d: int, variant: str = "angular", causal: bool = False,
                     chunk: int = 64, local: bool = False, scale: float = 1.0,
                     key_bias: bool = False) -> tirx.PrimFunc:
    """Linear attention of ``linear_attention_math`` (forms (a)–(d) there) as one PrimFunc.

    Params, in order: ``q``, ``k``, ``v`` float32 ``[b, h, n, d]``, ``key_bias`` float32
    ``[b, n]`` (only with ``key_bias=True``), ``gate`` float32 ``[h, n]`` (per head and query row) (only with
    ``local=True``), ``out`` float32 ``[b, h, n, d]``. ``chunk`` matters only when causal or
    local; ``scale`` (the local softmax's logit scale) only when local.
    """
    _check(b, h, n, d, variant, causal, chunk, local, scale)
    q = te.placeholder((b, h, n, d), F32, name="q")
    k = te.placeholder((b, h, n, d), F32, name="k")
    v = te.placeholder((b, h, n, d), F32, name="v")
    bias = te.placeholder((b, n), F32, name="key_bias") if key_bias else None
    gate = te.placeholder((h, n), F32, name="gate") if local else None
    chunked = causal or local
    c = min(chunk if chunked else STATE_CHUNK, n)
    nc = -(-n // c)
    npad = nc * c  # key rows including the last chunk's padded tail
    padded = npad != n

    def row(j):
        """A key index clamped into [0, n): reads of the padded tail stay in bounds (their
        weights and scales are 0)."""
        return tirx.min(j, n - 1) if padded else j

    r = te.reduce_axis((0, d), "r")
    q_ss = te.compute((b, h, n), lambda bb, hh, i: te.sum(q[bb, hh, i, r] * q[bb, hh, i, r], axis=r),
                      name="q_sumsq")
    r2 = te.reduce_axis((0, d), "r")
    k_ss = te.compute((b, h, n), lambda bb, hh, j: te.sum(k[bb, hh, j, r2] * k[bb, hh, j, r2], axis=r2),
                      name="k_sumsq")
    inv_pi = 1.0 / math.pi
    q_scale = te.compute((b, h, n), lambda bb, hh, i: _f(inv_pi) / tirx.sqrt(q_ss[bb, hh, i] + _f(EPS)),
                         name="q_scale")
    if bias is not None or padded:
        def weight_of(bb, j):
            w = tirx.exp(bias[bb, row(j)]) if bias is not None else _f(1.0)
            return tirx.Select(j < n, w, _f(0.0)) if padded else w

        kw_buf = te.compute((b, npad), weight_of, name="key_weight")

        def w(bb, j):
            return kw_buf[bb, j]
    else:
        def w(bb, j):
            del bb, j
            return _f(1.0)

    k_scale = te.compute((b, h, npad), lambda bb, hh, j: w(bb, j) / tirx.sqrt(k_ss[bb, hh, row(j)] + _f(EPS)),
                         name="k_scale")
    params = [q, k, v] + ([bias] if bias is not None else []) + ([gate] if gate is not None else [])

    if not chunked:
        out = _global(q, k, v, q_scale, k_scale, w, row, variant, (b, h, n, d, c, nc))
    else:
        out = _chunked(q, k, v, q_scale, k_scale, w, row, gate, (b, h, n, d, c, nc), causal, local,
                       scale, weighted=bias is not None or padded)
    func = te.create_prim_func(params + [out])
    return _named(func, "linear_attention", b=b, h=h, n=n, d=d, causal=int(causal), chunk=chunk,
                  local=int(local), key_bias=int(key_bias), variant=variant, scale=float(scale))


def _chunk_states(k, v, k_scale, w, row, dims):
    """Per-chunk states ``(Σ w k̂ vᵀ, Σ w k̂, Σ w v, Σ w)`` over the ``c`` keys ``ch*c + jj`` of
    each chunk (the padded tail has zero weight and scale)."""
    b, h, _, d, c, nc = dims
    khat = te.compute((b, h, nc * c, d), lambda bb, hh, j, a: k[bb, hh, row(j), a] * k_scale[bb, hh, j],
                      name="k_hat")
    jj = te.reduce_axis((0, c), "jj")
    ckv = te.compute((b, h, nc, d, d), lambda bb, hh, ch, a, cc: te.sum(
        khat[bb, hh, ch * c + jj, a] * v[bb, hh, row(ch * c + jj), cc], axis=jj), name="chunk_kv")
    jj2 = te.reduce_axis((0, c), "jj")
    ckz = te.compute((b, h, nc, d), lambda bb, hh, ch, a: te.sum(khat[bb, hh, ch * c + jj2, a], axis=jj2),
                     name="chunk_k")
    jj3 = te.reduce_axis((0, c), "jj")
    csv = te.compute((b, h, nc, d), lambda bb, hh, ch, cc: te.sum(
        w(bb, ch * c + jj3) * v[bb, hh, row(ch * c + jj3), cc], axis=jj3), name="chunk_v")
    jj4 = te.reduce_axis((0, c), "jj")
    csw = te.compute((b, h, nc), lambda bb, hh, ch: te.sum(w(bb, ch * c + jj4), axis=jj4), name="chunk_w")
    return ckv, ckz, csv, csw


def _global(q, k, v, q_scale, k_scale, w, row, variant, dims):
    """Non-causal angular/castling: d×d states over all keys (chunk states summed, so each
    chunk's keys and values stay in L1 while its state is built), then one pass over the
    queries."""
    b, h, n, d, c, nc = dims
    ckv, ckz, csv, csw = _chunk_states(k, v, k_scale, w, row, dims)

    def total(state, shape, name):
        p = te.reduce_axis((0, nc), "p")
        return te.compute(shape, lambda bb, hh, *rest: te.sum(state[(bb, hh, p) + rest], axis=p), name=name)

    kv = total(ckv, (b, h, d, d), "kv_state")
    ra = te.reduce_axis((0, d), "a")
    num = te.compute((b, h, n, d), lambda bb, hh, i, cc: te.sum(q[bb, hh, i, ra] * kv[bb, hh, ra, cc], axis=ra),
                     name="attn_num")
    if variant == "castling":
        raw = te.compute((b, h, n, d), lambda bb, hh, i, cc: _f(0.5) * v[bb, hh, i, cc]
                         + q_scale[bb, hh, i] * num[bb, hh, i, cc], name="castling_raw")
        rc = te.reduce_axis((0, d), "c")
        oss = te.compute((b, h, n), lambda bb, hh, i: te.sum(raw[bb, hh, i, rc] * raw[bb, hh, i, rc], axis=rc),
                         name="out_sumsq")
        rs = te.compute((b, h, n), lambda bb, hh, i: _f(1.0) / tirx.sqrt(oss[bb, hh, i] + _f(EPS)),
                        name="row_scale")
        return te.compute((b, h, n, d), lambda bb, hh, i, cc: raw[bb, hh, i, cc] * rs[bb, hh, i], name="out")
    kz = total(ckz, (b, h, d), "k_state")
    sv = total(csv, (b, h, d), "v_state")
    sw = total(csw, (b, h), "w_state")
    ra2 = te.reduce_axis((0, d), "a")
    den = te.compute((b, h, n), lambda bb, hh, i: te.sum(q[bb, hh, i, ra2] * kz[bb, hh, ra2], axis=ra2),
                     name="attn_den")
    rs = te.compute((b, h, n), lambda bb, hh, i: _ratio_scale(
        _f(0.5) * sw[bb, hh] + q_scale[bb, hh, i] * den[bb, hh, i]), name="row_scale")
    return te.compute((b, h, n, d), lambda bb, hh, i, cc: (
        _f(0.5) * sv[bb, hh, cc] + q_scale[bb, hh, i] * num[bb, hh, i, cc]) * rs[bb, hh, i], name="out")


def _chunked(q, k, v, q_scale, k_scale, w, row, gate, dims, causal, local, scale, weighted):
    """Causal and/or local forms: chunk states, far (prefix) states, explicit in-chunk part."""
    b, h, n, d, c, nc = dims
    ckv, ckz, csv, csw = _chunk_states(k, v, k_scale, w, row, dims)

    # Far states: the chunk states summed over the far chunks of each chunk.
    def is_far(p, ch):
        return p < ch if causal else p != ch

    def far_sum(state, shape, name):
        p = te.reduce_axis((0, nc), "p")

        def f(bb, hh, ch, *rest):
            return te.sum(tirx.Select(is_far(p, ch), state[(bb, hh, p) + rest], _f(0.0)), axis=p)

        return te.compute(shape, f, name=name)

    fkv = far_sum(ckv, (b, h, nc, d, d), "far_kv")
    fkz = far_sum(ckz, (b, h, nc, d), "far_k")
    fsv = far_sum(csv, (b, h, nc, d), "far_v")
    fsw = far_sum(csw, (b, h, nc), "far_w")

    # Far terms per query: numerator q·S_far (q_scale applied later) and q·z_far.
    ra = te.reduce_axis((0, d), "a")
    fnum = te.compute((b, h, n, d), lambda bb, hh, i, cc: te.sum(
        q[bb, hh, i, ra] * fkv[bb, hh, i // c, ra, cc], axis=ra), name="far_num")
    ra2 = te.reduce_axis((0, d), "a")
    fden = te.compute((b, h, n), lambda bb, hh, i: te.sum(
        q[bb, hh, i, ra2] * fkz[bb, hh, i // c, ra2], axis=ra2), name="far_den")

    # In-chunk part: q·k against the query's chunk, keys transposed for a contiguous inner loop.
    kt = te.compute((b, h, nc, d, c), lambda bb, hh, ch, a, t: k[bb, hh, row(ch * c + t), a], name="key_t")
    ra3 = te.reduce_axis((0, d), "a")
    dot = te.compute((b, h, n, c), lambda bb, hh, i, t: te.sum(
        q[bb, hh, i, ra3] * kt[bb, hh, i // c, ra3, t], axis=ra3), name="intra_dot")

    def key(i, t):
        return (i // c) * c + t

    def in_window(i, t):
        return t <= i % c if causal else None

    def both(*conds):
        conds = [x for x in conds if x is not None]
        if not conds:
            return None
        return tirx.all(*conds) if len(conds) > 1 else conds[0]

    if local:
        def live(bb, i, t):
            return both(in_window(i, t), w(bb, key(i, t)) > _f(0.0) if weighted else None)

        t_ax = te.reduce_axis((0, c), "t")

        def lmax(bb, hh, i):
            s = _f(scale) * dot[bb, hh, i, t_ax]
            cond = live(bb, i, t_ax)
            return te.max(s if cond is None else tirx.Select(cond, s, tirx.min_value(F32)), axis=t_ax)

        mx = te.compute((b, h, n), lmax, name="local_max")

        def weight(bb, hh, i, t):
            p = tirx.exp(_f(scale) * dot[bb, hh, i, t] - mx[bb, hh, i])
            if weighted:
                p = p * w(bb, key(i, t))
            cond = live(bb, i, t)
            return p if cond is None else tirx.Select(cond, p, _f(0.0))
    else:
        def weight(bb, hh, i, t):
            j = key(i, t)
            a = _f(0.5) * w(bb, j) + q_scale[bb, hh, i] * k_scale[bb, hh, j] * dot[bb, hh, i, t]
            cond = in_window(i, t)
            return a if cond is None else tirx.Select(cond, a, _f(0.0))

    aw = te.compute((b, h, n, c), weight, name="intra_weight")
    t2 = te.reduce_axis((0, c), "t")
    inum = te.compute((b, h, n, d), lambda bb, hh, i, cc: te.sum(
        aw[bb, hh, i, t2] * v[bb, hh, row(key(i, t2)), cc], axis=t2), name="intra_num")
    t3 = te.reduce_axis((0, c), "t")
    iden = te.compute((b, h, n), lambda bb, hh, i: te.sum(aw[bb, hh, i, t3], axis=t3), name="intra_den")

    def far_den_total(bb, hh, i):
        return _f(0.5) * fsw[bb, hh, i // c] + q_scale[bb, hh, i] * fden[bb, hh, i]

    def far_num_total(bb, hh, i, cc):
        return _f(0.5) * fsv[bb, hh, i // c, cc] + q_scale[bb, hh, i] * fnum[bb, hh, i, cc]

    if not local:
        rs = te.compute((b, h, n), lambda bb, hh, i: _ratio_scale(iden[bb, hh, i] + far_den_total(bb, hh, i)),
                        name="row_scale")
        return te.compute((b, h, n, d), lambda bb, hh, i, cc: (
            inum[bb, hh, i, cc] + far_num_total(bb, hh, i, cc)) * rs[bb, hh, i], name="out")

    # o = g·o_loc + (1-g)·o_far; a part whose weights are all zero drops out.
    def coef(bb, hh, i, which):
        dl, df = iden[bb, hh, i], far_den_total(bb, hh, i)
        g = gate[hh, i]
        has_l, has_f = dl > _f(0.0), df > _f(0.0)
        if which == 0:
            return tirx.Select(has_l, tirx.Select(has_f, g, _f(1.0)) / dl, _f(0.0))
        return tirx.Select(has_f, tirx.Select(has_l, _f(1.0) - g, _f(1.0)) / df, _f(0.0))

    rs = te.compute((b, h, n, 2), lambda bb, hh, i, x: tirx.Select(x == 0, coef(bb, hh, i, 0), coef(bb, hh, i, 1)),
                    name="row_scale")
    return te.compute((b, h, n, d), lambda bb, hh, i, cc: inum[bb, hh, i, cc] * rs[bb, hh, i, 0]
                      + far_num_total(bb, hh, i, cc) * rs[bb, hh, i, 1], name="out")


def linear_attention_decode(b: int, h: int, d: int) -> tirx.PrimFunc:
    """One causal angular decode step (form (e) of ``linear_attention_math``; key weight 1).

    Params, in order: ``q``, ``k``, ``v`` float32 ``[b, h, d]`` (the new token), the state
    ``S`` ``[b, h, d, d]``, ``z`` ``[b, h, d]``, ``sv`` ``[b, h, d]``, ``sw`` ``[b, h]``; outputs
    ``out`` ``[b, h, d]`` and the updated ``S_new``, ``z_new``, ``sv_new``, ``sw_new`` (same
    shapes): ``S += k̂vᵀ``, ``z += k̂``, ``sv += v``, ``sw += 1``, then ``o`` from the new state.
    """
    _check_dims(b=b, h=h, d=d)
    q = te.placeholder((b, h, d), F32, name="q")
    k = te.placeholder((b, h, d), F32, name="k")
    v = te.placeholder((b, h, d), F32, name="v")
    s = te.placeholder((b, h, d, d), F32, name="S")
    z = te.placeholder((b, h, d), F32, name="z")
    sv = te.placeholder((b, h, d), F32, name="sv")
    sw = te.placeholder((b, h), F32, name="sw")
    r = te.reduce_axis((0, d), "r")
    q_ss = te.compute((b, h), lambda bb, hh: te.sum(q[bb, hh, r] * q[bb, hh, r], axis=r), name="q_sumsq")
    r2 = te.reduce_axis((0, d), "r")
    k_ss = te.compute((b, h), lambda bb, hh: te.sum(k[bb, hh, r2] * k[bb, hh, r2], axis=r2), name="k_sumsq")
    k_scale = te.compute((b, h), lambda bb, hh: _f(1.0) / tirx.sqrt(k_ss[bb, hh] + _f(EPS)), name="k_scale")
    q_scale = te.compute((b, h), lambda bb, hh: _f(1.0 / math.pi) / tirx.sqrt(q_ss[bb, hh] + _f(EPS)),
                         name="q_scale")
    s_new = te.compute((b, h, d, d), lambda bb, hh, a, cc: s[bb, hh, a, cc]
                       + k[bb, hh, a] * k_scale[bb, hh] * v[bb, hh, cc], name="S_new")
    z_new = te.compute((b, h, d), lambda bb, hh, a: z[bb, hh, a] + k[bb, hh, a] * k_scale[bb, hh], name="z_new")
    sv_new = te.compute((b, h, d), lambda bb, hh, cc: sv[bb, hh, cc] + v[bb, hh, cc], name="sv_new")
    sw_new = te.compute((b, h), lambda bb, hh: sw[bb, hh] + _f(1.0), name="sw_new")
    ra = te.reduce_axis((0, d), "a")
    num = te.compute((b, h, d), lambda bb, hh, cc: te.sum(q[bb, hh, ra] * s_new[bb, hh, ra, cc], axis=ra),
                     name="attn_num")
    ra2 = te.reduce_axis((0, d), "a")
    den = te.compute((b, h), lambda bb, hh: te.sum(q[bb, hh, ra2] * z_new[bb, hh, ra2], axis=ra2), name="attn_den")
    rs = te.compute((b, h), lambda bb, hh: _ratio_scale(_f(0.5) * sw_new[bb, hh] + q_scale[bb, hh] * den[bb, hh]),
                    name="row_scale")
    out = te.compute((b, h, d), lambda bb, hh, cc: (_f(0.5) * sv_new[bb, hh, cc]
                                                   + q_scale[bb, hh] * num[bb, hh, cc]) * rs[bb, hh], name="out")
    func = te.create_prim_func([q, k, v, s, z, sv, sw, out, s_new, z_new, sv_new, sw_new])
    return _named(func, "linear_attention_decode", b=b, h=h, d=d)


__all__ = ["EPS", "VARIANTS", "kernel_name", "kernel_param", "linear_attention", "linear_attention_decode"]
