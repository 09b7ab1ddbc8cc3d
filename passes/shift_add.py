"""``accelc.shift-add``: constant-weight matmuls → shifts and adds (post-training).

Pattern: ``R.matmul(x, W)`` with ``W`` a float32 2-D constant (``[K, N]``; also
``permute_dims`` of one, as Gemm with ``transB`` imports), ``x`` float32 ``[..., K]``; and
``R.nn.conv2d(x, W)`` (NCHW data, OIHW float32 constant ``W``, static shapes), run as a matmul
of the im2col patch matrix ``[N·OH·OW, C·KH·KW]`` with ``W`` flattened to ``[C·KH·KW, O]``.
A conv's bias add stays as imported. Grouped/depthwise convs stay dense (``dense`` record:
"grouped conv"), as do other layouts.

Rewrite: ``reshape → call_tir(kernel, x, packed weights) → reshape`` (conv2d: ``im2col →
call_tir(kernel) → reshape → permute_dims`` back to NCHW), one of
- ``mode=pot`` (DeepShift / ShiftAddViT's shift expert): ``W ≈ scale[n] · Σ_t sign·2^-e``
  with ``terms`` APoT terms, packed as one int8 per term; ``path=int`` quantizes activations
  to fixed point ``Q(int_bits).(frac_bits)`` and accumulates ``±(x >> e)`` in int32;
  ``path=float`` adds ``-e`` to the float exponent instead;
- ``mode=bcq`` (ShiftAddLLM): ``W ≈ Σ_i α_i·B_i`` with ``bits`` ±1 bit-planes (1 bit per weight
  each) and APoT-rounded scales per group of ``group_size`` inputs, run as the LUT-8 kernel;
  given per-layer Hessians (``hessians={layer name: XᵀX}``; the driver computes them from a
  calibration set: ``--calib samples.npz``, ``compiler.calibrate.layer_hessians``) the
  GPTQ-style error feedback minimizes the layer's output error instead.

Knobs: the options dataclass below. Layers: ``layers`` (allow) / ``exclude`` (deny) fnmatch
patterns over ONNX node names (``*/intermediate/*``); the first and last matched layers stay
dense unless ``keep_first``/``keep_last`` are off.

Validate: ``accelc report MODEL --passes shift-add`` (per-layer and end-to-end cosine, op
counts, weight bytes, energy); kernels are held bit-exact to ``shift_add_math`` in the tests.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PassError
from . import append_record, check_knobs, options_record, register, replace_calls, static_shape
from . import shift_add_math as sam
from .naming import fingerprint, matches, module_weight_names

MODES = ("pot", "bcq")
PATHS = ("int", "float")
SCALES = ("none", "pot", "float")


@dataclass(frozen=True)
class ShiftAddOptions:
    mode: str = "pot"  # pot (power-of-two terms) | bcq (binary-coded planes, ShiftAddLLM)
    terms: int = 2  # pot: APoT terms per weight, 1-3 (each: one shift + one add)
    weight_bits: int = 5  # pot: bits per term (sign + exponent): 5 → shifts 0..14
    scale: str = "pot"  # pot: per-output-channel scale: none | pot (a shift) | float
    path: str = "int"  # pot: int (fixed-point activations) | float (exponent add)
    frac_bits: int = 16  # pot int path: activation fraction bits
    int_bits: int = 16  # pot int path: activation integer bits (incl. sign); sum ≤ 32
    bits: int = 3  # bcq: bit-planes per weight, 2-4
    group_size: int = 128  # bcq: inputs sharing one alpha vector (multiple of 8; -1 = all K)
    apot_terms: int = 3  # bcq: power-of-two terms per alpha
    rounds: int = 50  # bcq: alternating refinement rounds
    layers: tuple = ()  # allow patterns (fnmatch over ONNX node names); empty = every layer
    exclude: tuple = ()  # deny patterns
    keep_first: bool = True  # leave the first matched layer dense (patch embed, stem)
    keep_last: bool = True  # leave the last matched layer dense (classifier, LM head)

    def __post_init__(self):
        checks = [
            ("mode", self.mode in MODES, f"one of {', '.join(MODES)}"),
            ("terms", self.terms in (1, 2, 3), "1, 2 or 3"),
            ("weight_bits", 2 <= self.weight_bits <= 6, "in [2, 6] (shifts up to 30 fit an int32 lane)"),
            ("scale", self.scale in SCALES, f"one of {', '.join(SCALES)}"),
            ("path", self.path in PATHS, f"one of {', '.join(PATHS)}"),
            ("frac_bits", 0 <= self.frac_bits <= 30, "in [0, 30]"),
            ("int_bits", 1 <= self.int_bits and self.int_bits + self.frac_bits <= 32,
             "≥ 1 with int_bits + frac_bits ≤ 32"),
            ("bits", self.bits in (2, 3, 4), "2, 3 or 4"),
            ("group_size", self.group_size in (0, -1) or (self.group_size > 0 and self.group_size % 8 == 0),
             "a positive multiple of 8, or -1 for the whole input"),
            ("apot_terms", self.apot_terms in (0, 1, 2, 3), "0 (float alpha), 1, 2 or 3"),
            ("rounds", self.rounds >= 0, "≥ 0"),
        ]
        check_knobs(self, checks)
        object.__setattr__(self, "layers", _patterns(self.layers))
        object.__setattr__(self, "exclude", _patterns(self.exclude))

    def describe(self) -> str:
        if self.mode == "pot":
            return f"pot{self.terms} {self.path}" + (f" Q{self.int_bits}.{self.frac_bits}" if self.path == "int" else "")
        return f"bcq{self.bits} g{self.group_size} α-apot{self.apot_terms}"


def _patterns(value) -> tuple:
    if isinstance(value, str):
        value = value.replace(";", "|").split("|")
    return tuple(p for p in (str(v).strip() for v in value) if p)


@dataclass(frozen=True)
class ConvGeometry:
    """A static NCHW/OIHW conv2d as the im2col matmul ``[N·OH·OW, C·KH·KW] @ [C·KH·KW, O]``."""

    batch: int
    channels: int
    kernel: tuple  # (KH, KW)
    strides: tuple
    padding: tuple  # Relax's (top, left, bottom, right)
    dilation: tuple
    out_hw: tuple  # (OH, OW)
    groups: int = 1

    @property
    def pointwise(self) -> bool:
        """1×1, stride 1, no padding: the patch matrix is the NHWC input itself."""
        return (self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.padding))

    def patches(self, x: np.ndarray) -> np.ndarray:
        """NumPy im2col of an ``[N, C, H, W]`` input: ``[N·OH·OW, C·KH·KW]`` (what the kernel
        multiplies; calibration takes its Hessian ``XᵀX`` from this, not from ``x``)."""
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = self.kernel, self.strides, self.dilation, self.out_hw
        pt, pl, pb, pr = self.padding
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        n, c = x.shape[:2]
        cols = np.empty((n, oh, ow, c, kh, kw), x.dtype)
        for i in range(kh):
            for j in range(kw):
                win = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                cols[..., i, j] = win.transpose(0, 2, 3, 1)
        return cols.reshape(n * oh * ow, c * kh * kw)

    def describe(self) -> str:
        kh, kw = self.kernel
        text = f"conv {kh}x{kw}" + (f"/{self.strides[0]}" if self.strides[0] == self.strides[1]
                                    else f"/{self.strides[0]}x{self.strides[1]}")
        return text + (f" g{self.groups}" if self.groups != 1 else "")


@dataclass
class Candidate:
    """One constant-weight matmul (or conv2d, as its im2col matmul) the pass may rewrite."""

    index: int
    name: str
    weight: np.ndarray  # float32 [K, N] (conv2d: the OIHW weight as [C·KH·KW, O])
    rows: int  # M: product of x's leading dims (conv2d: N·OH·OW)
    call: object  # the relax.Call
    chosen: bool = False
    why_dense: str = ""
    conv: ConvGeometry | None = None  # set for conv2d
    unsupported: str = ""  # why this layer can never be rewritten (grouped conv)

    @property
    def op(self) -> str:
        return self.conv.describe() if self.conv is not None else "matmul"

    def input_matrix(self, x: np.ndarray) -> np.ndarray:
        """The layer's input value (``call.args[0]``) as the kernel's ``[rows, K]`` operand."""
        x = np.asarray(x)
        return self.conv.patches(x) if self.conv is not None else x.reshape(-1, x.shape[-1])


def find_candidates(func, names: dict[str, str]) -> list[Candidate]:
    """Constant-weight float32 matmuls and conv2ds of ``func`` in program order."""
    from tvm import relax

    bindings = {}
    for block in func.body.blocks:
        for b in block.bindings:
            bindings[b.var] = b.value
    found: list[Candidate] = []

    def weight_of(expr):
        if isinstance(expr, relax.Var) and expr in bindings:
            expr = bindings[expr]
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.permute_dims":
            inner = weight_of(expr.args[0])
            axes = expr.attrs.axes
            if inner is None or (axes is not None and [int(a) for a in axes] != [1, 0]):
                return None
            return inner.T
        if _is_const(expr):
            arr = expr.value.numpy()
            return arr if arr.ndim == 2 and arr.dtype == np.float32 else None
        return None

    def visit(expr):
        op = getattr(expr.op, "name", "") if isinstance(expr, relax.Call) else ""
        if op == "relax.nn.conv2d":
            return visit_conv(expr)
        if op != "relax.matmul":
            return
        x, w = expr.args
        dims = static_shape(x)
        if str(getattr(x.ty, "dtype", "")) != "float32" or dims is None:
            return
        weight = weight_of(w)
        if weight is None or len(dims) < 2 or dims[-1] != weight.shape[0]:
            return
        index = len(found)
        name = names.get(fingerprint(weight)) or f"matmul_{index}"
        found.append(Candidate(index, name, np.ascontiguousarray(weight), int(np.prod(dims[:-1])), expr))

    def visit_conv(expr):
        x, w = expr.args
        if isinstance(w, relax.Var) and w in bindings:
            w = bindings[w]
        dims, out = static_shape(x), static_shape(expr)
        a = expr.attrs
        if not (_is_const(w) and dims is not None and out is not None and len(dims) == 4
                and str(getattr(x.ty, "dtype", "")) == "float32"
                and str(getattr(expr.ty, "dtype", "")) == "float32"
                and str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "OIHW"
                and str(a.out_layout or "NCHW") == "NCHW"):
            return
        oihw = w.value.numpy()
        if oihw.dtype != np.float32 or oihw.ndim != 4:
            return
        o, cg, kh, kw = oihw.shape
        geom = ConvGeometry(dims[0], dims[1], (kh, kw), tuple(int(v) for v in a.strides),
                            _padding4(a.padding), tuple(int(v) for v in a.dilation),
                            (out[2], out[3]), int(a.groups))
        index = len(found)
        name = names.get(fingerprint(oihw)) or f"conv2d_{index}"
        rows = geom.batch * out[2] * out[3]
        cand = Candidate(index, name, np.ascontiguousarray(oihw.reshape(o, cg * kh * kw).T), rows, expr,
                         conv=geom)
        if geom.groups != 1:
            cand.unsupported = "grouped conv"
        found.append(cand)

    relax.analysis.post_order_visit(func, visit)
    return found


def _padding4(padding) -> tuple:
    """Relax conv padding as (top, left, bottom, right)."""
    p = [int(v) for v in padding]
    return tuple(p * 4 if len(p) == 1 else p * 2 if len(p) == 2 else p)


def _is_const(expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "numpy")


def select(candidates: list[Candidate], opts, who: str = "shift-add") -> list[Candidate]:
    """Mark the candidates to rewrite (``opts``: ``layers``, ``exclude``, ``keep_first``,
    ``keep_last``); raises when a layer pattern matches nothing (``who``: the pass's name)."""
    for pats, knob in ((opts.layers, "layers"), (opts.exclude, "exclude")):
        for p in pats:
            if not any(matches(c.name, [p]) for c in candidates):
                raise PassError(f"{who}: {knob} pattern '{p}' matches no layer "
                                f"(layers: {_layer_list(candidates)})")
    for c in candidates:
        if c.unsupported:
            c.why_dense = c.unsupported
        elif opts.layers and not matches(c.name, opts.layers):
            c.why_dense = "not in layers"
        elif matches(c.name, opts.exclude):
            c.why_dense = "excluded"
        else:
            c.chosen = True
    if candidates and opts.keep_first and not opts.layers:
        _keep_dense(candidates[0], "first layer")
    if len(candidates) > 1 and opts.keep_last and not opts.layers:
        _keep_dense(candidates[-1], "last layer")
    return [c for c in candidates if c.chosen]


def _keep_dense(c: Candidate, why: str) -> None:
    if c.chosen:
        c.chosen, c.why_dense = False, why


def _layer_list(candidates) -> str:
    names = [c.name for c in candidates]
    return ", ".join(names[:6]) + (f", … ({len(names)} in all)" if len(names) > 6 else "") if names else "none"


# -- weights → kernel arguments --------------------------------------------------------------
def pack_pot_codes(codes: np.ndarray, tile_n: int) -> np.ndarray:
    """int8 ``[T, K, N]`` → ``[T, ceil(N/tile_n), K, tile_n]`` (zero-padded channels)."""
    t, k, n = codes.shape
    tiles = -(-n // tile_n)
    padded = np.zeros((t, k, tiles * tile_n), np.int8)
    padded[:, :, :n] = codes
    return np.ascontiguousarray(padded.reshape(t, k, tiles, tile_n).transpose(0, 2, 1, 3))


@dataclass
class LayerRewrite:
    """What the pass did to one layer (the report reads these)."""

    name: str
    k: int
    n: int
    rows: int
    kernel: str
    bytes_before: int
    bytes_after: int
    weight_rel_l2: float
    probe_cos: float  # output cosine on N(0,1) probe inputs (64 rows)
    ops: dict  # per inference: mult / add / shift / lut
    op: str = "matmul"  # or the conv ("conv 3x3/2"); k, n, rows are its im2col matmul's


def _probe_cos(w: np.ndarray, wq: np.ndarray) -> float:
    x = np.random.default_rng(0).standard_normal((64, w.shape[0]))
    a, b = x @ w.astype(np.float64), x @ wq.astype(np.float64)
    return float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _op_counts(opts: ShiftAddOptions, m: int, k: int, n: int, groups: int) -> dict:
    if opts.mode == "pot":
        macs = m * k * n * opts.terms
        return {"mult": m * n + (m * k if opts.path == "int" else 0), "shift": macs, "add": macs, "lut": 0,
                "datapath": "int32" if opts.path == "int" else "fp32"}
    k8 = -(-k // 8)
    lookups = m * n * k8 * opts.bits
    scale_terms = max(opts.apot_terms, 1)
    return {"mult": 0 if opts.apot_terms else m * n * groups * opts.bits,
            "shift": m * n * groups * opts.bits * (scale_terms if opts.apot_terms else 0),
            "add": lookups + m * k8 * 256 + m * n * groups * opts.bits * scale_terms,
            "lut": lookups, "datapath": "fp32"}


def rewrite_weights(c: Candidate, opts: ShiftAddOptions, hessian=None):
    """Quantize one layer: returns (kernel PrimFunc, kernel constant args, LayerRewrite)."""
    from ..schedules import shift_add as kernels

    w = c.weight
    k, n = w.shape
    if hessian is not None and np.shape(hessian) != (k, k):
        raise PassError(f"shift-add: layer '{c.name}': Hessian is {np.shape(hessian)}, the layer's "
                        f"{c.op} input needs ({k}, {k}) (conv: XᵀX of Candidate.input_matrix)")
    if opts.mode == "pot":
        pw = sam.pot_decompose(w, terms=opts.terms, weight_bits=opts.weight_bits, scale=opts.scale)
        deq = pw.dequantize()
        if opts.path == "int":
            codes = pack_pot_codes(sam.encode_int_codes(pw.codes), kernels.TILE_N)
            func = kernels.pot_matmul_int(c.rows, k, n, opts.terms, opts.frac_bits, opts.int_bits)
            scale = (pw.scale.astype(np.float64) * 2.0 ** -opts.frac_bits).astype(np.float32)
        else:
            codes = pack_pot_codes(pw.codes, kernels.TILE_N)
            func = kernels.pot_matmul_float(c.rows, k, n, opts.terms, max_shift=pw.e_max)
            scale = pw.scale.astype(np.float32)
        args = [codes, scale]
        after, groups = sam.pot_weight_bytes(pw), 1
    else:
        gs = opts.group_size if opts.group_size > 0 else -(-k // 8) * 8
        bq = sam.bcq_quantize(w, bits=opts.bits, group_size=gs, apot_terms=opts.apot_terms,
                              rounds=opts.rounds, hessian=hessian)
        deq = bq.dequantize()
        func = kernels.bcq_matmul_lut(c.rows, k, n, opts.bits, bq.group_size)
        args = [bq.planes, bq.alpha.astype(np.float32)]
        after, groups = sam.bcq_weight_bytes(bq), bq.alpha.shape[1]
    err = float(np.linalg.norm(deq - w) / max(np.linalg.norm(w), 1e-30))
    info = LayerRewrite(c.name, k, n, c.rows, func.attrs["accelc.kernel"], w.nbytes, int(after), err,
                        _probe_cos(w, deq), _op_counts(opts, c.rows, k, n, groups), c.op)
    return func, args, info


# -- the pass --------------------------------------------------------------------------------
@register("shift-add", ShiftAddOptions,
          calibration=lambda opts: "hessians" if opts.mode == "bcq" else None)
def shift_add(options: ShiftAddOptions | None = None, hessians: dict | None = None):
    """Multiplications → shifts and adds: PoT/APoT or BCQ reparameterized matmul weights."""
    from . import module_pass

    opts = options or ShiftAddOptions()

    @module_pass("accelc.shift-add")
    def transform(mod, _ctx):
        return run(mod, opts, hessians=hessians)

    return transform


def run(mod, opts: ShiftAddOptions, hessians: dict | None = None):
    """The pass body on an IRModule (see the module docstring)."""
    from tvm import relax

    def rewrite(bb, cand):
        func, consts, info = rewrite_weights(cand, opts, (hessians or {}).get(cand.name))
        gv = bb.add_func(func.without_attr("global_symbol"), info.kernel)
        n = cand.weight.shape[1]
        return info, lambda x2: bb.emit(relax.call_tir(
            gv, [x2] + [relax.const(a) for a in consts], _tensor_type((cand.rows, n), "float32")))

    return rewrite_layers(mod, opts, "shift-add", rewrite)


def rewrite_layers(mod, opts, who: str, rewrite):
    """The body the weight rewrites share: find the constant-weight layers of ``main``, select
    them (``opts.layers``/``exclude``/``keep_first``/``keep_last``), replace each chosen one by
    ``rewrite(bb, cand) -> (LayerRewrite, matmul)`` (``matmul(x2) -> y2`` on the layer's
    ``[rows, K]`` input; :func:`emit_layer` does the rest), and record what was done."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise PassError(f"{who}: the module has no 'main' function")
    candidates = find_candidates(mod[mod.get_global_var("main")], module_weight_names(mod))
    chosen = select(candidates, opts, who)
    if not chosen:
        print(f"accelc: {who}: nothing to rewrite ({len(candidates)} constant-weight matmuls, "
              f"none selected); the model compiles unchanged", file=sys.stderr)
        return mod
    infos: list[LayerRewrite] = []

    def emit(bb, call, cand, _remap):
        info, matmul = rewrite(bb, cand)
        infos.append(info)
        return emit_layer(bb, call, cand, matmul)

    new = replace_calls(mod, {c.call: c for c in chosen}, emit)
    record = {"pass": who, "options": options_record(opts), "describe": opts.describe(),
              "dense": [{"name": c.name, "op": c.op, "k": int(c.weight.shape[0]), "n": int(c.weight.shape[1]),
                         "rows": c.rows, "why": c.why_dense} for c in candidates if not c.chosen],
              "layers": [asdict(i) for i in infos]}
    return append_record(mod, new, record)


def emit_layer(bb, call, cand: Candidate, matmul):
    """A rewritten layer in the graph: its input as the ``[rows, K]`` matrix (reshape, or
    im2col for a conv), ``matmul(x2) -> [rows, N]`` (the rewrite's kernel call), and the
    result back in the layer's output shape (NCHW for a conv). A ``matmul`` marked
    ``takes_conv_input`` gets a conv's NCHW input itself and makes the patches its own way."""
    from tvm import relax

    x = call.args[0]
    n = cand.weight.shape[1]
    if cand.conv is not None and getattr(matmul, "takes_conv_input", False):
        x2 = x  # the rewrite builds its own patches (int8: from the quantized input)
    elif cand.conv is not None:
        x2 = _emit_patches(bb, x, cand.conv)
    elif static_shape(x) == [cand.rows, cand.weight.shape[0]]:
        x2 = x  # already the matrix. A reshape to the same shape is a copy when x is a function
        # parameter (RewriteDataflowReshape turns only the others into views): 4 MB a call at 1024²
    else:
        x2 = bb.emit(relax.op.reshape(x, (cand.rows, cand.weight.shape[0])))
    y2 = matmul(x2)
    if cand.conv is not None:  # rows (n, oh, ow) × channels → NCHW
        g = cand.conv
        y4 = bb.emit(relax.op.reshape(y2, (g.batch, g.out_hw[0], g.out_hw[1], n)))
        return relax.op.permute_dims(y4, [0, 3, 1, 2])
    out = static_shape(x)[:-1] + [n]
    return y2 if out == [cand.rows, n] else relax.op.reshape(y2, out)


def _emit_patches(bb, x, g: ConvGeometry):
    """The conv input as the ``[N·OH·OW, C·KH·KW]`` patch matrix: a transpose for pointwise
    convs, else the im2col compute (``schedules.shift_add.im2col``)."""
    from tvm import relax

    from ..schedules import shift_add as kernels

    rows = g.batch * g.out_hw[0] * g.out_hw[1]
    if g.pointwise:
        nhwc = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
        return bb.emit(relax.op.reshape(nhwc, (rows, g.channels)))
    return bb.emit_te(kernels.im2col, x, g.kernel, g.strides, g.padding, g.dilation, g.out_hw,
                      primfunc_name_hint="im2col")


def _tensor_type(shape, dtype):
    from tvm import relax

    return relax.TensorType(shape, dtype)
