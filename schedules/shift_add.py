"""TIR kernels of the shift-add rewrite (DeepShift/ShiftAddViT power-of-two weights and
ShiftAddLLM's binary-coded weights), as TE computes turned into PrimFuncs.

Every kernel computes ``y[M, N] = x[M, K] @ W`` for one reparameterized constant ``W`` and
carries the PrimFunc attribute ``accelc.kernel`` (its name here) plus its shape parameters, so
a target's schedule rule can recognise it and a simulator can cost it. Weight layouts:

- PoT codes: int8 ``[T, ceil(N/nb), K, nb]`` — term ``t`` of weight ``(k, n)`` at
  ``[t, n // nb, k, n % nb]``; ``c = sign * (e + 1)`` means ``sign * 2**-e``, ``c = 0`` none
  (the float path), or the integer path's byte (``shift_add_math.encode_int_codes``: ``e`` in
  bits 0–4, bit 5 set, bit 7 the sign). Tiles of ``nb`` output channels make every thread's
  weight stream contiguous.
- BCQ bit-planes: uint8 ``[bits, Kp // 8, N]`` (bit ``j`` of byte ``g`` is input ``8g + j``,
  1 = +1, 0 = -1) and float32 scales ``alpha[bits, G, N]`` per group of ``gs`` inputs.

Convolutions reach these kernels as matmuls of their patch matrix (:func:`im2col`, a plain
injective compute the target fuses like any legalized op).

The NumPy references live in ``accelc.passes.shift_add_math``; the tests hold the kernels to
them (integer path bit-exact).
"""

from __future__ import annotations

from tvm import te, tirx

from .kernel_attrs import kernel_name, kernel_param, named_kernel as _named

#: Output channels per packed weight tile: 4 AVX2 / 2 AVX-512 vectors of int32 accumulators.
TILE_N = 32

#: Float32 numbers whose exponent field is at most this are flushed to zero by the float path:
#: subtracting a shift of up to 14 from the exponent must not underflow into the sign bit.
FLUSH_EXPONENT = 14


#: x86 instructions that compute ``sign(c) * v`` per int32 lane (negate, keep or zero) in one
#: op, by vector width: the schedule rule picks the one matching its vector loop.
SIGN_INTRINSICS = {8: "llvm.x86.avx2.psign.d", 4: "llvm.x86.ssse3.psign.d.128"}

#: The sign form for targets without ``psignd`` (AVX-512 has none at 512 bits): arithmetic
#: shifts commute with ``~``, so ``sign * (x >> e) = ((x ^ s) >> e) - s`` with ``s`` the code's
#: sign mask (0 or -1). The ``- s`` does not depend on ``x``: it is the count of negative codes
#: per output column, summed once per column instead of once per row. Per row and vector of
#: weights that leaves xor, shift and a masked add (zero codes) — one op fewer than the
#: ``(v ^ s) - s`` negate.
XOR_SHIFT = "xor-shift"


def _contrib_int(sign_intrinsic: str | None = None):
    """``sign * (xq >> e)`` for an integer-path code byte (``e = byte & 31``, negative byte =
    negative weight, zero byte = zero weight; see ``shift_add_math.encode_int_codes``).

    Generic form: a per-lane arithmetic shift, a branch-free ``(v ^ s) - s`` negate with ``s``
    the sign mask and a select for zero codes. With ``sign_intrinsic`` (a
    :data:`SIGN_INTRINSICS` entry) negate-or-zero is one ``psignd``: load, and, shift, sign,
    add per vector of weights. That form is valid only when the accumulation is vectorized at
    the instruction's width, so a CPU schedule rule chooses it, never the pass. With
    :data:`XOR_SHIFT` the term is ``(x ^ s) >> e`` and the kernel adds the per-column ``- s``.
    """

    def contrib(xq, code):
        c = code.astype("int32")
        if sign_intrinsic == XOR_SHIFT:  # the ``- s`` is added per column (_negative_counts)
            flipped = tirx.bitwise_xor(xq, tirx.shift_right(c, 31))
            return tirx.Select(c != 0, tirx.shift_right(flipped, tirx.bitwise_and(c, 31)),
                               tirx.const(0, "int32"))
        v = tirx.shift_right(xq, tirx.bitwise_and(c, 31))
        if sign_intrinsic is not None:
            return tirx.call_llvm_pure_intrin("int32", sign_intrinsic, v, c)
        s = tirx.shift_right(c, 31)
        signed = tirx.bitwise_xor(v, s) - s
        return tirx.Select(c != 0, signed, tirx.const(0, "int32"))

    return contrib


def _accumulate(xs, codes, contrib, dims):
    """``acc[i, j] = Σ_t Σ_k contrib(xs[i, k], code of weight (k, j), term t)`` (block shift_acc)."""
    m, n, k, terms, tile_n = dims
    t_ax = te.reduce_axis((0, terms), "t")
    k_ax = te.reduce_axis((0, k), "kk")
    return te.compute(
        (m, n),
        lambda i, j: te.sum(contrib(xs[i, k_ax], codes[t_ax, j // tile_n, k_ax, j % tile_n]), axis=[t_ax, k_ax]),
        name="shift_acc")


def _negative_counts(codes, dims):
    """``neg[j]`` = how many of column ``j``'s codes (all terms) are negative (block neg_count)."""
    _, n, k, terms, tile_n = dims
    t_ax = te.reduce_axis((0, terms), "t")
    k_ax = te.reduce_axis((0, k), "kk")
    return te.compute(
        (n,), lambda j: te.sum(tirx.Select(codes[t_ax, j // tile_n, k_ax, j % tile_n] < tirx.const(0, "int8"),
                                           tirx.const(1, "int32"), tirx.const(0, "int32")), axis=[t_ax, k_ax]),
        name="neg_count")


def _quantize(x, frac_bits: int, width: int):
    """``floor(x * 2**frac_bits)`` saturated to ``width`` bits (NaN → 0), int32 (block quantize)."""
    lim = float(2 ** (width - 1))

    def quant(i, j):
        v = tirx.floor(x[i, j] * tirx.const(float(2 ** frac_bits), "float32"))
        hi, lo = tirx.const(2 ** (width - 1) - 1, "int32"), tirx.const(-(2 ** (width - 1)), "int32")
        return tirx.Select(tirx.isnan(x[i, j]), tirx.const(0, "int32"),
                           tirx.Select(v >= tirx.const(lim, "float32"), hi,
                                       tirx.Select(v < tirx.const(-lim, "float32"), lo, v.astype("int32"))))

    return te.compute(x.shape, quant, name="quantize")


def quantize_fixed_point(m: int, k: int, frac_bits: int, int_bits: int) -> tirx.PrimFunc:
    """The integer path's activation quantizer alone (x float32 [m, k] → int32), for targets
    that run the shift accumulation elsewhere (the simulated accelerator)."""
    x = te.placeholder((m, k), "float32", name="x")
    return _named(te.create_prim_func([x, _quantize(x, frac_bits, int_bits + frac_bits)]),
                  "quantize_fixed_point", m=m, k=k, frac_bits=frac_bits, int_bits=int_bits)


def pot_matmul_int(m: int, k: int, n: int, terms: int, frac_bits: int, int_bits: int,
                   tile_n: int = TILE_N, dequantize: bool = True,
                   sign_intrinsic: str | None = None) -> tirx.PrimFunc:
    """``y = dequant(sum_t sum_k sign * (q(x) >> e))`` with ``q(x) = floor(x * 2**frac_bits)``
    saturated to ``int_bits + frac_bits`` bits and an int32 accumulator.

    Params: ``x`` float32 ``[m, k]``, ``codes`` int8 (PoT layout), ``out_scale`` float32 ``[n]``
    (``scale * 2**-frac_bits``), output float32 ``[m, n]`` — or, with ``dequantize=False``,
    ``x`` already quantized (int32) and the int32 accumulator as output (for bit-exact tests).
    ``sign_intrinsic``: see :func:`_contrib_int` (a CPU schedule rule's choice, not the pass's).
    """
    width = int_bits + frac_bits
    if not 2 <= width <= 32:
        raise ValueError(f"int_bits + frac_bits must be in [2, 32], got {width}")
    tiles = -(-n // tile_n)
    codes = te.placeholder((terms, tiles, k, tile_n), "int8", name="codes")
    if dequantize:
        x = te.placeholder((m, k), "float32", name="x")
        xq = _quantize(x, frac_bits, width)
    else:
        x = te.placeholder((m, k), "int32", name="xq")
        xq = x
    dims = (m, n, k, terms, tile_n)
    acc = _accumulate(xq, codes, _contrib_int(sign_intrinsic), dims)
    if sign_intrinsic == XOR_SHIFT:
        neg = _negative_counts(codes, dims)
        summed = lambda i, j: acc[i, j] + neg[j]  # noqa: E731
    else:
        summed = lambda i, j: acc[i, j]  # noqa: E731
    if dequantize:
        out_scale = te.placeholder((n,), "float32", name="out_scale")
        y = te.compute((m, n), lambda i, j: summed(i, j).astype("float32") * out_scale[j], name="dequant")
        func = te.create_prim_func([x, codes, out_scale, y])
    else:
        total = te.compute((m, n), summed, name="shift_total") if sign_intrinsic == XOR_SHIFT else acc
        func = te.create_prim_func([x, codes, total])
    return _named(func, "pot_matmul_int", m=m, k=k, n=n, terms=terms, frac_bits=frac_bits,
                  int_bits=int_bits, tile_n=tile_n, dequantize=int(dequantize))


def pot_matmul_float(m: int, k: int, n: int, terms: int, tile_n: int = TILE_N,
                     max_shift: int = FLUSH_EXPONENT) -> tirx.PrimFunc:
    """``y = scale * sum_t sum_k sign * ldexp(x, -e)``, the ldexp done as an integer subtract on
    the exponent field and the sign as an xor: no multiply in the inner loop. Inputs with
    ``|x| < 2**-112`` count as zero (so the exponent cannot underflow; with shifts beyond 14,
    inputs whose exponent field is at most ``max_shift``).

    Params: ``x`` float32 ``[m, k]``, ``codes`` int8 (PoT layout), ``scale`` float32 ``[n]``.
    """
    tiles = -(-n // tile_n)
    x = te.placeholder((m, k), "float32", name="x")
    codes = te.placeholder((terms, tiles, k, tile_n), "int8", name="codes")
    scale = te.placeholder((n,), "float32", name="scale")

    def bits(i, j):
        b = tirx.reinterpret("int32", x[i, j])
        exp_field = tirx.bitwise_and(tirx.shift_right(b, 23), 0xFF)
        return tirx.Select(exp_field > max(FLUSH_EXPONENT, max_shift), b, tirx.const(0, "int32"))

    xb = te.compute((m, k), bits, name="float_bits")

    def contrib(b, code):
        c = code.astype("int32")
        sign_bit = tirx.shift_left(tirx.shift_right(c, 31), 31)
        shifted = tirx.bitwise_xor(b - tirx.shift_left(tirx.abs(c) - 1, 23), sign_bit)
        return tirx.Select(tirx.all(c != 0, b != 0), tirx.reinterpret("float32", shifted),
                           tirx.const(0.0, "float32"))

    acc = _accumulate(xb, codes, contrib, (m, n, k, terms, tile_n))
    y = te.compute((m, n), lambda i, j: acc[i, j] * scale[j], name="dequant")
    func = te.create_prim_func([x, codes, scale, y])
    return _named(func, "pot_matmul_float", m=m, k=k, n=n, terms=terms, tile_n=tile_n)


def bcq_matmul_lut(m: int, k: int, n: int, bits: int, group_size: int) -> tirx.PrimFunc:
    """ShiftAddLLM's LUT-8 form: per 8 inputs a 256-entry table of every ``sum ±x_j``; then
    each output adds one table lookup per bit-plane byte and scales each group's partial sum by
    its alpha (a power-of-two sum: shifts on an accelerator).

    Params: ``x`` float32 ``[m, k]``, ``planes`` uint8 ``[bits, Kp/8, n]``, ``alpha`` float32
    ``[bits, G, n]``.
    """
    if group_size % 8:
        raise ValueError(f"group_size must be a multiple of 8, got {group_size}")
    k8 = -(-k // 8)
    g8 = group_size // 8  # bytes per alpha group
    groups = -(-k8 // g8)
    x = te.placeholder((m, k), "float32", name="x")
    planes = te.placeholder((bits, k8, n), "uint8", name="planes")
    alpha = te.placeholder((bits, groups, n), "float32", name="alpha")

    def table(i, g, idx):
        total = tirx.const(0.0, "float32")
        for j in range(8):
            kk = g * 8 + j
            if (k8 - 1) * 8 + j >= k:  # this lane is padding in the last byte
                xv = tirx.Select(kk < k, x[i, tirx.min(kk, k - 1)], tirx.const(0.0, "float32"))
            else:
                xv = x[i, kk]
            bit = tirx.bitwise_and(tirx.shift_right(idx, j), 1)
            total = total + tirx.Select(bit == 1, xv, tirx.const(0.0, "float32") - xv)
        return total

    lut = te.compute((m, k8, 256), table, name="lut")
    r = te.reduce_axis((0, g8), "r")
    ragged = k8 % g8 != 0

    def partial(i, b, q, j):
        g = q * g8 + r
        if ragged:
            g_safe = tirx.min(g, k8 - 1)
            val = lut[i, g_safe, planes[b, g_safe, j].astype("int32")]
            return te.sum(tirx.Select(g < k8, val, tirx.const(0.0, "float32")), axis=r)
        return te.sum(lut[i, g, planes[b, g, j].astype("int32")], axis=r)

    part = te.compute((m, bits, groups, n), partial, name="lut_acc")
    b_ax = te.reduce_axis((0, bits), "b")
    q_ax = te.reduce_axis((0, groups), "q")
    y = te.compute((m, n), lambda i, j: te.sum(alpha[b_ax, q_ax, j] * part[i, b_ax, q_ax, j],
                                               axis=[b_ax, q_ax]), name="bcq_scale")
    func = te.create_prim_func([x, planes, alpha, y])
    return _named(func, "bcq_matmul_lut", m=m, k=k, n=n, bits=bits, group_size=group_size)


def im2col(x: te.Tensor, kernel: tuple, strides: tuple, padding: tuple, dilation: tuple,
           out_hw: tuple) -> te.Tensor:
    """Patch matrix of an NCHW conv2d input for the shift-add kernels: ``x`` ``[N, C, H, W]`` →
    ``[N·OH·OW, C·KH·KW]``, row ``(n, oh, ow)``, column ``(c, kh, kw)`` (the order of an OIHW
    weight flattened to ``[O, C·KH·KW]``); zero padding folded in (``padding`` is Relax's
    ``(top, left, bottom, right)``). A plain injective compute: the target fuses and schedules
    it like any legalized op.
    """
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = kernel
    sh, sw = strides
    pt, pl = padding[0], padding[1]
    dh, dw = dilation
    oh, ow = out_hw
    padded = any(int(p) for p in padding)
    zero = tirx.const(0.0, x.dtype)

    def value(r, q):
        b, pix = r // (oh * ow), r % (oh * ow)
        ch, tap = q // (kh * kw), q % (kh * kw)
        y = (pix // ow) * sh + (tap // kw) * dh - pt
        z = (pix % ow) * sw + (tap % kw) * dw - pl
        if not padded:
            return x[b, ch, y, z]
        inside = tirx.all(y >= 0, y < h, z >= 0, z < w)
        return tirx.if_then_else(inside, x[b, ch, y, z], zero)

    # the patch geometry, for the CPU rule: it splits the row loop into (n, oh, ow) and the
    # column loop into (c, kh, kw), which turns this index math into plain loop variables
    return te.compute((n * oh * ow, c * kh * kw), value, name="im2col",
                      attrs={IM2COL_ATTR: [n, int(oh), int(ow), c, int(kh), int(kw)]})


#: Block annotation of :func:`im2col`: ``[n, oh, ow, c, kh, kw]``.
IM2COL_ATTR = "accelc.im2col"


__all__ = ["FLUSH_EXPONENT", "SIGN_INTRINSICS", "TILE_N", "quantize_fixed_point", "bcq_matmul_lut", "kernel_name", "kernel_param",
           "im2col", "pot_matmul_float", "pot_matmul_int"]
